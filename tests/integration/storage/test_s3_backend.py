"""The s3 backend against a real S3 API server process (moto; what it checks: ``s3_server``).

The host admin and the vendor are two AWS accounts on the one server, each
with its profile; everything the backend made is read back with plain boto3.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from tests import moto_s3
from tests.conftest import AwsProfiles

from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ConfigError,
    CredentialError,
    NotFoundError,
    ServiceError,
    UnavailableError,
    UsageError,
)
from strongroom.storage import access, policies, s3
from strongroom.storage.base import Share, ShareNames
from strongroom.storage.s3 import MULTIPART_THRESHOLD, PART_SIZE, S3Storage, upload_record_path

_vendors = itertools.count()


def new_vendor() -> str:
    """A vendor identifier no other test (on the session's one server) uses."""
    return f"v{os.getpid() % 10_000}-{next(_vendors)}"


def raw(profiles: AwsProfiles, service: str, profile: str = "host") -> Any:
    return boto3.session.Session(profile_name=profile).client(
        service,  # type: ignore[call-overload]
        endpoint_url=profiles.endpoint,
    )


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def open_storage(profiles: AwsProfiles, tmp_path: Path, profile: str) -> S3Storage:
    return S3Storage.open(
        region=None,  # the profile's
        profile=profile,
        endpoint_url=profiles.endpoint,
        state_dir=tmp_path / f"state-{profile}",
    )


@pytest.fixture
def host(aws_profiles: AwsProfiles, tmp_path: Path) -> S3Storage:
    return open_storage(aws_profiles, tmp_path, aws_profiles.host)


@pytest.fixture
def vendor(aws_profiles: AwsProfiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    # the vendor's endpoint comes from the standard chain, as botocore >= 1.34 reads it
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_profiles.endpoint)
    return S3Storage.open(
        region=None, profile=aws_profiles.vendor, endpoint_url=None, state_dir=tmp_path / "vstate"
    )


@pytest.fixture
def share(host: S3Storage, aws_profiles: AwsProfiles) -> Iterator[Share]:
    made = host.create_share(host.names(new_vendor()), aws_profiles.vendor_account)
    yield made
    with contextlib.suppress(NotFoundError):  # the test may have deleted it
        host.delete_share(made.vendor, purge=True)


def names_of(share: Share, profiles: AwsProfiles) -> ShareNames:
    return ShareNames(share.vendor, profiles.host_account, profiles.region)


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def fetch(storage: S3Storage, bucket: str, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / "fetched"
    with out.open("wb") as sink:
        written = storage.get_object(bucket, name, sink)
    data = out.read_bytes()
    assert written == len(data)
    return data


class Interrupted(Exception):
    pass


def interrupt_at(done: int, seen: list[int]) -> Callable[[int], None]:
    def progress(n: int) -> None:
        seen.append(n)
        if n >= done:
            raise Interrupted

    return progress


#: A file of four parts (three whole ones and 123 bytes), above the multipart threshold.
BIG = 3 * PART_SIZE + 123
assert BIG > MULTIPART_THRESHOLD


# --- share create -------------------------------------------------------------


def test_create_makes_what_the_template_makes(
    share: Share, aws_profiles: AwsProfiles, host: S3Storage
) -> None:
    names = names_of(share, aws_profiles)
    vendor_account = aws_profiles.vendor_account
    assert share.bucket == names.bucket == f"{share.vendor}-code-bucket-123456789012-eu-west-1"
    assert (share.access, share.backend, share.key_alias) == ("open", "s3", names.key_alias)
    api, kms = raw(aws_profiles, "s3"), raw(aws_profiles, "kms")
    bucket, logs = names.bucket, names.log_bucket

    assert api.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
    assert api.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    [rule] = api.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": share.key_arn,
    }
    assert rule["BucketKeyEnabled"] is True
    all_blocked = dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    for b in (bucket, logs):
        assert (
            api.get_public_access_block(Bucket=b)["PublicAccessBlockConfiguration"] == all_blocked
        )
    ownership = api.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    logging = api.get_bucket_logging(Bucket=bucket)["LoggingEnabled"]
    assert (logging["TargetBucket"], logging["TargetPrefix"]) == (logs, names.log_prefix)
    [lifecycle] = api.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["Status"] == "Enabled"
    assert lifecycle["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": policies.ABORT_INCOMPLETE_UPLOAD_DAYS
    }
    tags = {t["Key"]: t["Value"] for t in api.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags == {s3.TAG_VENDOR: share.vendor, s3.TAG_VENDOR_ACCOUNT: vendor_account}
    stored = json.loads(api.get_bucket_policy(Bucket=bucket)["Policy"])
    assert stored == policies.bucket_policy(names, vendor_account)

    [log_rule] = api.get_bucket_encryption(Bucket=logs)["ServerSideEncryptionConfiguration"][
        "Rules"
    ]
    assert log_rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert log_rule["BucketKeyEnabled"] is True
    assert json.loads(api.get_bucket_policy(Bucket=logs)["Policy"]) == policies.log_bucket_policy(
        names
    )

    key = kms.describe_key(KeyId=names.key_alias)["KeyMetadata"]
    assert key["Arn"] == share.key_arn and key["KeyState"] == "Enabled"
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    key_policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
    assert key_policy == policies.key_policy(names, vendor_account)

    # what `share list` and `share show` say is what the server holds
    assert share in host.list_shares()
    details = host.show_share(share.vendor)
    assert details.share == share
    assert details.bucket_policy == stored and details.key_policy == key_policy
    assert details.settings["versioning"] == "Enabled"
    assert details.settings["ownership"] == ["BucketOwnerEnforced"]
    assert details.settings["public_access_block"] == all_blocked
    assert details.settings["lifecycle"] == [lifecycle]
    assert details.settings["logging"]["TargetBucket"] == logs
    assert details.settings["encryption"]["Rules"][0] == rule
    assert details.settings["tags"] == tags
    assert details.objects == ()


def test_create_in_us_east_1_sends_no_location_constraint(
    aws_profiles: AwsProfiles, tmp_path: Path
) -> None:
    storage = S3Storage.open(
        region="us-east-1",
        profile="host",
        endpoint_url=aws_profiles.endpoint,
        state_dir=tmp_path / "state",
    )
    made = storage.create_share(storage.names(new_vendor()), aws_profiles.vendor_account)
    try:
        assert made.bucket.endswith("-123456789012-us-east-1")
        location = raw(aws_profiles, "s3").get_bucket_location(Bucket=made.bucket)
        assert location["LocationConstraint"] is None
    finally:
        storage.delete_share(made.vendor, purge=False)


def test_a_second_create_is_refused_and_changes_nothing(
    share: Share, host: S3Storage, aws_profiles: AwsProfiles
) -> None:
    keys_before = raw(aws_profiles, "kms").list_keys()["Keys"]
    with pytest.raises(AlreadyExistsError) as excinfo:
        host.create_share(names_of(share, aws_profiles), aws_profiles.vendor_account)
    assert share.bucket in excinfo.value.message
    assert f"share show {share.vendor}" in excinfo.value.hint
    assert raw(aws_profiles, "kms").list_keys()["Keys"] == keys_before
    assert host.show_share(share.vendor).share == share


def test_a_failed_create_leaves_nothing_behind(
    host: S3Storage, aws_profiles: AwsProfiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step fails (on the server's side everything before it was made)."""
    names = host.names(new_vendor())
    real_call = host._call

    def failing(operation: str, **params: Any) -> dict[str, Any]:
        if operation == "PutBucketPolicy" and params["Bucket"] == names.bucket:
            raise ServiceError("injected failure (PutBucketPolicy)")
        return real_call(operation, **params)

    monkeypatch.setattr(host, "_call", failing)
    with pytest.raises(ServiceError) as excinfo:
        host.create_share(names, aws_profiles.vendor_account)
    assert "injected failure" in excinfo.value.message
    assert "nothing was left behind" in excinfo.value.hint

    api, kms = raw(aws_profiles, "s3"), raw(aws_profiles, "kms")
    buckets = {b["Name"] for b in api.list_buckets()["Buckets"]}
    assert names.bucket not in buckets and names.log_bucket not in buckets
    aliases = {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    assert names.key_alias not in aliases
    made = [kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"] for k in kms.list_keys()["Keys"]]
    [key] = [k for k in made if k.get("Description", "").endswith(f"shared with {names.vendor}")]
    assert key["KeyState"] == "PendingDeletion"
    window = key["DeletionDate"].timestamp() - time.time()
    assert abs(window - s3.KEY_DELETION_WINDOW_DAYS * 86400) < 3600


# --- publish and fetch ----------------------------------------------------------


def test_vendor_publishes_host_fetches_byte_identical(
    share: Share, host: S3Storage, vendor: S3Storage, aws_profiles: AwsProfiles, tmp_path: Path
) -> None:
    small, big = tmp_path / "app.sealed", tmp_path / "app.eif"
    small_data, big_data = write(small, 1000), write(big, BIG)
    done: list[int] = []
    vendor.put_object(share.bucket, "apps/app.sealed", small, kms_key=share.key_arn)
    vendor.put_object(
        share.bucket, "apps/app.eif", big, kms_key=share.key_arn, progress=done.append
    )
    assert done == [0, PART_SIZE, 2 * PART_SIZE, 3 * PART_SIZE, BIG]
    assert list((tmp_path / "vstate").iterdir()) == []  # the upload's record is gone

    listed = {o.name: o.size for o in host.list_objects(share.bucket)}
    assert listed == {"apps/app.sealed": 1000, "apps/app.eif": BIG}
    assert [o.name for o in host.list_objects(share.bucket, "apps/app.s")] == ["apps/app.sealed"]
    assert fetch(host, share.bucket, "apps/app.sealed", tmp_path) == small_data
    fetched: list[int] = []
    with (tmp_path / "fetched").open("wb") as sink:
        assert host.get_object(share.bucket, "apps/app.eif", sink, progress=fetched.append) == BIG
    assert (tmp_path / "fetched").read_bytes() == big_data
    assert fetched[-1] == BIG and fetched == sorted(fetched) and len(fetched) > 1

    api = raw(aws_profiles, "s3")
    for name in ("apps/app.sealed", "apps/app.eif"):
        head = api.head_object(Bucket=share.bucket, Key=name, ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == share.key_arn
    small_head = api.head_object(Bucket=share.bucket, Key="apps/app.sealed", ChecksumMode="ENABLED")
    assert small_head["ChecksumSHA256"] == b64_sha256(small_data)
    big_head = api.head_object(Bucket=share.bucket, Key="apps/app.eif", ChecksumMode="ENABLED")
    assert big_head["ETag"].endswith('-4"')
    parts = [big_data[i : i + PART_SIZE] for i in range(0, BIG, PART_SIZE)]
    composite = b64_sha256(b"".join(hashlib.sha256(p).digest() for p in parts))
    assert big_head["ChecksumSHA256"].split("-")[0] == composite

    # moto delivers the share's access logs where its logging configuration says
    log_bucket = names_of(share, aws_profiles).log_bucket
    logs = [o["Key"] for o in api.list_objects_v2(Bucket=log_bucket).get("Contents", [])]
    assert logs and all(k.startswith(names_of(share, aws_profiles).log_prefix) for k in logs)


def test_an_interrupted_upload_resumes_without_resending_parts(
    share: Share, host: S3Storage, vendor: S3Storage, aws_profiles: AwsProfiles, tmp_path: Path
) -> None:
    source = tmp_path / "app.eif"
    data = write(source, BIG)
    seen: list[int] = []
    with pytest.raises(Interrupted):
        vendor.put_object(
            share.bucket,
            "app.eif",
            source,
            kms_key=share.key_arn,
            progress=interrupt_at(2 * PART_SIZE, seen),
        )
    assert seen == [0, PART_SIZE, 2 * PART_SIZE]
    record_path = upload_record_path(tmp_path / "vstate", share.bucket, "app.eif")
    assert oct(record_path.stat().st_mode & 0o777) == "0o600"
    assert oct(record_path.parent.stat().st_mode & 0o777) == "0o700"
    record = json.loads(record_path.read_text())
    assert [p["number"] for p in record["parts"]] == [1, 2]

    # the server holds exactly the two recorded parts of the recorded upload
    api = raw(aws_profiles, "s3")
    held = api.list_parts(Bucket=share.bucket, Key="app.eif", UploadId=record["upload_id"])
    assert [(p["PartNumber"], p["ETag"]) for p in held["Parts"]] == [
        (p["number"], p["etag"]) for p in record["parts"]
    ]

    resumed: list[int] = []
    vendor.put_object(
        share.bucket, "app.eif", source, kms_key=share.key_arn, progress=resumed.append
    )
    assert resumed == [2 * PART_SIZE, 3 * PART_SIZE, BIG]  # parts 3 and 4 only
    assert not record_path.exists()
    # the recorded upload is the one completed: none is left pending
    assert api.list_multipart_uploads(Bucket=share.bucket).get("Uploads", []) == []
    assert api.head_object(Bucket=share.bucket, Key="app.eif")["ETag"].endswith('-4"')
    assert fetch(host, share.bucket, "app.eif", tmp_path) == data


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["touched", "same-mtime"])
def test_a_changed_file_starts_over(
    share: Share,
    host: S3Storage,
    vendor: S3Storage,
    aws_profiles: AwsProfiles,
    tmp_path: Path,
    keep_mtime: bool,
) -> None:
    source = tmp_path / "app.eif"
    write(source, BIG)
    with pytest.raises(Interrupted):
        vendor.put_object(
            share.bucket,
            "app.eif",
            source,
            kms_key=share.key_arn,
            progress=interrupt_at(PART_SIZE, []),
        )
    record_path = upload_record_path(tmp_path / "vstate", share.bucket, "app.eif")
    first_upload = json.loads(record_path.read_text())["upload_id"]
    before = source.stat()
    with source.open("r+b") as f:  # same inode and size, other bytes
        f.write(os.urandom(100))
    if keep_mtime:  # only the recorded part's checksum tells
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    data = source.read_bytes()

    restarted: list[int] = []
    vendor.put_object(
        share.bucket, "app.eif", source, kms_key=share.key_arn, progress=restarted.append
    )
    assert restarted[0] == 0 and restarted[-1] == BIG and len(restarted) == 5
    pending = raw(aws_profiles, "s3").list_multipart_uploads(Bucket=share.bucket)["Uploads"]
    # the first upload is left for the share's lifecycle rule (the vendor may not abort it)
    assert [u["UploadId"] for u in pending] == [first_upload]
    assert fetch(host, share.bucket, "app.eif", tmp_path) == data


def test_list_objects_reads_every_page(
    share: Share, host: S3Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "f"
    write(source, 10)
    for i in range(5):
        host.put_object(share.bucket, f"o/{i}", source, kms_key=share.key_arn)
    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 2)
    assert [o.name for o in host.list_objects(share.bucket, "o/")] == [f"o/{i}" for i in range(5)]


def test_missing_things_are_not_found(share: Share, host: S3Storage, tmp_path: Path) -> None:
    sink = (tmp_path / "out").open("wb")
    with pytest.raises(NotFoundError) as excinfo:
        host.get_object(share.bucket, "nothing-here", sink)
    assert "nothing-here" in excinfo.value.message and "NoSuchKey" in excinfo.value.message
    with pytest.raises(NotFoundError):
        host.get_object("strongroom-no-such-bucket", "x", sink)
    with pytest.raises(NotFoundError):
        host.show_share(new_vendor())
    with pytest.raises(NotFoundError):
        host.delete_share(new_vendor(), purge=True)
    with pytest.raises(NotFoundError):
        host.put_object(share.bucket, "x", tmp_path / "missing", kms_key=None)


# --- revoke, restore, delete ------------------------------------------------------


def test_revoke_removes_exactly_the_vendor_statement_and_restore_puts_it_back(
    share: Share, host: S3Storage, vendor: S3Storage, aws_profiles: AwsProfiles, tmp_path: Path
) -> None:
    names = names_of(share, aws_profiles)
    source = tmp_path / "app.sealed"
    data = write(source, 100)
    vendor.put_object(share.bucket, "app.sealed", source, kms_key=share.key_arn)
    api = raw(aws_profiles, "s3")

    def stored() -> dict[str, Any]:
        policy: dict[str, Any] = json.loads(api.get_bucket_policy(Bucket=share.bucket)["Policy"])
        return policy

    revoked = host.revoke_share(share.vendor)
    assert revoked.access == "revoked"
    policy = stored()
    full = policies.bucket_policy(names, aws_profiles.vendor_account)
    assert policy == policies.without_vendor_access(full)
    assert [s["Sid"] for s in full["Statement"] if s not in policy["Statement"]] == [
        policies.VENDOR_ACCESS_SID
    ]
    assert [o.name for o in host.list_objects(share.bucket)] == ["app.sealed"]
    assert fetch(host, share.bucket, "app.sealed", tmp_path) == data
    assert host.revoke_share(share.vendor).access == "revoked"  # again: nothing changes
    assert stored() == policy

    # moto grants any account everything on any bucket, so it does not refuse the
    # vendor here; the stored policy does, as S3 decides (Strongroom's evaluator):
    put = access.s3_request(
        "s3:PutObject",
        share.bucket,
        access.Caller(
            aws_profiles.vendor_account, f"arn:aws:iam::{aws_profiles.vendor_account}:root"
        ),
        key="app2.sealed",
        encryption="aws:kms",
        acl=policies.VENDOR_ACL,
    )
    assert not access.decide(policy, aws_profiles.host_account, put).allowed

    restored = host.restore_share(share.vendor)
    assert restored.access == "open" and restored == share
    assert stored() == full
    assert access.decide(stored(), aws_profiles.host_account, put).allowed
    vendor.put_object(share.bucket, "app2.sealed", source, kms_key=share.key_arn)
    assert {s.access for s in host.list_shares() if s.vendor == share.vendor} == {"open"}


def test_delete_refuses_a_share_holding_versions_unless_purged(
    share: Share, host: S3Storage, vendor: S3Storage, aws_profiles: AwsProfiles, tmp_path: Path
) -> None:
    names = names_of(share, aws_profiles)
    source = tmp_path / "app.sealed"
    write(source, 10)
    vendor.put_object(share.bucket, "app.sealed", source, kms_key=share.key_arn)
    write(source, 20)
    vendor.put_object(share.bucket, "app.sealed", source, kms_key=share.key_arn)
    api, kms = raw(aws_profiles, "s3"), raw(aws_profiles, "kms")
    api.delete_object(Bucket=share.bucket, Key="app.sealed")  # a delete marker over 2 versions
    assert host.list_objects(share.bucket) == []

    with pytest.raises(UsageError) as excinfo:
        host.delete_share(share.vendor, purge=False)
    assert "3 object version(s)" in excinfo.value.message and "--purge" in excinfo.value.hint
    assert api.head_bucket(Bucket=share.bucket)  # still there, versions and all
    versions = api.list_object_versions(Bucket=share.bucket)
    assert (len(versions["Versions"]), len(versions["DeleteMarkers"])) == (2, 1)

    host.delete_share(share.vendor, purge=True)
    buckets = {b["Name"] for b in api.list_buckets()["Buckets"]}
    assert names.bucket not in buckets and names.log_bucket not in buckets
    assert names.key_alias not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    assert kms.describe_key(KeyId=share.key_arn)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert share.vendor not in {s.vendor for s in host.list_shares()}

    # the vendor's share can be made anew
    again = host.create_share(names, aws_profiles.vendor_account)
    assert again.key_arn != share.key_arn


def test_delete_of_an_empty_share_needs_no_purge(share: Share, host: S3Storage) -> None:
    host.delete_share(share.vendor, purge=False)
    with pytest.raises(NotFoundError):
        host.show_share(share.vendor)


# --- errors at the edge ---------------------------------------------------------------


def test_an_unreachable_endpoint_is_unavailable_quickly(
    aws_profiles: AwsProfiles, tmp_path: Path
) -> None:
    closed = moto_s3._free_port()  # nothing listens there
    storage = S3Storage.open(
        region=None,
        profile="host",
        endpoint_url=f"http://127.0.0.1:{closed}",
        state_dir=tmp_path / "state",
    )
    started = time.monotonic()
    with pytest.raises(UnavailableError) as excinfo:
        storage.list_shares()
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{closed}" in excinfo.value.message and excinfo.value.hint


@pytest.fixture(scope="module")
def checking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A moto server that checks signatures and IAM; yields it and a user's key pair.

    The user is made by the two requests moto lets through unchecked; it has no
    IAM policy, so moto denies it everything.
    """
    server = moto_s3.start(
        tmp_path_factory.mktemp("moto-auth") / "moto.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "2"}
    )
    try:
        iam = boto3.session.Session().client(
            "iam",
            region_name="eu-west-1",
            endpoint_url=server.endpoint,
            aws_access_key_id="AKIASETUP00000000000",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        yield server.endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.stop()


def storage_with_keys(
    endpoint: str, access_key: str, secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> S3Storage:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    return S3Storage.open(
        region="eu-west-1", profile=None, endpoint_url=endpoint, state_dir=tmp_path / "state"
    )


@pytest.mark.parametrize("which", ["unknown key", "wrong secret"])
def test_refused_credentials_are_a_credential_error(
    checking_server: tuple[str, str, str],
    aws_profiles: AwsProfiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
) -> None:
    endpoint, key_id, secret = checking_server
    if which == "unknown key":
        key_id = "AKIANOTISSUED0000000"
    else:
        secret = "not-the-secret"
    storage = storage_with_keys(endpoint, key_id, secret, tmp_path, monkeypatch)
    with pytest.raises(CredentialError) as excinfo:
        storage.list_shares()
    code = "InvalidAccessKeyId" if which == "unknown key" else "SignatureDoesNotMatch"
    assert code in excinfo.value.message and "ListBuckets" in excinfo.value.message
    assert secret not in excinfo.value.diagnostics()
    source = tmp_path / "f"
    write(source, 10)
    with pytest.raises(CredentialError):
        storage.put_object("some-share", "f", source, kms_key=None)


def test_a_denied_request_names_the_operation_and_bucket(
    checking_server: tuple[str, str, str],
    aws_profiles: AwsProfiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = storage_with_keys(*checking_server, tmp_path, monkeypatch)
    source = tmp_path / "f"
    write(source, 10)
    with pytest.raises(AccessDeniedError) as excinfo:
        storage.put_object("acme-code-bucket", "apps/f", source, kms_key=None)
    assert type(excinfo.value) is AccessDeniedError
    assert "PutObject" in excinfo.value.message
    assert "s3://acme-code-bucket/apps/f" in excinfo.value.message
    assert "share show" in excinfo.value.hint


def test_no_credentials_at_all_is_a_credential_error(
    aws_profiles: AwsProfiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    storage = S3Storage.open(
        region=None, profile="host", endpoint_url=aws_profiles.endpoint, state_dir=tmp_path
    )
    with pytest.raises(CredentialError) as excinfo:
        storage.list_shares()
    assert "no AWS credentials" in excinfo.value.message


def test_an_unknown_profile_is_one_line_with_a_hint(
    aws_profiles: AwsProfiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError) as given:
        S3Storage.open(region=None, profile="nope", endpoint_url=None, state_dir=tmp_path)
    assert "'nope'" in given.value.message and "aws configure" in given.value.hint
    monkeypatch.setenv("AWS_PROFILE", "stale")
    with pytest.raises(ConfigError) as chained:
        S3Storage.open(region=None, profile=None, endpoint_url=None, state_dir=tmp_path)
    assert "AWS_PROFILE" in chained.value.message and "unset AWS_PROFILE" in chained.value.hint
    for error in (given.value, chained.value):
        assert "\n" not in error.message
