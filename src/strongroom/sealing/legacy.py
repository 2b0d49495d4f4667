"""Legacy packages: the envelope of the AWS Nitro Enclaves sample.

Layout (no magic, no version)::

    4 bytes   N, big-endian
    N bytes   the KMS CiphertextBlob of the data key
    the rest  a Fernet token (base64url text) whose plaintext is a zip of the app directory

The Fernet key is the base64url encoding of the 32-byte KMS data key
(:func:`legacy_fernet_key`). That is an assumption about the sample, which
base64-encodes the plaintext key to make a Fernet key; the standard and the
URL-safe alphabets give the same key bytes once Fernet decodes them, so either
spelling in the sample opens here.

Invariants:

- A legacy package is recognized by its shape: a blob length between 1 and
  :data:`MAX_LEGACY_BLOB` and a token that starts with ``gAAAAA`` (the Fernet
  version byte 0x80 and the top bytes of a timestamp before 2106).
- Fernet authenticates the whole token before decrypting any of it, so the
  package is read into memory: its size is bounded by
  :attr:`ExtractLimits.max_legacy_package_bytes` (2 GiB by default; expect
  about 6 times the package size in RAM). Nothing is extracted before
  authentication.
- Zip entries go through the same :class:`~.tree.SafeTree` rules as tar
  entries; zip symlinks and special files are refused.
"""

from __future__ import annotations

import base64
import io
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from strongroom.errors import InvalidInputError, TamperedError
from strongroom.sealing.format import NOT_A_PACKAGE_HINT, read_up_to
from strongroom.sealing.tree import (
    COPY_BUFFER_SIZE,
    RESEAL_HINT,
    ExtractLimits,
    SafeTree,
    unsafe_entry,
)

#: The largest CiphertextBlob KMS returns.
MAX_LEGACY_BLOB = 6144
#: How every Fernet token made before 2106 begins.
FERNET_TOKEN_HEAD = b"gAAAAA"
_LENGTH_SIZE = 4


@dataclass(frozen=True)
class LegacyHeader:
    """What precedes the Fernet token: the wrapped data key, nothing else."""

    encrypted_data_key: bytes = field(repr=False)
    #: Bytes before the token.
    size: int
    key_id: None = None
    encryption_context: dict[str, str] = field(default_factory=dict)
    version: int = 0
    payload_type: str = "zip"
    format: Literal["legacy-fernet-zip"] = "legacy-fernet-zip"

    # The sample's format has no manifest and no signature: such a package
    # runs with the safe defaults (the host names the entry, no env, no egress).
    @property
    def manifest(self) -> None:
        return None

    @property
    def signer(self) -> None:
        return None

    @property
    def signature(self) -> None:
        return None


def legacy_fernet_key(data_key: bytes) -> bytes:
    """The Fernet key the AWS sample derives from a KMS data key."""
    return base64.urlsafe_b64encode(data_key)


def looks_legacy(head: bytes) -> bool:
    """Whether the first bytes of a file could start a legacy package."""
    return len(head) >= _LENGTH_SIZE and 0 < int.from_bytes(head[:4], "big") <= MAX_LEGACY_BLOB


def read_legacy_header(stream: BinaryIO, *, name: str, head: bytes) -> LegacyHeader:
    """Parse the envelope; leaves ``stream`` just after :data:`FERNET_TOKEN_HEAD`."""
    blob_size = int.from_bytes(head[:4], "big")
    end = _LENGTH_SIZE + blob_size
    data = head + read_up_to(stream, end + len(FERNET_TOKEN_HEAD) - len(head))
    if data[end:] != FERNET_TOKEN_HEAD:
        raise InvalidInputError(
            f"{name} is not a Strongroom sealed package", hint=NOT_A_PACKAGE_HINT
        )
    return LegacyHeader(encrypted_data_key=data[_LENGTH_SIZE:end], size=end)


def open_legacy(
    stream: BinaryIO,
    header: LegacyHeader,
    data_key: bytes,
    tree: SafeTree,
    limits: ExtractLimits,
) -> int:
    """Authenticate, decrypt and extract a legacy package; returns its size in bytes."""
    budget = limits.max_legacy_package_bytes - header.size - len(FERNET_TOKEN_HEAD)
    parts = [FERNET_TOKEN_HEAD]
    size = 0
    while part := stream.read(COPY_BUFFER_SIZE):
        size += len(part)
        if size > budget:
            raise InvalidInputError(
                f"the legacy package is larger than {limits.max_legacy_package_bytes} bytes",
                hint="legacy packages are decrypted in memory; re-seal the application "
                "with `strongroom seal`, whose format streams",
            )
        parts.append(part)
    token = b"".join(parts)
    del parts
    from cryptography.fernet import Fernet, InvalidToken  # here: reading a header needs neither

    try:
        fernet = Fernet(legacy_fernet_key(data_key))
    except ValueError:
        raise InvalidInputError(
            f"the data key is {len(data_key)} bytes; legacy packages use 32-byte keys",
            hint="pass the plaintext data key KMS Decrypt returned",
        ) from None
    try:
        plaintext = fernet.decrypt(token)
    except InvalidToken:
        raise TamperedError(
            "the legacy package failed authentication: it is corrupted or truncated, "
            "or the data key does not belong to it",
            hint="obtain a fresh copy of the package from the vendor",
        ) from None
    del token
    _extract_zip(plaintext, tree)
    return header.size + len(FERNET_TOKEN_HEAD) + size


def _extract_zip(plaintext: bytes, tree: SafeTree) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(plaintext)) as archive:
            seen: set[str] = set()
            for info in archive.infolist():
                name = _normalize(info.filename)
                if name in seen:
                    raise unsafe_entry(name, "appears twice")
                seen.add(name)
                mode = info.external_attr >> 16
                if info.is_dir():
                    tree.add_directory(name, exist_ok=True)
                elif stat.S_IFMT(mode) in (0, stat.S_IFREG):
                    with archive.open(info) as source:
                        executable = bool(mode & stat.S_IXUSR)
                        tree.add_file(name, source, info.file_size, executable=executable)
                elif stat.S_ISLNK(mode):
                    raise unsafe_entry(name, "is a symlink (legacy packages hold none)")
                else:
                    raise unsafe_entry(name, "is a device file or a FIFO")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise InvalidInputError(
            f"the legacy package's zip archive is damaged: {exc}", hint=RESEAL_HINT
        ) from exc
    except (RuntimeError, zlib.error) as exc:
        # zipfile raises RuntimeError for encrypted entries.
        raise InvalidInputError(
            f"the legacy package's zip archive is unsupported: {exc}", hint=RESEAL_HINT
        ) from exc


def _normalize(filename: str) -> str:
    """Drop the ``./`` and ``//`` zip writers leave in names; keep everything else for checking."""
    if filename.startswith("/"):
        return filename
    return "/".join(part for part in filename.split("/") if part not in ("", "."))
