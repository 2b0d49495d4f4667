"""The host-side supervisor of one local enclave (``python -m strongroom.enclave.supervisor``).

Started detached by ``strongroom enclave start``; it plays the part of the
Nitro hypervisor and ``nitro-cli`` for one enclave, in this order:

1. record itself (``STARTING``) so ``status``/``stop`` can find it at once;
2. measure the image, and get its unpacked tree from the image cache
   (:mod:`._image_cache`): the verified copy of an earlier start, checked
   file by file, or a copy unpacked now in the same read that measures it
   (what is measured is what runs); each step is recorded as the start's
   ``phase``, for the CLI's progress. Meanwhile, in a thread, load the
   attestor's authority, create the limits and bind the sockets (steps 4-5);
3. register the PCRs the attestor will sign: the image's, or all-zero PCR0-2
   for a debug enclave (as on Nitro);
4. create the memory/CPU limits (:mod:`._limits`);
5. bind the three sockets: the control socket (handed to the sandbox as a
   listening descriptor), the attestor socket (the NSM protocol, answered
   here with the workspace CA) and the egress socket (relayed per connection
   to the workspace egress proxy);
6. start bubblewrap (:func:`~strongroom.enclave.sandbox.sandbox_command`)
   inside the limits, record ``RUNNING`` and wait; once the server answers, if
   the image's copy has no bytecode yet, compile it into the copy in the
   background (for the next start), at low priority;
7. when the sandbox ends, or on SIGTERM (``enclave stop``: the sandbox is
   killed), record the outcome (exit code, OOM kills, signal) and remove the
   sockets and the cgroups, and let go of the image cache's copy (it stays).

Only in debug mode does the enclave's stdout/stderr reach the host
(``console.log``); otherwise it goes to ``/dev/null``, as a production Nitro
enclave has no console.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from strongroom._internal import services
from strongroom._internal.background import Background
from strongroom.enclave import _compile
from strongroom.enclave._bytecode import compile_sources
from strongroom.enclave._image_cache import CachedImage, ImageCache
from strongroom.enclave._limits import Limits, create_limits
from strongroom.enclave.base import EnclaveSpec, State
from strongroom.enclave.sandbox import (
    KIND,
    EnclavePaths,
    bwrap_path,
    cgroup_id,
    cleanup,
    describe,
    sandbox_command,
)
from strongroom.errors import EvidenceError, InvalidInputError, StrongroomError
from strongroom.image import Measurements
from strongroom.transport.base import UnixAddress, bind
from strongroom.transport.forward import KMS_LOCAL_PORT
from strongroom.workspace import Workspace

if TYPE_CHECKING:
    # Imported by the set-up thread (Supervisor._prepare), beside the image's check.
    import asyncio

    from strongroom.attestation.authority import AuthorityAttestor, LocalAuthority

#: Attestation documents carry 16 PCRs, as real Nitro documents do.
PCR_COUNT = 16
PCR_SIZE = 48
DEBUG_PCRS = (0, 1, 2)
#: Where, in the workspace's ``run/``, the image cache keeps its copies.
IMAGE_CACHE_DIR = "image-cache"
#: How often the bytecode thread asks whether the server answers yet.
_ANSWER_POLL_S = 0.1


class _Terminated(Exception):
    """SIGTERM arrived before the sandbox was started."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def registered_pcrs(measurements: Measurements, *, debug: bool) -> dict[int, bytes]:
    """The PCRs the attestor signs: the image's, zeros for debug enclaves (PCR0-2)."""
    pcrs = {index: bytes(PCR_SIZE) for index in range(PCR_COUNT)}
    pcrs.update(measurements.pcrs())
    if debug:
        for index in DEBUG_PCRS:
            pcrs[index] = bytes(PCR_SIZE)
    return pcrs


@dataclass(frozen=True)
class Outcome:
    state: State
    reason: str
    exit_code: int | None
    oom_kills: int | None


def _describe_exit(code: int) -> str:
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(signum).name}"
    return f"the enclave server exited with code {code}"


def _read_child_pid(fd: int) -> int | None:
    """The sandbox init's pid from bubblewrap's ``--info-fd`` (None if bwrap failed first)."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        pid = json.loads(data)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) else None


def _kill_sandbox(sandbox: asyncio.subprocess.Process, init_pid: int | None) -> None:
    """Kill the sandbox's init: the kernel kills the rest of its pid namespace.

    Killing the init (not bwrap) lets bwrap reap it and exit; killing bwrap
    first would orphan the init to the host's pid 1. bwrap has not reaped the
    init while it runs, so ``init_pid`` cannot have been reused.
    """
    if init_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init_pid, signal.SIGKILL)
    else:
        sandbox.kill()


class Supervisor:
    def __init__(self, workspace: Workspace, spec: EnclaveSpec) -> None:
        self.workspace = workspace
        self.spec = spec
        self.paths = EnclavePaths.of(workspace.run_dir, spec.name)
        self.enclave_id = (
            f"i-local-{cgroup_id(workspace.root, spec.name)[:8]}-enc{secrets.token_hex(8)}"
        )
        self.limits: Limits | None = None
        self.image: CachedImage | None = None
        self.cache: ImageCache | None = None
        self._prepared: Background[LocalAuthority] | None = None

    def _update(self, **extra: Any) -> None:
        services.update(self.workspace.run_dir, KIND, self.spec.name, **extra)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, _terminate)
        services.record_self(
            self.workspace.run_dir,
            KIND,
            self.spec.name,
            log=self.paths.console_log if self.spec.debug else None,
            extra={
                "state": "STARTING",
                "spec": self.spec.to_json(),
                "enclave_id": self.enclave_id,
                "cpu_ids": sorted(os.sched_getaffinity(0)),
            },
        )
        sockets: list[socket.socket] = []
        try:
            outcome = self._run(sockets)
        except _Terminated:
            outcome = Outcome("STOPPED", "stopped while starting", None, None)
        except StrongroomError as e:
            family = (
                "input"
                if isinstance(e, InvalidInputError)
                else "evidence"
                if isinstance(e, EvidenceError)
                else "other"
            )
            self._update(error={"message": e.message, "hint": e.hint, "family": family})
            outcome = Outcome("FAILED", e.message, None, None)
        except Exception as e:
            traceback.print_exc()  # to supervisor.log
            outcome = Outcome("FAILED", f"internal error in the supervisor: {e!r}", None, None)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if self._prepared is not None:  # quick: let it finish, to clean up after it
                with contextlib.suppress(Exception):
                    self._prepared.result()
            for sock in sockets:
                sock.close()
            oom_kills = self.limits.oom_kills() if self.limits is not None else None
            cleanup(self.paths, self.limits)
            if self.image is not None:
                self.image.close()  # the sandbox is gone: the copy is no longer in use
        self._update(
            state=outcome.state,
            reason=outcome.reason,
            exit_code=outcome.exit_code,
            oom_killed=bool(oom_kills),
            ended_at=time.time(),
        )
        return 0 if outcome.state == "STOPPED" else 1

    def _phase(self, phase: str) -> None:
        self._update(phase=phase)

    def _prepare(self, sockets: list[socket.socket]) -> LocalAuthority:
        """What the enclave needs besides its image: the attestor's authority, the
        limits, the three sockets -- and the modules that serve them.

        Runs in a thread while the main one measures the image and checks its copy
        (hashing, which leaves the interpreter free): a start of an image started
        before waits for the longer of the two, not for both.
        """
        import asyncio  # noqa: F401 - imported here for _serve, off the critical path

        from strongroom.attestation.authority import LocalAuthority
        from strongroom.enclave import _attestor  # noqa: F401 - likewise
        from strongroom.transport import proxy  # noqa: F401 - likewise

        authority = LocalAuthority.open_or_create(self.workspace.ca_dir)
        self.limits = create_limits(
            cgroup_id(self.workspace.root, self.spec.name),
            memory_mib=self.spec.memory_mib,
            cpus=self.spec.cpus,
        )
        self._update(limits=self.limits.to_json())
        for path in self.paths.sockets():
            sockets.append(bind(UnixAddress(str(path))))
        return authority

    def _run(self, sockets: list[socket.socket]) -> Outcome:
        import asyncio

        from strongroom.attestation.authority import AuthorityAttestor

        bwrap = bwrap_path()
        self._prepared = Background(functools.partial(self._prepare, sockets), name="prepare")
        cache = ImageCache(self.workspace.run_dir / IMAGE_CACHE_DIR)
        self.cache = cache
        self.image = cache.open(self.spec.image, progress=self._phase)
        measurements = self.image.measurements
        self._update(
            measurements={
                "pcr0": measurements.pcr0,
                "pcr1": measurements.pcr1,
                "pcr2": measurements.pcr2,
            },
            image_cache={
                "path": str(self.image.path),
                "reused": self.image.reused,
                "discarded": self.image.discarded,
            },
            bytecode="present" if self.image.has_bytecode else "missing",
        )
        authority = self._prepared.result()  # joined: no thread runs from here on
        attestor = AuthorityAttestor(
            authority,
            registered_pcrs(measurements, debug=self.spec.debug),
            self.enclave_id,
        )
        self._update(phase="starting the enclave server")
        return asyncio.run(self._serve(bwrap, attestor, *sockets))

    def _add_bytecode(
        self, bwrap: str, cancelled: threading.Event
    ) -> Background[str | None] | None:
        """Compile the image's bytecode into its cached copy while the enclave runs (the
        next start imports it), unless the copy has it already."""
        assert self.image is not None and self.cache is not None
        if self.image.has_bytecode:
            return None
        self._update(bytecode="compiling")
        image, cache = self.image, self.cache

        def compile_into_copy() -> str | None:
            # background work: after the server answers (the start is over), at low priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _compile.NICENESS)
            while describe(self.paths.control_socket) is None:
                if cancelled.wait(_ANSWER_POLL_S):
                    return "the enclave stopped before its server answered"
            try:
                problem = cache.add_bytecode(
                    image,
                    lambda sources, stop: compile_sources(bwrap, sources, cancelled=stop),
                    cancelled,
                )
            except Exception as e:  # the enclave runs fine without it
                traceback.print_exc()
                problem = f"internal error: {e!r}"
            if problem:
                print(f"image bytecode: {problem}", file=sys.stderr)  # supervisor.log
            self._update(bytecode="added" if image.has_bytecode else f"missing: {problem}")
            return problem

        return Background(compile_into_copy, name="bytecode")

    def _key_service(self) -> str | None:
        """Where the enclave's key-service forwarder leads: where the key service runs
        now (``keys serve --listen``), else where it is configured; None: a unix socket,
        which the egress path cannot reach. Fixed for the enclave's life, and recorded
        (``key_service``) so that ``run`` can tell when the key service has moved since."""
        from strongroom.keys.service import listen_address

        listen = listen_address(self.workspace)
        return None if listen.startswith("unix:") else listen

    def _forwards(self, key_service: str | None) -> list[str]:
        return [] if key_service is None else [f"{KMS_LOCAL_PORT}={key_service}"]

    async def _serve(
        self,
        bwrap: str,
        attestor: AuthorityAttestor,
        control: socket.socket,
        attestor_socket: socket.socket,
        egress_socket: socket.socket,
    ) -> Outcome:
        import asyncio

        from strongroom.enclave._attestor import AttestorService, serve_attestor
        from strongroom.transport.proxy import proxy_address, serve_relay

        assert self.limits is not None and self.image is not None
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        servers = [
            await serve_attestor(attestor_socket, AttestorService(attestor)),
            await serve_relay(egress_socket, proxy_address(self.workspace.run_dir), self.spec.name),
        ]
        key_service = self._key_service()
        info_read, info_write = os.pipe()
        image_fd = self.image.tree_fd
        command = sandbox_command(
            bwrap,
            self.paths,
            image_fd=image_fd,
            control_fd=control.fileno(),
            info_fd=info_write,
            forwards=self._forwards(key_service),
            memory_mib=self.spec.memory_mib,
            runs_cgroup=self.limits.runs_cgroup,
        )
        with contextlib.ExitStack() as stack:
            stack.callback(os.close, info_read)
            console: int | IO[bytes] = subprocess.DEVNULL
            if self.spec.debug:
                fd = os.open(self.paths.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                console = stack.enter_context(os.fdopen(fd, "ab"))
            try:
                sandbox = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    pass_fds=(control.fileno(), info_write, image_fd),
                    # Joins the cgroup in the child, before bwrap runs: nothing
                    # of the enclave ever runs outside its limits. (preexec_fn
                    # is safe here: every thread the supervisor started has ended.)
                    preexec_fn=self.limits.enter,
                )
            finally:
                os.close(info_write)
                control.close()  # the sandbox holds the listening socket now
                # and has the image mounted; the entry's lock (entry_fd) stays held
                os.close(image_fd)
                self.image.tree_fd = -1
            init_pid = await loop.run_in_executor(None, _read_child_pid, info_read)
        self._update(
            state="RUNNING",
            sandbox_pid=sandbox.pid,
            addresses={
                "control": str(UnixAddress(str(self.paths.control_socket))),
                "attestor": str(UnixAddress(str(self.paths.attestor_socket))),
                "egress": str(UnixAddress(str(self.paths.egress_socket))),
                **({} if key_service is None else {"key_service": key_service}),
            },
        )
        exited = asyncio.create_task(sandbox.wait())
        stop_requested = asyncio.create_task(stopping.wait())
        cancel_bytecode = threading.Event()
        bytecode = self._add_bytecode(bwrap, cancel_bytecode)
        await asyncio.wait({exited, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set() and sandbox.returncode is None:
            _kill_sandbox(sandbox, init_pid)
        code = await exited
        stop_requested.cancel()
        cancel_bytecode.set()
        if bytecode is not None:  # stopped at once, or finishing its additions
            await loop.run_in_executor(None, bytecode.result)
        for server in servers:
            server.close()
        oom_kills = self.limits.oom_kills()
        if stopping.is_set():
            reason = "stopped by `strongroom enclave stop`"
            if oom_kills:
                reason += f"; earlier, {oom_kills} process(es) were killed: out of memory"
            return Outcome("STOPPED", reason, code, oom_kills)
        if oom_kills:
            return Outcome(
                "FAILED",
                f"out of memory: the kernel killed {oom_kills} process(es) "
                f"(limit {self.spec.memory_mib} MiB); {_describe_exit(code)}",
                code,
                oom_kills,
            )
        if code == 0:
            return Outcome("STOPPED", "the enclave server exited (code 0)", 0, oom_kills)
        return Outcome("FAILED", _describe_exit(code), code, oom_kills)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="strongroom-enclave-supervisor")
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--spec", required=True, help="the EnclaveSpec as JSON")
    args = parser.parse_args(argv)
    workspace = Workspace.locate(args.workspace)
    spec = EnclaveSpec.from_json(json.loads(args.spec))
    return Supervisor(workspace, spec).run()


if __name__ == "__main__":
    sys.exit(main())
