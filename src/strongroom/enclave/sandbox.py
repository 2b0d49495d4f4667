"""The local enclave: a bubblewrap sandbox owned by a detached supervisor.

Each enclave is two host processes and a sandbox::

    strongroom enclave start ──spawns──▶ supervisor (python -m strongroom.enclave.supervisor)
                                 ├─ measures the image; unpacks it (one pass) or reuses
                                 │  the verified copy of an earlier start (._image_cache)
                                 ├─ serves attestor.sock and egress.sock
                                 └─ bwrap ──▶ enclave init (host's jail.py) ──▶ strongroom.server

The supervisor (:mod:`.supervisor`) runs in its own session, so the enclave
outlives the shell that started it; bubblewrap runs with ``--die-with-parent``,
so the sandbox never outlives the supervisor. ``status`` and ``stop`` find the
supervisor through its workspace record (``run/enclaves/<name>.json``).

Isolation invariants of the sandbox (:func:`sandbox_command`):

- **No network.** New network namespace: only its own loopback. The only way
  out is ``/run/strongroom/egress.sock`` (HTTP CONNECT to the host's relay and
  egress proxy, which apply the allowlist).
- **Exactly three channels**, all unix sockets of the supervisor, bound
  read-only one by one (never a host directory): ``attestor.sock`` and
  ``egress.sock`` under ``/run/strongroom/``, and the control socket, which the
  supervisor binds on the host and hands to the server as an inherited
  listening descriptor. The one writable host path is the enclave's own
  ``runs`` cgroup (cgroup v1, when the limits made one), below its limited
  parent, where the server makes one cgroup per run. So the enclave cannot
  write files to the host's disk, nor plant a symlink where the host will
  connect.
- **Minimal read-only view of the host**: ``/usr`` (and the ``/lib*``,
  ``/bin`` links into it), ``/etc/ld.so.cache``, and the host's Python
  interpreter prefix (``sys.base_prefix``). The local target *trusts the host's
  interpreter and system libraries*, the way a Nitro enclave trusts the
  hypervisor; they are not measured (the image records the interpreter ABI it
  needs). No ``/root``, ``/home``, host ``/tmp``, workspace or ``/proc`` of the
  host.
- **The image** is read-only at ``/image``: the image cache's copy (unpacked
  in the pass that measured it, or checked file by file against its manifest
  at this start), mounted through the directory descriptor that was checked
  (``--ro-bind-fd``; bubblewrap closes it before the enclave runs). Its Python
  bytecode sits next to the sources, and the host's standard library brings
  its own, so the server imports rather than compiles; nothing writes
  bytecode (every tree is read-only). The decrypted application and the
  shared folder live in private memory-backed tmpfs (``/enclave/apps``,
  ``/enclave/shared``, mode 0700) counted against the enclave's memory limit;
  ``/tmp`` is a private tmpfs; the root file system is remounted read-only.
- **No privilege over the host**: new user, pid, ipc, uts and cgroup
  namespaces; a new session (no terminal injection). The sandbox's uid maps
  to the host user that runs the supervisor -- root on CI -- so owner
  permission checks on host objects would still pass. The sandbox starts with
  only ``CAP_SYS_ADMIN`` and ``CAP_SETFCAP``, used by its init -- the host's
  own :mod:`strongroom.server.jail`, never the image's -- to cover ``/proc``
  (whose sysctls check only the owner) with read-only binds and move into a
  child user namespace, where every mount is locked: the image's server is
  root there, with capabilities over the enclave only (it needs them to jail
  apps), and cannot make any host path writable.
- **Limits** from :mod:`._limits` (cgroup v2, else v1, else ``RLIMIT_AS``):
  an application that outgrows them is killed and reported, not the host.

What the local target does **not** protect against: root (or the workspace's
owner) on the same machine. It can read the sandbox's memory, replace the
interpreter, sign documents with the workspace CA, or lift the limits. The
sandbox is for development, CI and demos of the real protocol; Nitro is the
security boundary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strongroom._internal import services
from strongroom._internal.files import locked
from strongroom.enclave._limits import Limits
from strongroom.enclave.base import (
    MIN_MEMORY_MIB,
    EnclaveSpec,
    EnclaveStatus,
    StartProgress,
    StartResult,
    State,
    check_name,
    memory_warning,
)
from strongroom.enclave.endpoints import RECORD_KIND
from strongroom.errors import (
    AlreadyExistsError,
    EvidenceError,
    InvalidInputError,
    NotFoundError,
    StrongroomError,
    UnavailableError,
    UsageError,
)
from strongroom.image import ENTRYPOINT, Measurements
from strongroom.server import (
    APPS_DIR,
    ATTESTOR_SOCKET,
    EGRESS_SOCKET,
    IMAGE_MOUNT,
    RUNS_CGROUP,
    SHARED_DIR,
)
from strongroom.transport.base import UnixAddress
from strongroom.transport.http import ChannelError, HttpClient
from strongroom.workspace import Workspace

KIND = RECORD_KIND
#: How long ``start`` waits for the enclave server to answer /v1/describe.
START_TIMEOUT_S = 60.0
#: How long ``stop`` gives the supervisor to shut the enclave down before SIGKILL.
STOP_TIMEOUT_S = 10.0
DESCRIBE_TIMEOUT_S = 2.0
#: How long ``status`` waits for a RUNNING enclave's server to answer /v1/describe
#: (it answers in milliseconds; one that takes this long is stopped or wedged).
STATUS_PROBE_TIMEOUT_S = 1.5
NOT_RESPONDING = (
    "the enclave server does not answer on its control socket (stopped, wedged or out of memory?)"
)
_POLL_S = 0.05
LOGS_CHUNK = 64 * 1024

#: Inside the sandbox: the enclave server is root of its user namespace (as it is
#: root of a Nitro enclave), with only the capabilities the enclave's init needs
#: to lock the sandbox down before the server starts (see strongroom.server.jail).
SANDBOX_UID = 0
SANDBOX_CAPS = ("CAP_SYS_ADMIN", "CAP_SETFCAP")
SANDBOX_HOSTNAME = "enclave"
#: The server's own /tmp (temporary files): small.
SANDBOX_TMP_MIB = 64
_MIB = 1024 * 1024


def _entry_module(entrypoint: str) -> str:
    """MODULE of ``python -m MODULE``: the one entrypoint form the sandbox knows how to run."""
    match entrypoint.split():
        case ["python", "-m", module]:
            return module
    raise RuntimeError(f"the sandbox cannot run the image entrypoint {entrypoint!r}")


ENTRY_MODULE = _entry_module(ENTRYPOINT)
#: The image's two package trees, put on sys.path (after the host's standard
#: library) by the enclave's init before it runs the entry module.
IMAGE_SITES = (f"{IMAGE_MOUNT}/runtime/site-packages", f"{IMAGE_MOUNT}/app-packages")

_NOT_DEBUG_HINT = (
    "only debug-mode enclaves have a console (as with `nitro-cli console`); "
    "restart it with `strongroom enclave start IMAGE --debug`"
)


#: Where the sandbox sees its init program (the host's copy of the jail module).
INIT_PROGRAM = "/run/strongroom/init.py"


def enclave_init_program() -> Path:
    """The program the sandbox starts with: the host's own copy of the jail module.

    It runs before any of the image's code, so it must come from the host's
    Strongroom, never from the image (whose server it then starts).
    """
    from strongroom.server import jail

    return Path(jail.__file__)


@dataclass(frozen=True)
class EnclavePaths:
    """The host-side files of one enclave, all in ``run/enclaves/<name>/`` (mode 0700)."""

    directory: Path

    @classmethod
    def of(cls, run_dir: Path, name: str) -> EnclavePaths:
        return cls(run_dir / KIND / check_name(name))

    @property
    def control_socket(self) -> Path:
        return self.directory / "control.sock"

    @property
    def attestor_socket(self) -> Path:
        return self.directory / "attestor.sock"

    @property
    def egress_socket(self) -> Path:
        return self.directory / "egress.sock"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def supervisor_log(self) -> Path:
        return self.directory / "supervisor.log"

    def sockets(self) -> tuple[Path, ...]:
        return (self.control_socket, self.attestor_socket, self.egress_socket)


def cgroup_id(workspace_root: Path, name: str) -> str:
    """Unique per workspace and name, so two workspaces never share a cgroup."""
    digest = hashlib.sha256(str(workspace_root).encode()).hexdigest()[:12]
    return f"{digest}-{name}"


def host_system_binds() -> tuple[Path, list[str]]:
    """The interpreter, and the bubblewrap options giving a sandbox the host's system
    files read-only: ``/usr`` (and the ``/lib*``, ``/bin`` links), ld.so's cache and
    the interpreter's prefix -- what the local target trusts, unmeasured."""
    from strongroom.server.isolation import SYSTEM_DIRS, SYSTEM_FILES, interpreter_trees

    executable, trees = interpreter_trees()
    argv = ["--ro-bind", "/usr", "/usr"]
    for directory in SYSTEM_DIRS:
        path = Path(directory)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), directory]
        elif path.is_dir():
            argv += ["--ro-bind", directory, directory]
    for file in SYSTEM_FILES:
        argv += ["--ro-bind-try", file, file]
    for tree in trees:
        argv += ["--ro-bind", str(tree), str(tree)]
    return executable, argv


def sandbox_command(
    bwrap: str,
    paths: EnclavePaths,
    *,
    image_fd: int,
    control_fd: int,
    info_fd: int,
    forwards: Sequence[str],
    memory_mib: int,
    runs_cgroup: str | None = None,
) -> list[str]:
    """The bubblewrap command line of an enclave (see the module docstring).

    ``image_fd`` is the checked image tree, mounted read-only at ``/image``;
    ``control_fd`` is the listening control socket the server inherits;
    bubblewrap writes ``{"child-pid": N}`` (the sandbox's init) to ``info_fd``.
    ``runs_cgroup``, when the limits made one, is the cgroup the server gets
    (read-write: the enclave's one writable host path) to limit each run.
    """
    from strongroom.server.isolation import filesystem_sizes
    from strongroom.server.jail import VISIBLE_PROC

    executable, system = host_system_binds()
    shared_mib, apps_mib = filesystem_sizes(memory_mib)
    argv = [
        bwrap,
        "--info-fd",
        str(info_fd),
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        SANDBOX_HOSTNAME,
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    for cap in SANDBOX_CAPS:
        argv += ["--cap-add", cap]
    argv += [
        "--clearenv",
        "--setenv",
        "PATH",
        f"{executable.parent}:/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",  # noqa: S108 - the sandbox's private tmpfs
        "--setenv",
        "LANG",
        "C.UTF-8",
        *system,
        "--ro-bind-fd",
        str(image_fd),
        IMAGE_MOUNT,
        # The enclave's init covers the dangerous parts of this /proc and locks
        # it (with every other mount) before the image's code runs.
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(SANDBOX_TMP_MIB * _MIB),
        "--tmpfs",
        "/tmp",  # noqa: S108 - the sandbox's private tmpfs
        "--perms",
        "0700",
        "--size",
        str(apps_mib * _MIB),
        "--tmpfs",
        APPS_DIR,
        "--perms",
        "0700",
        "--size",
        str(shared_mib * _MIB),
        "--tmpfs",
        SHARED_DIR,
        "--ro-bind",
        str(paths.attestor_socket),
        ATTESTOR_SOCKET,
        "--ro-bind",
        str(paths.egress_socket),
        EGRESS_SOCKET,
    ]
    if runs_cgroup is not None:
        argv += ["--bind", runs_cgroup, RUNS_CGROUP]
    argv += ["--ro-bind", str(enclave_init_program()), INIT_PROGRAM]
    argv += [
        "--dir",
        VISIBLE_PROC,
        "--remount-ro",
        "/",
        "--chdir",
        APPS_DIR,
        "--",
        str(executable),
        "-S",
        "-E",
        INIT_PROGRAM,
        "--enclave-init",
        *IMAGE_SITES,
        "--",
        ENTRY_MODULE,
        "--listen",
        f"fd:{control_fd}",
        "--attestor",
        ATTESTOR_SOCKET,
        "--egress",
        f"unix:{EGRESS_SOCKET}",
        "--memory-mib",
        str(memory_mib),
    ]
    for forward in forwards:
        argv += ["--forward", forward]
    return argv


def bwrap_path() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise UnavailableError(
            "bubblewrap (bwrap) is not installed: the local enclave needs it",
            hint="install it: apt-get install bubblewrap (or dnf install bubblewrap)",
        )
    return bwrap


_USERNS_PROBE = (
    "import ctypes, sys; "
    "sys.exit(ctypes.CDLL(None, use_errno=True).unshare(0x10000000) and "
    "'nested user namespaces are not allowed')"
)


def check_sandbox() -> None:
    """Run a trial sandbox; raise a one-line error saying what to install or enable."""
    bwrap = bwrap_path()
    with contextlib.suppress(OSError, ValueError):
        if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
            raise UnavailableError(
                "user namespaces are disabled on this machine: the local enclave needs them",
                hint="enable them: sysctl -w user.max_user_namespaces=15000",
            )
    from strongroom.server.isolation import interpreter_trees

    executable, _ = interpreter_trees()
    # the sandbox, and the child user namespace its init moves into
    probe = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID)]
    probe += [arg for cap in SANDBOX_CAPS for arg in ("--cap-add", cap)]
    probe += ["--ro-bind", "/", "/", "--", str(executable), "-S", "-E", "-c", _USERNS_PROBE]
    result = subprocess.run(probe, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        raise UnavailableError(
            f"bubblewrap cannot create a sandbox here: {detail}",
            hint="allow user namespaces (sysctl kernel.unprivileged_userns_clone=1; on "
            "Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0)",
        )


def cleanup(paths: EnclavePaths, limits: Limits | None) -> None:
    """Remove what a (dead) enclave leaves: its sockets and cgroups. (Its image stays
    in the image cache, for the next start.)"""
    for socket_path in paths.sockets():
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
    if limits is not None:
        limits.release()


def record_limits(rec: services.ServiceRecord) -> Limits | None:
    raw = rec.extra.get("limits")
    if not isinstance(raw, dict):
        return None
    try:
        return Limits.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None


def describe(control_socket: Path, *, timeout: float = DESCRIBE_TIMEOUT_S) -> dict[str, Any] | None:
    """The enclave server's /v1/describe, or None if it does not answer (yet)."""
    try:
        with (
            HttpClient(
                UnixAddress(str(control_socket)), timeout=timeout, connect_timeout=timeout
            ) as client,
            client.request("GET", "/v1/describe") as response,
        ):
            body = response.json() if response.status == 200 else None
    except (ChannelError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _image_cache_info(rec: services.ServiceRecord) -> dict[str, Any]:
    """What the supervisor recorded about the image cache's copy it used (or ``{}``)."""
    info = rec.extra.get("image_cache")
    return info if isinstance(info, dict) else {}


def _time(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


def _measurements(raw: object) -> Measurements | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Measurements(pcr0=raw["pcr0"], pcr1=raw["pcr1"], pcr2=raw["pcr2"])
    except (KeyError, ValueError):
        return None


def _with_answer(status: EnclaveStatus, responding: bool) -> EnclaveStatus:
    if responding:
        return dataclasses.replace(status, responding=True)
    reason = f"{status.reason}; {NOT_RESPONDING}" if status.reason else NOT_RESPONDING
    return dataclasses.replace(status, responding=False, reason=reason)


class SandboxRuntime:
    """The local :class:`~strongroom.enclave.base.EnclaveRuntime` (bubblewrap)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.run_dir = workspace.run_dir

    # --- start ----------------------------------------------------------------

    def start(self, spec: EnclaveSpec, *, progress: StartProgress | None = None) -> StartResult:
        check_name(spec.name)
        cpus_available = os.cpu_count() or 1
        if not 0 < spec.cpus <= cpus_available:
            raise UsageError(
                f"--cpus {spec.cpus}: this machine has {cpus_available} CPU(s)",
                hint=f"choose 1 to {cpus_available}",
            )
        if spec.memory_mib < MIN_MEMORY_MIB:
            raise UsageError(f"--memory {spec.memory_mib}: the minimum is {MIN_MEMORY_MIB} MiB")
        image = spec.image.absolute()
        if not image.is_file():
            raise NotFoundError(
                f"no image at {image}", hint="build one with `strongroom image build`"
            )
        from strongroom.image import read_runtime_descriptor

        read_runtime_descriptor(image)  # a Nitro EIF or not an EIF: fail now, not in the supervisor
        warnings = tuple(w for w in [memory_warning(spec.memory_mib, image.stat().st_size)] if w)
        check_sandbox()
        paths = EnclavePaths.of(self.run_dir, spec.name)
        (self.run_dir / KIND).mkdir(mode=0o700, parents=True, exist_ok=True)
        with locked(self.run_dir / KIND / f".{spec.name}.start.lock"):
            existing = services.load(self.run_dir, KIND, spec.name)
            if existing is not None and existing.is_alive():
                raise AlreadyExistsError(
                    f"an enclave named {spec.name!r} is already running (pid {existing.pid})",
                    hint=f"stop it with `strongroom enclave stop {spec.name}`, or choose --name",
                )
            if existing is not None:
                self._forget(existing, paths)
            paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for log in (paths.console_log, paths.supervisor_log):
                with contextlib.suppress(FileNotFoundError):
                    log.unlink()
            spec_json = json.dumps({**spec.to_json(), "image": str(image)})
            argv = [sys.executable, "-m", "strongroom.enclave.supervisor"]
            argv += ["--workspace", str(self.workspace.root), "--spec", spec_json]
            process = services.spawn_detached(argv, log_path=paths.supervisor_log)
            self._wait_recorded(spec.name, process)
        status = self._wait_running(spec.name, process, paths, progress or (lambda _phase: None))
        rec = services.load(self.run_dir, KIND, spec.name)
        limits = record_limits(rec) if rec is not None else None
        discarded = _image_cache_info(rec).get("discarded") if rec is not None else None
        if discarded:
            warnings += (
                f"the image cache's copy of this image failed its check ({discarded}): it was "
                "set aside and the image unpacked again; something changed the workspace's "
                "run/image-cache",
            )
        if limits is not None and limits.mechanism == "rlimit":
            warnings += (
                f"no cgroup memory controller ({limits.note}): memory is capped with "
                "RLIMIT_AS only, so an out-of-memory kill cannot be reported, and CPUs are "
                "not limited",
            )
        return StartResult(status, warnings)

    def _wait_recorded(self, name: str, process: services.DetachedProcess) -> None:
        """Hold the start lock until the supervisor has recorded itself (or died)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            rec = services.load(self.run_dir, KIND, name)
            if rec is not None and rec.pid == process.pid:
                return
            time.sleep(_POLL_S / 5)

    def _wait_running(
        self,
        name: str,
        process: services.DetachedProcess,
        paths: EnclavePaths,
        progress: StartProgress,
    ) -> EnclaveStatus:
        """Wait until the server answers, telling ``progress`` each phase the supervisor
        records, then that it waits for the server."""
        deadline = time.monotonic() + START_TIMEOUT_S
        shown = None
        while True:
            rec = services.load(self.run_dir, KIND, name)
            exited = process.poll() is not None
            state = rec.extra.get("state") if rec is not None else None
            phase = rec.extra.get("phase") if rec is not None else None
            if state == "RUNNING":
                phase = "waiting for the enclave server to answer"
            if isinstance(phase, str) and phase != shown:
                progress(shown := phase)
            if rec is None or rec.pid != process.pid:
                if exited:
                    raise UnavailableError(
                        f"the supervisor of enclave {name!r} exited before it recorded itself",
                        hint=f"see {paths.supervisor_log}",
                    )
            elif exited or state in ("STOPPED", "FAILED"):
                raise self._start_error(self._status_of(rec), rec, paths)
            elif state == "RUNNING" and describe(paths.control_socket) is not None:
                return dataclasses.replace(self._status_of(rec), responding=True)
            if time.monotonic() > deadline:
                with contextlib.suppress(NotFoundError):
                    self.stop(name)
                raise UnavailableError(
                    f"enclave {name!r} did not answer within {START_TIMEOUT_S:.0f} s",
                    hint=self._console_hint(name, paths),
                )
            time.sleep(_POLL_S)

    def _start_error(
        self, status: EnclaveStatus, rec: services.ServiceRecord, paths: EnclavePaths
    ) -> StrongroomError:
        error = rec.extra.get("error")
        if isinstance(error, dict):
            message = f"enclave {status.name!r} did not start: {error.get('message')}"
            hint = str(error.get("hint") or "") or None
            if error.get("family") == "input":
                return InvalidInputError(message, hint=hint)
            if error.get("family") == "evidence":
                return EvidenceError(message, hint=hint)
            return StrongroomError(message, hint=hint)
        return UnavailableError(
            f"enclave {status.name!r} died during boot: {status.reason}",
            hint=self._console_hint(status.name, paths),
        )

    @staticmethod
    def _console_hint(name: str, paths: EnclavePaths) -> str:
        if paths.console_log.exists():
            return f"see its console: strongroom enclave logs {name}"
        return (
            f"start it with --debug to capture its console; supervisor log: {paths.supervisor_log}"
        )

    # --- status ---------------------------------------------------------------

    def _status_of(self, rec: services.ServiceRecord) -> EnclaveStatus:
        extra = rec.extra
        raw_state = extra.get("state")
        state: State = (
            raw_state if raw_state in ("STARTING", "RUNNING", "STOPPED", "FAILED") else "FAILED"
        )
        reason = extra.get("reason")
        reason = reason if isinstance(reason, str) else None
        oom_killed = bool(extra.get("oom_killed"))
        limits = record_limits(rec)
        # A supervisor that has recorded its outcome is only cleaning up.
        alive = state in ("STARTING", "RUNNING") and rec.is_alive()
        if state in ("STARTING", "RUNNING") and not alive:
            state, reason = "FAILED", "its supervisor died (killed?), and the sandbox with it"
        elif state == "RUNNING" and limits is not None:
            problems = []
            if kills := limits.oom_kills():
                oom_killed = True
                problems.append(
                    f"{kills} process(es) in the enclave were killed: out of memory "
                    f"(limit {limits.memory_mib} MiB)"
                )
            if refused := limits.refused_forks():
                problems.append(
                    f"{refused} fork(s) were refused: the enclave reached its limit of "
                    f"{limits.pids} tasks"
                )
            reason = "; ".join(problems) or reason
        raw_spec = extra.get("spec")
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        exit_code = extra.get("exit_code")
        cpu_ids = extra.get("cpu_ids")
        reused = _image_cache_info(rec).get("reused")
        return EnclaveStatus(
            name=rec.name,
            state=state,
            enclave_id=str(extra.get("enclave_id", "")),
            image=str(spec.get("image", "")),
            debug=bool(spec.get("debug")),
            cpus=int(spec.get("cpus", 0)),
            memory_mib=int(spec.get("memory_mib", 0)),
            pid=rec.pid if alive else None,
            addresses=dict(rec.addresses) if alive else {},
            measurements=_measurements(extra.get("measurements")),
            started_at=_time(rec.started_at),
            ended_at=_time(extra.get("ended_at")),
            exit_code=exit_code if isinstance(exit_code, int) else None,
            oom_killed=oom_killed,
            reason=reason,
            limits=limits.describe() if limits is not None else None,
            cpu_ids=tuple(c for c in cpu_ids if isinstance(c, int))
            if isinstance(cpu_ids, list)
            else (),
            image_copy=None if reused is None else "reused" if reused else "unpacked",
        )

    def status(self, name: str | None = None, *, probe: bool = True) -> list[EnclaveStatus]:
        if name is None:
            statuses = [self._status_of(rec) for rec in services.list(self.run_dir, KIND)]
        else:
            rec = services.load(self.run_dir, KIND, check_name(name))
            if rec is None:
                raise self._not_found(name)
            statuses = [self._status_of(rec)]
        return self._probed(statuses) if probe else statuses

    def _probed(self, statuses: list[EnclaveStatus]) -> list[EnclaveStatus]:
        """``statuses``, each RUNNING one with whether its server answers right now.

        A live supervisor says nothing about the server inside: it may be
        stopped (SIGSTOP), wedged, or thrashing at its memory limit. One
        /v1/describe per running enclave, all at once, so ``status`` takes
        one round trip when they answer and :data:`STATUS_PROBE_TIMEOUT_S` when not.
        """
        running = [s for s in statuses if s.state == "RUNNING"]
        if not running:
            return statuses

        def probe(status: EnclaveStatus) -> bool:
            control = EnclavePaths.of(self.run_dir, status.name).control_socket
            return describe(control, timeout=STATUS_PROBE_TIMEOUT_S) is not None

        if len(running) == 1:
            answers = {running[0].name: probe(running[0])}
        else:
            import concurrent.futures  # not on the paths that need no probe (run, push, ...)

            with concurrent.futures.ThreadPoolExecutor(max_workers=len(running)) as pool:
                answers = dict(
                    zip((s.name for s in running), pool.map(probe, running), strict=True)
                )
        return [_with_answer(s, answers[s.name]) if s.name in answers else s for s in statuses]

    def _not_found(self, name: str) -> NotFoundError:
        running = [rec.name for rec in services.list(self.run_dir, KIND) if rec.is_alive()]
        hint = (
            f"running enclaves: {', '.join(running)}"
            if running
            else "no enclave is running; start one with `strongroom enclave start IMAGE`"
        )
        return NotFoundError(f"no enclave named {name!r}", hint=hint)

    # --- stop -----------------------------------------------------------------

    def stop(self, name: str | None = None) -> list[EnclaveStatus]:
        if name is None:
            records = services.list(self.run_dir, KIND)
        else:
            rec = services.load(self.run_dir, KIND, check_name(name))
            if rec is None:
                raise self._not_found(name)
            records = [rec]
        stopped = []
        for rec in records:
            paths = EnclavePaths.of(self.run_dir, rec.name)
            if rec.is_alive():
                services.stop(rec, timeout=STOP_TIMEOUT_S)
                rec = services.load(self.run_dir, KIND, rec.name) or rec
            stopped.append(self._status_of(rec))
            self._forget(rec, paths)
        return stopped

    def _forget(self, rec: services.ServiceRecord, paths: EnclavePaths) -> None:
        """Clean up after a dead supervisor (a no-op after a clean exit) and drop its record."""
        cleanup(paths, record_limits(rec))
        services.remove(self.run_dir, KIND, rec.name)

    # --- logs -----------------------------------------------------------------

    def logs(self, name: str, *, follow: bool = False) -> Iterator[bytes]:
        rec = services.load(self.run_dir, KIND, check_name(name))
        if rec is None:
            raise self._not_found(name)
        spec = rec.extra.get("spec")
        if not isinstance(spec, dict) or not spec.get("debug"):
            raise UsageError(f"enclave {name!r} was not started with --debug", hint=_NOT_DEBUG_HINT)
        return self._read_console(rec, EnclavePaths.of(self.run_dir, name).console_log, follow)

    @staticmethod
    def _read_console(rec: services.ServiceRecord, path: Path, follow: bool) -> Iterator[bytes]:
        try:
            console = path.open("rb")
        except FileNotFoundError:
            return
        with console:
            while True:
                alive = follow and rec.is_alive()
                while chunk := console.read(LOGS_CHUNK):
                    yield chunk
                if not alive:
                    return
                time.sleep(0.2)
