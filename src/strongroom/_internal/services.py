"""The registry of long-running workspace services (key service, enclaves, proxy).

Every detached service records itself as ``run/<kind>/<name>.json`` in the
workspace so that ``status`` and ``stop`` work from any shell. A record holds
the service's pid, *and* the kernel's start time of that pid (field 22 of
``/proc/<pid>/stat``): a pid alone is not an identity, because the kernel
reuses pids, and a ``stop`` that trusted a stale pid could kill an unrelated
process. :meth:`ServiceRecord.is_alive` and :func:`stop` therefore act only on a process
whose start time still matches the record.

Records are written atomically (readers see the old record or the new one)
and updated under a lock, so a supervisor updating its state and a CLI
reading it never see half a record. Records carry no secrets: they are mode
0644 inside the 0700 workspace.

Typical use (from the process that *is* the service)::

    services.record_self(ws.run_dir, "proxy", "proxy", addresses={"listen": "unix:/…"})
    ...
    services.update(ws.run_dir, "proxy", "proxy", state="RUNNING")

and from a CLI::

    rec = services.load(ws.run_dir, "proxy", "proxy")
    if rec is not None and rec.is_alive():
        services.stop(rec)
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from strongroom._internal.files import atomic_write_json, locked

#: How long :func:`stop` waits after SIGTERM before it sends SIGKILL.
DEFAULT_STOP_TIMEOUT_S = 5.0
_POLL_S = 0.02
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class ServiceRecord:
    """What a running service tells the rest of the workspace about itself."""

    kind: str
    name: str
    pid: int
    #: Wall-clock start, seconds since the epoch (for humans).
    started_at: float
    #: The kernel's start time of ``pid`` in clock ticks since boot (for identity).
    proc_start: int | None
    addresses: Mapping[str, str] = field(default_factory=dict)
    #: The service's own log file, if it has one.
    log: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def is_alive(self) -> bool:
        """True if the recorded process still runs (same pid *and* same start time)."""
        return pid_matches(self.pid, self.proc_start)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "pid": self.pid,
            "started_at": self.started_at,
            "proc_start": self.proc_start,
            "addresses": dict(self.addresses),
            "log": self.log,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ServiceRecord:
        return cls(
            kind=str(raw["kind"]),
            name=str(raw["name"]),
            pid=int(raw["pid"]),
            started_at=float(raw["started_at"]),
            proc_start=None if raw.get("proc_start") is None else int(raw["proc_start"]),
            addresses={str(k): str(v) for k, v in dict(raw.get("addresses") or {}).items()},
            log=None if raw.get("log") is None else str(raw["log"]),
            extra=dict(raw.get("extra") or {}),
        )


def check_name(name: str) -> str:
    """Return ``name`` if it is safe as a record name (a file name), else raise ValueError."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"invalid name {name!r}: use 1-63 characters from a-z, 0-9, '-', '_', '.',"
            " starting with a letter or digit"
        )
    return name


def record_path(run_dir: Path, kind: str, name: str) -> Path:
    return run_dir / check_name(kind) / f"{check_name(name)}.json"


def _lock_path(run_dir: Path, kind: str, name: str) -> Path:
    return run_dir / check_name(kind) / f".{check_name(name)}.lock"


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces
    # or parentheses: split after the *last* ')'. starttime is field 22, i.e.
    # index 19 of the fields that follow the name and the state.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def record_self(
    run_dir: Path,
    kind: str,
    name: str,
    *,
    addresses: Mapping[str, str] | None = None,
    log: str | os.PathLike[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ServiceRecord:
    """Record the calling process as ``kind/name`` (replacing any old record) and return it."""
    pid = os.getpid()
    rec = ServiceRecord(
        kind=kind,
        name=name,
        pid=pid,
        started_at=time.time(),
        proc_start=process_start_time(pid),
        addresses=dict(addresses or {}),
        log=None if log is None else os.fspath(log),
        extra=dict(extra or {}),
    )
    path = record_path(run_dir, kind, name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(_lock_path(run_dir, kind, name)):
        atomic_write_json(path, rec.to_json())
    return rec


def update(
    run_dir: Path,
    kind: str,
    name: str,
    *,
    addresses: Mapping[str, str] | None = None,
    **extra: Any,
) -> ServiceRecord:
    """Merge ``addresses`` and ``extra`` fields into an existing record, atomically."""
    path = record_path(run_dir, kind, name)
    with locked(_lock_path(run_dir, kind, name)):
        current = load(run_dir, kind, name)
        if current is None:
            raise FileNotFoundError(path)
        new = replace(
            current,
            addresses={**current.addresses, **(addresses or {})},
            extra={**current.extra, **extra},
        )
        atomic_write_json(path, new.to_json())
    return new


def load(run_dir: Path, kind: str, name: str) -> ServiceRecord | None:
    """The record of ``kind/name``, or None if there is none (or it is unreadable)."""
    try:
        raw = json.loads(record_path(run_dir, kind, name).read_text())
        return ServiceRecord.from_json(raw)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list(run_dir: Path, kind: str) -> builtins.list[ServiceRecord]:
    """Every readable record of ``kind``, sorted by name (alive or not).

    (Named like the builtin on purpose: callers write ``services.list(...)``.)
    """
    directory = run_dir / check_name(kind)
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json")):
        rec = load(run_dir, kind, path.stem) if _NAME_RE.match(path.stem) else None
        if rec is not None:
            records.append(rec)
    return records


def remove(run_dir: Path, kind: str, name: str) -> None:
    """Forget ``kind/name`` (the process, if any, is not touched)."""
    # The lock file stays: unlinking it while another process waits on it would
    # let a third process lock a fresh inode at the same time.
    with locked(_lock_path(run_dir, kind, name)), contextlib.suppress(FileNotFoundError):
        record_path(run_dir, kind, name).unlink()


def pid_matches(pid: int, proc_start: int | None) -> bool:
    """True if ``pid`` exists, is not a zombie, and (when known) started at ``proc_start``."""
    start = process_start_time(pid)
    if start is None or (proc_start is not None and start != proc_start):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop(target: ServiceRecord | int, *, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
    """Terminate a service: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

    Given a :class:`ServiceRecord`, signals are sent only while its pid still
    names the recorded process (same start time); given a bare pid, to that
    pid. Returns True if the process had to be killed, False if it exited on
    SIGTERM (or was already gone).
    """
    if isinstance(target, ServiceRecord):
        pid, proc_start = target.pid, target.proc_start
    else:
        pid, proc_start = target, None
    if not pid_matches(pid, proc_start):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_matches(pid, proc_start):
            return False
        time.sleep(_POLL_S)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_matches(pid, proc_start):
        _reap(pid)
        time.sleep(_POLL_S)
    return True


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own child, so that it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class DetachedProcess:
    """A service process started by :func:`spawn_detached`, watched until it is up."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._exit_code: int | None = None

    def poll(self) -> int | None:
        """Its exit code if it has exited (and reap it), else None."""
        if self._exit_code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Reaped elsewhere (by stop()): exited, with an unknown code.
                return None if pid_matches(self.pid, None) else -1
            if pid == self.pid:
                self._exit_code = os.waitstatus_to_exitcode(status)
        return self._exit_code


def spawn_detached(argv: Sequence[str], *, log_path: Path) -> DetachedProcess:
    """Start ``argv`` in its own session so it outlives the calling shell.

    ``argv[0]`` is a path (no PATH lookup). Its stdin is /dev/null and its
    stdout/stderr go to ``log_path`` (0600, appended); no other descriptor is
    inherited. The caller normally polls
    until the service has recorded itself. (``posix_spawn`` rather than
    ``subprocess``: the service is meant to outlive the Popen object.)
    """
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        pid = os.posix_spawn(
            argv[0],
            builtins.list(argv),
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(fd)
    return DetachedProcess(pid)
