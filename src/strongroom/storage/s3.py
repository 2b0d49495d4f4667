"""The ``s3`` storage backend: a share is a bucket as the runbook's template makes it.

``share create`` makes, in this order, what the runbook's CloudFormation
template makes (``Deploy-ApplicationSharingBucket-Cfn.yaml``): the host key
(:func:`~strongroom.storage.policies.key_policy`, rotation on, the share's
alias), the access-log bucket (SSE-S3 with a bucket key, public access
blocked, :func:`~strongroom.storage.policies.log_bucket_policy`), and the share
bucket (versioning, SSE-KMS by default with the host key, public access
blocked, ``BucketOwnerEnforced``, access logging, a rule that aborts unfinished
multipart uploads, tags that mark it as a share, and
:func:`~strongroom.storage.policies.bucket_policy`). A share is found again by
its deterministic name (:class:`~strongroom.storage.base.ShareNames`, from the
caller's account and region) and its tags.

Invariants:

- Nothing is left half-made: if a step of ``create_share`` fails, what was
  made is undone (buckets deleted, the key's deletion scheduled with the
  shortest window KMS allows) before the error is raised.
- ``revoke_share``/``restore_share`` read the stored bucket policy and write it
  back with exactly the vendor's statement removed or added; no object is
  touched.
- A large upload resumes after an interruption without the vendor listing
  anything (its policy grants ``s3:PutObject`` only, and ``ListParts`` and
  ``AbortMultipartUpload`` need more): the upload id and each finished part
  are recorded in ``state_dir`` as the part completes, keyed by the
  destination and the file's identity. A file that changed starts over; the
  upload left behind is removed by the share's lifecycle rule.
- Every object is uploaded with the headers the bucket policy demands
  (``aws:kms``, the host key, ``bucket-owner-full-control``) and a SHA-256
  checksum S3 checks on arrival.
- No botocore exception leaves this module: each is translated at the edge,
  into a one-line message with a hint (the key service's through
  :mod:`strongroom.keys.aws`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions
from botocore import xform_name

from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ConfigError,
    CredentialError,
    InvalidInputError,
    NotFoundError,
    ServiceError,
    StrongroomError,
    UnavailableError,
    UsageError,
)
from strongroom.keys.aws import CREDENTIAL_ERROR_CODES, KmsKeyService, botocore_failure
from strongroom.storage import policies
from strongroom.storage.base import (
    Progress,
    Share,
    ShareDetails,
    ShareNames,
    StoredObject,
    check_account,
    check_object_name,
    check_vendor,
)

MiB = 1024 * 1024
#: Files larger than this go up in parts (and can resume); smaller ones in one PutObject.
MULTIPART_THRESHOLD = 16 * MiB
#: The size of each part but the last (S3 wants at least 5 MiB). It grows, in
#: whole MiB, for a file that would need more than MAX_PARTS parts.
PART_SIZE = 8 * MiB
MAX_PARTS = 10_000
#: How much of a download is read from the response and written at a time.
DOWNLOAD_CHUNK = MiB
#: Objects (and versions) asked for a listing request (S3 answers at most 1000).
LIST_PAGE_SIZE = 1000
#: DeleteObjects takes at most this many keys a request.
DELETE_BATCH = 1000
#: A deleted share's key is scheduled for deletion with KMS's shortest window.
KEY_DELETION_WINDOW_DAYS = 7
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
#: Tags that mark a bucket as a share (``list_shares`` looks for them).
TAG_VENDOR = "strongroom:vendor"
TAG_VENDOR_ACCOUNT = "strongroom:vendor-account"
ABORT_RULE_ID = "strongroom-abort-incomplete-multipart-uploads"
#: The names of share buckets, as :class:`ShareNames` makes them.
_SHARE_BUCKET = re.compile(
    r"(?P<vendor>[a-z0-9-]+)-code-bucket-(?P<account>\d{12})-(?P<region>[a-z0-9-]+)"
)

#: S3's error codes, and what they are to us.
_NOT_FOUND = frozenset({"NoSuchBucket", "NoSuchKey", "NoSuchUpload", "NotFound", "404"})
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403"})
_CREDENTIALS = CREDENTIAL_ERROR_CODES | {
    "InvalidAccessKeyId",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
}
_UNAVAILABLE = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
)
_INVALID = frozenset(
    {
        "InvalidArgument",
        "InvalidRequest",
        "InvalidBucketName",
        "MalformedXML",
        "MalformedPolicy",
        "InvalidPart",
        "InvalidPartOrder",
        "EntityTooSmall",
        "EntityTooLarge",
        "BadDigest",
        "InvalidDigest",
        "KMS.NotFoundException",
        "KMS.DisabledException",
        "IllegalLocationConstraintException",
        "InvalidLocationConstraint",
    }
)
#: The answers a bucket setting gives when it was never set.
_UNSET = frozenset(
    {
        "NoSuchBucketPolicy",
        "NoSuchTagSet",
        "NoSuchLifecycleConfiguration",
        "ServerSideEncryptionConfigurationNotFoundError",
        "NoSuchPublicAccessBlockConfiguration",
        "OwnershipControlsNotFoundError",
    }
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _where(bucket: str | None, key: str | None) -> str:
    if bucket is None:
        return "S3"
    return f"s3://{bucket}" + (f"/{key}" if key else "")


def _client_error(
    error: botocore.exceptions.ClientError, operation: str, bucket: str | None, key: str | None
) -> StrongroomError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    message = _one_line(str(error.response.get("Error", {}).get("Message", "")) or str(error))
    where = _where(bucket, key)
    if code in _CREDENTIALS:
        return CredentialError(
            f"S3 refused the credentials for {operation} on {where}: {message} ({code})",
            hint="check the AWS credentials in use (AWS_PROFILE, the AWS_* variables, "
            "`aws sts get-caller-identity`): they are unknown, expired, or for another region",
        )
    if code in _DENIED:
        return AccessDeniedError(
            f"S3 denied {operation} on {where} to these credentials ({code})",
            hint=_denied_hint(operation),
        )
    if code in _NOT_FOUND:
        return NotFoundError(
            f"{where} does not exist ({operation}: {code})",
            hint="check the bucket and object names, and the region"
            + ("; `strongroom share list` shows the shares" if key is None else ""),
        )
    if code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
        whose = (
            "you already own it" if code == "BucketAlreadyOwnedByYou" else "another account owns it"
        )
        return AlreadyExistsError(
            f"the bucket {bucket} exists: {whose}",
            hint="bucket names are global; `strongroom share list` shows your shares",
        )
    if code in _UNAVAILABLE:
        return UnavailableError(
            f"S3 could not do {operation} on {where} now: {message} ({code})",
            hint="retry later",
        )
    if code in _INVALID:
        return InvalidInputError(f"S3 refused {operation} on {where}: {message} ({code})")
    return ServiceError(f"S3 refused {operation} on {where}: {message} ({code or 'no code'})")


def _denied_hint(operation: str) -> str:
    if operation in {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}:
        return (
            "a vendor may put objects only while its share is open (ask the host admin: "
            "`strongroom share show VENDOR`), with the credentials of the vendor account the "
            "share names"
        )
    return "these credentials' IAM policy, or the bucket's policy, does not allow it"


def _failure(
    error: botocore.exceptions.BotoCoreError, operation: str, where: str
) -> StrongroomError:
    """Our error for a botocore failure that is not an answer from S3."""
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return CredentialError(
            f"no AWS credentials were found for {operation} on {where}",
            hint="configure them (AWS_PROFILE, the AWS_* variables, or `aws configure`)",
        )
    if isinstance(error, botocore.exceptions.ParamValidationError):
        return InvalidInputError(f"{operation} on {where}: {_one_line(str(error))}")
    translated = botocore_failure(
        error, "S3", not_running_hint="check the network and the S3 endpoint"
    )
    if type(translated) is UnavailableError:
        return UnavailableError(
            f"{operation} on {where} failed: {_one_line(str(error))}",
            hint="check the network and the S3 endpoint, then retry",
        )
    return translated


@dataclass(frozen=True)
class _FileIdentity:
    """What says a rerun uploads the same file as the recorded upload."""

    bucket: str
    name: str
    size: int
    mtime_ns: int
    inode: int
    part_size: int

    @classmethod
    def of(cls, bucket: str, name: str, stat: os.stat_result) -> _FileIdentity:
        return cls(
            bucket, name, stat.st_size, stat.st_mtime_ns, stat.st_ino, _part_size(stat.st_size)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "name": self.name,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
            "part_size": self.part_size,
        }


def _part_size(size: int) -> int:
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // MiB) * MiB)


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def upload_record_path(state_dir: Path, bucket: str, name: str) -> Path:
    """Where the resumable upload of ``name`` into ``bucket`` is recorded."""
    digest = hashlib.sha256(f"{bucket}/{name}".encode()).hexdigest()[:32]
    return state_dir / f"upload-{digest}.json"


class S3Storage:
    """Shares on S3 (or any endpoint speaking its API), through boto3."""

    backend = "s3"

    def __init__(
        self,
        session: boto3.session.Session,
        *,
        region: str,
        endpoint_url: str | None,
        state_dir: Path,
    ) -> None:
        config = botocore.config.Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            # the attempts come from the standard chain (AWS_MAX_ATTEMPTS, the profile)
            retries={"mode": "standard"},
        )
        self.region = region
        self._state_dir = state_dir
        self._account: str | None = None
        try:
            clients = {
                name: session.client(
                    name,
                    region_name=region,
                    endpoint_url=endpoint_url,
                    config=config,
                )
                for name in ("s3", "kms", "sts")
            }
        except botocore.exceptions.BotoCoreError as e:
            raise _failure(e, "connect", "S3") from e
        self._s3: Any = clients["s3"]
        self._sts: Any = clients["sts"]
        self._kms = KmsKeyService(clients["kms"], credentials_label="the host's AWS credentials")

    @classmethod
    def open(
        cls,
        *,
        region: str | None,
        profile: str | None,
        endpoint_url: str | None,
        state_dir: Path,
    ) -> S3Storage:
        """Storage for the caller's AWS identity.

        ``region`` and ``profile`` default to the standard chain (AWS_REGION,
        AWS_PROFILE, the config files); ``endpoint_url`` (for S3, KMS and STS
        alike: an endpoint serving the AWS APIs, as moto or LocalStack do)
        defaults to botocore's (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS).
        ``state_dir`` (mode 0700) holds the records of resumable uploads.
        """
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
        except botocore.exceptions.ProfileNotFound as e:
            if profile is not None:
                raise UsageError(
                    f"the AWS profile {profile!r} is not defined in the AWS config or "
                    "credentials files",
                    hint=f"check its name (`aws configure list-profiles`), or create it "
                    f"(`aws configure --profile {profile}`)",
                ) from e
            raise botocore_failure(e, "AWS", not_running_hint=None) from e
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(e, "AWS", not_running_hint=None) from e
        resolved = session.region_name
        if not resolved:
            raise ConfigError(
                "no AWS region is configured for S3",
                hint="set AWS_REGION, or the profile's region (`aws configure`)",
            )
        return cls(session, region=resolved, endpoint_url=endpoint_url, state_dir=state_dir)

    # --- calls and their errors ---------------------------------------------

    @contextlib.contextmanager
    def _errors(self, operation: str, bucket: str | None, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as e:
            raise _client_error(e, operation, bucket, key) from e
        except botocore.exceptions.BotoCoreError as e:
            raise _failure(e, operation, _where(bucket, key)) from e

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call S3's ``operation`` (its API name, e.g. ``PutObject``), errors translated."""
        with self._errors(operation, params.get("Bucket"), params.get("Key")):
            result: dict[str, Any] = getattr(self._s3, xform_name(operation))(**params)
            return result

    def _setting(self, operation: str, bucket: str) -> dict[str, Any] | None:
        """A bucket setting (``GetBucketX``), or None when it was never set."""
        try:
            result: dict[str, Any] = getattr(self._s3, xform_name(operation))(Bucket=bucket)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in _UNSET:
                return None
            raise _client_error(e, operation, bucket, None) from e
        except botocore.exceptions.BotoCoreError as e:
            raise _failure(e, operation, _where(bucket, None)) from e
        result.pop("ResponseMetadata", None)
        return result

    def _bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists (HeadBucket; a 403 is AccessDeniedError)."""
        try:
            self._s3.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:
                return False
            raise _client_error(e, "HeadBucket", bucket, None) from e
        except botocore.exceptions.BotoCoreError as e:
            raise _failure(e, "HeadBucket", _where(bucket, None)) from e
        return True

    def _refuse_existing(self, names: ShareNames) -> None:
        """Refuse to make a share any of whose parts exists (or whose bucket name is taken)."""
        for bucket in (names.bucket, names.log_bucket):
            try:
                exists = self._bucket_exists(bucket)
            except AccessDeniedError as e:  # S3 answers 403 for another account's bucket
                raise AlreadyExistsError(
                    f"the bucket name {bucket} is taken by another AWS account",
                    hint="bucket names are global: use another vendor identifier",
                ) from e
            if exists and bucket == names.bucket:
                raise AlreadyExistsError(
                    f"the share for {names.vendor} exists: s3://{bucket}",
                    hint=f"`strongroom share show {names.vendor}` shows it; "
                    f"`strongroom share delete {names.vendor}` removes it",
                )
            if exists:
                raise AlreadyExistsError(
                    f"the access-log bucket s3://{bucket} exists without its share",
                    hint=f"`strongroom share delete {names.vendor}` removes what is left",
                )
        with contextlib.suppress(NotFoundError):
            self._kms.describe_key(names.key_alias)
            raise AlreadyExistsError(
                f"the key alias {names.key_alias} exists without its share",
                hint=f"`strongroom share delete {names.vendor}` removes what is left",
            )

    def caller_account(self) -> str:
        """The AWS account these credentials belong to (STS GetCallerIdentity)."""
        if self._account is None:
            with self._errors("GetCallerIdentity", None):
                self._account = str(self._sts.get_caller_identity()["Account"])
        return self._account

    def names(self, vendor: str) -> ShareNames:
        """The names of ``vendor``'s share in the caller's account and region."""
        return ShareNames(check_vendor(vendor), self.caller_account(), self.region)

    # --- the host admin -------------------------------------------------------

    def create_share(self, names: ShareNames, vendor_account: str) -> Share:
        check_vendor(names.vendor)
        check_account(vendor_account, what="the vendor account")
        if names.region != self.region:
            raise UsageError(
                f"the share is named for {names.region} but S3 is opened in {self.region}",
                hint="use one region for the share and the AWS client",
            )
        self._refuse_existing(names)
        undo: list[tuple[str, Callable[[], object]]] = []
        try:
            key_arn = self._make_key(names, vendor_account, undo)
            self._make_log_bucket(names, undo)
            self._make_share_bucket(names, vendor_account, key_arn, undo)
        except BaseException as e:
            left = self._undo(undo)
            if not isinstance(e, StrongroomError):
                raise
            if left:
                hint = "left behind: " + "; ".join(left) + " (remove them by hand)"
            else:
                hint = "nothing was left behind; " + (e.hint or "fix the cause and retry")
            raise type(e)(
                f"could not create the share for {names.vendor}: {e.message}", hint=hint
            ) from e
        return Share(
            vendor=names.vendor,
            vendor_account=vendor_account,
            bucket=names.bucket,
            location=f"s3://{names.bucket}",
            key_arn=key_arn,
            key_alias=names.key_alias,
            access="open",
            backend=self.backend,
        )

    def _make_key(
        self, names: ShareNames, vendor_account: str, undo: list[tuple[str, Callable[[], object]]]
    ) -> str:
        key = self._kms.create_key(
            description=f"Key used for S3 bucket shared with {names.vendor}",
            policy=json.dumps(policies.key_policy(names, vendor_account)),
        )
        undo.append(
            (
                f"the key {key.arn} (schedule its deletion)",
                lambda: self._kms.schedule_key_deletion(
                    key.key_id, pending_window_days=KEY_DELETION_WINDOW_DAYS
                ),
            )
        )
        self._kms.enable_key_rotation(key.key_id)
        self._kms.create_alias(names.key_alias, key.key_id)
        undo.append(
            (f"the alias {names.key_alias}", lambda: self._kms.delete_alias(names.key_alias))
        )
        return key.arn

    def _create_bucket(self, bucket: str, undo: list[tuple[str, Callable[[], object]]]) -> None:
        params: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":  # us-east-1 takes no location constraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self._call("CreateBucket", **params)
        # a bucket just made may hold access logs already (the log bucket), nothing else
        undo.append((f"the bucket s3://{bucket}", lambda: self._remove_bucket(bucket)))
        self._call(
            "PutPublicAccessBlock",
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )

    def _make_log_bucket(
        self, names: ShareNames, undo: list[tuple[str, Callable[[], object]]]
    ) -> None:
        self._create_bucket(names.log_bucket, undo)
        self._call(
            "PutBucketEncryption",
            Bucket=names.log_bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        self._call(
            "PutBucketPolicy",
            Bucket=names.log_bucket,
            Policy=json.dumps(policies.log_bucket_policy(names)),
        )

    def _make_share_bucket(
        self,
        names: ShareNames,
        vendor_account: str,
        key_arn: str,
        undo: list[tuple[str, Callable[[], object]]],
    ) -> None:
        bucket = names.bucket
        self._create_bucket(bucket, undo)
        self._call(
            "PutBucketOwnershipControls",
            Bucket=bucket,
            OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        )
        self._call(
            "PutBucketVersioning", Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        self._call(
            "PutBucketEncryption",
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": policies.SSE_ALGORITHM,
                            "KMSMasterKeyID": key_arn,
                        },
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        self._call(
            "PutBucketLogging",
            Bucket=bucket,
            BucketLoggingStatus={
                "LoggingEnabled": {
                    "TargetBucket": names.log_bucket,
                    "TargetPrefix": names.log_prefix,
                }
            },
        )
        self._call(
            "PutBucketLifecycleConfiguration",
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": ABORT_RULE_ID,
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "AbortIncompleteMultipartUpload": {
                            "DaysAfterInitiation": policies.ABORT_INCOMPLETE_UPLOAD_DAYS
                        },
                    }
                ]
            },
        )
        self._call(
            "PutBucketTagging",
            Bucket=bucket,
            Tagging={
                "TagSet": [
                    {"Key": TAG_VENDOR, "Value": names.vendor},
                    {"Key": TAG_VENDOR_ACCOUNT, "Value": vendor_account},
                ]
            },
        )
        self._call(
            "PutBucketPolicy",
            Bucket=bucket,
            Policy=json.dumps(policies.bucket_policy(names, vendor_account)),
        )

    @staticmethod
    def _undo(undo: list[tuple[str, Callable[[], object]]]) -> list[str]:
        """Undo the steps done, last first; return what could not be undone."""
        left = []
        for what, action in reversed(undo):
            try:
                action()
            except StrongroomError:
                left.append(what)
        return left

    def _tags(self, bucket: str) -> dict[str, str]:
        tagging = self._setting("GetBucketTagging", bucket) or {}
        return {t["Key"]: t["Value"] for t in tagging.get("TagSet", [])}

    def _policy(self, bucket: str) -> dict[str, Any] | None:
        stored = self._setting("GetBucketPolicy", bucket)
        if stored is None:
            return None
        try:
            policy: dict[str, Any] = json.loads(stored["Policy"])
        except (KeyError, ValueError) as e:
            raise InvalidInputError(f"the bucket policy of s3://{bucket} is not JSON") from e
        return policy

    def _key_arn(self, bucket: str) -> str | None:
        encryption = self._setting("GetBucketEncryption", bucket) or {}
        for rule in encryption.get("ServerSideEncryptionConfiguration", {}).get("Rules", []):
            key = rule.get("ApplyServerSideEncryptionByDefault", {}).get("KMSMasterKeyID")
            if key:
                return str(key)
        return None

    def _share(self, bucket: str, names: ShareNames, tags: dict[str, str]) -> Share:
        policy = self._policy(bucket) or {}
        return Share(
            vendor=names.vendor,
            vendor_account=tags.get(TAG_VENDOR_ACCOUNT, ""),
            bucket=bucket,
            location=f"s3://{bucket}",
            key_arn=self._key_arn(bucket),
            key_alias=names.key_alias,
            access="open" if policies.has_vendor_access(policy) else "revoked",
            backend=self.backend,
        )

    def _find(self, vendor: str) -> tuple[ShareNames, dict[str, str]]:
        """``vendor``'s share in the caller's account and region, and its tags."""
        names = self.names(vendor)
        if not self._bucket_exists(names.bucket):
            raise NotFoundError(
                f"there is no share for {vendor} (no bucket s3://{names.bucket})",
                hint="`strongroom share list` shows the shares; the region must be the share's",
            )
        tags = self._tags(names.bucket)
        if tags.get(TAG_VENDOR) != vendor:
            raise NotFoundError(
                f"s3://{names.bucket} is not a Strongroom share (it has no {TAG_VENDOR} tag)",
                hint="it was not made by `strongroom share create`",
            )
        return names, tags

    def list_shares(self) -> list[Share]:
        buckets: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        while True:
            page = self._call("ListBuckets", **params)
            buckets.extend(page.get("Buckets", []))
            token = page.get("ContinuationToken")
            if not token:
                break
            params["ContinuationToken"] = token
        shares = []
        for bucket in sorted(b["Name"] for b in buckets):
            match = _SHARE_BUCKET.fullmatch(bucket)
            if match is None:
                continue
            tags = self._tags(bucket)
            vendor = tags.get(TAG_VENDOR)
            if vendor is None or vendor != match["vendor"]:
                continue
            names = ShareNames(vendor, match["account"], match["region"])
            shares.append(self._share(bucket, names, tags))
        return shares

    def show_share(self, vendor: str) -> ShareDetails:
        names, tags = self._find(vendor)
        bucket = names.bucket
        share = self._share(bucket, names, tags)
        key_policy = None
        if share.key_arn is not None:
            key_policy = json.loads(self._kms.get_key_policy(share.key_arn))
        versioning = self._setting("GetBucketVersioning", bucket) or {}
        encryption = self._setting("GetBucketEncryption", bucket)
        public_access = self._setting("GetPublicAccessBlock", bucket)
        ownership = self._setting("GetBucketOwnershipControls", bucket)
        logging = self._setting("GetBucketLogging", bucket) or {}
        lifecycle = self._setting("GetBucketLifecycleConfiguration", bucket)
        settings: dict[str, Any] = {
            "versioning": versioning.get("Status", "Disabled"),
            "encryption": (encryption or {}).get("ServerSideEncryptionConfiguration"),
            "public_access_block": (public_access or {}).get("PublicAccessBlockConfiguration"),
            "ownership": [
                r["ObjectOwnership"]
                for r in (ownership or {}).get("OwnershipControls", {}).get("Rules", [])
            ],
            "logging": logging.get("LoggingEnabled"),
            "lifecycle": (lifecycle or {}).get("Rules"),
            "tags": tags,
        }
        return ShareDetails(
            share=share,
            bucket_policy=self._policy(bucket) or {},
            key_policy=key_policy,
            settings=settings,
            objects=tuple(self.list_objects(bucket)),
        )

    def revoke_share(self, vendor: str) -> Share:
        names, tags = self._find(vendor)
        policy = self._policy(names.bucket)
        if policy is not None and policies.has_vendor_access(policy):
            revoked = policies.without_vendor_access(policy)
            if revoked["Statement"]:
                self._call("PutBucketPolicy", Bucket=names.bucket, Policy=json.dumps(revoked))
            else:  # S3 refuses a policy without statements
                self._call("DeleteBucketPolicy", Bucket=names.bucket)
        return self._share(names.bucket, names, tags)

    def restore_share(self, vendor: str) -> Share:
        names, tags = self._find(vendor)
        vendor_account = check_account(
            tags.get(TAG_VENDOR_ACCOUNT, ""), what=f"the {TAG_VENDOR_ACCOUNT} tag's"
        )
        policy = self._policy(names.bucket) or policies.bucket_policy(names, vendor_account)
        restored = policies.with_vendor_access(policy, names, vendor_account)
        self._call("PutBucketPolicy", Bucket=names.bucket, Policy=json.dumps(restored))
        return self._share(names.bucket, names, tags)

    def delete_share(self, vendor: str, *, purge: bool) -> None:
        """Delete the share's buckets and the key's alias, and schedule the key's deletion.

        Refuses (UsageError) while the share bucket holds any object version or
        delete marker, unless ``purge``: then every one of them goes first. The
        access logs go with the share either way (S3 writes them all the time,
        so they would always refuse). The key stays recoverable for
        :data:`KEY_DELETION_WINDOW_DAYS` days (KMS's ``CancelKeyDeletion``).
        What a failed delete left behind is removed too.
        """
        names = self.names(vendor)
        share_bucket = self._bucket_exists(names.bucket)
        if share_bucket:
            self._find(vendor)  # refuse a bucket that is not a share
        log_bucket = self._bucket_exists(names.log_bucket)
        key = None
        with contextlib.suppress(NotFoundError):
            key = self._kms.describe_key(names.key_alias)
        if not (share_bucket or log_bucket or key):
            raise NotFoundError(
                f"there is no share for {vendor} (no bucket s3://{names.bucket})",
                hint="`strongroom share list` shows the shares; the region must be the share's",
            )
        if share_bucket and not purge:
            held = sum(1 for _ in self._versions(names.bucket))
            if held:
                raise UsageError(
                    f"s3://{names.bucket} holds {held} object version(s) and delete marker(s)",
                    hint=f"`strongroom share delete {vendor} --purge` deletes every one of "
                    "them, then the share",
                )
        if share_bucket:
            self._remove_bucket(names.bucket)
        if log_bucket:  # after the share bucket, which writes into it
            self._remove_bucket(names.log_bucket)
        if key is not None:
            self._kms.delete_alias(names.key_alias)
            if key.state != "PendingDeletion":
                self._kms.schedule_key_deletion(
                    key.key_id, pending_window_days=KEY_DELETION_WINDOW_DAYS
                )

    def _versions(self, bucket: str) -> Iterator[dict[str, str]]:
        """Every object version and delete marker in ``bucket``, as DeleteObjects names them."""
        with self._errors("ListObjectVersions", bucket):
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=bucket, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
            )
            for page in pages:
                for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    yield {"Key": entry["Key"], "VersionId": entry["VersionId"]}

    def _remove_bucket(self, bucket: str) -> None:
        """Delete every object version in ``bucket``, then the bucket."""
        self._purge(bucket)
        self._call("DeleteBucket", Bucket=bucket)

    def _purge(self, bucket: str) -> None:
        batch: list[dict[str, str]] = []
        for version in [*self._versions(bucket)]:
            batch.append(version)
            if len(batch) == DELETE_BATCH:
                self._delete_versions(bucket, batch)
                batch = []
        if batch:
            self._delete_versions(bucket, batch)

    def _delete_versions(self, bucket: str, versions: list[dict[str, str]]) -> None:
        result = self._call(
            "DeleteObjects", Bucket=bucket, Delete={"Objects": versions, "Quiet": True}
        )
        errors = result.get("Errors", [])
        if errors:
            first = errors[0]
            raise ServiceError(
                f"S3 did not delete {len(errors)} object version(s) of s3://{bucket}, "
                f"e.g. {first.get('Key')}: {first.get('Code')}",
                hint="nothing else was deleted; retry, or check the bucket's object lock",
            )

    # --- objects ----------------------------------------------------------------

    def put_object(
        self,
        bucket: str,
        name: str,
        source: Path,
        *,
        kms_key: str | None,
        progress: Progress | None = None,
    ) -> None:
        """Upload ``source`` as ``name`` (see :meth:`Storage.put_object`).

        ``kms_key`` is the share's key (:attr:`Share.key_arn`): the vendor must
        name it, since S3 encrypts an ``aws:kms`` upload that names no key with
        the AWS managed key ``aws/s3`` instead of the bucket's default key.
        """
        check_object_name(name)
        headers: dict[str, Any] = {
            "ServerSideEncryption": policies.SSE_ALGORITHM,
            "ACL": policies.VENDOR_ACL,
        }
        if kms_key is not None:
            headers["SSEKMSKeyId"] = kms_key
        try:
            handle = source.open("rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"{source} does not exist") from e
        except OSError as e:
            raise InvalidInputError(f"cannot read {source}: {e.strerror}") from e
        with handle:
            try:
                stat = os.fstat(handle.fileno())
                data = handle.read() if stat.st_size <= MULTIPART_THRESHOLD else None
            except OSError as e:
                raise InvalidInputError(f"cannot read {source}: {e.strerror}") from e
            if data is not None:
                self._call(
                    "PutObject",
                    Bucket=bucket,
                    Key=name,
                    Body=data,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=_sha256_b64(data),
                    **headers,
                )
                if progress is not None:
                    progress(len(data))
                return
            _Upload(self, _FileIdentity.of(bucket, name, stat), handle, source, headers).run(
                progress
            )

    def get_object(
        self, bucket: str, name: str, sink: BinaryIO, *, progress: Progress | None = None
    ) -> int:
        written = 0
        with self._errors("GetObject", bucket, name):
            body = self._s3.get_object(Bucket=bucket, Key=name)["Body"]
            try:
                for chunk in body.iter_chunks(DOWNLOAD_CHUNK):
                    try:
                        sink.write(chunk)
                    except OSError as e:
                        raise InvalidInputError(
                            f"cannot write s3://{bucket}/{name} where it is fetched: {e.strerror}"
                        ) from e
                    written += len(chunk)
                    if progress is not None:
                        progress(written)
            finally:
                body.close()
        return written

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        objects = []
        with self._errors("ListObjectsV2", bucket):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
            )
            for page in pages:
                for entry in page.get("Contents", []):
                    objects.append(
                        StoredObject(
                            name=entry["Key"], size=entry["Size"], modified=entry["LastModified"]
                        )
                    )
        return objects


class _Upload:
    """One resumable multipart upload of a file, and its record in the state directory."""

    def __init__(
        self,
        storage: S3Storage,
        identity: _FileIdentity,
        handle: BinaryIO,
        source: Path,
        headers: dict[str, Any],
    ) -> None:
        self._storage = storage
        self._identity = identity
        self._handle = handle
        self._source = source
        self._headers = headers
        self.record_path = upload_record_path(storage._state_dir, identity.bucket, identity.name)

    def run(self, progress: Progress | None) -> None:
        record = self._resumable()
        if record is not None:
            try:
                self._finish(record, progress)
                return
            except NotFoundError:
                # the recorded upload is gone (completed, or aborted by the lifecycle rule)
                pass
        self._finish(self._start(), progress)

    def _finish(self, record: dict[str, Any], progress: Progress | None) -> None:
        identity = self._identity
        parts: list[dict[str, Any]] = record["parts"]
        count = max(1, -(-identity.size // identity.part_size))
        done = min(len(parts) * identity.part_size, identity.size)
        if progress is not None:
            progress(done)
        for number in range(len(parts) + 1, count + 1):
            data = self._read(number)
            checksum = _sha256_b64(data)
            answer = self._storage._call(
                "UploadPart",
                Bucket=identity.bucket,
                Key=identity.name,
                UploadId=record["upload_id"],
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
            parts.append({"number": number, "etag": answer["ETag"], "checksum": checksum})
            self._save(record)
            done += len(data)
            if progress is not None:
                progress(done)
        self._storage._call(
            "CompleteMultipartUpload",
            Bucket=identity.bucket,
            Key=identity.name,
            UploadId=record["upload_id"],
            MultipartUpload={
                "Parts": [
                    {"PartNumber": p["number"], "ETag": p["etag"], "ChecksumSHA256": p["checksum"]}
                    for p in parts
                ]
            },
        )
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()

    def _start(self) -> dict[str, Any]:
        identity = self._identity
        answer = self._storage._call(
            "CreateMultipartUpload",
            Bucket=identity.bucket,
            Key=identity.name,
            ChecksumAlgorithm="SHA256",
            **self._headers,
        )
        record = {"identity": identity.to_dict(), "upload_id": answer["UploadId"], "parts": []}
        self._save(record)
        return record

    def _resumable(self) -> dict[str, Any] | None:
        """The recorded upload of this very file, its parts checked against the file; else None."""
        try:
            record: dict[str, Any] = json.loads(self.record_path.read_text())
            if record.get("identity") != self._identity.to_dict():
                return None
            parts = record["parts"]
            for number, part in enumerate(parts, start=1):
                if part["number"] != number or _sha256_b64(self._read(number)) != part["checksum"]:
                    return None
            str(record["upload_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record

    def _read(self, number: int) -> bytes:
        try:
            self._handle.seek((number - 1) * self._identity.part_size)
            return self._handle.read(self._identity.part_size)
        except OSError as e:
            raise InvalidInputError(f"cannot read {self._source}: {e.strerror}") from e

    def _save(self, record: dict[str, Any]) -> None:
        """Write the record atomically (0600), so an interruption leaves the last one whole."""
        state_dir = self.record_path.parent
        tmp = self.record_path.with_suffix(".tmp")
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.record_path)
        except OSError as e:
            raise ConfigError(
                f"cannot record the upload's progress in {state_dir}: {e.strerror}",
                hint="the workspace must be writable",
            ) from e
