"""Running a sealed application inside the enclave.

The life of one run, and what holds at each step:

1. The sealed package is opened from the shared folder; only its header is
   read before the key is released.
2. The data key is released by the key service to *this* enclave only: the
   server makes an ephemeral RSA key, gets an attestation document binding it,
   and calls Decrypt with ``Recipient`` through the egress channel, using the
   credentials the host passed for this run (kept in memory, never logged).
   The answer is opened with the ephemeral key, which then goes away.
3. The package is stream-decrypted and safely extracted into a fresh private
   directory on the enclave's memory-backed filesystem — never the shared
   folder, which the host can read.
4. The entry script runs with the image's Python; relative arguments resolve
   inside the private app folder (its working directory), absolute ones are
   mapped into the shared folder (``/dataset/x`` → ``<shared>/dataset/x``).
5. stdout and stderr stream back as they come; the exit status ends the run.
6. Whatever happens — success, failure, timeout, client gone — the app's
   process group is killed and its private directory wiped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from strongroom.attestation.base import Attestor
from strongroom.attestation.release import decrypt_with_attestation
from strongroom.errors import AccessDeniedError, StrongroomError, UnavailableError, UsageError
from strongroom.keys.base import KeyService
from strongroom.sealing import open_package, read_header
from strongroom.server.files import SharedFolder, split_path

OUTPUT_CHUNK = 64 * 1024
#: Environment names the host may not set for the app: they would change what runs.
RESERVED_ENV = frozenset(
    {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "HOME"}
)


@dataclass(frozen=True)
class RunSpec:
    package: str  # shared-folder path of the sealed package
    entry: str  # path of the entry script inside the app
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    timeout_s: float | None = None


@dataclass(frozen=True)
class RunEnvironment:
    """What a run needs from the enclave it runs in."""

    shared: SharedFolder
    apps_root: Path  # private, memory-backed
    python: str  # the image's interpreter
    python_path: tuple[str, ...]  # where the image's app packages are
    attestor: Attestor
    key_service: Callable[[], KeyService]  # made per run, with the run's credentials
    #: This enclave's image measurement (PCR0, hex), for messages when a release is denied.
    measurement: str = ""
    #: Says which hop of the egress path to the key service fails (None: none does), so
    #: an unreachable key service is reported as "proxy not running", "key service down"...
    egress_problem: Callable[[], Awaitable[StrongroomError | None]] | None = None


def map_argument(arg: str, shared: SharedFolder) -> str:
    """Absolute paths point into the shared folder; everything else is left alone."""
    if arg.startswith("/"):
        return str(shared.host_path(arg))
    if arg.startswith("--") and "=/" in arg:
        name, value = arg.split("=", 1)
        return f"{name}={shared.host_path(value)}"
    return arg


def _entry_path(app_dir: Path, entry: str) -> Path:
    parts = PurePosixPath(entry).parts
    if not parts or entry.startswith("/") or ".." in parts:
        raise UsageError(
            f"--entry {entry!r} must be a relative path inside the app", hint="e.g. --entry main.py"
        )
    path = app_dir.joinpath(*parts)
    resolved = path.resolve()
    if not resolved.is_relative_to(app_dir.resolve()) or not resolved.is_file():
        raise UsageError(
            f"the app has no file {entry!r}", hint="check --entry against `strongroom inspect`"
        )
    return path


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


async def run(spec: RunSpec, envr: RunEnvironment) -> AsyncIterator[dict[str, Any]]:
    """Run ``spec``; yield ``status``, ``stdout``/``stderr`` and finally ``exit`` events."""
    app_dir = envr.apps_root / uuid.uuid4().hex
    process: asyncio.subprocess.Process | None = None
    #: Set once the run is over: an extraction still going on then wipes what it wrote.
    abandoned = threading.Event()
    try:
        split_path(spec.package)
        for name, _ in spec.env:
            if name.upper() in RESERVED_ENV or not name.isidentifier():
                raise UsageError(f"the app's environment may not set {name!r}")
        yield _event("status", message="releasing the data key to this enclave")
        try:
            data_key = await asyncio.to_thread(_release_key, spec, envr)
        except UnavailableError:
            problem = None if envr.egress_problem is None else await envr.egress_problem()
            if problem is None:
                raise
            raise problem from None
        yield _event("status", message="decrypting the app into enclave memory")
        app_dir.mkdir(mode=0o700, parents=True)
        await asyncio.to_thread(_open_into, spec, envr, data_key, app_dir, abandoned)
        del data_key
        entry = _entry_path(app_dir, spec.entry)
        # -S -s: the app sees the standard library and the image's packages (PYTHONPATH),
        # never whatever else the interpreter's own site-packages hold
        argv = [envr.python, "-S", "-s", str(entry)]
        argv += [map_argument(a, envr.shared) for a in spec.args]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(app_dir),
            "PYTHONPATH": os.pathsep.join(envr.python_path),
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
            **dict(spec.env),
        }
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=app_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        yield _event("started", pid=process.pid)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.create_task(_pump(process.stdout, "stdout", queue)),
            asyncio.create_task(_pump(process.stderr, "stderr", queue)),
        ]
        loop = asyncio.get_running_loop()
        deadline = None if spec.timeout_s is None else loop.time() + spec.timeout_s
        open_streams = 2
        timed_out = False
        while open_streams:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                timed_out = True
                _kill(process)
                break
            if item is None:
                open_streams -= 1
            else:
                yield item
        for pump in pumps:
            pump.cancel()
        code = await process.wait()
        if timed_out:
            yield _event("exit", code=124, reason=f"timed out after {spec.timeout_s:g}s")
        elif code < 0:
            yield _event("exit", code=128 - code, reason=f"killed by {signal.Signals(-code).name}")
        else:
            yield _event("exit", code=code)
    except StrongroomError as e:
        yield _event(
            "error", error=type(e).__name__, message=e.message, hint=e.hint, exit_code=e.exit_code
        )
    finally:
        running = process if process is not None and process.returncode is None else None
        if running is not None:
            _kill(running)
        # Wipe before any await: when the client went away this generator is being
        # cancelled, and the cancellation is re-raised at every await of this block.
        abandoned.set()
        shutil.rmtree(app_dir, ignore_errors=True)
        if running is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running.wait(), 5)
            shutil.rmtree(app_dir, ignore_errors=True)  # anything the dying app still wrote


def _release_key(spec: RunSpec, envr: RunEnvironment) -> bytes:
    fd = envr.shared.open_read(spec.package)
    with os.fdopen(fd, "rb") as stream:
        header = read_header(stream, name=spec.package)
    try:
        return decrypt_with_attestation(
            envr.key_service(),
            envr.attestor,
            header.encrypted_data_key,
            key_id=header.key_id,
            encryption_context=header.encryption_context or None,
        )
    except AccessDeniedError as e:
        raise AccessDeniedError(
            f"the key service refused to release the app's key to this enclave: "
            f"image measurement {envr.measurement or '(unknown)'} is not approved for "
            f"{header.key_id or 'the key'}",
            hint="the vendor approves an image with `strongroom image approve IMAGE --key KEY`; "
            f"key service said: {e.message}",
        ) from e


def _open_into(
    spec: RunSpec, envr: RunEnvironment, data_key: bytes, app_dir: Path, abandoned: threading.Event
) -> None:
    fd = envr.shared.open_read(spec.package)
    try:
        with os.fdopen(fd, "rb") as stream:
            open_package(stream, data_key, app_dir)
    finally:
        # The run ended while we were extracting (the client went away and the run was
        # cancelled): its wipe raced with our writes, so wipe again now that they are done.
        if abandoned.is_set():
            shutil.rmtree(app_dir, ignore_errors=True)


async def _pump(
    stream: asyncio.StreamReader, name: str, queue: asyncio.Queue[dict[str, Any] | None]
) -> None:
    try:
        while chunk := await stream.read(OUTPUT_CHUNK):
            await queue.put(_event(name, data=base64.b64encode(chunk).decode()))
    finally:
        await queue.put(None)


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


__all__ = ["RunEnvironment", "RunSpec", "map_argument", "run"]
