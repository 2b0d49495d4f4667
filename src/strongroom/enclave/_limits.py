"""Memory and CPU limits of a local enclave, and how it is known that one was exceeded.

A Nitro enclave owns the memory and CPUs carved out for it; an application
that outgrows them dies inside the enclave, never the parent instance. The
local sandbox gets the same property from the kernel, using the first
mechanism that works here:

``cgroup2``
    a cgroup ``strongroom/<id>`` under the unified hierarchy, when its memory
    controller is available: ``memory.max``, ``memory.swap.max = 0`` (so the
    limit cannot be dodged by swapping), ``cpu.max``; OOM kills are counted in
    ``memory.events``.
``cgroup1``
    the v1 memory hierarchy (``/sys/fs/cgroup/memory/strongroom/<id>``):
    ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` and
    ``memory.swappiness = 0`` where available, plus a CFS quota in the v1 cpu
    hierarchy if mounted; OOM kills are counted in ``memory.oom_control``.
``rlimit``
    no usable memory controller: ``RLIMIT_AS`` on the sandbox's processes. An
    allocation beyond it fails (``MemoryError``) rather than being OOM-killed,
    so an OOM cannot be *reported*; CPUs are not limited. ``status`` says so.

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

    def describe(self) -> str:
        where = f" at {self.cgroups[0]}" if self.cgroups else ""
        cpu = f"{self.cpus} CPU quota" if self.cpu_limited else "CPUs not limited"
        note = f" ({self.note})" if self.note else ""
        return f"{self.mechanism}{where}: {self.memory_mib} MiB, {cpu}{note}"

    def to_json(self) -> dict[str, object]:
        return {
            "mechanism": self.mechanism,
            "memory_mib": self.memory_mib,
            "cpus": self.cpus,
            "cgroups": list(self.cgroups),
            "cpu_limited": self.cpu_limited,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> Limits:
        mechanism = raw.get("mechanism")
        if mechanism not in ("cgroup2", "cgroup1", "rlimit"):
            raise ValueError(f"unknown limits mechanism {mechanism!r}")
        cgroups = raw.get("cgroups") or []
        if not isinstance(cgroups, list):
            raise ValueError("cgroups must be a list")
        return cls(
            mechanism=mechanism,
            memory_mib=int(str(raw["memory_mib"])),
            cpus=int(str(raw["cpus"])),
            cgroups=tuple(str(c) for c in cgroups),
            cpu_limited=bool(raw.get("cpu_limited")),
            note=str(raw.get("note") or ""),
        )

    def enter(self) -> None:
        """Run in the forked child before exec: join the cgroups, or set RLIMIT_AS."""
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

    def release(self) -> None:
        """Kill whatever is left in the cgroups and remove them (idempotent)."""
        for cgroup in reversed(self.cgroups):
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
            for controller in ("memory", "cpu"):
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


def _try_cgroup2(root: Path, cgroup_id: str, memory_mib: int, cpus: int) -> Limits | str:
    try:
        available = (root / "cgroup.controllers").read_text().split()
    except OSError as e:
        return f"cgroup2: {e.strerror}"
    if "memory" not in available:
        return "cgroup2: no memory controller"
    wanted = [c for c in ("memory", "cpu") if c in available]
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
    except OSError as e:
        if created is not None:
            with contextlib.suppress(OSError):
                created.rmdir()
        return f"cgroup2: {e.strerror} ({e.filename})"
    return Limits("cgroup2", memory_mib, cpus, (str(created),), cpu_limited)


def _try_cgroup1(
    mounts: dict[str, Path], cgroup_id: str, memory_mib: int, cpus: int
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
    except OSError as e:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
        return f"cgroup1: {e.strerror} ({e.filename})"
    return Limits("cgroup1", memory_mib, cpus, tuple(str(p) for p in created), cpu_limited)


def create_limits(cgroup_id: str, *, memory_mib: int, cpus: int) -> Limits:
    """Create the enclave's cgroup(s) with the first mechanism that works here."""
    try:
        unified, v1 = _cgroup_mounts()
    except OSError:
        unified, v1 = None, {}
    reasons: list[str] = []
    if unified is not None:
        first = _try_cgroup2(unified, cgroup_id, memory_mib, cpus)
        if isinstance(first, Limits):
            return first
        reasons.append(first)
    second = _try_cgroup1(v1, cgroup_id, memory_mib, cpus)
    if isinstance(second, Limits):
        return replace(second, note="; ".join(reasons))
    reasons.append(second)
    return Limits("rlimit", memory_mib, cpus, note="; ".join(reasons))
