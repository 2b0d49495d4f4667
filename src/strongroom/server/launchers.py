"""Jail launchers started ahead of the runs that will use them.

Starting Python and importing the jail is most of a jail's start-up (~25 ms
of every run), so the server keeps one launcher started and waiting: it holds
nothing but its pipes (the run's output pipes, the status pipe, the spec pipe)
until a run hands it its :class:`~strongroom.server.isolation.JailSpec`, like
the spare recipient keys of :mod:`strongroom.attestation.release`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import strongroom
from strongroom.server.isolation import (
    APP_OOM_SCORE_ADJ,
    JailSpec,
    RunCgroups,
    interpreter_trees,
)

#: How long the jail may take to start the app (namespaces, mounts, exec).
JAIL_START_TIMEOUT_S = 30.0
#: The jail's setup errors are one line, at most this long.
SETUP_MESSAGE_MAX = 4096

#: The launcher is imported from the server's own package tree (so its bytecode
#: is cached with the server's), then reads the jail's arguments from its spec pipe.
_LAUNCHER = """\
import sys
sys.path.insert(0, {site!r})
from strongroom.server import jail
sys.exit(jail.main(sys.argv[1:]))
"""


def launcher_command(
    *, status_fd: int, result_fd: int, spec_fd: int, cgroup: Path | None
) -> list[str]:
    """A launcher that waits for its :meth:`JailSpec.arguments` on ``spec_fd``."""
    executable, _ = interpreter_trees()
    site = str(Path(strongroom.__file__).parents[1])
    argv = [str(executable), "-I", "-S"]
    if sys.pycache_prefix:
        argv += ["-X", f"pycache_prefix={sys.pycache_prefix}"]
    argv += ["-c", _LAUNCHER.format(site=site)]
    argv += ["--status-fd", str(status_fd), "--result-fd", str(result_fd)]
    argv += ["--spec-fd", str(spec_fd), "--oom-score-adj", str(APP_OOM_SCORE_ADJ)]
    return [*argv, "--cgroup", "" if cgroup is None else str(cgroup)]


@dataclass
class Started:
    """How a jail started: ``error`` is empty when the app runs; ``listener`` is the
    socket the jail listens on for the app's egress (if its manifest declared any)."""

    error: str = ""
    listener: socket.socket | None = None


@dataclass
class Launcher:
    """A started launcher, waiting for its run: its process (whose output pipes are the
    run's), the read ends of its status and result pipes, the write end of its spec pipe."""

    process: asyncio.subprocess.Process
    status_read: int
    result_read: int
    spec_write: int
    #: The run's own cgroup, which the launcher joined while it waited (None: none).
    cgroup: Path | None = None

    async def start(self, spec: JailSpec) -> Started:
        """Hand the launcher its jail and wait until the app runs (or the jail says why
        it could not: one line)."""
        data = "\0".join(spec.arguments()).encode()
        fd, self.spec_write = self.spec_write, -1
        await asyncio.to_thread(_write_and_close, fd, data)
        fd, self.status_read = self.status_read, -1
        try:  # the status socket is close-on-exec in the jail: EOF once the app was exec'd
            message, fds = await asyncio.wait_for(
                asyncio.to_thread(_receive_status, fd), JAIL_START_TIMEOUT_S
            )
        except TimeoutError:
            return Started(
                f"the app sandbox did not start the app within {JAIL_START_TIMEOUT_S:g} s"
            )
        listener = socket.socket(fileno=fds.pop(0)) if fds else None
        for extra in fds:  # the jail sends at most one socket
            os.close(extra)
        return Started(message.decode(errors="replace").strip("\0").strip(), listener)

    async def exit_code(self) -> int | None:
        """The app's exit code (negative: killed by that signal), as soon as the launcher
        reaped the app; None if the launcher died first (it was killed)."""
        fd, self.result_read = self.result_read, -1
        text = await asyncio.to_thread(_read_and_close, fd)
        try:
            return int(text)
        except ValueError:
            return None

    def close(self) -> None:
        """Give the launcher up (it exits when its spec pipe closes empty)."""
        for name in ("status_read", "result_read", "spec_write"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)


class Launchers:
    """Keeps one launcher started ahead of the next run (with its cgroup, if any)."""

    def __init__(self, cgroups: RunCgroups | None = None) -> None:
        self.cgroups = cgroups or RunCgroups(None)
        self._spare: asyncio.Task[Launcher] | None = None

    def prime(self) -> None:
        """Start the first spare now (from the running event loop), not at the first run."""
        if self._spare is None:
            self._spare = asyncio.ensure_future(self._start())

    async def take(self) -> Launcher:
        spare, self._spare = self._spare, asyncio.ensure_future(self._start())
        if spare is not None:
            launcher = await spare
            if launcher.process.returncode is None:
                return launcher
            self.give_up(launcher)
        return await self._start()

    def give_up(self, launcher: Launcher) -> None:
        """Close a launcher's pipes and remove its cgroup once it is gone."""
        launcher.close()
        self.cgroups.release(launcher.cgroup)

    async def _start(self) -> Launcher:
        group = self.cgroups.create()
        try:
            return await _start_launcher(group)
        except BaseException:
            self.cgroups.release(group)
            raise


async def _start_launcher(cgroup: Path | None) -> Launcher:
    # the status channel is a socket: the jail sends the egress listener over it
    status_read, status_write = (s.detach() for s in socket.socketpair())
    result_read, result_write = os.pipe()
    spec_read, spec_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *launcher_command(
                status_fd=status_write, result_fd=result_write, spec_fd=spec_read, cgroup=cgroup
            ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(status_write, result_write, spec_read),
            start_new_session=True,
        )
    except BaseException:
        for fd in (status_read, result_read, spec_write):
            os.close(fd)
        raise
    finally:
        for fd in (status_write, result_write, spec_read):
            os.close(fd)
    return Launcher(process, status_read, result_read, spec_write, cgroup)


def _read_and_close(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as status:
        return status.read(SETUP_MESSAGE_MAX)


def _receive_status(fd: int) -> tuple[bytes, list[int]]:
    """Everything the jail sends on its status socket until it closes: message, sockets."""
    message, fds = b"", []
    with socket.socket(fileno=fd) as status:
        while True:
            data, received, _, _ = socket.recv_fds(status, SETUP_MESSAGE_MAX, maxfds=4)
            fds += received
            if not data:
                return message[:SETUP_MESSAGE_MAX], fds
            message += data


def _write_and_close(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


__all__ = ["Launcher", "Launchers", "Started", "launcher_command"]
