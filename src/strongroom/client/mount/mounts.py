"""Mounting, unmounting and finding the synced folders of a workspace.

A mount is a process of its own (``strongroom mount DIR --foreground``, which
``strongroom mount DIR`` starts in the background) recorded as
``run/mount/<name>.json`` (:mod:`strongroom._internal.services`) with the
directory and the enclave it serves. The kernel's mount table is the truth
about what is mounted; a record whose process is gone is dropped.

Unmounting is ``fusermount3 -u`` (lazily, ``-z``, when something still has
the folder open, so that it always works), then waiting until the mount's
process has sent what it still buffered and exited.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from strongroom._internal import services
from strongroom.errors import AlreadyExistsError, StrongroomError, UnavailableError, UsageError

if TYPE_CHECKING:
    from strongroom.client.enclave import EnclaveClient
    from strongroom.workspace import Workspace

KIND = "mount"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 30.0
_FUSE_HINT = "install FUSE 3 (Debian: `sudo apt-get install fuse3`)"


class FuseMissingError(UnavailableError):
    default_hint = _FUSE_HINT


@dataclass(frozen=True)
class Mount:
    directory: Path
    enclave: str
    read_only: bool
    record: services.ServiceRecord

    @property
    def state(self) -> str:
        """RUNNING, or LOST once its enclave stopped answering (every operation fails)."""
        return str(self.record.extra.get("state"))

    def to_json(self) -> dict[str, object]:
        return {
            "directory": str(self.directory),
            "enclave": self.enclave,
            "state": self.state,
            "reason": self.record.extra.get("reason"),
            "read_only": self.read_only,
            "pid": self.record.pid,
            "log": self.record.log,
        }


def record_name(directory: Path) -> str:
    return "m-" + hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]


def mount_points() -> set[Path]:
    """Every mount point in this process's mount namespace (``/proc/self/mountinfo``)."""
    points = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ")[4]
            # the kernel escapes space, tab, newline and backslash as \\ooo
            raw = field.decode("unicode_escape").encode("latin-1")
            points.add(Path(os.fsdecode(raw)))
    return points


def is_mounted(directory: Path) -> bool:
    return directory in mount_points()


def active(ws: Workspace) -> list[Mount]:
    """The workspace's live mounts; records of dead ones are removed on the way."""
    points = mount_points()
    found = []
    for rec in services.list(ws.run_dir, KIND):
        directory = Path(str(rec.extra.get("directory", "")))
        if not rec.is_alive():
            services.remove(ws.run_dir, KIND, rec.name)
            continue
        if rec.extra.get("state") in ("RUNNING", "LOST") and directory in points:
            found.append(
                Mount(
                    directory, str(rec.extra.get("enclave")), bool(rec.extra.get("read_only")), rec
                )
            )
    return found


def of_enclave(ws: Workspace, name: str, *, running: bool = False) -> list[Mount]:
    return [m for m in active(ws) if m.enclave == name and (m.state == "RUNNING" or not running)]


def resolve(directory: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(directory)))


def check_mountable(directory: Path) -> None:
    """Refuse a directory that cannot take the mount, before anything starts."""
    if not directory.exists():
        raise UsageError(f"{directory} does not exist", hint=f"make it: mkdir -p {directory}")
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    if is_mounted(directory):
        raise AlreadyExistsError(
            f"{directory} is already a mount point",
            hint=f"unmount it first: strongroom unmount {directory}",
        )
    if any(directory.iterdir()):
        raise UsageError(
            f"{directory} is not empty: the mount would hide what is in it",
            hint="mount on an empty directory",
        )


def fusermount() -> str:
    found = shutil.which("fusermount3")
    if found is None:
        raise FuseMissingError("fusermount3 is not installed")
    return found


def log_path(ws: Workspace, directory: Path) -> Path:
    return ws.run_dir / KIND / f"{record_name(directory)}.log"


def _logs_to(path: Path) -> bool:
    """Whether this process's stderr is ``path`` (a background mount's log)."""
    try:
        mine, there = os.fstat(2), path.stat()
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def serve(ws: Workspace, client: EnclaveClient, directory: Path, *, read_only: bool) -> None:
    """Serve the mount in this process until it is unmounted (``--foreground``)."""
    try:
        from strongroom.client.mount.fs import SharedFolderFS, StrongroomFuse
    except (OSError, ImportError) as e:  # mfusepy finds no libfuse3
        raise FuseMissingError(f"FUSE 3 is not available: {e}") from e
    fusermount()
    check_mountable(directory)
    identity_key = client.describe().get("identity_key")
    if not isinstance(identity_key, str):
        raise UnavailableError(f"enclave {client.name!r} did not say who it is")
    name = record_name(directory)
    log = log_path(ws, directory)
    services.record_self(
        ws.run_dir,
        KIND,
        name,
        log=log if _logs_to(log) else None,
        extra={
            "directory": str(directory),
            "enclave": client.name,
            "enclave_id": client.enclave_id,
            "read_only": read_only,
            "state": "STARTING",
        },
    )

    def ready() -> None:
        services.update(ws.run_dir, KIND, name, state="RUNNING")

    def lost(reason: str) -> None:
        services.update(ws.run_dir, KIND, name, state="LOST", reason=reason)

    operations = SharedFolderFS(
        client, identity_key=identity_key, read_only=read_only, on_ready=ready, on_lost=lost
    )
    options: dict[str, object] = {
        "foreground": True,
        "fsname": f"strongroom:{client.name}",
        "subtype": "strongroom",
        "default_permissions": True,
        "max_threads": 16,
    }
    if read_only:
        options["ro"] = True
    try:
        StrongroomFuse(operations, str(directory), **options)
    except RuntimeError as e:
        raise UnavailableError(
            f"could not mount {directory}: libfuse failed ({e})",
            hint="see the messages above; is /dev/fuse there and may you use it?",
        ) from e
    finally:
        services.remove(ws.run_dir, KIND, name)


def start(ws: Workspace, enclave: str, directory: Path, *, read_only: bool) -> Mount:
    """Start a background mount process; return once the folder is mounted."""
    fusermount()
    check_mountable(directory)
    log = log_path(ws, directory)
    argv = [sys.executable, "-m", "strongroom", "--home", str(ws.root), "mount", str(directory)]
    argv += ["--enclave", enclave, "--foreground", *(["--read-only"] if read_only else [])]
    process = services.spawn_detached(argv, log_path=log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UnavailableError(
                f"the mount of {directory} exited during start: {_last_line(log)}",
                hint=f"the whole log: {log}",
            )
        for mount in active(ws):
            if mount.directory == directory and mount.record.pid == process.pid:
                if mount.state != "RUNNING":
                    unmount(ws, directory)
                    raise UnavailableError(
                        f"the enclave stopped answering as {directory} was mounted"
                    )
                return mount
        time.sleep(0.05)
    services.stop(process.pid)
    raise UnavailableError(f"the mount of {directory} did not start in time", hint=f"see {log}")


def unmount(ws: Workspace, directory: Path) -> bool:
    """Unmount ``directory``; True if it had to be lazy (the folder was busy).

    Returns once the mount's process has sent what it buffered and exited.
    """
    record = services.load(ws.run_dir, KIND, record_name(directory))
    if not is_mounted(directory):
        if record is not None and not record.is_alive():
            services.remove(ws.run_dir, KIND, record.name)
        raise UsageError(
            f"{directory} is not mounted", hint="see `strongroom mount` for the mounts"
        )
    lazy = False
    done = subprocess.run([fusermount(), "-u", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        if "busy" not in done.stderr:
            raise StrongroomError(
                f"could not unmount {directory}: {done.stderr.strip()}",
                hint="is it a Strongroom mount? (`strongroom mount` lists them)",
            )
        # something still has it open: detach it now, the kernel finishes when they let go
        subprocess.run([fusermount(), "-u", "-z", str(directory)], check=True, capture_output=True)
        lazy = True
    if record is not None and not lazy:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while record.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if record.is_alive():
            services.stop(record)
        services.remove(ws.run_dir, KIND, record.name)
    return lazy


def settle(directory: Path) -> None:
    """Make the mount and its enclave agree: an ``fsync`` of the folder itself.

    The mount sends what is still buffered or waiting (:mod:`.writeback`),
    reports a write that failed, and drops what it and the kernel cache, so
    the app's latest files show at the next look.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        raise UnavailableError(
            f"a write through the mount on {directory} failed: {e.strerror}",
            hint="see the mount's log (`strongroom --json mount` names it)",
        ) from e
    finally:
        os.close(fd)


def unmount_enclave(ws: Workspace, enclave: str) -> list[Mount]:
    """Unmount every mount of ``enclave`` (before it stops); the mounts that were."""
    mounts = of_enclave(ws, enclave)
    for mount in mounts:
        with contextlib.suppress(StrongroomError):
            unmount(ws, mount.directory)
    return mounts


def _last_line(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error: ")
