"""The enclave runtime interface: start, status, stop and console of enclaves.

One interface, one implementation per target: :mod:`.sandbox` (the local
bubblewrap sandbox) and, later, ``nitro`` (``nitro-cli``). Callers (the CLI,
the client) hold an :class:`EnclaveRuntime` chosen once from the workspace
configuration (:func:`strongroom.enclave.runtime_for`).

What every runtime guarantees to its callers:

- ``start`` runs exactly the image it measured, with the resources asked for,
  and returns only once the enclave server answers on the control channel;
- an enclave's name is unique among the running enclaves of a workspace;
- ``status`` tells a dead enclave from a running one, and why it died
  (exit code, out of memory, killed), and whether a running one's server
  still answers on the control channel;
- ``stop`` leaves nothing of the enclave running;
- ``logs`` exists only for debug-mode enclaves, as ``nitro-cli console``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from strongroom.errors import UsageError
from strongroom.image import Measurements

#: ``STARTING`` only while ``start`` has not returned; ``STOPPED``: it ended as
#: asked (``enclave stop``, whose kill gives exit code 137) or its server exited
#: with 0; ``FAILED``: it died on its own (exit code, signal, out of memory).
State = Literal["STARTING", "RUNNING", "STOPPED", "FAILED"]

#: ``describe-enclaves``' ``Flags``: how nitro-cli spells a debug-mode enclave, and the others.
DEBUG_FLAGS = "DEBUG_MODE"
NO_FLAGS = "NONE"
#: Called with each phase of a start ("measuring the image", ...), for progress displays.
StartProgress = Callable[[str], None]

DEFAULT_NAME = "enclave"
MIN_MEMORY_MIB = 64
#: The runbook's rule of thumb: give an enclave at least 4× its image's size.
MEMORY_PER_IMAGE_BYTE = 4
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(
            f"invalid enclave name {name!r}",
            hint="use 1-32 characters from a-z, 0-9 and '-', starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class EnclaveSpec:
    """What to start: an image, its resources, and whether it is a debug enclave."""

    name: str
    image: Path
    cpus: int
    memory_mib: int
    debug: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": str(self.image),
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "debug": self.debug,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EnclaveSpec:
        return cls(
            name=check_name(str(raw["name"])),
            image=Path(str(raw["image"])),
            cpus=int(raw["cpus"]),
            memory_mib=int(raw["memory_mib"]),
            debug=bool(raw["debug"]),
        )


@dataclass(frozen=True)
class EnclaveStatus:
    """One enclave as ``status`` reports it."""

    name: str
    state: State
    enclave_id: str
    image: str
    debug: bool
    cpus: int
    memory_mib: int
    #: The process that owns the enclave on the host (local: its supervisor).
    pid: int | None
    #: Where the host reaches the enclave (``control``), and its other channels.
    addresses: Mapping[str, str] = field(default_factory=dict)
    #: The enclave's vsock CID (Nitro); None locally.
    cid: int | None = None
    #: The host CPUs the enclave's processes may run on (Nitro: the CPUs given to it;
    #: locally: the supervisor's affinity, shared under a quota of ``cpus`` CPUs' time).
    cpu_ids: tuple[int, ...] = ()
    measurements: Measurements | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    #: Why the enclave is not running (or what went wrong while it runs).
    reason: str | None = None
    #: How memory and CPUs are enforced (see :mod:`strongroom.enclave._limits`).
    limits: str | None = None
    #: Whether the enclave server answered a probe on its control channel just
    #: now (None: not probed, because the enclave is not RUNNING). A RUNNING
    #: enclave whose server does not answer is stopped, wedged or out of memory.
    responding: bool | None = None
    #: Where the image's unpacked tree came from: ``"reused"`` (the verified copy of
    #: an earlier start), ``"unpacked"`` (now), or None (not known, or not local).
    image_copy: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The enclave as ``nitro-cli describe-enclaves`` describes one, plus Strongroom's
        own fields under ``"Strongroom"`` (so scripts written for nitro-cli work)."""
        return {
            "EnclaveName": self.name,
            "EnclaveID": self.enclave_id,
            "ProcessID": self.pid,
            "EnclaveCID": self.cid,
            "NumberOfCPUs": self.cpus,
            "CPUIDs": list(self.cpu_ids),
            "MemoryMiB": self.memory_mib,
            "State": self.state,
            "Flags": DEBUG_FLAGS if self.debug else NO_FLAGS,
            "Strongroom": {
                "image": self.image,
                "measurements": None
                if self.measurements is None
                else self.measurements.to_nitro_json()["Measurements"],
                "image_copy": self.image_copy,
                "addresses": dict(self.addresses),
                "limits": self.limits,
                "responding": self.responding,
                "reason": self.reason,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "exit_code": self.exit_code,
                "oom_killed": self.oom_killed,
            },
        }


@dataclass(frozen=True)
class StartResult:
    status: EnclaveStatus
    #: Things the operator should know (e.g. memory below the rule of thumb).
    warnings: tuple[str, ...] = ()


class EnclaveRuntime(Protocol):
    def start(self, spec: EnclaveSpec, *, progress: StartProgress | None = None) -> StartResult:
        """Start ``spec`` and return once its server answers on the control channel;
        ``progress`` hears of each phase of the start as it begins."""
        ...

    def status(self, name: str | None = None, *, probe: bool = True) -> list[EnclaveStatus]:
        """Every known enclave (running or dead), or just ``name``; with ``probe``, each
        running one is asked whether its server answers (``responding``)."""
        ...

    def stop(self, name: str | None = None) -> list[EnclaveStatus]:
        """Stop ``name`` (or every enclave) and forget it; nothing of it keeps running."""
        ...

    def logs(self, name: str, *, follow: bool = False) -> Iterator[bytes]:
        """The console of a debug-mode enclave; with ``follow``, until it stops."""
        ...


def memory_warning(memory_mib: int, image_size: int) -> str | None:
    """The runbook's rule of thumb, as a warning when ``memory_mib`` is below it."""
    wanted = -(-MEMORY_PER_IMAGE_BYTE * image_size // (1024 * 1024))
    if memory_mib >= wanted:
        return None
    return (
        f"{memory_mib} MiB is less than {MEMORY_PER_IMAGE_BYTE}× the image size "
        f"({image_size / (1024 * 1024):.0f} MiB): the enclave may run out of memory "
        f"(rule of thumb: --memory {wanted} or more)"
    )
