"""Helpers shared by the sealing tests (the fake key service is in conftest.py)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from strongroom.keys.base import KeyService
from strongroom.sealing import read_header
from strongroom.sealing.format import SealedHeader
from strongroom.sealing.stream import ChunkReader, derive_payload_key

CONTEXT = {"vendor": "acme", "app": "demo", "app_version": "1.0"}
#: Small chunks make every test cross many chunk boundaries.
CHUNK = 64

Snapshot = dict[str, tuple[str, bytes | str, bool]]


def payload_of(package: Path, kms: KeyService) -> bytes:
    """The decrypted payload (the tar) of a v1 package."""
    with package.open("rb") as stream:
        header = read_header(stream)
        assert isinstance(header, SealedHeader)
        data_key = kms.decrypt(
            header.encrypted_data_key,
            key_id=header.key_id,
            encryption_context=header.encryption_context,
        ).plaintext
        assert data_key is not None
        reader = ChunkReader(
            stream,
            derive_payload_key(data_key, header.salt),
            header.nonce_prefix,
            header.aad,
            header.chunk_size,
        )
        return b"".join(iter(lambda: reader.read(1 << 16), b""))


def leftovers(directory: Path) -> list[str]:
    """Temporary files or directories that seal/unseal left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


class Trickle(io.RawIOBase):
    """A non-seekable stream that returns at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root``: kind, content or link target, owner-executable."""
    entries: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entries[rel] = ("link", os.readlink(path), False)
            elif stat.S_ISDIR(mode):
                entries[rel] = ("dir", b"", False)
            else:
                entries[rel] = ("file", path.read_bytes(), bool(mode & stat.S_IXUSR))
    return entries
