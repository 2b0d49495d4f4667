"""Records of the long-running services of a workspace (key service, enclaves, proxy).

Each running service writes ``run/<kind>/<name>.json`` with its pid, the start
time of that pid (from ``/proc/<pid>/stat``, so a recycled pid is never
mistaken for our process), its addresses and log path. ``status`` and ``stop``
read these records from any shell. A record whose process is gone is stale:
:func:`load` reports it as not alive, and callers remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom._internal.files import atomic_write_json


@dataclass(frozen=True)
class ServiceRecord:
    kind: str
    name: str
    pid: int
    pid_start: int  # process start time in clock ticks since boot, from /proc
    started_at: float  # wall clock, seconds since the epoch
    addresses: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def is_alive(self) -> bool:
        return process_start_time(self.pid) == self.pid_start


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses; skip past its ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished; it only waits to be reaped
        return None
    return int(fields[19])


def _path(run_dir: Path, kind: str, name: str) -> Path:
    return run_dir / kind / f"{name}.json"


def record(run_dir: Path, rec: ServiceRecord) -> None:
    (run_dir / rec.kind).mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(_path(run_dir, rec.kind, rec.name), rec.__dict__)


def record_self(
    run_dir: Path,
    kind: str,
    name: str,
    *,
    addresses: dict[str, str] | None = None,
    log: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ServiceRecord:
    pid = os.getpid()
    start = process_start_time(pid)
    assert start is not None
    rec = ServiceRecord(
        kind=kind,
        name=name,
        pid=pid,
        pid_start=start,
        started_at=time.time(),
        addresses=addresses or {},
        log=log,
        extra=extra or {},
    )
    record(run_dir, rec)
    return rec


def load(run_dir: Path, kind: str, name: str) -> ServiceRecord | None:
    try:
        raw = json.loads(_path(run_dir, kind, name).read_text())
        return ServiceRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None


def list_records(run_dir: Path, kind: str) -> list[ServiceRecord]:
    records = []
    for path in sorted((run_dir / kind).glob("*.json")):
        rec = load(run_dir, kind, path.stem)
        if rec is not None:
            records.append(rec)
    return records


def remove(run_dir: Path, kind: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(run_dir, kind, name).unlink()


def stop(rec: ServiceRecord, *, timeout: float = 10.0) -> bool:
    """Stop the process of ``rec``: SIGTERM, then SIGKILL after ``timeout``.

    Returns True if it was running. Only signals the pid if it is still the
    process the record describes.
    """
    if not rec.is_alive():
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rec.is_alive():
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGKILL)
    while rec.is_alive() and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    return True
