"""The local backend: a directory per share under the workspace's ``storage/``.

Layout, one directory per share, named by its bucket name::

    storage/
      acme-code-bucket-123456789012-us-east-1/
        share.json      vendor, accounts, region, the bucket policy as stored, created
        .lock           held while share.json is rewritten (revoke, restore)
        objects/        the objects, by name ('/' in a name is a subdirectory)

The backend is opened for one :class:`~strongroom.storage.access.Caller` (a
workspace identity), and **every** request, the host admin's included, is
decided by :func:`~strongroom.storage.access.decide` against the policy in
``share.json``, with the headers the request carries (``put_object`` sends
``x-amz-server-side-encryption: aws:kms`` and ``x-amz-acl:
bucket-owner-full-control``, as the S3 backend does; the transport counts as
TLS). So after ``revoke`` the vendor's put is refused here as S3 refuses it,
and the vendor can never read or list a share: the policy grants it
``PutObject`` only.

Invariants:

- Nothing half-written is an object: a put writes ``~NAME.RANDOM.part`` in
  the object's directory (``~`` is a character no object name may hold, so a
  temporary is never listed or read) and renames it into place once complete
  and synced. An interrupted put leaves no object (a ``kill -9`` may leave a
  temporary, which nothing lists and ``delete --purge`` removes).
- Object names are checked with :func:`~strongroom.storage.base.check_object_name`
  and resolved one directory at a time with ``O_NOFOLLOW`` from the share's
  own directory: no name, and no symlink planted in the share, leads outside it.
- ``share.json`` is written atomically; a share being deleted is first renamed
  to a name no bucket can have, so a half-deleted share is never listed.

What it is not: there is no server-side encryption (``key_arn`` is None) —
the workspace's files are the host's, and sealed apps are encrypted already —
and no versioning (a put replaces the object). Like the rest of the local
target it is no security boundary against someone with the workspace's
files: the policy binds the CLI's callers, not root.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from strongroom._internal.files import atomic_write, locked
from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PathEscapeError,
    StrongroomError,
    UsageError,
)
from strongroom.storage import access, policies
from strongroom.storage.base import (
    BUCKET_PATTERN,
    Progress,
    Share,
    ShareDetails,
    ShareNames,
    StoredObject,
    check_account,
    check_object_name,
    check_vendor,
)

SHARE_FILE = "share.json"
OBJECTS_DIR = "objects"
LOCK_FILE = ".lock"
SHARE_FORMAT: Literal["strongroom-local-share/1"] = "strongroom-local-share/1"
#: share.json holds a bucket policy (at most 32 KiB) and a few names.
MAX_SHARE_FILE = 64 * 1024
#: Bytes copied per read and write of an object.
COPY_CHUNK = 1024 * 1024
#: Starts every temporary's name: a character object names may not hold.
TEMP_MARK = "~"
OBJECT_MODE = 0o600
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

NO_ENCRYPTION = (
    "none: the local backend has no server-side encryption (the workspace's files are the "
    "host's, and sealed apps are encrypted already)"
)


class ShareRecord(BaseModel):
    """``share.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["strongroom-local-share/1"]
    vendor: str = Field(max_length=20)
    vendor_account: str = Field(pattern=r"^\d{12}$")
    host_account: str = Field(pattern=r"^\d{12}$")
    region: str = Field(max_length=64)
    bucket: str = Field(max_length=63)
    bucket_policy: dict[str, Any]
    created: datetime

    @property
    def names(self) -> ShareNames:
        return ShareNames(self.vendor, self.host_account, self.region)


class LocalStorage:
    """Shares as directories under ``root``, opened for ``caller`` (see the module docstring)."""

    backend = "local"

    def __init__(self, root: Path, caller: access.Caller, *, region: str) -> None:
        self.root = root
        self.caller = caller
        self.region = region

    def caller_account(self) -> str:
        return self.caller.account_id

    def names(self, vendor: str) -> ShareNames:
        """The names of ``vendor``'s share in the caller's account and region."""
        return ShareNames(check_vendor(vendor), self.caller.account_id, self.region)

    def known_shares(self) -> list[ShareRecord]:
        """Every share in the workspace, read from its record.

        Naming a share (``--share acme``), not a request: the vendor may not
        list shares, but it is in the same workspace and may name one.
        """
        return [self._read_dir(directory) for directory in self._share_dirs()]

    # --- the host admin ---------------------------------------------------

    def create_share(self, names: ShareNames, vendor_account: str) -> Share:
        check_vendor(names.vendor)
        check_account(vendor_account, what="vendor account")
        if names.host_account != self.caller.account_id:
            raise AccessDeniedError(
                f"cannot create {names.bucket}: it would belong to account "
                f"{names.host_account}, and the caller is {self.caller.principal_arn}",
                hint="a share belongs to the account that creates it",
            )
        directory = self._share_dir(names.bucket)
        if directory.exists() or directory.is_symlink():
            raise AlreadyExistsError(
                f"the share {names.bucket} already exists",
                hint=f"see `strongroom share show {names.vendor}`",
            )
        record = ShareRecord(
            format=SHARE_FORMAT,
            vendor=names.vendor,
            vendor_account=vendor_account,
            host_account=names.host_account,
            region=names.region,
            bucket=names.bucket,
            bucket_policy=policies.bucket_policy(names, vendor_account),
            created=datetime.now(UTC),
        )
        # Built beside the storage root and renamed in whole: a share is complete or absent.
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        building = self.root / f"{TEMP_MARK}new-{names.bucket}.{secrets.token_hex(4)}"
        try:
            building.mkdir(mode=DIR_MODE)
            (building / OBJECTS_DIR).mkdir(mode=DIR_MODE)
            _write_record(building, record)
            os.rename(building, directory)
        except OSError as e:
            _remove_tree(building)
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyExistsError(f"the share {names.bucket} already exists") from e
            raise _os_error(f"cannot create the share {names.bucket}", e) from e
        return self._share(record)

    def list_shares(self) -> list[Share]:
        """The caller's account's shares (as S3's ListBuckets lists the caller's buckets)."""
        shares = []
        for directory in self._share_dirs():
            record = self._read_dir(directory)
            if record.host_account == self.caller.account_id:
                shares.append(self._share(record))
        return sorted(shares, key=lambda s: s.vendor)

    def show_share(self, vendor: str) -> ShareDetails:
        record = self._read(self.names(vendor).bucket, vendor=vendor)
        self._require(record, "s3:GetBucketPolicy")
        objects = self._list(record, "")
        settings: dict[str, Any] = {
            "backend": "local",
            "directory": str(self._share_dir(record.bucket)),
            "region": record.region,
            "created": record.created.isoformat(timespec="seconds"),
            "server-side encryption": NO_ENCRYPTION,
            "versioning": "none: a put replaces the object",
        }
        return ShareDetails(self._share(record), record.bucket_policy, None, settings, objects)

    def revoke_share(self, vendor: str) -> Share:
        return self._edit_policy(vendor, lambda r: policies.without_vendor_access(r.bucket_policy))

    def restore_share(self, vendor: str) -> Share:
        return self._edit_policy(
            vendor,
            lambda r: policies.with_vendor_access(r.bucket_policy, r.names, r.vendor_account),
        )

    def delete_share(self, vendor: str, *, purge: bool) -> None:
        record = self._read(self.names(vendor).bucket, vendor=vendor)
        self._require(record, "s3:DeleteBucket")
        objects = self._list(record, "")
        if objects and not purge:
            raise UsageError(
                f"the share {record.bucket} holds {len(objects)} object(s): it is not deleted",
                hint=f"`strongroom share delete {vendor} --purge` deletes them with it",
            )
        for found in objects:
            self._require(record, "s3:DeleteObject", key=found.name)
        directory = self._share_dir(record.bucket)
        doomed = self.root / f"{TEMP_MARK}deleting-{record.bucket}.{secrets.token_hex(4)}"
        try:
            os.rename(directory, doomed)
        except OSError as e:
            raise _os_error(f"cannot delete the share {record.bucket}", e) from e
        _remove_tree(doomed)

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
        """Copy ``source`` in as ``name``: a temporary beside it, renamed once complete."""
        check_object_name(name)
        if kms_key is not None:
            raise UsageError(
                "the local storage backend has no server-side encryption: it takes no KMS key",
                hint="leave out --kms-key (it is for the s3 backend)",
            )
        record = self._read(bucket)
        self._require(
            record,
            "s3:PutObject",
            key=name,
            encryption=policies.SSE_ALGORITHM,
            acl=policies.VENDOR_ACL,
        )
        *parents, leaf = name.split("/")
        try:
            source_file = source.open("rb")
        except OSError as e:
            raise _os_error(f"cannot read {source}", e) from e
        with source_file, self._objects_dir(record, parents, create=True) as dir_fd:
            temp = f"{TEMP_MARK}{leaf}.{secrets.token_hex(6)}.part"
            try:
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    OBJECT_MODE,
                    dir_fd=dir_fd,
                )
            except OSError as e:
                raise _os_error(f"cannot write {bucket}/{name}", e) from e
            try:
                with os.fdopen(fd, "wb") as sink:
                    _copy(source_file, sink, progress)
                    sink.flush()
                    os.fsync(sink.fileno())
                os.rename(temp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
                if isinstance(e, IsADirectoryError):
                    raise InvalidInputError(
                        f"cannot put {bucket}/{name}: objects' names go below it ({name}/...)",
                        hint="choose another object name (e.g. with --prefix)",
                    ) from e
                if isinstance(e, OSError):
                    raise _os_error(f"cannot write {bucket}/{name}", e) from e
                raise

    def get_object(
        self, bucket: str, name: str, sink: BinaryIO, *, progress: Progress | None = None
    ) -> int:
        check_object_name(name)
        record = self._read(bucket)
        self._require(record, "s3:GetObject", key=name)
        *parents, leaf = name.split("/")
        try:
            with self._objects_dir(record, parents, create=False) as dir_fd:
                fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except (NotFoundError, FileNotFoundError, NotADirectoryError) as e:
            raise NotFoundError(f"no object {name} in the share {bucket}") from e
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathEscapeError(f"{bucket}/{name} is a symlink: not an object") from e
            raise _os_error(f"cannot read {bucket}/{name}", e) from e
        with os.fdopen(fd, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise NotFoundError(f"no object {name} in the share {bucket} (a directory)")
            try:
                return _copy(source, sink, progress)
            except OSError as e:
                raise _os_error(f"cannot read {bucket}/{name}", e) from e

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        record = self._read(bucket)
        return list(self._list(record, prefix))

    # --- internals --------------------------------------------------------

    def _require(
        self,
        record: ShareRecord,
        action: str,
        *,
        key: str | None = None,
        encryption: str | None = None,
        acl: str | None = None,
    ) -> None:
        """Refuse the request unless the share's bucket policy allows it (see :mod:`.access`)."""
        request = access.s3_request(
            action,
            record.bucket,
            self.caller,
            key=key,
            encryption=encryption,
            acl=acl,
            secure_transport=True,
        )
        decision = access.decide(record.bucket_policy, record.host_account, request)
        if decision.allowed:
            return
        target = record.bucket if key is None else f"{record.bucket}/{key}"
        vendor = self.caller.account_id == record.vendor_account
        if (
            vendor
            and action == "s3:PutObject"
            and not policies.has_vendor_access(record.bucket_policy)
        ):
            hint = (
                f"the share's bucket policy has no {policies.VENDOR_ACCESS_SID} statement: the "
                f"host revoked this vendor's access (`strongroom share restore {record.vendor}` "
                "gives it back)"
            )
        elif vendor:
            hint = "the vendor may only put objects into a share; it may not read or list it"
        else:
            hint = (
                "the share's bucket policy decides; the host sees it with `strongroom share show`"
            )
        raise AccessDeniedError(f"{action} on {target} denied: {decision.reason}", hint=hint)

    def _list(self, record: ShareRecord, prefix: str) -> tuple[StoredObject, ...]:
        self._require(record, "s3:ListBucket")
        found: list[StoredObject] = []
        try:
            with self._objects_dir(record, [], create=False) as top:
                for name, st in _walk(top, ""):
                    if name.startswith(prefix):
                        modified = datetime.fromtimestamp(st.st_mtime, UTC)
                        found.append(StoredObject(name, st.st_size, modified))
        except OSError as e:
            raise _os_error(f"cannot list the share {record.bucket}", e) from e
        return tuple(sorted(found, key=lambda o: o.name))

    def _edit_policy(self, vendor: str, edit: Callable[[ShareRecord], dict[str, Any]]) -> Share:
        bucket = self.names(vendor).bucket
        directory = self._share_dir(bucket)
        record = self._read(bucket, vendor=vendor)
        self._require(record, "s3:PutBucketPolicy")
        try:
            with locked(directory / LOCK_FILE):
                record = self._read(bucket, vendor=vendor)
                updated = record.model_copy(update={"bucket_policy": edit(record)})
                _write_record(directory, updated)
        except OSError as e:
            raise _os_error(f"cannot update the policy of {bucket}", e) from e
        return self._share(updated)

    def _share(self, record: ShareRecord) -> Share:
        return Share(
            vendor=record.vendor,
            vendor_account=record.vendor_account,
            bucket=record.bucket,
            location=str(self._share_dir(record.bucket)),
            key_arn=None,
            key_alias=None,
            access="open" if policies.has_vendor_access(record.bucket_policy) else "revoked",
            backend=self.backend,
        )

    def _share_dir(self, bucket: str) -> Path:
        if not BUCKET_PATTERN.fullmatch(bucket):
            raise InvalidInputError(
                f"{bucket!r} is not a bucket name",
                hint="bucket names are 3-63 lower-case letters, digits, dots and hyphens",
            )
        return self.root / bucket

    def _share_dirs(self) -> list[Path]:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise _os_error(f"cannot list {self.root}", e) from e
        return [
            entry
            for entry in entries
            if BUCKET_PATTERN.fullmatch(entry.name)
            and not entry.is_symlink()
            and (entry / SHARE_FILE).is_file()
        ]

    def _read(self, bucket: str, *, vendor: str | None = None) -> ShareRecord:
        directory = self._share_dir(bucket)
        if directory.is_symlink() or not (directory / SHARE_FILE).is_file():
            if vendor is not None:
                raise NotFoundError(
                    f"no share for vendor {vendor!r} in account {self.caller.account_id} "
                    f"({self.region})",
                    hint="see `strongroom share list`; a share belongs to the account that "
                    "created it (the host's)",
                )
            raise NotFoundError(
                f"no share {bucket} in this workspace",
                hint="name a bucket or vendor that `strongroom share list` shows",
            )
        return self._read_dir(directory)

    def _read_dir(self, directory: Path) -> ShareRecord:
        path = directory / SHARE_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_SHARE_FILE + 1)
        except OSError as e:
            raise _os_error(f"cannot read {path}", e) from e
        if len(raw) > MAX_SHARE_FILE:
            raise InvalidInputError(f"{path} is larger than {MAX_SHARE_FILE} bytes")
        try:
            record = ShareRecord.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise InvalidInputError(
                f"{path} is not a valid share record: {where}: {first['msg']}",
                hint="restore the file, or delete the share's directory",
            ) from None
        if record.bucket != directory.name or record.bucket != record.names.bucket:
            raise InvalidInputError(
                f"{path} names the bucket {record.bucket}, not {directory.name}",
                hint="restore the file, or delete the share's directory",
            )
        return record

    @contextlib.contextmanager
    def _objects_dir(
        self, record: ShareRecord, parents: list[str], *, create: bool
    ) -> Iterator[int]:
        """A descriptor of the share's ``objects/PARENTS...`` directory, symlinks refused."""
        with contextlib.ExitStack() as stack:
            try:
                # the storage root is the workspace's own (it may be a link to another
                # disk); from the share's directory down, nothing is followed
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                stack.callback(os.close, fd)
                for depth, segment in enumerate((record.bucket, OBJECTS_DIR, *parents)):
                    if create and depth >= 2:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(segment, DIR_MODE, dir_fd=fd)
                    fd = os.open(segment, _DIR_FLAGS, dir_fd=fd)
                    stack.callback(os.close, fd)
            except FileNotFoundError as e:
                raise NotFoundError(f"no such directory in the share {record.bucket}") from e
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PathEscapeError(
                        f"{'/'.join(parents) or OBJECTS_DIR} in the share {record.bucket} is "
                        "not a directory of the share (a symlink or a file)",
                        hint="object names may not go through another object or a symlink",
                    ) from e
                raise _os_error(f"cannot open the share {record.bucket}", e) from e
            yield fd


def _write_record(directory: Path, record: ShareRecord) -> None:
    data = json.dumps(record.model_dump(mode="json"), indent=2) + "\n"
    atomic_write(directory / SHARE_FILE, data.encode(), mode=0o600)


def _walk(dir_fd: int, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    """(name, stat) of every object below ``dir_fd``: regular files with valid names only."""
    for entry in sorted(os.listdir(dir_fd)):
        name = f"{prefix}{entry}"
        try:
            check_object_name(name)
        except InvalidInputError:
            continue  # a temporary (~...), or nothing a put could have made
        st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            yield name, st
        elif stat.S_ISDIR(st.st_mode):
            child = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                yield from _walk(child, f"{name}/")
            finally:
                os.close(child)


def _copy(source: BinaryIO, sink: BinaryIO, progress: Progress | None) -> int:
    done = 0
    while chunk := source.read(COPY_CHUNK):
        sink.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return done


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _os_error(what: str, e: OSError) -> StrongroomError:
    if e.errno == errno.ENOSPC:
        return StrongroomError(f"{what}: no space left on the device", hint="free some space")
    return StrongroomError(f"{what}: {e.strerror or e}")
