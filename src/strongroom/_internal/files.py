"""Small file helpers that keep the workspace consistent.

- Writes are atomic: a temporary file in the same directory, fsync, rename. A
  reader sees the old file or the new one, never half of either.
- Secret files are created 0600 from the start (never chmod-ed after the data
  is already on disk).
- Writers that read-modify-write take an exclusive ``flock`` on a lock file so
  that concurrent processes never lose each other's updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def atomic_write(path: Path, data: bytes, *, mode: int = PUBLIC_MODE) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    import tempfile  # ~4 ms (shutil, random) that commands which only read do not pay

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, value: Any, *, mode: int = PUBLIC_MODE) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), mode=mode)


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file: mode 0600, atomically."""
    atomic_write(path, data, mode=SECRET_MODE)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` for the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, SECRET_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
