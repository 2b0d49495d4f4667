"""What ``run`` uploaded to which enclave, so a later run of the same package skips the upload
and both SHA-256 passes.

``strongroom run app.sealed`` must send the enclave the package the host
names. Checking that it already has it costs a SHA-256 of the local file and
one of the enclave's copy, each ~1.5 s per GiB: for a large model, more than
the run. So after an upload (or a check that hashed both sides) the client
records the local file's identity (device, inode, size, mtime in ns) and the
enclave copy's size and mtime, per enclave *instance* (its enclave ID changes
at every start). A later run whose local file and enclave copy both still
match the record sends nothing and hashes nothing; any difference (the file
was rewritten, the enclave restarted, something in the enclave touched its
copy) falls back to hashing both.

This is a convenience for the host, not a security check: the enclave never
trusts the package for its identity (it verifies the header, the vendor's pins
and every chunk's tag). At worst a stale record makes a run use the package
the enclave already holds instead of the host's newer file — which the host
could do anyway by naming that path. The record lives in the workspace
(``run/uploads.json``, 0600) and holds no secret.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from strongroom._internal.files import atomic_write, locked

#: Records kept; the oldest go first (one per enclave instance and package path).
MAX_RECORDS = 256


@dataclass(frozen=True)
class Upload:
    """A local file and the enclave's copy of it, as they were when known to be the same."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    remote_size: int
    remote_mtime: float

    @classmethod
    def of(cls, local: os.stat_result, remote_size: int, remote_mtime: float) -> Upload:
        return cls(
            local.st_dev, local.st_ino, local.st_size, local.st_mtime_ns, remote_size, remote_mtime
        )


class Uploads:
    """The record file of one workspace."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, enclave_id: str, remote: str) -> Upload | None:
        raw = self._read().get(_key(enclave_id, remote))
        try:
            return Upload(**raw) if isinstance(raw, dict) else None
        except TypeError:
            return None  # an older or damaged record: as if none

    def put(self, enclave_id: str, remote: str, upload: Upload) -> None:
        with locked(self.path.with_name(self.path.name + ".lock")):
            records = self._read()
            records.pop(_key(enclave_id, remote), None)
            records[_key(enclave_id, remote)] = asdict(upload)
            kept = dict(list(records.items())[-MAX_RECORDS:])
            atomic_write(self.path, json.dumps(kept).encode(), mode=0o600)

    def _read(self) -> dict[str, object]:
        try:
            records = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return records if isinstance(records, dict) else {}


def _key(enclave_id: str, remote: str) -> str:
    return f"{enclave_id} {remote}"
