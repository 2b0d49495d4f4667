"""Seal, inspect and open packages: the file-level operations over the format.

- :func:`seal` reads and validates the app's ``strongroom.toml`` (before it
  asks for anything), asks the key service for a data key bound to the
  encryption context, writes a v2 header holding the manifest (signed when
  given a vendor signing key), streams the deterministic tar of the app directory through the
  STREAM writer into a temporary file next to the output, and renames it into
  place only once it is complete and synced.
- :func:`unseal` asks the key service to unwrap the data key (with the key id
  and context from the header), extracts into a temporary directory next to
  the output, and renames it into place only after the final chunk
  authenticated. On any error nothing is left behind.
- :func:`open_package` is the enclave side: it is given the plaintext data
  key and an empty directory. It extracts *while* chunks authenticate, so a
  failure can come after some files were written; every byte written came
  from the sealer, but the tree is incomplete, and the caller must wipe the
  directory (``unseal`` does this by using a temporary one).
- :func:`inspect` and :func:`read_header` need no key.

Plaintext never reaches the disk on the sealing side, and neither the data
key nor plaintext appears in an error message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strongroom.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    StrongroomError,
    TamperedError,
    UsageError,
)
from strongroom.keys.base import KeyService
from strongroom.sealing.archive import extract_tar, write_tar
from strongroom.sealing.format import (
    DEFAULT_CHUNK_SIZE,
    NONCE_PREFIX_SIZE,
    NOT_A_PACKAGE_HINT,
    SALT_SIZE,
    build_header,
    check_chunk_size,
    encode_context,
)
from strongroom.sealing.header import Header, read_header
from strongroom.sealing.ignore import IgnoreRules
from strongroom.sealing.legacy import LegacyHeader, open_legacy
from strongroom.sealing.manifest import AppManifest
from strongroom.sealing.stream import (
    ChunkReader,
    ChunkWriter,
    Progress,
    ReadableInto,
    body_geometry,
    derive_payload_key,
)
from strongroom.sealing.tree import ExtractLimits, SafeTree

_DEFAULT_LIMITS = ExtractLimits()
_WRITE_HINT = "check the free space and permissions of the output directory"
_NO_PLAINTEXT_HINT = "call the key service without a Recipient: this side needs the plaintext key"


@dataclass(frozen=True)
class PackageInfo:
    """What a package says about itself; ``None`` where the format does not tell."""

    format: Literal["strongroom-v1", "strongroom-v2", "legacy-fernet-zip"]
    version: int
    key_id: str | None
    encryption_context: dict[str, str]
    chunk_size: int | None
    chunk_count: int | None
    payload_type: str
    header_size: int
    file_size: int
    payload_size: int | None
    encrypted_data_key: bytes = field(repr=False)
    created: datetime | None = None
    #: What the host may do; None: the defaults (v1, legacy, or no strongroom.toml).
    manifest: AppManifest | None = None
    #: Raw Ed25519 public key whose signature over the header verified; None: unsigned.
    signer: bytes | None = None


def inspect(path: Path) -> PackageInfo:
    """Describe the package at ``path`` without any key."""
    with _open_package_file(path) as stream:
        header = read_header(stream, name=str(path))
        file_size = os.fstat(stream.fileno()).st_size
    if isinstance(header, LegacyHeader):
        return _info(header, file_size=file_size, chunk_count=None, payload_size=None)
    geometry = body_geometry(file_size - header.size, header.chunk_size)
    if geometry is None:
        raise TamperedError(
            f"{path} is truncated or has extra bytes: its body of "
            f"{file_size - header.size} bytes cannot be a sequence of "
            f"{header.chunk_size}-byte chunks",
            hint="obtain a fresh copy of the package from the vendor",
        )
    chunk_count, payload_size = geometry
    return _info(header, file_size=file_size, chunk_count=chunk_count, payload_size=payload_size)


def _refuse_existing(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise AlreadyExistsError(
            f"{out} already exists: seal does not replace it",
            hint="choose another -o, or add --force to replace it",
        )


def _link_new(tmp: Path, out: Path) -> None:
    """Put the finished package at ``out`` only if nothing is there (``link`` fails if so)."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        _remove(tmp)
        _refuse_existing(out)
        raise
    _remove(tmp)


def seal(
    app_dir: Path,
    out: Path,
    keys: KeyService,
    key_id: str,
    *,
    context: Mapping[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    ignore: IgnoreRules | None = None,
    overwrite: bool = True,
) -> PackageInfo:
    """Seal ``app_dir`` into the package ``out`` under the KMS key ``key_id``.

    ``context`` is the encryption context (see ``CONTEXT_*`` for the usual
    keys); the key service binds the data key to it. The app's
    ``strongroom.toml``, if any, is validated and sealed in the header
    (:meth:`AppManifest.load`); ``signing_key`` signs the header.
    ``progress`` is called with the number of plaintext (tar) bytes sealed
    since its previous call. ``ignore`` says what stays out (by default
    :meth:`IgnoreRules.for_app`: ``.git``, caches, ``.env``, the app's
    ``.strongroomignore``) and records what it skipped. An existing ``out``
    is replaced atomically, or, without ``overwrite``, refused (even one
    that appears while sealing: the package is linked into place, never
    renamed over a file).
    """
    context = dict(context or {})
    if not app_dir.is_dir():
        raise UsageError(f"{app_dir} is not a directory", hint="pass the application directory")
    if not out.parent.is_dir():
        raise UsageError(
            f"cannot write {out}: {out.parent} is not a directory",
            hint="create the output directory first",
        )
    if out.resolve().is_relative_to(app_dir.resolve()):
        raise UsageError(
            f"the package {out} would be inside the directory it seals",
            hint="write the package outside the application directory",
        )
    if not overwrite:
        _refuse_existing(out)
    check_chunk_size(chunk_size)
    encode_context(context)  # refuse a bad context or manifest before asking the key service
    manifest = AppManifest.load(app_dir)
    ignore = IgnoreRules.for_app(app_dir) if ignore is None else ignore
    if manifest is not None:
        ignore.check_kept(manifest.entries)
    data_key = keys.generate_data_key(key_id, encryption_context=context or None)
    if data_key.plaintext is None:
        raise StrongroomError(
            "the key service returned no plaintext data key", hint=_NO_PLAINTEXT_HINT
        )
    header = build_header(
        key_id=data_key.key_id,
        encrypted_data_key=data_key.ciphertext_blob,
        encryption_context=context,
        chunk_size=chunk_size,
        salt=os.urandom(SALT_SIZE),
        nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
        created=int(time.time()),
        manifest=manifest,
        signing_key=signing_key,
    )
    payload_key = derive_payload_key(data_key.plaintext, header.salt)
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    except OSError as exc:
        raise StrongroomError(f"cannot write {out}: {exc.strerror}", hint=_WRITE_HINT) from exc
    try:
        with open(fd, "wb") as sink:
            sink.write(header.raw)
            writer = ChunkWriter(
                sink, payload_key, header.nonce_prefix, header.aad, chunk_size, progress
            )
            write_tar(app_dir, writer, _DEFAULT_LIMITS, ignore)
            writer.finish()
            sink.flush()
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        if overwrite:
            os.replace(tmp, out)
        else:
            _link_new(Path(tmp), out)
    except OSError as exc:
        _remove(Path(tmp))
        raise StrongroomError(f"cannot write {out}: {exc.strerror}", hint=_WRITE_HINT) from exc
    except BaseException:
        _remove(Path(tmp))
        raise
    return _info(
        header,
        file_size=header.size + writer.body_size,
        chunk_count=writer.chunk_count,
        payload_size=writer.payload_size,
    )


def unseal(
    path: Path,
    out_dir: Path,
    keys: KeyService,
    *,
    limits: ExtractLimits = _DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> PackageInfo:
    """Open the package at ``path`` into ``out_dir``, which must not exist or be empty.

    Errors of the key service (wrong key, wrong context, access denied)
    propagate unchanged. ``progress`` is as for :func:`open_package`.
    """
    if out_dir.is_symlink() or (out_dir.exists() and not _is_empty_dir(out_dir)):
        raise UsageError(
            f"{out_dir} already exists and is not an empty directory",
            hint="choose a new output directory",
        )
    if not out_dir.parent.is_dir():
        raise UsageError(
            f"cannot create {out_dir}: {out_dir.parent} is not a directory",
            hint="create the parent directory first",
        )
    with _open_package_file(path) as stream:
        header = read_header(stream, name=str(path))
        decrypted = keys.decrypt(
            header.encrypted_data_key,
            key_id=header.key_id,
            encryption_context=header.encryption_context or None,
        )
        if decrypted.plaintext is None:
            raise StrongroomError(
                "the key service returned no plaintext data key", hint=_NO_PLAINTEXT_HINT
            )
        try:
            tmp = Path(
                tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial")
            )
        except OSError as exc:
            raise StrongroomError(
                f"cannot create {out_dir}: {exc.strerror}", hint=_WRITE_HINT
            ) from exc
        try:
            info = open_package(
                stream, decrypted.plaintext, tmp, limits=limits, progress=progress, header=header
            )
            os.replace(tmp, out_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StrongroomError(
                f"cannot create {out_dir}: {exc.strerror}", hint=_WRITE_HINT
            ) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return info


def open_package(
    stream: BinaryIO,
    data_key: bytes,
    dest_dir: Path,
    *,
    limits: ExtractLimits = _DEFAULT_LIMITS,
    progress: Progress | None = None,
    header: Header | None = None,
) -> PackageInfo:
    """Decrypt and safely extract a package read from ``stream`` into ``dest_dir``.

    ``stream`` must also have ``readinto`` (every :mod:`io` stream does).
    ``dest_dir`` must exist and be empty. Pass ``header`` when it was already
    read from ``stream`` with :func:`read_header` (to call KMS Decrypt first).
    Entries are written as chunks authenticate: if this raises, ``dest_dir``
    may hold a partial tree and the caller must wipe it. ``progress`` is
    called with the number of plaintext bytes opened since its previous call
    (for a legacy package, once, with the bytes extracted).
    """
    if not dest_dir.is_dir() or not _is_empty_dir(dest_dir):
        raise UsageError(
            f"{dest_dir} must be an existing empty directory",
            hint="create a new, empty directory for the application",
        )
    if header is None:
        header = read_header(stream)
    if isinstance(header, LegacyHeader):
        with SafeTree(dest_dir, limits, create_parents=True) as tree:
            file_size = open_legacy(stream, header, data_key, tree, limits)
        if progress is not None:
            progress(tree.total_bytes)
        return _info(header, file_size=file_size, chunk_count=None, payload_size=None)
    payload_key = derive_payload_key(data_key, header.salt)
    # Every io stream (files, sockets' makefile(), BytesIO) has readinto.
    source = cast(ReadableInto, stream)
    reader = ChunkReader(
        source, payload_key, header.nonce_prefix, header.aad, header.chunk_size, progress
    )
    with SafeTree(dest_dir, limits, create_parents=False) as tree:
        extract_tar(reader, tree, limits)
    return _info(
        header,
        file_size=header.size + reader.body_size,
        chunk_count=reader.chunk_count,
        payload_size=reader.payload_size,
    )


def _info(
    header: Header, *, file_size: int, chunk_count: int | None, payload_size: int | None
) -> PackageInfo:
    if isinstance(header, LegacyHeader):
        chunk_size, created = None, None
    else:
        chunk_size = header.chunk_size
        created = datetime.fromtimestamp(header.created, UTC) if header.created else None
    return PackageInfo(
        format=header.format,
        version=header.version,
        key_id=header.key_id,
        encryption_context=dict(header.encryption_context),
        chunk_size=chunk_size,
        chunk_count=chunk_count,
        payload_type=header.payload_type,
        header_size=header.size,
        file_size=file_size,
        payload_size=payload_size,
        encrypted_data_key=header.encrypted_data_key,
        created=created,
        manifest=header.manifest,
        signer=header.signer,
    )


def _open_package_file(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # the caller's `with` closes it
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist", hint="check the package path") from None
    except IsADirectoryError:
        raise InvalidInputError(
            f"{path} is a directory, not a sealed package", hint=NOT_A_PACKAGE_HINT
        ) from None
    except OSError as exc:
        raise StrongroomError(
            f"cannot read {path}: {exc.strerror}", hint="check the file's permissions"
        ) from exc


def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
