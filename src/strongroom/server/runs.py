"""Running a sealed application inside the enclave.

The life of one run, and what holds at each step:

1. The sealed package's header is read from the shared folder (no key
   needed). Before anything is released, the server refuses a package this
   image does not pin (:mod:`strongroom.image.pins`: its key, or its signer)
   and a request its manifest does not allow (the entry, the environment;
   without a manifest: any entry inside the app, no environment).
2. The data key is released by the key service to *this* enclave only: the
   server makes an ephemeral RSA key, gets an attestation document binding it,
   and calls Decrypt with ``Recipient`` through the egress channel, naming the
   pinned key, with the short-lived credentials the host passed for this run
   (kept in memory, never logged). The answer is opened with the ephemeral
   key, which then goes away.
3. The package is stream-decrypted and safely extracted into a fresh private
   directory on the enclave's memory-backed filesystem — never the shared
   folder, which the host can read. Every chunk authenticates the header, so
   a manifest the host edited stops the run here.
4. The entry script runs in the app jail (:mod:`strongroom.server.jail`,
   inputs from :mod:`strongroom.server.isolation`): its own namespaces, root,
   uid and user namespace; no capability, attestor, key-service channel or
   network; seccomp; a process limit. Relative arguments resolve inside the
   private app folder (its working directory), absolute ones are mapped into
   the shared folder (``/dataset/x`` → ``<shared>/dataset/x``).
5. stdout and stderr stream back as they come; the exit status ends the run.
6. Whatever happens — success, failure, timeout, client gone — the jail is
   killed (with its PID namespace, every process the app made) and the
   private directory wiped.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from strongroom.attestation.base import Attestor
from strongroom.attestation.release import decrypt_with_attestation
from strongroom.errors import (
    AccessDeniedError,
    CredentialError,
    NotFoundError,
    StrongroomError,
    UnavailableError,
    UsageError,
)
from strongroom.image.pins import VendorPins
from strongroom.keys.base import KeyService
from strongroom.sealing import Header, check_host_request, open_package, read_header
from strongroom.sealing.manifest import DEFAULT_PROCESSES, AppManifest
from strongroom.server.egress import (
    APP_PROXY_PORT,
    check_app_egress,
    proxy_environment,
    serve_app_egress,
)
from strongroom.server.files import SharedFolder, split_path
from strongroom.server.isolation import (
    Identities,
    JailSpec,
    RunCgroups,
    RunFolder,
    app_environment,
    hand_over,
)
from strongroom.server.jail import SETUP_FAILED
from strongroom.server.launchers import Launcher, Launchers
from strongroom.transport.base import Address

OUTPUT_CHUNK = 64 * 1024
#: How often a long decryption says how far it got (a `progress` event).
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class RunSpec:
    package: str  # shared-folder path of the sealed package
    entry: str | None  # path of the entry script inside the app; None: the manifest's only one
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    timeout_s: float | None = None


@dataclass(frozen=True)
class RunEnvironment:
    """What a run needs from the enclave it runs in."""

    shared: SharedFolder
    apps_root: Path  # private, memory-backed
    python_path: tuple[str, ...]  # where the image's app packages are
    attestor: Attestor
    key_service: Callable[[], KeyService]  # made per run, with the run's credentials
    #: The keys and signers this image may release keys for.
    pins: VendorPins
    #: Hands each concurrent run its uid.
    identities: Identities = field(default_factory=Identities)
    #: Jail launchers, started ahead of the runs, each in its run's own cgroup (its
    #: process limit) where the runtime allows.
    launchers: Launchers = field(default_factory=Launchers)
    #: The enclave's memory, MiB (a manifest may say it needs more).
    memory_mib: int = 1024
    #: The enclave's egress path (apps whose manifest declares egress use it too, through
    #: a proxy of their own), and where the key service is on it (never an app's).
    egress: Address | None = None
    key_service_destination: tuple[str, int] | None = None
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


def choose_entry(requested: str | None, manifest: AppManifest | None) -> str:
    """The entry to run: the one asked for, or the manifest's only entry."""
    if requested is not None:
        return requested
    if manifest is not None and len(manifest.entries) == 1:
        return manifest.entries[0]
    hint = (
        f"the app's entries: {', '.join(manifest.entries)}"
        if manifest is not None
        else "e.g. --entry main.py (see `strongroom inspect PACKAGE`)"
    )
    raise UsageError("name the script to run with --entry", hint=hint)


def _entry_path(app_dir: Path, entry: str) -> str:
    """``entry`` as a normalised path relative to the app, once it is known to be a file there."""
    parts = PurePosixPath(entry).parts
    if not parts or entry.startswith("/") or ".." in parts:
        raise UsageError(
            f"--entry {entry!r} must be a relative path inside the app", hint="e.g. --entry main.py"
        )
    path = app_dir.joinpath(*parts)
    resolved = path.resolve()
    if not resolved.is_relative_to(app_dir.resolve()) or not resolved.is_file():
        raise NotFoundError(
            f"the app has no file {entry!r}", hint="check --entry against `strongroom inspect`"
        )
    return "/".join(resolved.relative_to(app_dir.resolve()).parts)


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


@dataclass(frozen=True)
class Prepared:
    """A run whose request has been checked, before anything is released or started."""

    spec: RunSpec
    #: One descriptor for the whole run: the header enforced is the one the body
    #: authenticates, whatever the host does to the shared folder meanwhile.
    package: BinaryIO
    header: Header
    key_ids: Sequence[str]
    entry: str
    args: tuple[str, ...]
    egress: tuple[Any, ...]
    processes: int


async def prepare(spec: RunSpec, envr: RunEnvironment) -> Prepared:
    """Check a run's request against the package and this enclave, before any answer.

    Everything here is the caller's to fix (a missing package, an image that
    does not pin it, an entry or environment its manifest refuses, an argument
    outside the shared folder, an egress the host has not allowed): the API
    answers it with a Problem and its status, not with a stream that fails.
    """
    split_path(spec.package)
    package = await asyncio.to_thread(_open_package, spec, envr)
    try:
        header = await asyncio.to_thread(read_header, package, name=spec.package)
        key_ids = envr.pins.check_package(header, name=spec.package)
        manifest = header.manifest
        entry = choose_entry(spec.entry, manifest)
        check_host_request(manifest, entry=entry, env=[name for name, _ in spec.env])
        # before the key: an argument that leaves the shared folder fails at once
        args = tuple(map_argument(a, envr.shared) for a in spec.args)
        egress = manifest.egress if manifest is not None else ()
        if manifest is not None and manifest.memory_mib and manifest.memory_mib > envr.memory_mib:
            raise UsageError(
                f"the app needs {manifest.memory_mib} MiB of enclave memory; this enclave "
                f"has {envr.memory_mib} MiB",
                hint=f"start the enclave with `strongroom enclave start IMAGE --memory "
                f"{manifest.memory_mib}` (or more)",
            )
        if egress:  # before the key: a run the host has not allowed fails at once
            await check_app_egress(egress, envr.egress, envr.key_service_destination)
        processes = (manifest.processes if manifest else None) or DEFAULT_PROCESSES
    except BaseException:
        package.close()
        raise
    return Prepared(spec, package, header, key_ids, entry, args, tuple(egress), processes)


async def run(spec: RunSpec, envr: RunEnvironment) -> AsyncIterator[dict[str, Any]]:
    """Run ``spec``; yield ``status``, ``stdout``/``stderr`` and finally ``exit`` events
    (or one ``error`` event, a refused request included)."""
    try:
        prepared = await prepare(spec, envr)
    except StrongroomError as e:
        yield _error_event(e)
        return
    async for event in execute(prepared, envr):
        yield event


def _error_event(e: StrongroomError) -> dict[str, Any]:
    return _event(
        "error", error=type(e).__name__, message=e.message, hint=e.hint, exit_code=e.exit_code
    )


async def execute(prepared: Prepared, envr: RunEnvironment) -> AsyncIterator[dict[str, Any]]:
    """Release the key, open the app, run it: the events, ``exit`` or ``error`` last.
    ``prepared``'s package is closed at the end, whatever happens."""
    spec, package, header = prepared.spec, prepared.package, prepared.header
    key_ids, entry, args = prepared.key_ids, prepared.entry, prepared.args
    egress, processes = prepared.egress, prepared.processes
    folder = RunFolder(envr.apps_root / uuid.uuid4().hex)
    app_dir = folder.app
    process: asyncio.subprocess.Process | None = None
    app_proxy: asyncio.Server | None = None
    #: True once the launcher reported the app's end: every process of the jail is gone
    #: then, and the launcher is only left to exit (which may take a moment).
    ended = False
    #: Set once the run is over: an extraction still going on then wipes what it wrote.
    abandoned = threading.Event()
    try:
        yield _event("status", message="releasing the data key to this enclave")
        try:
            data_key = await asyncio.to_thread(_release_key, spec, header, key_ids, envr)
        except UnavailableError:
            problem = None if envr.egress_problem is None else await envr.egress_problem()
            if problem is None:
                raise
            raise problem from None
        yield _event("status", message="decrypting the app into enclave memory")
        folder.create()
        async for event in _opening(package, header, data_key, folder, abandoned):
            yield event
        del data_key
        relative_entry = _entry_path(app_dir, entry)
        with envr.identities.claim() as identity:
            await asyncio.to_thread(hand_over, folder, identity)
            launcher = await envr.launchers.take()
            process = launcher.process
            try:
                RunCgroups.limit(launcher.cgroup, processes)
                started = await launcher.start(
                    JailSpec(
                        folder=folder,
                        shared_dir=envr.shared.root,
                        packages=envr.python_path,
                        entry=relative_entry,
                        args=args,
                        env=app_environment(
                            {**dict(spec.env), **(proxy_environment() if egress else {})}
                        ),
                        identity=identity,
                        processes=processes,
                        proxy_port=APP_PROXY_PORT if egress else 0,
                    )
                )
                if started.error:
                    raise StrongroomError(
                        started.error,
                        hint="the enclave cannot isolate apps: report this with its logs",
                    )
                if started.listener is not None and envr.egress is not None:
                    app_proxy = await serve_app_egress(started.listener, envr.egress, egress)
                yield _event("started", pid=process.pid)
                async for event in _supervise(launcher, spec.timeout_s):
                    if event["type"] == "exit":
                        ended = True
                    yield event
            finally:
                envr.launchers.give_up(launcher)
                if app_proxy is not None:
                    app_proxy.close()
    except StrongroomError as e:
        yield _error_event(e)
    finally:
        package.close()
        running = None if ended or process is None or process.returncode is not None else process
        if running is not None:
            _kill(running)
        # Wipe before any await: when the client went away this generator is being
        # cancelled, and the cancellation is re-raised at every await of this block.
        abandoned.set()
        shutil.rmtree(folder.root, ignore_errors=True)
        if running is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running.wait(), 5)
            shutil.rmtree(folder.root, ignore_errors=True)  # anything the dying app still wrote


async def _supervise(launcher: Launcher, timeout_s: float | None) -> AsyncIterator[dict[str, Any]]:
    """Stream the app's output until it ends (or times out), then its ``exit`` event."""
    process = launcher.process
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    assert process.stdout is not None and process.stderr is not None
    pumps = [
        asyncio.create_task(_pump(process.stdout, "stdout", queue)),
        asyncio.create_task(_pump(process.stderr, "stderr", queue)),
    ]
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    open_streams = 2
    timed_out = False
    try:
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
    finally:
        for pump in pumps:
            pump.cancel()
    reported = None
    if not timed_out:  # the output may end before the app does: the deadline still holds
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            reported = await asyncio.wait_for(launcher.exit_code(), remaining)
        except TimeoutError:
            timed_out = True
            _kill(process)
    code = reported if reported is not None else await process.wait()
    if timed_out:
        yield _event("exit", code=124, reason=f"timed out after {timeout_s:g}s")
    elif code < 0:
        yield _event("exit", code=128 - code, reason=f"killed by {signal.Signals(-code).name}")
    elif code == SETUP_FAILED:
        yield _event("exit", code=code, reason="the app sandbox failed while starting the app")
    else:
        yield _event("exit", code=code)


def _open_package(spec: RunSpec, envr: RunEnvironment) -> BinaryIO:
    return os.fdopen(envr.shared.open_read(spec.package), "rb")


def _release_key(
    spec: RunSpec, header: Header, key_ids: Sequence[str], envr: RunEnvironment
) -> bytes:
    try:
        return decrypt_with_attestation(
            envr.key_service(),
            envr.attestor,
            header.encrypted_data_key,
            # name the key: a blob from any other key is then refused by the key service
            key_id=key_ids[0] if len(key_ids) == 1 else None,
            encryption_context=header.encryption_context or None,
            allowed_key_ids=key_ids,
        )
    except CredentialError:
        raise  # the run's credentials, not the image, are what the key service refused
    except AccessDeniedError as e:
        if envr.measurement and set(envr.measurement) == {"0"}:
            raise AccessDeniedError(
                "the key service refused to release the app's key: this is a debug-mode "
                "enclave, whose measurements are all zero, and no key policy approves that",
                hint="start the enclave without --debug to run sealed apps (debug enclaves "
                f"are for looking inside only); key service said: {e.message}",
            ) from e
        raise AccessDeniedError(
            f"the key service refused to release the app's key to this enclave: "
            f"image measurement {envr.measurement or '(unknown)'} is not approved for "
            f"{header.key_id or 'the key'}",
            hint="the vendor approves an image with `strongroom image approve IMAGE --key KEY`; "
            f"key service said: {e.message}",
        ) from e


async def _opening(
    package: BinaryIO,
    header: Header,
    data_key: bytes,
    folder: RunFolder,
    abandoned: threading.Event,
) -> AsyncIterator[dict[str, Any]]:
    """Decrypt the app into the run's folder; while it takes long, say how far it got.

    A ``progress`` event every :data:`PROGRESS_INTERVAL_S` (none for an app that
    opens faster than that): ``done`` plaintext bytes of about ``total``, the
    package's size in the shared folder.
    """
    opened = 0

    def advance(n: int) -> None:
        nonlocal opened
        opened += n

    total = os.fstat(package.fileno()).st_size
    work = asyncio.ensure_future(
        asyncio.to_thread(_open_into, package, header, data_key, folder, abandoned, advance)
    )
    try:
        while not (await asyncio.wait({work}, timeout=PROGRESS_INTERVAL_S))[0]:
            yield _event("progress", stage="decrypting", done=min(opened, total), total=total)
    finally:
        if not work.done():  # the run was cancelled: the thread finishes; `abandoned` wipes
            work.add_done_callback(lambda task: task.exception())
    work.result()


def _open_into(
    package: BinaryIO,
    header: Header,
    data_key: bytes,
    folder: RunFolder,
    abandoned: threading.Event,
    progress: Callable[[int], None],
) -> None:
    """Decrypt the rest of ``package`` (just past ``header``) into the run's folder."""
    try:
        open_package(package, data_key, folder.app, header=header, progress=progress)
    finally:
        # The run ended while we were extracting (the client went away and the run was
        # cancelled): its wipe raced with our writes, so wipe again now that they are done.
        if abandoned.is_set():
            shutil.rmtree(folder.root, ignore_errors=True)


async def _pump(
    stream: asyncio.StreamReader, name: str, queue: asyncio.Queue[dict[str, Any] | None]
) -> None:
    try:
        while chunk := await stream.read(OUTPUT_CHUNK):
            await queue.put(_event(name, data=base64.b64encode(chunk).decode()))
    finally:
        await queue.put(None)


def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill the jail's launcher and init (one process group): the init's death takes
    every process of the app's PID namespace with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


__all__ = [
    "Prepared",
    "RunEnvironment",
    "RunSpec",
    "choose_entry",
    "execute",
    "map_argument",
    "prepare",
    "run",
]
