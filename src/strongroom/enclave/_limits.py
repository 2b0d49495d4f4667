"""Memory, CPU and process limits of a local enclave, and how it is known that one was exceeded.

A Nitro enclave owns the memory and CPUs carved out for it; an application
that outgrows them dies inside the enclave, never the parent instance. The
local sandbox gets the same property from the kernel, using the first
mechanism that works here:

``cgroup2``
    a cgroup ``strongroom/<id>`` under the unified hierarchy, when its memory
    controller is available: ``memory.max``, ``memory.swap.max = 0`` (so the
    limit cannot be dodged by swapping), ``cpu.max``, ``pids.max``; OOM kills
    are counted in ``memory.events``.
``cgroup1``
    the v1 memory hierarchy (``/sys/fs/cgroup/memory/strongroom/<id>``):
    ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` and
    ``memory.swappiness = 0`` where available, plus a CFS quota in the v1 cpu
    hierarchy and ``pids.max`` in the v1 pids hierarchy if mounted; OOM kills
    are counted in ``memory.oom_control``.
``rlimit``
    no usable memory controller: ``RLIMIT_AS`` on the sandbox's processes. An
    allocation beyond it fails (``MemoryError``) rather than being OOM-killed,
    so an OOM cannot be *reported*; CPUs and processes are not limited
    (``RLIMIT_NPROC`` counts every process of the host user, not the
    enclave's, and root ignores it). ``status`` says so.

The process limit (:data:`DEFAULT_PIDS` tasks: processes *and* threads) is
what a Nitro guest gets from its own kernel: an app that forks without end
exhausts the enclave, not the host's pid space, and its ``fork`` fails with
``EAGAIN`` long before the host's. Refused forks are counted in ``pids.events``.

The sandbox's processes enter the cgroup in the forked child *before* bubblewrap
is exec'd (:meth:`Limits.enter`), so no process of the enclave ever runs
outside it; the supervisor itself stays outside, so an OOM in the enclave can
never kill the process that reports it. Everything still in the cgroup is
killed before the cgroup is removed.

Limits are enforced by the host kernel on behalf of the host: root on the same
machine can lift them.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

Mechanism = Literal["cgroup2", "cgroup1", "rlimit"]

CGROUP_PARENT = "strongroom"
CPU_PERIOD_US = 100_000
#: Tasks (processes and threads) one enclave may have at once. The server
#: needs a few dozen (its threads, one process per run); an app that needs
#: more than a thousand is a fork bomb, and a host's default pid space
#: (32768) holds many enclaves of this size.
DEFAULT_PIDS = 1024
#: Tasks of the enclave kept out of its runs' reach: the server's own threads.
SERVER_PIDS = 64
#: Where, under the enclave's pids cgroup, the server makes one cgroup per run.
RUNS_CGROUP_NAME = "runs"
_MIB = 1024 * 1024
_MOUNTS = Path("/proc/self/mounts")
_EMPTY_WAIT_S = 5.0


@dataclass(frozen=True)
class Limits:
    """The limits applied to one enclave; JSON-able through :meth:`to_json`."""

    mechanism: Mechanism
    memory_mib: int
    cpus: int
    #: cgroup directories (memory first), empty for ``rlimit``.
    cgroups: tuple[str, ...] = ()
    #: False when the CPU count could not be enforced.
    cpu_limited: bool = False
    #: Why a better mechanism was not used (empty when the first choice worked).
    note: str = ""
    #: Tasks (processes and threads) the whole enclave may have.
    pids: int = DEFAULT_PIDS
    #: The cgroup holding ``pids.max`` (one of :attr:`cgroups`); None: not limited.
    pids_cgroup: str | None = None
    #: Below it, the cgroup delegated to the enclave server for one cgroup per run,
    #: all of them together limited to ``pids - SERVER_PIDS`` tasks (cgroup v1 only).
    runs_cgroup: str | None = None

    @property
    def pids_limited(self) -> bool:
        return self.pids_cgroup is not None

    def describe(self) -> str:
        where = f" at {self.cgroups[0]}" if self.cgroups else ""
        cpu = f"{self.cpus} CPU quota" if self.cpu_limited else "CPUs not limited"
        if self.pids_limited:
            pids = f"{self.pids} tasks"
        elif self.mechanism == "rlimit":
            pids = "processes not limited per enclave"
        else:
            pids = "processes not limited"
        note = f" ({self.note})" if self.note else ""
        return f"{self.mechanism}{where}: {self.memory_mib} MiB, {cpu}, {pids}{note}"

    def to_json(self) -> dict[str, object]:
        return {
            "mechanism": self.mechanism,
            "memory_mib": self.memory_mib,
            "cpus": self.cpus,
            "cgroups": list(self.cgroups),
            "cpu_limited": self.cpu_limited,
            "note": self.note,
            "pids": self.pids,
            "pids_cgroup": self.pids_cgroup,
            "runs_cgroup": self.runs_cgroup,
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> Limits:
        mechanism = raw.get("mechanism")
        if mechanism not in ("cgroup2", "cgroup1", "rlimit"):
            raise ValueError(f"unknown limits mechanism {mechanism!r}")
        cgroups = raw.get("cgroups") or []
        if not isinstance(cgroups, list):
            raise ValueError("cgroups must be a list")
        pids_cgroup, runs_cgroup = raw.get("pids_cgroup"), raw.get("runs_cgroup")
        return cls(
            mechanism=mechanism,
            memory_mib=int(str(raw["memory_mib"])),
            cpus=int(str(raw["cpus"])),
            cgroups=tuple(str(c) for c in cgroups),
            cpu_limited=bool(raw.get("cpu_limited")),
            note=str(raw.get("note") or ""),
            # records written before the process limit existed have neither field
            pids=int(str(raw.get("pids", DEFAULT_PIDS))),
            pids_cgroup=None if pids_cgroup is None else str(pids_cgroup),
            runs_cgroup=None if runs_cgroup is None else str(runs_cgroup),
        )

    def enter(self) -> None:
        """Run in the forked child before exec: join the cgroups (memory, cpu, pids), or
        set RLIMIT_AS."""
        if self.mechanism == "rlimit":
            limit = self.memory_mib * _MIB
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            return
        pid = str(os.getpid())
        for cgroup in self.cgroups:
            Path(cgroup, "cgroup.procs").write_text(pid)

    def oom_kills(self) -> int | None:
        """How many processes the kernel OOM-killed in the enclave (None: cannot tell)."""
        if self.mechanism == "rlimit":
            return None
        name = "memory.events" if self.mechanism == "cgroup2" else "memory.oom_control"
        try:
            lines = Path(self.cgroups[0], name).read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None

    def refused_forks(self) -> int | None:
        """How many forks (or new threads) the process limit refused (None: cannot tell)."""
        if self.pids_cgroup is None:
            return None
        try:
            lines = Path(self.pids_cgroup, "pids.events").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "max" and value.strip().isdigit():
                return int(value)
        return None

    def release(self) -> None:
        """Kill whatever is left in the cgroups and remove them (idempotent)."""
        runs = [] if self.runs_cgroup is None else [self.runs_cgroup]
        if self.runs_cgroup is not None:  # the runs' own cgroups (a dead server's leftovers)
            with contextlib.suppress(OSError):
                runs = [str(p) for p in Path(self.runs_cgroup).iterdir() if p.is_dir()] + runs
        for cgroup in [*runs, *reversed(self.cgroups)]:
            path = Path(cgroup)
            deadline = time.monotonic() + _EMPTY_WAIT_S
            while path.exists():
                for pid in _procs(path):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    path.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def _procs(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _cgroup_mounts() -> tuple[Path | None, dict[str, Path]]:
    """(the cgroup2 mount, {v1 controller: mount}) from /proc/self/mounts."""
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for line in _MOUNTS.read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup2" and unified is None:
            unified = Path(mountpoint)
        elif fstype == "cgroup":
            for controller in ("memory", "cpu", "pids"):
                if controller in options:
                    v1.setdefault(controller, Path(mountpoint))
    return unified, v1


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _make(parent: Path, cgroup_id: str) -> Path:
    (parent / CGROUP_PARENT).mkdir(exist_ok=True)
    path = parent / CGROUP_PARENT / cgroup_id
    if path.exists():
        # Left by a supervisor that was killed: it is empty unless an enclave of
        # that name still runs, which the caller has ruled out, so rmdir works.
        path.rmdir()
    path.mkdir()
    return path


def _try_cgroup2(root: Path, cgroup_id: str, memory_mib: int, cpus: int, pids: int) -> Limits | str:
    try:
        available = (root / "cgroup.controllers").read_text().split()
    except OSError as e:
        return f"cgroup2: {e.strerror}"
    if "memory" not in available:
        return "cgroup2: no memory controller"
    wanted = [c for c in ("memory", "cpu", "pids") if c in available]
    enable = " ".join(f"+{c}" for c in wanted)
    created: Path | None = None
    try:
        _write(root / "cgroup.subtree_control", enable)
        (root / CGROUP_PARENT).mkdir(exist_ok=True)
        _write(root / CGROUP_PARENT / "cgroup.subtree_control", enable)
        created = _make(root, cgroup_id)
        _write(created / "memory.max", str(memory_mib * _MIB))
        with contextlib.suppress(FileNotFoundError):
            _write(created / "memory.swap.max", "0")
        cpu_limited = "cpu" in wanted
        if cpu_limited:
            _write(created / "cpu.max", f"{cpus * CPU_PERIOD_US} {CPU_PERIOD_US}")
        if "pids" in wanted:
            _write(created / "pids.max", str(pids))
    except OSError as e:
        if created is not None:
            with contextlib.suppress(OSError):
                created.rmdir()
        return f"cgroup2: {e.strerror} ({e.filename})"
    return Limits(
        "cgroup2",
        memory_mib,
        cpus,
        (str(created),),
        cpu_limited,
        note="" if "pids" in wanted else "cgroup2: no pids controller",
        pids=pids,
        pids_cgroup=str(created) if "pids" in wanted else None,
    )


def _try_cgroup1(
    mounts: dict[str, Path], cgroup_id: str, memory_mib: int, cpus: int, pids: int
) -> Limits | str:
    if "memory" not in mounts:
        return "cgroup1: no memory hierarchy"
    created: list[Path] = []
    try:
        memory = _make(mounts["memory"], cgroup_id)
        created.append(memory)
        limit = str(memory_mib * _MIB)
        _write(memory / "memory.limit_in_bytes", limit)
        # Optional knobs: absent when swap accounting is off, or on some kernels.
        for knob, value in (("memory.memsw.limit_in_bytes", limit), ("memory.swappiness", "0")):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                _write(memory / knob, value)
        cpu_limited = False
        if "cpu" in mounts and mounts["cpu"] != mounts["memory"]:
            with contextlib.suppress(OSError):
                cpu = _make(mounts["cpu"], cgroup_id)
                created.append(cpu)
                _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(cpus * CPU_PERIOD_US))
                cpu_limited = True
        pids_cgroup, pids_note = _pids_cgroup1(mounts, memory, cgroup_id, pids)
        if pids_cgroup is not None and pids_cgroup != memory:
            created.append(pids_cgroup)
    except OSError as e:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
        return f"cgroup1: {e.strerror} ({e.filename})"
    runs_cgroup = None if pids_cgroup is None else _runs_cgroup1(pids_cgroup, pids)
    return Limits(
        "cgroup1",
        memory_mib,
        cpus,
        tuple(str(p) for p in created),
        cpu_limited,
        note=pids_note,
        pids=pids,
        pids_cgroup=None if pids_cgroup is None else str(pids_cgroup),
        runs_cgroup=None if runs_cgroup is None else str(runs_cgroup),
    )


def _runs_cgroup1(pids_cgroup: Path, pids: int) -> Path | None:
    runs = pids_cgroup / RUNS_CGROUP_NAME
    try:
        runs.mkdir()
        _write(runs / "pids.max", str(max(1, pids - SERVER_PIDS)))
    except OSError:
        with contextlib.suppress(OSError):
            runs.rmdir()
        return None
    return runs


def _pids_cgroup1(
    mounts: dict[str, Path], memory: Path, cgroup_id: str, pids: int
) -> tuple[Path | None, str]:
    """The v1 cgroup holding the enclave's ``pids.max`` (or None), and why not.

    Cgroup v1 (unlike v2) lets a cgroup with processes have children that limit
    their own, so the server gets ``runs`` below it for per-run limits.
    """
    if "pids" not in mounts:
        return None, "cgroup1: no pids hierarchy"
    # co-mounted with memory (``-o memory,pids``): the same directory holds both
    group = memory if mounts["pids"] == mounts["memory"] else None
    try:
        if group is None:
            group = _make(mounts["pids"], cgroup_id)
        _write(group / "pids.max", str(pids))
    except OSError as e:
        if group is not None and group != memory:
            with contextlib.suppress(OSError):
                group.rmdir()
        return None, f"cgroup1 pids: {e.strerror} ({e.filename})"
    return group, ""


def create_limits(
    cgroup_id: str, *, memory_mib: int, cpus: int, pids: int = DEFAULT_PIDS
) -> Limits:
    """Create the enclave's cgroup(s) with the first mechanism that works here."""
    try:
        unified, v1 = _cgroup_mounts()
    except OSError:
        unified, v1 = None, {}
    reasons: list[str] = []
    if unified is not None:
        first = _try_cgroup2(unified, cgroup_id, memory_mib, cpus, pids)
        if isinstance(first, Limits):
            return first
        reasons.append(first)
    second = _try_cgroup1(v1, cgroup_id, memory_mib, cpus, pids)
    if isinstance(second, Limits):
        return replace(second, note="; ".join([*reasons, *filter(None, [second.note])]))
    reasons.append(second)
    return Limits("rlimit", memory_mib, cpus, note="; ".join(reasons), pids=pids)
