"""Host operator commands on a running enclave: ``push``, ``pull``, ``ls``, ``run``, ``attest``."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import click

from strongroom.cli._common import (
    AppContext,
    byte_progress,
    complete_enclave_name,
    emit,
    emit_table,
    err,
    out,
    pass_app,
)
from strongroom.client.enclave import EnclaveClient, Verified
from strongroom.errors import (
    AccessDeniedError,
    EvidenceError,
    InvalidInputError,
    NotFoundError,
    ServiceNotRunningError,
    StrongroomError,
    UnavailableError,
    UsageError,
)
from strongroom.workspace import Workspace

if TYPE_CHECKING:  # at run time, imported by the commands that use them
    from strongroom.client.ledger import PulledFile
    from strongroom.client.transfer import PullItem, PushItem

#: Where `run` puts a local sealed package (the runbook's ~/synced/encrypted).
ENCRYPTED_DIR = "/encrypted"
#: Concurrent transfers in push and pull.
TRANSFER_WORKERS = 8
#: Files up to this size go in archives (one request for many, see server/archive.py)...
ARCHIVE_MEMBER_MAX = 1024 * 1024
#: ...when at least this many of them are pushed or pulled...
ARCHIVE_MIN_FILES = 2
#: ...at most this many files and bytes per archive pushed.
ARCHIVE_BATCH_FILES = 1000
ARCHIVE_BATCH_BYTES = 64 * 1024 * 1024
T = TypeVar("T")
R = TypeVar("R")

enclave_option = click.option(
    "--enclave",
    "enclave_name",
    metavar="NAME",
    shell_complete=complete_enclave_name,
    help="Which enclave, when several run.",
)


def connect_enclave(ws: Workspace, name: str | None) -> EnclaveClient:
    """A client for the named running enclave (or the only one).

    Found from the enclaves' records (:mod:`strongroom.enclave.endpoints`), with
    no probe: the request that follows says soon enough whether the server answers.
    """
    from strongroom.enclave import endpoints
    from strongroom.transport.base import parse_address

    if ws.config.target != "local":
        from strongroom.enclave import runtime_for

        runtime_for(ws)  # says what this target does not support yet
    running = endpoints.running(ws)
    if name is not None:
        running = [s for s in running if s.name == name]
        if not running:
            raise ServiceNotRunningError(
                f"enclave {name!r} is not running", hint="see `strongroom enclave status`"
            )
    if not running:
        raise ServiceNotRunningError(
            "no enclave is running", hint="start one with `strongroom enclave start IMAGE`"
        )
    if len(running) > 1:
        names = ", ".join(s.name for s in running)
        raise UsageError(f"several enclaves run ({names})", hint="choose one with --enclave NAME")
    found = running[0]
    return EnclaveClient(
        parse_address(found.addresses["control"]),
        name=found.name,
        enclave_id=found.enclave_id,
        key_service_reach=found.addresses.get("key_service"),
    )


@click.command("push")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, allow_dash=True))
@click.argument("remote")
@enclave_option
@pass_app
def push_command(
    app: AppContext, sources: tuple[str, ...], remote: str, enclave_name: str | None
) -> None:
    """Copy local files or directories into the enclave's shared folder, as `cp -r` does.

    \b
    A file goes into REMOTE when REMOTE is a directory (or ends with /: it is
    then created), else becomes REMOTE. A directory DIR lands as REMOTE/DIR/...
    when REMOTE is a directory, else REMOTE becomes the copy (DIR/. copies its
    contents). Several sources need a directory. `-` reads standard input
    into the file REMOTE. Nothing is sent when the files do not fit in the
    shared folder's free space. Every file is checksummed on both sides; an
    interrupted push never leaves a truncated file behind. Only regular files
    are sent: a symlink (given, or inside a directory) refuses the push.

    \b
    Example:
      strongroom push examples/host-dataset/digits.csv /dataset/
      strongroom push ./dataset /             # -> /dataset/...
      gunzip -c rows.csv.gz | strongroom push - /dataset/rows.csv
    """
    from strongroom.client.transfer import STDIO, plan_push

    if STDIO in sources:
        if len(sources) > 1:
            raise UsageError("- (standard input) is one source; push it alone")
        _push_stdin(app, remote, enclave_name)
        return
    with connect_enclave(app.workspace(), enclave_name) as enclave:
        plan = plan_push(enclave, sources, remote)
        total = sum(item.size for item in plan)
        _check_space(enclave, [item.size for item in plan])
        started = time.monotonic()
        batches, singles = _archive_batches(plan)
        # an archive makes its own directories; a file sent on its own needs its parent
        for parent in sorted({str(PurePosixPath(i.remote).parent) for i in singles} - {"/"}):
            enclave.mkdir(parent, parents=True)
        with byte_progress("push", total, enabled=not app.json) as advance:

            def push_one(item: PushItem) -> list[dict[str, Any]]:
                verified = enclave.upload(item.local, item.remote, progress=advance)
                return [
                    {
                        "local": str(item.local),
                        "remote": item.remote,
                        "sha256": verified.sha256,
                        "check": verified.kind,
                        "size": item.size,
                    }
                ]

            def push_batch(batch: list[PushItem]) -> list[dict[str, Any]]:
                return _push_archive(enclave, batch, advance)

            jobs: list[Callable[[], list[dict[str, Any]]]] = [
                functools.partial(push_batch, b) for b in batches
            ]
            jobs += [functools.partial(push_one, i) for i in singles]
            done = _run_jobs(jobs)
    _summary(app, "pushed", done, total, time.monotonic() - started)


def _archive_batches(plan: list[PushItem]) -> tuple[list[list[PushItem]], list[PushItem]]:
    """Small files in batches for one archive request each; the others, sent one by one."""
    small = [i for i in plan if i.size <= ARCHIVE_MEMBER_MAX]
    if len(small) < ARCHIVE_MIN_FILES:
        return [], plan
    large = [i for i in plan if i.size > ARCHIVE_MEMBER_MAX]
    batches: list[list[PushItem]] = [[]]
    size = 0
    for item in small:
        if len(batches[-1]) >= ARCHIVE_BATCH_FILES or size + item.size > ARCHIVE_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item.size
    return batches, large


def _push_archive(
    enclave: EnclaveClient, batch: list[PushItem], advance: Callable[[int], None]
) -> list[dict[str, Any]]:
    """Send ``batch`` as one archive under the deepest directory common to all its files.

    Each file is read (not following a symlink) only when the archive gets to
    it; it lands with mode 0644 and the time of the push, as a file sent on its
    own does.
    """
    import posixpath

    from strongroom.client.transfer import open_local_file

    base = posixpath.commonpath([posixpath.dirname(i.remote) for i in batch])
    now = time.time()
    sizes: list[int] = []

    def members() -> Iterator[tuple[str, bytes, int, float]]:
        for item in batch:
            with open_local_file(item.local) as f:
                data = f.read()
            sizes.append(len(data))
            yield posixpath.relpath(item.remote, base), data, 0o644, now

    entries = enclave.upload_archive(base, members(), progress=advance)
    return [
        {
            "local": str(item.local),
            "remote": item.remote,
            "sha256": e["sha256"],
            "check": "sha256",
            "size": size,
        }
        for item, e, size in zip(batch, entries, sizes, strict=True)
    ]


def _run_jobs(jobs: list[Callable[[], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Run transfer jobs concurrently (see :func:`_in_parallel`); their results, in order."""
    return [row for rows in _in_parallel(lambda job: job(), jobs) for row in rows]


def _check_space(enclave: EnclaveClient, sizes: list[int]) -> None:
    """Refuse a push that cannot fit, before a byte is sent.

    The shared folder is a fixed slice of enclave memory. A file that
    replaces one of the same name needs its whole size too: it is written
    beside the old one and renamed over it only once complete.
    """
    from strongroom.errors import InsufficientSpaceError

    space = enclave.statfs()
    needed = space.needed_bytes(sizes)
    if needed > space.free_bytes:
        raise InsufficientSpaceError(
            f"push needs {_size(needed)} in the shared folder of enclave {enclave.name!r}, "
            f"which has {_size(space.free_bytes)} free (of {_size(space.total_bytes)}); "
            "nothing was sent"
        )
    if len(sizes) > space.files_free:
        raise InsufficientSpaceError(
            f"push creates {len(sizes)} files in the shared folder of enclave "
            f"{enclave.name!r}, which has room for {space.files_free} more; nothing was sent"
        )


def _size(n: int) -> str:
    """A byte count as people read it (binary units, as the free space is given)."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _push_stdin(app: AppContext, remote: str, enclave_name: str | None) -> None:
    """``push - REMOTE``: standard input into the one file REMOTE."""
    import os
    import stat

    from strongroom.client.transfer import remote_destination

    source = sys.stdin.buffer
    st = os.fstat(source.fileno())
    size = st.st_size if stat.S_ISREG(st.st_mode) else None  # a redirected file: known
    with connect_enclave(app.workspace(), enclave_name) as enclave:
        if remote_destination(enclave, remote).directory:
            raise UsageError(
                f"push - (standard input) needs a file name, and {remote} is a directory",
                hint=f"name the file, e.g. strongroom push - {remote.rstrip('/')}/data.csv",
            )
        if size is not None:
            _check_space(enclave, [size])
        parent = str(PurePosixPath(remote).parent)
        if parent != "/":
            enclave.mkdir(parent, parents=True)
        started = time.monotonic()
        with byte_progress("push", size, enabled=not app.json) as advance:
            sent, digest = enclave.upload_stream(source, remote, size=size, progress=advance)
    done = [{"local": "-", "remote": remote, "sha256": digest, "check": "sha256", "size": sent}]
    _summary(app, "pushed", done, sent, time.monotonic() - started)


def _in_parallel(work: Callable[[T], R], items: list[T]) -> list[R]:
    """Transfer files concurrently: each request costs ~1 ms of round trip, so many
    small files go several times faster over a few connections at once."""
    if len(items) <= 1:
        return [work(item) for item in items]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=TRANSFER_WORKERS) as pool:
        return list(pool.map(work, items))


def _summary(
    app: AppContext, verb: str, done: list[dict[str, Any]], total: int, seconds: float
) -> None:
    rate = total / seconds / 1e6 if seconds > 0 else 0.0
    emit(
        app,
        {"files": done, "bytes": total, "seconds": seconds},
        lambda: out.print(
            f"{verb} {len(done)} file(s), {total} bytes in {seconds:.2f}s ({rate:.1f} MB/s), "
            "checksums verified"
        ),
    )


@click.command("pull")
@click.argument("remotes", nargs=-1, required=True)
@click.argument("local")
@enclave_option
@pass_app
def pull_command(
    app: AppContext, remotes: tuple[str, ...], local: str, enclave_name: str | None
) -> None:
    """Copy files or directories out of the enclave's shared folder, as `cp -r` does.

    \b
    A file goes into LOCAL when LOCAL is a directory (or ends with /: it is
    then created), else becomes LOCAL. A directory /out lands as LOCAL/out/...
    when LOCAL is a directory, else LOCAL becomes the copy (/out/. copies its
    contents). Several sources need a directory. `-` as LOCAL writes one file
    to standard output (and nothing else there).

    \b
    Each file is written under a temporary name and renamed into place only
    once its checksum matches the enclave's. Every name the enclave lists must
    be one plain name under the directory listed, and nothing is written
    through a symlink in LOCAL: otherwise the whole pull is refused before
    anything is written. Symlinks in the shared folder are not pulled.

    \b
    Example:
      strongroom pull /output ./results        # ./results/... (if new)
      strongroom pull /dataset/big.bin ./dir/  # ./dir/big.bin
      strongroom pull /output/metrics.json - | jq .accuracy
    """
    from strongroom.client.ledger import PulledFile
    from strongroom.client.transfer import STDIO, check_destination, plan_pull

    ws = app.workspace()
    if local == STDIO:
        _pull_stdout(app, ws, remotes, enclave_name)
        return
    fetched: list[PulledFile] = []
    with connect_enclave(ws, enclave_name) as enclave:
        # the whole listing is validated, and LOCAL checked, before anything is written
        plan = plan_pull(enclave, remotes, local)
        check_destination([item.target for item in plan])
        total = sum(item.size for item in plan)
        started = time.monotonic()
        try:
            with byte_progress("pull", total, enabled=not app.json) as advance:

                def pulled(item: PullItem, verified: Verified) -> dict[str, Any]:
                    fetched.append(PulledFile(item.remote, item.size, item.mtime))
                    return {
                        "remote": item.remote,
                        "local": str(item.target.path),
                        "sha256": verified.sha256,
                        "check": verified.kind,
                        "size": item.size,
                    }

                def pull_one(item: PullItem) -> list[dict[str, Any]]:
                    return [
                        pulled(item, enclave.download(item.remote, item.target, progress=advance))
                    ]

                def pull_directory(listed: str, items: list[PullItem]) -> list[dict[str, Any]]:
                    """The small files listed under ``listed``: one archive, then any it lacked."""
                    from strongroom.client.archive import pull_archive

                    wanted = {item.remote: item for item in items}
                    try:
                        with enclave.open_archive(listed, max_size=ARCHIVE_MEMBER_MAX) as answer:
                            digests = pull_archive(
                                answer,
                                listed,
                                wanted,
                                max_size=ARCHIVE_MEMBER_MAX,
                                progress=advance,
                            )
                    except NotFoundError:  # gone since the listing, or a server without archives
                        digests = {}
                    rows = [
                        pulled(i, Verified("sha256", digests[i.remote]))
                        for i in items
                        if i.remote in digests
                    ]
                    for item in items:
                        if item.remote not in digests:
                            rows += pull_one(item)
                    return rows

                archives, singles = _pull_archives(plan)
                jobs: list[Callable[[], list[dict[str, Any]]]] = [
                    functools.partial(pull_directory, listed, items)
                    for listed, items in archives.items()
                ]
                jobs += [functools.partial(pull_one, i) for i in singles]
                done = _run_jobs(jobs)
        finally:
            _record_pulled(ws, enclave.name, fetched)
    _summary(app, "pulled", done, total, time.monotonic() - started)


def _pull_archives(plan: list[PullItem]) -> tuple[dict[str, list[PullItem]], list[PullItem]]:
    """Small files by the directory whose archive brings them; the others, fetched one by one."""
    archives: dict[str, list[PullItem]] = {}
    singles: list[PullItem] = []
    for item in plan:
        if item.listed is not None and item.size <= ARCHIVE_MEMBER_MAX:
            archives.setdefault(item.listed, []).append(item)
        else:
            singles.append(item)
    for listed in [d for d, items in archives.items() if len(items) < ARCHIVE_MIN_FILES]:
        singles += archives.pop(listed)
    return archives, singles


def _pull_stdout(
    app: AppContext, ws: Workspace, remotes: tuple[str, ...], enclave_name: str | None
) -> None:
    """``pull REMOTE -``: one regular file's bytes to standard output, nothing else there."""
    from strongroom.client.ledger import PulledFile
    from strongroom.client.transfer import plan_stdout

    if app.json:
        raise UsageError(
            "--json prints to standard output, where `pull REMOTE -` writes the file",
            hint="leave out --json, or pull into a file",
        )
    with connect_enclave(ws, enclave_name) as enclave:
        entry = plan_stdout(enclave, remotes)
        with byte_progress("pull", entry.size, enabled=True) as advance:
            enclave.download_to(entry.path, sys.stdout.buffer, progress=advance)
        _record_pulled(ws, enclave.name, [PulledFile(entry.path, entry.size, entry.mtime)])


def _record_pulled(ws: Workspace, name: str, files: list[PulledFile]) -> None:
    """Remember what a pull fetched, for `enclave stop` (see :mod:`strongroom.client.ledger`)."""
    from strongroom.client import ledger
    from strongroom.enclave import runtime_for

    if not files:
        return
    # a convenience: failing to record never turns a pull into a failure (or hides its own)
    with contextlib.suppress(StrongroomError, OSError):
        statuses = runtime_for(ws).status(name, probe=False)
        if statuses:
            ledger.record(ws, name, statuses[0].enclave_id, files)


@click.command("ls")
@click.argument("remote", default="/")
@enclave_option
@pass_app
def ls_command(app: AppContext, remote: str, enclave_name: str | None) -> None:
    """List a directory of the enclave's shared folder.

    \b
    Example:
      strongroom ls /output
    """
    with connect_enclave(app.workspace(), enclave_name) as enclave:
        entry = enclave.stat(remote)
        entries = enclave.list(remote) if entry.type == "dir" else [entry]
    rows = [e.__dict__ for e in entries]
    emit(
        app,
        rows,
        lambda: emit_table(
            ["type", "size", "mode", "path"],
            [(e.type, e.size, oct(e.mode)[2:], e.path) for e in entries],
        ),
    )


def _run_credentials(
    ws: Workspace, enclave: EnclaveClient, local: Path | None, remote: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Session credentials for one run and the key-service reference handed to the enclave.

    Never the host's long-term secret: STS session credentials allowing only
    kms:Decrypt on the package's key, for 15 minutes (see
    :mod:`strongroom.keys.sessions`), so whatever reads the enclave server's
    memory gets no more than this run may do anyway. The key is named in the
    package's header: read from the local file, or from the first bytes of the
    package in the shared folder.
    """
    import io

    from strongroom.keys.sessions import decrypt_resource, run_credentials
    from strongroom.sealing import read_header
    from strongroom.sealing.format import MAX_HEADER_SIZE

    if local is not None:
        with local.open("rb") as stream:
            header = read_header(stream, name=str(local))
    else:
        header = read_header(io.BytesIO(enclave.read_head(remote, MAX_HEADER_SIZE)), name=remote)
    region = ws.config.region
    resource = decrypt_resource(header.key_id, header.encrypted_data_key, region=region)
    from strongroom.keys.service import check_enclave_reaches

    # the enclave's key-service forwarder must lead where the key service runs now
    check_enclave_reaches(ws, enclave.name, enclave.key_service_reach)
    return run_credentials(ws, resource).to_wire(), {"region": region}


def _ensure_uploaded(
    app: AppContext, ws: Workspace, enclave: EnclaveClient, local: Path, remote: str
) -> None:
    """Make the enclave's ``remote`` a copy of ``local``: upload it unless it already is.

    Known to be the same when :mod:`strongroom.client.uploads` says so (no
    hashing at all), else when both sides' SHA-256 agree.
    """
    from strongroom.client.uploads import Upload, Uploads

    uploads = Uploads(ws.run_dir / "uploads.json")
    known = uploads.get(enclave.enclave_id, remote)
    local_stat = local.stat()
    try:
        there = enclave.stat(remote)
    except NotFoundError:
        there = None
    if there is not None and known == Upload.of(local_stat, there.size, there.mtime):
        return
    if there is None or enclave.checksum(remote) != _sha256(local):
        enclave.mkdir(ENCRYPTED_DIR, parents=True)
        with byte_progress("upload", local_stat.st_size, enabled=not app.json) as advance:
            enclave.upload(local, remote, progress=advance)
        there = enclave.stat(remote)
    uploads.put(enclave.enclave_id, remote, Upload.of(local_stat, there.size, there.mtime))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("package")
@click.option(
    "--entry",
    metavar="PATH",
    help="Entry script inside the app; may be left out when its manifest declares only one.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Kill the app after S seconds (exit code 124).",
)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="K=V",
    help="Environment variable for the app (repeatable).",
)
@enclave_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def run_command(
    app: AppContext,
    package: str,
    entry: str | None,
    timeout_s: float | None,
    env_pairs: tuple[str, ...],
    enclave_name: str | None,
    args: tuple[str, ...],
) -> None:
    """Run a sealed app in the enclave, with live output; its exit code becomes ours.

    \b
    PACKAGE is a local sealed file (pushed to /encrypted/ first) or a path in
    the shared folder. Inside the enclave the data key is released only to an
    approved image pinned to the package's key, the app is decrypted into
    enclave memory, run in a jail of its own (no network, no view of the
    enclave), and wiped. The app's manifest decides which --entry and --env
    the host may give (`strongroom inspect PACKAGE` shows them). In ARGS,
    relative paths point into the app, absolute paths into the shared folder
    (/dataset/x → shared/dataset/x). Ctrl-C cancels the run.

    \b
    Example:
      strongroom run classifier.sealed --entry main.py -- \\
          --input /dataset/digits.csv --output /output/
    """
    env = {}
    for pair in env_pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {pair!r} is not K=V")
        env[name] = value
    ws = app.workspace()
    with connect_enclave(ws, enclave_name) as enclave:
        local = Path(package)
        if local.is_file():
            remote = f"{ENCRYPTED_DIR}/{local.name}"
            _ensure_uploaded(app, ws, enclave, local, remote)
        elif package.startswith("/"):
            remote = package
        else:
            raise NotFoundError(
                f"{package}: no such file",
                hint="name a local .sealed file, or a /path in the shared folder",
            )
        _settle_mounts(ws, enclave.name)
        credentials, key_service = _run_credentials(
            ws, enclave, local if local.is_file() else None, remote
        )
        request = {
            "package": remote,
            "entry": entry,
            "args": list(args),
            "env": env,
            "timeout_s": timeout_s,
            "credentials": credentials,
            "key_service": key_service,
        }
        code = _stream_run(app, enclave.run(request))
        _settle_mounts(ws, enclave.name)  # what the app wrote shows there at once
    sys.exit(code)


def _settle_mounts(ws: Workspace, enclave_name: str) -> None:
    """The mounts of this enclave and the enclave agree: before a run, what was copied
    in is there for the app; after it, what the app wrote shows in the mounts at once."""
    if not (ws.run_dir / "mount").is_dir():
        return  # no mount was ever made here: nothing to import, nothing to wait for
    from strongroom.client.mount import mounts

    for mount in mounts.of_enclave(ws, enclave_name, running=True):
        mounts.settle(mount.directory)


def _stream_run(app: AppContext, events: Any) -> int:
    """Copy a run's output to ours as it arrives; return the app's exit code.

    With ``--json`` every event is one NDJSON line on stdout instead (see
    docs/CLI.md). A reader that closes our stdout (``| head -1``) stops the
    copying, not the run: the app's exit code still comes back.
    """
    sink = _JsonEvents() if app.json else _Terminal()
    try:
        for event in _refusal_as_event(events):
            kind = event["type"]
            sink.event(event)
            if kind == "exit":
                return int(event["code"])
            if kind == "error":
                raise _run_error(event)
    except KeyboardInterrupt:
        events.close()  # closes the stream: the enclave kills and wipes the app
        click.echo("run cancelled", err=True)
        return 130
    finally:
        sink.close()
    raise InvalidInputError(
        "the enclave ended the run without an exit status", hint="see `strongroom enclave status`"
    )


class _Terminal:
    """The app's stdout and stderr as its own, our status lines dimmed on stderr."""

    def __init__(self) -> None:
        self.stdout: Any = sys.stdout.buffer
        self._bar: Any = None  # a progress bar while the enclave decrypts a large app

    def event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "progress":
            self._progress(event)
            return
        self.close()
        if kind == "stdout":
            self._write_stdout(base64.b64decode(event["data"]))
        elif kind == "stderr":
            sys.stderr.buffer.write(base64.b64decode(event["data"]))
            sys.stderr.buffer.flush()
        elif kind == "status":
            click.secho(f"· {event['message']}", dim=True, err=True)
        elif kind == "exit" and event.get("reason"):
            click.secho(f"app {event['reason']}", fg="yellow", err=True)

    def _progress(self, event: dict[str, Any]) -> None:
        if not err.is_terminal:
            return
        if self._bar is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("· {task.description}"),
                BarColumn(),
                DownloadColumn(),
                console=err.console,
                transient=True,
            )
            self._bar.start()
            self._bar.add_task(str(event.get("stage", "")), total=event.get("total"))
        self._bar.update(self._bar.task_ids[0], completed=event.get("done", 0))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _write_stdout(self, data: bytes) -> None:
        if self.stdout is None:
            return
        try:
            self.stdout.write(data)
            self.stdout.flush()
        except BrokenPipeError:
            self.stdout = None  # the reader is gone: drop the rest, keep the run


class _JsonEvents:
    """Each event as one JSON line on stdout: output as base64 ``data`` (+ ``text`` if UTF-8)."""

    def __init__(self) -> None:
        self.open = True

    def close(self) -> None:
        pass

    def event(self, event: dict[str, Any]) -> None:
        line = dict(event)
        if event["type"] in ("stdout", "stderr"):
            with contextlib.suppress(UnicodeDecodeError):
                line["text"] = base64.b64decode(event["data"]).decode()
        if not self.open:
            return
        try:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self.open = False


#: Classes for errors the enclave names but the host does not know, by exit code.
_ERRORS_BY_CODE: dict[int, type[StrongroomError]] = {
    2: UsageError,
    3: InvalidInputError,
    4: EvidenceError,
    5: AccessDeniedError,
    6: UnavailableError,
    7: NotFoundError,
}


def _refusal_as_event(events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The run's events; a run the enclave refused before its stream began (a Problem,
    raised by the client) comes as the ``error`` event it used to be, so ``--json``
    readers see one shape either way."""
    try:
        first = next(events)
    except StopIteration:
        return
    except StrongroomError as e:
        first = {
            "type": "error",
            "error": type(e).__name__,
            "message": e.message,
            "hint": e.hint or None,
            "exit_code": e.exit_code,
        }
    yield first
    yield from events


def _run_error(event: dict[str, Any]) -> StrongroomError:
    from strongroom import errors

    cls = getattr(errors, str(event.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, StrongroomError)):
        cls = _ERRORS_BY_CODE.get(event.get("exit_code"), StrongroomError)  # type: ignore[arg-type]
    error: StrongroomError = cls(str(event.get("message")), hint=event.get("hint") or None)
    return error


@click.command("attest")
@click.option("--expect-pcr0", metavar="HEX", help="The image measurement you expect.")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Expect the measurement of this image file.",
)
@enclave_option
@pass_app
def attest_command(
    app: AppContext, expect_pcr0: str | None, image: Path | None, enclave_name: str | None
) -> None:
    """Check what the enclave runs: fetch its attestation over a fresh nonce and verify it.

    \b
    Example:
      strongroom attest --image classifier.eif
    """
    from strongroom.attestation.describe import describe
    from strongroom.attestation.roots import load_anchor
    from strongroom.attestation.verify import verify

    if expect_pcr0 and image:
        raise UsageError("give --expect-pcr0 or --image, not both")
    expected: dict[int, bytes] = {}
    if image is not None:
        from strongroom.image import measure_image

        expect_pcr0 = measure_image(image).pcr0
    if expect_pcr0:
        try:
            expected[0] = bytes.fromhex(expect_pcr0)
        except ValueError:
            raise UsageError("--expect-pcr0 must be hex") from None
    ws = app.workspace()
    nonce = secrets.token_bytes(32)
    with connect_enclave(ws, enclave_name) as enclave:
        document = enclave.attestation(nonce)
    root = "local" if ws.config.target == "local" else "aws"
    verified = verify(
        document,
        trust_anchor=load_anchor(root, ws.ca_dir),
        expect_pcrs=expected,
        expect_nonce=nonce,
    )
    data = {"verified": True, "trust_anchor": root, **describe(verified.document)}

    def render() -> None:
        out.print(
            f"[green]verified[/]: {verified.module_id}, fresh nonce, {root} root"
            + (", expected PCR0" if expected else "")
        )
        for index in (0, 1, 2):
            out.print(f"PCR{index}  {verified.pcrs[index].hex()}")

    emit(app, data, render)
