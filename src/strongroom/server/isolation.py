"""The server's side of the app jail: what each run may see, as whom, with how much.

:mod:`strongroom.server.jail` does the isolating (namespaces, a private root,
seccomp); this module decides its inputs, in one place for both targets:

- **the view**: the system's ``/usr`` and the interpreter's tree (what
  :func:`interpreter_trees` names, the same trees the local sandbox binds),
  the image's app packages, read-only; the run's private folder and the
  shared folder, read-write. Nothing else the server can see;
- **the identity**: where the enclave has many uids (a Nitro enclave, where
  the server is real root), every concurrent run gets its own uid
  (:data:`RUN_UID_BASE` + slot) and all runs share one group for the shared
  folder; in the local sandbox (a user namespace that maps one uid) every run
  keeps that uid and is separated by its namespaces alone;
- **the limits**: the run's process count (from the manifest), and the sizes
  of the two memory-backed filesystems every byte an app or the host writes
  lands on (:func:`filesystem_sizes`): the shared folder, and the app
  filesystem holding each run's folder (its files, ``/tmp`` and ``/dev/shm``).
  Their sum leaves the server room, so a writer that fills one gets
  ``ENOSPC`` and the server keeps running; an app that allocates too much is
  the first thing the kernel kills.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from strongroom.errors import UnavailableError

#: Where the app finds its files inside the jail (its working directory and HOME).
APP_ROOT = "/enclave/app"
#: Runs get uids from here up where the enclave has them (Nitro).
RUN_UID_BASE = 100_000
#: The group every run shares there, so all of them can write the shared folder.
SHARED_GID = 100_000
#: Concurrent runs an enclave accepts (each holds a uid slot).
MAX_CONCURRENT_RUNS = 64
#: How long a run's cgroup may take to empty once its jail is gone.
CGROUP_EMPTY_WAIT_S = 30.0
#: The kernel kills the app first when the enclave runs out of memory.
APP_OOM_SCORE_ADJ = 1000
#: Memory kept out of the filesystems for the server (and the apps' own memory):
#: a quarter of the enclave, at least this much.
MIN_SERVER_RESERVE_MIB = 96
#: What the filesystems get of the rest: the shared folder twice the app filesystem.
SHARED_PARTS, APPS_PARTS = 2, 1
#: System trees the sandbox and the jail expose, or their symlinks into /usr.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache",)
#: What TLS clients of an app with egress look for (the system's CA certificates).
NETWORK_FILES = ("/etc/ssl",)
_FULL_UID_MAP = ("0", "0", "4294967295")

#: The app's interpreter runs this with ``-I -S``: the app's folder and the image's
#: packages first on sys.path, then the entry script as ``__main__`` (what
#: ``python script.py`` does, which ``-I`` would not: it leaves out the script's folder).
APP_BOOTSTRAP = """\
import sys
from importlib.machinery import ModuleSpec, SourceFileLoader
entry = sys.argv[1]
del sys.argv[0]
sys.path[:0] = [entry.rpartition("/")[0], *{packages!r}]
loader = SourceFileLoader("__main__", entry)
main = type(sys)("__main__")
main.__file__, main.__loader__ = entry, loader
main.__spec__ = ModuleSpec("__main__", loader, origin=entry)
sys.modules["__main__"] = main
loader.exec_module(main)
"""


def interpreter_trees() -> tuple[Path, list[Path]]:
    """The interpreter to run, and the trees outside ``/usr`` it needs (its prefix)."""
    executable = Path(os.path.realpath(sys.executable))
    prefix = Path(os.path.realpath(sys.base_prefix))
    trees = [] if prefix.is_relative_to("/usr") else [prefix]
    if not executable.is_relative_to("/usr") and not executable.is_relative_to(prefix):
        trees.append(executable.parent)
    return executable, trees


def filesystem_sizes(memory_mib: int) -> tuple[int, int]:
    """(shared folder, app filesystem) sizes in MiB for an enclave of ``memory_mib``.

    tmpfs pages belong to no process, so the OOM killer cannot free them: the
    filesystems must never be able to take the server's memory.
    """
    budget = max(0, memory_mib - max(MIN_SERVER_RESERVE_MIB, memory_mib // 4))
    apps = max(1, budget * APPS_PARTS // (SHARED_PARTS + APPS_PARTS))
    return max(1, budget - apps), apps


@dataclass(frozen=True)
class RunFolder:
    """A run's private folder on the app filesystem, and its parts."""

    root: Path

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def shm(self) -> Path:
        return self.root / "shm"

    def create(self) -> None:
        self.root.mkdir(mode=0o700, parents=True)
        for path in (self.app, self.tmp, self.shm):
            path.mkdir(mode=0o700)


@dataclass(frozen=True)
class RunIdentity:
    uid: int
    gid: int


class Identities:
    """Hands each concurrent run its identity (see the module docstring)."""

    def __init__(self, *, distinct: bool | None = None) -> None:
        self.distinct = _has_many_uids() if distinct is None else distinct
        self._free = list(range(MAX_CONCURRENT_RUNS - 1, -1, -1))
        self._lock = threading.Lock()

    @contextmanager
    def claim(self) -> Iterator[RunIdentity]:
        if not self.distinct:
            yield RunIdentity(os.getuid(), os.getgid())
            return
        with self._lock:
            if not self._free:
                raise UnavailableError(
                    f"the enclave already runs {MAX_CONCURRENT_RUNS} apps",
                    hint="wait for a run to end, or start another enclave",
                )
            slot = self._free.pop()
        try:
            yield RunIdentity(RUN_UID_BASE + slot, SHARED_GID)
        finally:
            with self._lock:
                self._free.append(slot)


class RunCgroups:
    """One cgroup per run, with the run's process limit, where the runtime delegates a
    cgroup to the enclave (:data:`~strongroom.server.RUNS_CGROUP`, cgroup v1).

    ``RLIMIT_NPROC`` limits a run's processes too, but the kernel does not apply it
    to the host's root, which the local sandbox's uid is on CI; the cgroup does.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root if root is not None and (root / "cgroup.procs").exists() else None

    def create(self) -> Path | None:
        """A cgroup for a launcher started ahead (it joins at once: moving a process
        between cgroups waits for an RCU grace period, which no run should wait for)."""
        if self.root is None:
            return None
        group = self.root / secrets.token_hex(8)
        group.mkdir()
        return group

    @staticmethod
    def limit(group: Path | None, processes: int) -> None:
        """Set the run's process limit, before its launcher forks anything."""
        if group is not None:
            (group / "pids.max").write_text(str(processes))

    @staticmethod
    def release(group: Path | None) -> None:
        """Empty and remove ``group`` in the background: it empties only once the server
        has reaped the launcher, which needs the event loop this must not block."""
        if group is not None:
            threading.Thread(target=_empty_and_remove, args=(group,), daemon=True).start()


def _empty_and_remove(group: Path) -> None:
    """Kill anything still in ``group`` (the jail's PID namespace normally took it all
    already: this is the second guarantee), then remove it."""
    deadline = time.monotonic() + CGROUP_EMPTY_WAIT_S
    while True:
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # left for the runtime, which removes the whole tree at stop
            time.sleep(0.02)


def _has_many_uids() -> bool:
    try:
        return Path("/proc/self/uid_map").read_text().split() == list(_FULL_UID_MAP)
    except OSError:
        return False


@dataclass(frozen=True)
class JailSpec:
    """One run's jail, as the launcher's command line (:func:`command`)."""

    folder: RunFolder  # the run's private folder, as the server sees it
    shared_dir: Path
    packages: tuple[str, ...]  # the image's app packages (read-only, on sys.path)
    entry: str  # relative to the app folder, already validated
    args: tuple[str, ...]
    env: Mapping[str, str]
    identity: RunIdentity
    processes: int
    #: > 0: the app declared egress; its proxy listens on this port of the jail's loopback
    proxy_port: int = 0

    def arguments(self) -> list[str]:
        """The jail's options and the app's command line, as a launcher reads them."""
        executable, trees = interpreter_trees()
        argv = ["--uid", str(self.identity.uid), "--gid", str(self.identity.gid)]
        argv += ["--processes", str(self.processes)]
        argv += ["--cwd", APP_ROOT]
        if self.proxy_port:
            argv += ["--proxy-port", str(self.proxy_port)]
        for tree in ["/usr", *map(str, trees), *self.packages]:
            argv += ["--ro", tree]
        for name in SYSTEM_DIRS:
            path = Path(name)
            if path.is_symlink():
                argv += ["--link", name, os.readlink(path)]
            elif path.is_dir():
                argv += ["--ro", name]
        files = [*SYSTEM_FILES, *(NETWORK_FILES if self.proxy_port else ())]
        argv += [arg for file in files if Path(file).exists() for arg in ("--ro", file)]
        argv += ["--rw", str(self.folder.app), APP_ROOT]
        argv += ["--rw", str(self.folder.tmp), "/tmp"]  # noqa: S108 - the run's own
        argv += ["--rw", str(self.folder.shm), "/dev/shm"]  # noqa: S108 - the run's own
        argv += ["--rw", str(self.shared_dir), str(self.shared_dir)]
        for name, value in self.env.items():
            argv += ["--env", f"{name}={value}"]
        bootstrap = APP_BOOTSTRAP.format(packages=list(self.packages))
        argv += ["--", str(executable), "-I", "-S", "-u", "-c", bootstrap]
        return [*argv, f"{APP_ROOT}/{self.entry}", *self.args]


def app_environment(allowed: Mapping[str, str]) -> dict[str, str]:
    """What the app's process environment holds: ours, then what the host may set."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": APP_ROOT,
        "TMPDIR": "/tmp",  # noqa: S108 - the jail's own tmpfs
        "LANG": "C.UTF-8",
        **allowed,
    }


def hand_over(folder: RunFolder, identity: RunIdentity) -> None:
    """Give the run's uid its folder and decrypted files (where runs have their own uid)."""
    if identity.uid == os.getuid():
        return
    for root, dirs, files in os.walk(folder.root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), identity.uid, identity.gid, follow_symlinks=False)
    os.chown(folder.root, identity.uid, identity.gid)


__all__ = [
    "APP_ROOT",
    "Identities",
    "JailSpec",
    "RunCgroups",
    "RunFolder",
    "RunIdentity",
    "app_environment",
    "filesystem_sizes",
    "hand_over",
    "interpreter_trees",
]
