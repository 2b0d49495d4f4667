"""The storage interface, the names a share is made of, and what backends return.

A backend implements :class:`Storage`. The host admin's operations
(``create_share`` ... ``delete_share``) run with the host's credentials; the
object operations run with whoever's credentials the backend was opened with:
the vendor's for ``put_object`` (``publish``), the host's for ``get_object``
and ``list_objects`` (``fetch``). Whether a caller may do what it asks is the
share's bucket policy's decision, on S3 by S3 and locally by :mod:`.access`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from strongroom.errors import InvalidInputError, UsageError

#: A vendor's identifier, as the runbook's ``ThirdPartyIdentifier``: it becomes
#: part of the bucket's name, so it uses the characters bucket names allow.
VENDOR_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?", re.ASCII)
ACCOUNT_PATTERN = re.compile(r"\d{12}", re.ASCII)
#: S3 bucket names: 3-63 characters, lower-case letters, digits, dots and hyphens.
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
#: Object names: '/'-separated segments of these characters, no '.' or '..' segment.
_SEGMENT = re.compile(r"[A-Za-z0-9._+=@-]+", re.ASCII)
MAX_OBJECT_NAME = 1024
#: Where index documents live in a share (written by ``publish``, read by ``fetch``).
INDEX_PREFIX = "strongroom-index/"

Access = Literal["open", "revoked"]
#: Called with the number of bytes done so far.
Progress = Callable[[int], None]


def check_vendor(name: str) -> str:
    if not VENDOR_PATTERN.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a vendor identifier",
            hint="use 1-20 lower-case letters, digits or inner hyphens (it becomes part of "
            "the bucket's name, as the runbook's ThirdPartyIdentifier)",
        )
    return name


def check_account(account: str, *, what: str = "account") -> str:
    if not ACCOUNT_PATTERN.fullmatch(account):
        raise UsageError(
            f"{what} {account!r} is not an AWS account id", hint="give the 12-digit account id"
        )
    return account


def check_object_name(name: str) -> str:
    """Refuse an object name that is not a plain relative path (it names a file on fetch)."""
    segments = name.split("/")
    if (
        not name
        or len(name.encode()) > MAX_OBJECT_NAME
        or any(s in ("", ".", "..") or not _SEGMENT.fullmatch(s) for s in segments)
    ):
        raise InvalidInputError(
            f"{name!r} is not a valid object name",
            hint="use '/'-separated names of letters, digits and ._+=@- (no '..', no "
            "leading or doubled '/')",
        )
    return name


@dataclass(frozen=True)
class ShareNames:
    """The names of everything a share is made of, as the runbook's template names them."""

    vendor: str
    host_account: str
    region: str

    @property
    def bucket(self) -> str:
        return f"{self.vendor}-code-bucket-{self.host_account}-{self.region}"

    @property
    def log_bucket(self) -> str:
        return f"{self.vendor}-access-logs-{self.host_account}-{self.region}"

    @property
    def key_alias(self) -> str:
        return f"alias/{self.vendor}-bucket-key-alias"

    @property
    def bucket_arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}"

    @property
    def log_prefix(self) -> str:
        return "logs-third-party-bucket"


@dataclass(frozen=True)
class Share:
    """One vendor's share, as ``share list`` shows it."""

    vendor: str
    vendor_account: str
    bucket: str
    #: ``s3://BUCKET`` or the local directory.
    location: str
    #: The host key objects are encrypted with (SSE-KMS); None locally.
    key_arn: str | None
    key_alias: str | None
    access: Access
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "vendor_account": self.vendor_account,
            "bucket": self.bucket,
            "location": self.location,
            "key_arn": self.key_arn,
            "key_alias": self.key_alias,
            "access": self.access,
            "backend": self.backend,
        }


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    modified: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "modified": self.modified.isoformat()}


@dataclass(frozen=True)
class ShareDetails:
    """``share show``: the share, its policies as stored, and what it holds."""

    share: Share
    bucket_policy: dict[str, Any]
    key_policy: dict[str, Any] | None
    #: The bucket's other settings, by name (versioning, public access block, ...).
    settings: dict[str, Any]
    objects: tuple[StoredObject, ...]


class Storage(Protocol):
    """A storage backend, opened for one caller (see the module docstring)."""

    backend: str

    def caller_account(self) -> str:
        """The account whose credentials the backend was opened with (S3: STS says)."""
        ...

    def names(self, vendor: str) -> ShareNames:
        """The names ``vendor``'s share has in the caller's account and region.

        ``share create``, ``show``, ``revoke``... name a share by its vendor:
        the bucket is this share's, in the account and region the backend
        acts in (the host's, when the host admin runs them).
        """
        ...

    # --- the host admin ---------------------------------------------------

    def create_share(self, names: ShareNames, vendor_account: str) -> Share: ...

    def list_shares(self) -> list[Share]: ...

    def show_share(self, vendor: str) -> ShareDetails: ...

    def revoke_share(self, vendor: str) -> Share: ...

    def restore_share(self, vendor: str) -> Share: ...

    def delete_share(self, vendor: str, *, purge: bool) -> None: ...

    # --- objects ----------------------------------------------------------

    def put_object(
        self,
        bucket: str,
        name: str,
        source: Path,
        *,
        kms_key: str | None,
        progress: Progress | None = None,
    ) -> None:
        """Upload ``source`` as ``name``, with the headers the share's policy demands.

        Large files go up in parts and a rerun after a failure resumes where
        the last one stopped (the parts done are recorded on the caller's side:
        the vendor may not list them).
        """
        ...

    def get_object(
        self, bucket: str, name: str, sink: BinaryIO, *, progress: Progress | None = None
    ) -> int:
        """Write the object to ``sink``; return the number of bytes written."""
        ...

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]: ...
