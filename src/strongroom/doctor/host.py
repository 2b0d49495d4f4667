"""The enclave host's checks (runbook 3.1, 3.3, 4.2): what ``nitro-cli run-enclave`` will need.

Each looks where AWS's tools look, as an unprivileged user can:

- ``/dev/nitro_enclaves`` — the Nitro Enclaves driver's device. It exists only
  on an instance launched with Nitro Enclaves enabled whose kernel has the
  driver loaded; the aws-nitro-enclaves-cli package gives it to the ``ne``
  group, mode 0660 (so a user outside that group cannot start an enclave);
- ``nitro-cli --version`` — clap's ``Nitro CLI X.Y.Z`` (aws-nitro-enclaves-cli
  ``src/lib.rs``, ``create_app!``);
- ``/etc/nitro_enclaves/allocator.yaml`` — what the allocator service reserves
  for enclaves at boot: ``memory_mib`` and ``cpu_count`` (or ``cpu_pool``, a
  CPU list; never both), or (newer releases) a YAML list of such entries, whose
  reservations add up. An enclave's memory must be at least
  :data:`EIF_MEMORY_FACTOR` times its EIF's size (runbook 3.1 and 3.3, from
  AWS's documentation), and both it and its CPUs must fit in what the
  allocator reserved;
- the allocator service: ``systemctl is-active nitro-enclaves-allocator.service``
  (needs no root); without a usable systemd, the CPU pool the allocator writes
  to ``/sys/module/nitro_enclaves/parameters/ne_cpus`` (world-readable).

Every path is taken under :attr:`HostPaths.root` (``/`` on a real host), which
the tests point at a directory of their own.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom.doctor.base import Finding, fail, ok, one_line, warn

GROUP = "host"
#: An enclave needs at least this many times its EIF's size in memory (runbook 3.1, 3.3).
EIF_MEMORY_FACTOR = 4
MIB = 1024 * 1024
ALLOCATOR_UNIT = "nitro-enclaves-allocator.service"
#: How long ``nitro-cli --version`` and ``systemctl is-active`` may take.
TOOL_TIMEOUT_S = 10.0
#: The largest allocator.yaml read (the shipped one is under 1 KiB).
MAX_ALLOCATOR_CONFIG = 64 * 1024
_VERSION = re.compile(r"Nitro CLI (\d+(?:\.\d+)*)")
_CPU_LIST = re.compile(r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*")

RESTART_ALLOCATOR = f"sudo systemctl restart {ALLOCATOR_UNIT}"
INSTALL_CLI = (
    "install the Nitro Enclaves CLI: `sudo dnf install -y aws-nitro-enclaves-cli` "
    "(Amazon Linux 2023; on Amazon Linux 2 `sudo amazon-linux-extras install "
    "aws-nitro-enclaves-cli`)"
)


@dataclass(frozen=True)
class HostPaths:
    """Where the host's Nitro files are; ``root`` is ``/`` outside the tests."""

    root: Path = Path("/")

    @property
    def device(self) -> Path:
        return self.root / "dev" / "nitro_enclaves"

    @property
    def allocator_config(self) -> Path:
        return self.root / "etc" / "nitro_enclaves" / "allocator.yaml"

    @property
    def cpu_pool(self) -> Path:
        return self.root / "sys" / "module" / "nitro_enclaves" / "parameters" / "ne_cpus"

    def shown(self, path: Path) -> str:
        """``path`` as it is on the host (``/dev/nitro_enclaves``), whatever the root."""
        return "/" + str(path.relative_to(self.root))


@dataclass(frozen=True)
class ImageFacts:
    """What the checks need of the image at hand: its size and measurements."""

    path: Path
    size: int
    pcrs: dict[int, str]

    @classmethod
    def of(cls, path: Path) -> ImageFacts:
        from strongroom.image.measure import measure_image

        measurements = measure_image(path)
        pcrs = {0: measurements.pcr0, 1: measurements.pcr1, 2: measurements.pcr2}
        if measurements.pcr8 is not None:
            pcrs[8] = measurements.pcr8
        return cls(path, path.stat().st_size, pcrs)

    @property
    def pcr0(self) -> str:
        return self.pcrs[0]

    @property
    def memory_needed_mib(self) -> int:
        return max(1, math.ceil(EIF_MEMORY_FACTOR * self.size / MIB))


@dataclass(frozen=True)
class Enclave:
    """The enclave the host means to start: ``--memory`` and ``--cpus``, when given."""

    memory_mib: int | None = None
    cpus: int | None = None


def nitro_device(paths: HostPaths) -> Finding:
    device = paths.shown(paths.device)
    if not paths.device.exists():
        return fail(
            GROUP,
            "nitro-device",
            f"{device} does not exist: Nitro Enclaves is not enabled on this instance, "
            "or the nitro_enclaves driver is not loaded",
            "launch the instance with Nitro Enclaves enabled (EC2 console: Advanced details, "
            "Nitro Enclave: Enable; CLI: `--enclave-options Enabled=true`) on a supported "
            f"instance type, and {INSTALL_CLI}",
        )
    if not os.access(paths.device, os.R_OK | os.W_OK):
        user = getpass.getuser()
        return fail(
            GROUP,
            "nitro-device",
            f"{device} is not readable and writable by {user}",
            f"add {user} to the ne group (`sudo usermod -aG ne {user}`) and log in again",
        )
    return ok(GROUP, "nitro-device", f"{device} is present and usable by {getpass.getuser()}")


def nitro_cli() -> Finding:
    found = shutil.which("nitro-cli")
    if found is None:
        return fail(GROUP, "nitro-cli", "nitro-cli is not on PATH", INSTALL_CLI)
    printed, problem = _run([found, "--version"])
    match = _VERSION.search(printed)
    if problem is not None or match is None:
        said = one_line(printed)[:120] or problem or "nothing"
        return warn(
            GROUP,
            "nitro-cli",
            f"`{found} --version` did not print a Nitro CLI version ({said})",
            f"reinstall it; {INSTALL_CLI}",
        )
    return ok(GROUP, "nitro-cli", f"{found}: Nitro CLI {match.group(1)}")


@dataclass(frozen=True)
class Allocation:
    """What ``allocator.yaml`` reserves, all its entries added up."""

    memory_mib: int
    cpus: int
    entries: int


def read_allocation(paths: HostPaths) -> Allocation:
    """Parse ``allocator.yaml`` as the allocator reads it; raise ValueError saying what is wrong."""
    import yaml

    with paths.allocator_config.open("rb") as file:
        raw = file.read(MAX_ALLOCATOR_CONFIG + 1)
    if len(raw) > MAX_ALLOCATOR_CONFIG:
        raise ValueError(f"it is larger than {MAX_ALLOCATOR_CONFIG} bytes")
    try:
        data = yaml.safe_load(raw.decode())
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"it is not YAML: {one_line(str(e))}") from None
    entries: Sequence[Any] = data if isinstance(data, list) else [data]
    memory = cpus = 0
    for number, entry in enumerate(entries, start=1):
        where = f"entry {number}: " if isinstance(data, list) else ""
        if not isinstance(entry, dict):
            raise ValueError(f"{where}expected memory_mib and cpu_count (or cpu_pool)")
        unknown = sorted(set(entry) - {"memory_mib", "cpu_count", "cpu_pool"})
        if unknown:
            raise ValueError(f"{where}unexpected key {unknown[0]!r}")
        memory += _positive(entry.get("memory_mib"), f"{where}memory_mib")
        if "cpu_count" in entry and "cpu_pool" in entry:
            raise ValueError(f"{where}cpu_count conflicts with cpu_pool: use one of them")
        if "cpu_pool" in entry:
            cpus += _cpu_list_size(entry["cpu_pool"], f"{where}cpu_pool")
        else:
            cpus += _positive(entry.get("cpu_count"), f"{where}cpu_count (or cpu_pool)")
    return Allocation(memory, cpus, len(entries))


def allocator(paths: HostPaths, image: ImageFacts | None, enclave: Enclave) -> Finding:
    config = paths.shown(paths.allocator_config)
    if not paths.allocator_config.is_file():
        return fail(
            GROUP,
            "allocator",
            f"{config} does not exist: nothing reserves memory and CPUs for enclaves",
            INSTALL_CLI + "; it installs the allocator and its configuration",
        )
    try:
        reserved = read_allocation(paths)
    except (OSError, ValueError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return fail(
            GROUP,
            "allocator",
            f"{config} cannot be used: {detail}",
            f"write memory_mib: MIB and cpu_count: N in {config}, then `{RESTART_ALLOCATOR}`",
        )
    problems: list[str] = []
    fixes: list[str] = []
    memory_wanted = reserved.memory_mib
    if enclave.memory_mib is not None:
        memory_wanted = enclave.memory_mib
        if enclave.memory_mib > reserved.memory_mib:
            problems.append(
                f"the enclave asks {enclave.memory_mib} MiB, the allocator reserves "
                f"{reserved.memory_mib} MiB"
            )
            fixes.append(f"set memory_mib: {enclave.memory_mib} in {config}")
    if image is not None and memory_wanted < image.memory_needed_mib:
        needed = image.memory_needed_mib
        which = "--memory" if enclave.memory_mib is not None else "memory_mib"
        problems.append(
            f"{which} {memory_wanted} MiB is below {EIF_MEMORY_FACTOR} x the EIF's "
            f"{_mib(image.size)} = {needed} MiB ({image.path.name})"
        )
        fixes.append(
            f"start the enclave with --memory {needed} (or more)"
            if enclave.memory_mib is not None
            else f"set memory_mib: {needed} (or more) in {config}"
        )
        if enclave.memory_mib is not None and needed > reserved.memory_mib:
            fixes.append(f"set memory_mib: {needed} in {config}")
    if enclave.cpus is not None and enclave.cpus > reserved.cpus:
        problems.append(
            f"the enclave asks {enclave.cpus} CPUs, the allocator reserves {reserved.cpus}"
        )
        fixes.append(f"set cpu_count: {enclave.cpus} in {config}")
    summary = f"{config} reserves {reserved.memory_mib} MiB and {reserved.cpus} CPUs"
    if reserved.entries > 1:
        summary += f" over {reserved.entries} entries"
    if problems:
        if any(fix.startswith("set ") for fix in fixes):
            fixes.append(f"then `{RESTART_ALLOCATOR}`")
        return fail(GROUP, "allocator", f"{summary}; but " + "; ".join(problems), ", ".join(fixes))
    if image is None and enclave == Enclave():
        return ok(GROUP, "allocator", f"{summary} (give --image, --memory and --cpus to compare)")
    compared = []
    if image is not None:
        compared.append(f"{EIF_MEMORY_FACTOR} x {image.path.name} = {image.memory_needed_mib} MiB")
    if enclave.memory_mib is not None:
        compared.append(f"--memory {enclave.memory_mib}")
    if enclave.cpus is not None:
        compared.append(f"--cpus {enclave.cpus}")
    return ok(GROUP, "allocator", f"{summary}: enough for {', '.join(compared)}")


def allocator_service(paths: HostPaths) -> Finding:
    systemctl = shutil.which("systemctl")
    if systemctl is not None:
        printed, _ = _run([systemctl, "is-active", ALLOCATOR_UNIT])
        state = printed.split()[0] if printed.split() else ""
        if state == "active":
            return ok(GROUP, "allocator-service", f"{ALLOCATOR_UNIT} is active")
        if state in ("inactive", "failed", "activating", "deactivating", "unknown"):
            return fail(
                GROUP,
                "allocator-service",
                f"{ALLOCATOR_UNIT} is {state}: the enclave's memory and CPUs are not reserved",
                f"`sudo systemctl enable --now {ALLOCATOR_UNIT}` (and see `systemctl status "
                f"{ALLOCATOR_UNIT}` if it fails)",
            )
    # no systemd to ask (a container, another init): the CPU pool the allocator writes
    pool = paths.shown(paths.cpu_pool)
    try:
        cpus = paths.cpu_pool.read_text().strip()
    except OSError:
        return warn(
            GROUP,
            "allocator-service",
            f"cannot tell whether the allocator has run: systemd does not answer and {pool} "
            "cannot be read",
            f"check `sudo systemctl status {ALLOCATOR_UNIT}`",
        )
    if not cpus:
        return fail(
            GROUP,
            "allocator-service",
            f"the enclave CPU pool ({pool}) is empty: the allocator has not run",
            f"`sudo systemctl enable --now {ALLOCATOR_UNIT}`",
        )
    return ok(GROUP, "allocator-service", f"the enclave CPU pool is {cpus} ({pool})")


def _run(argv: list[str]) -> tuple[str, str | None]:
    """The stdout of ``argv`` (and its stderr when stdout is empty), and what went wrong."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", one_line(str(e))
    text = done.stdout if done.stdout.strip() else done.stderr
    return text, None if done.returncode == 0 else f"exit status {done.returncode}"


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} is missing or not a whole number")
    if value <= 0:
        raise ValueError(f"{name} must be above 0, not {value}")
    return value


def _cpu_list_size(value: object, name: str) -> int:
    text = str(value).replace(" ", "")
    if not _CPU_LIST.fullmatch(text):
        raise ValueError(f"{name} {value!r} is not a CPU list such as 2,3,6-9")
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"{name} has the backwards range {part}")
        cpus.update(range(low, high + 1))
    return len(cpus)


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB" if size >= MIB // 10 else f"{size} bytes"
