"""What this host pulled from each enclave, so ``enclave stop`` can say what it would lose.

The shared folder lives in the enclave's memory: stopping the enclave destroys
``/output`` with it. Every successful ``pull`` records what it fetched -- the
remote path with the size and mtime the listing gave -- in the enclave's own
state directory (``run/enclaves/<name>/pulled.json``, 0600, in the 0700
directory the runtime keeps for that enclave). ``enclave stop`` lists
``/output`` (briefly: an enclave that does not answer is not waited for) and
warns about the files no pull fetched, or that changed since.

The record is keyed by the enclave's id, so an enclave started again under
the same name starts with nothing pulled. It is a convenience, not a
boundary: it holds shared-folder names the host already saw, and a missing or
damaged record only makes the warning name more files.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from strongroom._internal.files import SECRET_MODE, atomic_write_json, locked
from strongroom.enclave.base import EnclaveStatus
from strongroom.errors import StrongroomError
from strongroom.workspace import Workspace

LEDGER_FILE = "pulled.json"
#: The folder ``enclave stop`` checks: where apps write their results.
OUTPUT_DIR = "/output"
#: ``enclave stop`` waits at most this long for the enclaves to list ``/output``.
STOP_CHECK_TIMEOUT_S = 2.0
#: ... and looks at most at this many entries of it.
MAX_CHECKED = 10_000
#: Names the warning shows (the count says how many more there are).
NAMES_SHOWN = 3


@dataclass(frozen=True)
class PulledFile:
    """One file as it was listed when pulled."""

    path: str
    size: int
    mtime: float


def ledger_path(ws: Workspace, name: str) -> Path:
    """The record of enclave ``name``, in the state directory its runtime keeps."""
    from strongroom.enclave.sandbox import EnclavePaths

    return EnclavePaths.of(ws.run_dir, name).directory / LEDGER_FILE


def _load(path: Path, enclave_id: str) -> dict[str, PulledFile]:
    try:
        raw = json.loads(path.read_text())
        if raw.get("enclave_id") != enclave_id:
            return {}  # an earlier enclave of the same name: its folder is gone
        return {
            p: PulledFile(p, int(f["size"]), float(f["mtime"])) for p, f in raw["files"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def record(ws: Workspace, name: str, enclave_id: str, files: Iterable[PulledFile]) -> None:
    """Add ``files`` to what was pulled from enclave ``name`` (whose id is ``enclave_id``)."""
    path = ledger_path(ws, name)
    if not path.parent.is_dir():
        return  # no state directory: not an enclave this workspace started
    with locked(path.parent / f".{LEDGER_FILE}.lock"):
        known = _load(path, enclave_id)
        known.update((f.path, f) for f in files)
        files_json = {p: {"size": f.size, "mtime": f.mtime} for p, f in sorted(known.items())}
        atomic_write_json(path, {"enclave_id": enclave_id, "files": files_json}, mode=SECRET_MODE)


def unpulled(
    pulled: Mapping[str, PulledFile], listed: Iterable[tuple[str, int, float]]
) -> list[str]:
    """The listed files no pull fetched as they are now (new, or changed since)."""
    return [
        path
        for path, size, mtime in listed
        if (done := pulled.get(path)) is None or (done.size, done.mtime) != (size, mtime)
    ]


def _output_files(status: EnclaveStatus) -> list[tuple[str, int, float]]:
    """Every regular file below ``/output`` of a running enclave (bounded)."""
    from strongroom.client.enclave import EnclaveClient
    from strongroom.errors import NotFoundError
    from strongroom.transport.base import parse_address

    files: list[tuple[str, int, float]] = []
    with EnclaveClient(parse_address(status.addresses["control"]), name=status.name) as client:
        try:
            pending = [OUTPUT_DIR] if client.stat(OUTPUT_DIR).type == "dir" else []
        except NotFoundError:
            return []
        seen = 0
        while pending and seen < MAX_CHECKED:
            for entry in client.list(pending.pop()):
                seen += 1
                if entry.type == "dir":
                    pending.append(entry.path)
                elif entry.type == "file":
                    files.append((entry.path, entry.size, entry.mtime))
    return files


def check_before_stop(
    ws: Workspace, statuses: Sequence[EnclaveStatus], *, timeout: float = STOP_CHECK_TIMEOUT_S
) -> dict[str, list[str]]:
    """For each running enclave that answers within ``timeout``: its unpulled outputs.

    All enclaves are asked at once, each in a thread of its own; one that does
    not answer in time (wedged, out of memory) is skipped, never waited for,
    since the operator is stopping it anyway.
    """
    results: dict[str, list[str]] = {}

    def check(status: EnclaveStatus) -> None:
        try:
            listed = _output_files(status)
        except (StrongroomError, OSError, ValueError):  # a check that fails is skipped
            return
        pulled = _load(ledger_path(ws, status.name), status.enclave_id)
        results[status.name] = unpulled(pulled, listed)

    running = [s for s in statuses if s.state == "RUNNING" and "control" in s.addresses]
    threads = [threading.Thread(target=check, args=(s,), daemon=True) for s in running]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {name: paths for name, paths in dict(results).items() if paths}


def warning_line(name: str, paths: Sequence[str]) -> str:
    """The one line ``enclave stop`` prints for an enclave with unpulled outputs."""
    shown = ", ".join(p if p.isprintable() else repr(p) for p in paths[:NAMES_SHOWN])
    more = f" and {len(paths) - NAMES_SHOWN} more" if len(paths) > NAMES_SHOWN else ""
    return (
        f"enclave {name}: {len(paths)} file(s) in {OUTPUT_DIR} were never pulled "
        f"({shown}{more}) and are gone once it stops; to keep them, run "
        f"`strongroom pull --enclave {name} {OUTPUT_DIR} DIR` before stopping"
    )
