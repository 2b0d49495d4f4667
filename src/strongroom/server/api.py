"""The enclave API's Files and Run endpoints (see ``docs/enclave-api.yaml``).

Files (all paths are inside the shared folder; see :mod:`strongroom.server.files`):

=================================  ===============================================
``GET    /v1/files/stat?path=``     one entry
``GET    /v1/files/list?path=``     a directory's entries
``GET    /v1/files/content?path=``  the bytes, streamed (``offset``, ``length``)
``PUT    /v1/files/content?path=``  write a streamed body (``offset``, ``truncate``,
                                    ``create``); a whole-file write lands in a
                                    temporary name and is renamed into place only
                                    when complete; answers ``{size, sha256}``, or
                                    ``{size, check}`` when an ``x-check-key``
                                    header asks for the keyed check of large
                                    transfers (:mod:`strongroom._internal.integrity`)
``GET    /v1/files/checksum?path=`` SHA-256 of a file, for end-to-end checks (or,
                                    with ``x-check-key``, its keyed check)
``POST   /v1/files/archive?path=``  extract a streamed tar under the directory
                                    (created if missing): regular files and
                                    directories only, each file renamed into place
                                    with its mode bits and mtime; anything else is
                                    refused before it is written (see
                                    :mod:`.archive`); answers ``{entries: [{path,
                                    size, sha256}]}``
``GET    /v1/files/archive?path=``  the regular files below the directory up to
                                    ``max_size`` bytes, as one streamed tar with each
                                    file's SHA-256 in a pax record
``POST   /v1/files/mkdir``          ``{path, parents}``
``DELETE /v1/files?path=``          (``recursive``)
``POST   /v1/files/rename``         ``{source, destination}``
``POST   /v1/files/truncate``       ``{path, size}``
``POST   /v1/files/times``          ``{path, atime, mtime}``
``POST   /v1/files/chmod``          ``{path, mode}``
``GET    /v1/files/statfs``         sizes of the shared folder's filesystem
``POST   /v1/files/symlink``        ``{path, target}`` (a relative target inside)
``GET    /v1/files/readlink?path=`` a symlink's target
``POST   /v1/files/link``           ``{source, destination}`` (a hard link)
``POST   /v1/files/fsync``          ``{path}``: flush a file to its filesystem
=================================  ===============================================

Run: ``POST /v1/runs`` with a :class:`RunRequest` → ``application/x-ndjson``,
one JSON event per line as it happens (``status``, ``started``, ``stdout``,
``stderr`` with base64 ``data``, then ``exit`` or ``error``). If the client
goes away, the response is cancelled, which kills the app and wipes it.

Errors are JSON problem bodies ``{"error": class, "message", "hint"}`` with an
HTTP status chosen by the error's family (plus ``errno``, e.g. ``"ENOTEMPTY"``,
when a filesystem call failed); the client maps them back.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import queue
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from strongroom._internal.integrity import KEY_HEADER, StreamCheck, parse_key
from strongroom.errors import (
    InsufficientSpaceError,
    InvalidInputError,
    NotFoundError,
    StrongroomError,
    UnavailableError,
    UsageError,
)
from strongroom.keys.base import KeyService
from strongroom.server import archive, runs
from strongroom.server.files import (
    MAX_PATH,
    READ_CHUNK,
    TIME_MAX,
    TIME_MIN,
    FileStat,
    SharedFolder,
    chunks,
    split_path,
)
from strongroom.server.http import (
    MAX_OFFSET,
    Query,
    json_body,
    parse_query,
    problem,
    route,
)

#: Uploads are written in batches of at least this many bytes (one ``pwritev``)...
WRITE_BATCH = 1024 * 1024
#: ...or of this many chunks (well below ``IOV_MAX``, 1024 on Linux)...
WRITE_BATCH_CHUNKS = 256
#: ...with at most this many batches queued for the writer thread.
WRITE_QUEUE = 8
#: Chunks a large download reads ahead of what the socket has taken.
READ_AHEAD = 4
#: Files up to this size are read whole and answered with their SHA-256.
SMALL_FILE = 1024 * 1024
MAX_ARGS = 256
#: Key-service clients kept for sessions that may serve another run.
KEY_SERVICE_CLIENTS = 8
#: Longest argument or environment value, in characters (the whole body is at most
#: MAX_JSON_BODY bytes, well within the kernel's limits on an exec).
MAX_ARG = 8192

#: The query parameters of each Files operation (parsed by :func:`.http.parse_query`,
#: described by :mod:`.openapi`); operations not named here take none.
PATH = Query("path", "path", required=True, example="/from_server.txt")
DIRECTORY = Query("path", "path", required=True, example="/")
QUERIES: dict[tuple[str, str], tuple[Query, ...]] = {
    ("/v1/files/stat", "get"): (DIRECTORY,),
    ("/v1/files/list", "get"): (DIRECTORY,),
    ("/v1/files/content", "get"): (
        PATH,
        Query("offset", "integer", default=0, description="where to start, in bytes"),
        Query("length", "integer", description="bytes at most (default: to the end)"),
    ),
    ("/v1/files/content", "put"): (
        PATH,
        Query(
            "offset",
            "integer",
            default=0,
            description="where to write; offset plus the body's length may not pass the "
            "shared folder's size (413)",
        ),
        Query(
            "truncate",
            "boolean",
            default=False,
            description="truncate first; with offset 0 the write replaces the file "
            "atomically (a temporary renamed into place)",
        ),
        Query("create", "boolean", default=True, description="create the file if missing"),
    ),
    ("/v1/files/checksum", "get"): (PATH,),
    ("/v1/files/archive", "post"): (DIRECTORY,),
    ("/v1/files/archive", "get"): (
        DIRECTORY,
        Query(
            "max_size",
            "integer",
            default=archive.MAX_DOWNLOAD_MEMBER,
            maximum=archive.MAX_DOWNLOAD_MEMBER,
            description="larger files are left out",
        ),
    ),
    ("/v1/files", "delete"): (
        PATH,
        Query("recursive", "boolean", default=False, description="remove a directory's tree"),
    ),
    ("/v1/files/readlink", "get"): (PATH,),
}


def query(request: Request, path: str) -> dict[str, Any]:
    """The request's query parameters, as :data:`QUERIES` declares them for ``path``."""
    return parse_query(request, QUERIES.get((path, request.method.lower()), ()))


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_NO_NUL = "^[^\\x00]*$"
#: A shared-folder path in a body (its meaning: :mod:`.files`; as a query: ``PATH``).
_PATH = Field(max_length=MAX_PATH, pattern=_NO_NUL)


class MkdirBody(_Body):
    path: str = _PATH
    parents: bool = False


class RenameBody(_Body):
    source: str = _PATH
    destination: str = _PATH


class TruncateBody(_Body):
    path: str = _PATH
    #: at most the shared folder's size (413 beyond it)
    size: int = Field(ge=0, le=MAX_OFFSET)


class TimesBody(_Body):
    path: str = _PATH
    atime: float = Field(ge=TIME_MIN, le=TIME_MAX)
    mtime: float = Field(ge=TIME_MIN, le=TIME_MAX)


class ChmodBody(_Body):
    path: str = _PATH
    mode: int = Field(ge=0, le=0o777)


class SymlinkBody(_Body):
    path: str = _PATH
    target: str = Field(min_length=1, max_length=MAX_PATH, pattern=_NO_NUL)


class LinkBody(_Body):
    source: str = _PATH
    destination: str = _PATH


class FsyncBody(_Body):
    path: str = _PATH


# The host sends STS session credentials scoped to kms:Decrypt on the package's
# key, for 15 minutes, never its long-term secret, so a session_token always comes
# with them; it stays optional on the wire only for hand-made requests, which the
# key service then answers on their own merits. (A comment, not the docstring:
# the docstring is the published OpenAPI description.)
class Credentials(_Body):
    """The host's key-service credentials for one run. Never logged, never stored."""

    access_key_id: str = Field(min_length=1, max_length=128)
    secret_access_key: str = Field(min_length=1, max_length=256, repr=False)
    session_token: str | None = Field(default=None, max_length=4096, repr=False)


class KeyServiceRef(_Body):
    """Where the enclave reaches the key service, through its egress channel."""

    endpoint_url: str | None = Field(default=None, max_length=512)
    region: str = Field(max_length=64)


class RunRequest(_Body):
    package: str = _PATH
    #: None: the manifest's only entry
    entry: str | None = Field(default=None, max_length=MAX_PATH, pattern=_NO_NUL)
    args: list[Annotated[str, Field(max_length=MAX_ARG, pattern=_NO_NUL)]] = Field(
        default_factory=list, max_length=MAX_ARGS
    )
    env: dict[
        Annotated[str, Field(min_length=1, max_length=256, pattern="^[^\\x00=]+$")],
        Annotated[str, Field(max_length=MAX_ARG, pattern=_NO_NUL)],
    ] = Field(default_factory=dict, max_length=128)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    credentials: Credentials
    key_service: KeyServiceRef


class Temporaries:
    """The temporary files of whole-file uploads this server has made, and their fate.

    An upload lands under ``.NAME.part-XXXXXXXX`` beside its target and is
    renamed into place only when complete. While it is in flight the name is
    hidden from listings (a ``pull`` of the directory would otherwise copy a
    partial file under that name). When an upload fails -- the client went
    away, ``kill -9``, the folder is full -- its temporary is removed at once;
    one whose removal itself failed is kept here as an orphan and removed
    before the next listing or upload (:meth:`sweep`). Only names this server
    made are ever removed: a file of that shape that an app wrote is the
    app's. (The shared folder is a fresh tmpfs at every enclave start, so no
    earlier server's temporaries can exist.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._orphans: set[str] = set()

    def new(self, parts: list[str]) -> str:
        path = "/" + "/".join([*parts[:-1], f".{parts[-1]}.part-{secrets.token_hex(4)}"])
        with self._lock:
            self._in_flight.add(path)
        return path

    def done(self, path: str, *, removed: bool = True) -> None:
        with self._lock:
            self._in_flight.discard(path)
            if not removed:
                self._orphans.add(path)

    def hidden(self, entries: list[FileStat]) -> list[FileStat]:
        with self._lock:
            if not self._in_flight:
                return entries
            return [e for e in entries if e.path not in self._in_flight]

    def sweep(self, shared: SharedFolder) -> None:
        with self._lock:
            orphans, self._orphans = self._orphans, set()
        for path in orphans:
            try:
                shared.remove(path)
            except NotFoundError:
                pass
            except StrongroomError:
                with self._lock:
                    self._orphans.add(path)

    def discard(self, shared: SharedFolder, path: str) -> None:
        """Remove a failed upload's temporary (keeping it as an orphan if that fails)."""
        try:
            shared.remove(path)
        except NotFoundError:
            self.done(path)
        except StrongroomError:
            self.done(path, removed=False)
        else:
            self.done(path)


class FilesApi:
    """The Files endpoints. Every filesystem call runs in a worker thread.

    The event loop serves every connection of the enclave API (describe, runs,
    other transfers): a call that waited on the loop -- a blocking ``open``, a
    long read, a large listing -- would stall them all. :mod:`.files` never
    waits on anything the app controls (a FIFO, a device); running it off the
    loop keeps even a slow call from holding up the rest.
    """

    def __init__(self, shared: SharedFolder) -> None:
        self.shared = shared
        self.temporaries = Temporaries()

    async def stat(self, request: Request) -> Response:
        entry = await run_in_threadpool(self.shared.stat, query(request, "/v1/files/stat")["path"])
        return JSONResponse(entry.to_json())

    async def listdir(self, request: Request) -> Response:
        path = query(request, "/v1/files/list")["path"]

        def visible() -> list[FileStat]:
            self.temporaries.sweep(self.shared)
            return self.temporaries.hidden(self.shared.list(path))

        entries = await run_in_threadpool(visible)
        return JSONResponse({"entries": [e.to_json() for e in entries]})

    async def read(self, request: Request) -> Response:
        q = query(request, "/v1/files/content")
        path, offset, length = q["path"], q["offset"], q["length"]
        fd, size, small = await run_in_threadpool(_open_sized, self.shared, path, offset, length)
        sending = max(0, size - offset) if length is None else max(0, min(length, size - offset))
        if small is not None:
            # small files: one response carries the bytes and their hash, so a pull
            # costs one request (and one thread hop) per file
            headers = {"x-file-size": str(size), "x-sha256": hashlib.sha256(small).hexdigest()}
            return Response(small, media_type="application/octet-stream", headers=headers)
        # exactly the announced length, even if the app grows the file meanwhile
        body = chunks(fd, offset, sending)
        headers = {"x-file-size": str(size), "content-length": str(sending)}
        return StreamingResponse(
            _prefetched(body), media_type="application/octet-stream", headers=headers
        )

    async def write(self, request: Request) -> Response:
        q = query(request, "/v1/files/content")
        path, offset, truncate, create = q["path"], q["offset"], q["truncate"], q["create"]
        whole = offset == 0 and truncate
        parts = split_path(path)
        if not parts:
            raise _with_errno(UsageError("a file path is needed, not the folder's root"), "EISDIR")
        key = _check_key(request)
        declared = request.headers.get("content-length", "")
        # nothing is written beyond the shared folder's size (a sparse file there
        # costs nothing, but a checksum of it would hash every byte)
        limit = await run_in_threadpool(self.shared.capacity)
        if offset + (int(declared) if declared.isdigit() else 0) > limit:
            raise _with_errno(
                InsufficientSpaceError(
                    f"{path}: the write would end beyond the shared folder's size ({limit})"
                ),
                "ENOSPC",  # what a full filesystem says (the mount hands it to the kernel)
            )
        # a whole-file write goes to a temporary sibling and is renamed at the end,
        # so an interrupted upload never leaves a truncated file under its final name
        if not whole:
            return await self._write_in_place(
                request, path, parts, offset, truncate, create, key, limit
            )
        if key is None and declared.isdigit() and int(declared) <= SMALL_FILE:
            # a small whole file: read it here, then one thread hop checks, writes
            # it under its temporary name and renames it (no writer thread)
            data = await request.body()
            if len(data) > SMALL_FILE:
                raise InvalidInputError("the body is longer than its Content-Length")
            target = self.temporaries.new(parts)
            try:
                digest = await run_in_threadpool(_write_small, self.shared, path, target, data)
            finally:
                self.temporaries.done(target)  # renamed, or removed by _write_small
            answer = {"path": "/" + "/".join(parts), "size": len(data), "sha256": digest}
            return JSONResponse(answer)
        await run_in_threadpool(self._before_upload, path)
        target = self.temporaries.new(parts)
        try:
            fd = await run_in_threadpool(
                self.shared.open_write, target, create=True, truncate=True, exclusive=True
            )
        except BaseException:
            self.temporaries.done(target)
            raise
        try:
            written, digest = await _receive(request, _FileWriter(fd, offset, key, limit))
            await run_in_threadpool(self.shared.rename, target, path)
        except BaseException:
            # shielded: a cancelled request (the client is gone) must still clean up
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self.temporaries.discard, self.shared, target)
            raise
        self.temporaries.done(target)
        return JSONResponse(_written("/" + "/".join(parts), written, digest, key))

    def _before_upload(self, path: str) -> None:
        self.temporaries.sweep(self.shared)
        self.shared.check_replaceable(path)

    async def _write_in_place(
        self,
        request: Request,
        path: str,
        parts: list[str],
        offset: int,
        truncate: bool,
        create: bool,
        key: bytes | None,
        limit: int,
    ) -> Response:
        """A partial write (at an offset, or into an existing file): no temporary."""
        fd = await run_in_threadpool(
            self.shared.open_write, path, create=create, truncate=truncate, exclusive=False
        )
        written, digest = await _receive(request, _FileWriter(fd, offset, key, limit))
        return JSONResponse(_written("/" + "/".join(parts), written, digest, key))

    async def write_archive(self, request: Request) -> Response:
        """``POST /v1/files/archive?path=DIR``: extract a streamed tar (see :mod:`.archive`)."""
        directory = query(request, "/v1/files/archive")["path"]
        await run_in_threadpool(self.temporaries.sweep, self.shared)
        body = archive.BodyStream(WRITE_QUEUE)
        extraction = _Extraction(
            lambda: archive.extract(self.shared, self.temporaries, directory, body)
        )
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                if extraction.finished():  # refused: read the rest, write nothing
                    continue
                try:
                    body.queue.put_nowait(chunk)
                except queue.Full:
                    await run_in_threadpool(_put_unless, body, chunk, extraction)
        finally:
            # shielded: a client gone mid-archive still ends the extraction thread
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(_put_unless, body, None, extraction)
                entries = await run_in_threadpool(extraction.result)
        return JSONResponse({"entries": entries})

    async def read_archive(self, request: Request) -> Response:
        """``GET /v1/files/archive?path=DIR``: the small files below DIR as one tar stream."""
        q = query(request, "/v1/files/archive")
        directory, limit = q["path"], q["max_size"]
        entry = await run_in_threadpool(self.shared.stat, directory)
        if entry.type != "dir":
            raise _with_errno(UsageError(f"{entry.path}: not a directory"), "ENOTDIR")
        chunks = archive.archive_chunks(self.shared, directory, limit, self.temporaries.hidden)
        return StreamingResponse(_iterate_in_thread(chunks), media_type="application/x-tar")

    async def checksum(self, request: Request) -> Response:
        path = query(request, "/v1/files/checksum")["path"]
        key = _check_key(request)

        def compute(gone: threading.Event) -> str:
            digest = hashlib.sha256() if key is None else StreamCheck(key)
            pieces = self.shared.read(path)
            try:
                for chunk in pieces:
                    if gone.is_set():  # nobody is waiting for the answer
                        raise _ClientGone("the client went away")
                    digest.update(chunk)
            finally:
                pieces.close()
            return digest.hexdigest()

        field = "sha256" if key is None else "check"
        return JSONResponse({"path": path, field: await _while_connected(request, compute)})

    async def mkdir(self, request: Request) -> Response:
        query(request, "/v1/files/mkdir")
        body = await json_body(request, MkdirBody)
        await run_in_threadpool(self.shared.mkdir, body.path, parents=body.parents)
        return _done(body.path)

    async def remove(self, request: Request) -> Response:
        q = query(request, "/v1/files")
        await run_in_threadpool(self.shared.remove, q["path"], recursive=q["recursive"])
        return _done(q["path"])

    async def rename(self, request: Request) -> Response:
        query(request, "/v1/files/rename")
        body = await json_body(request, RenameBody)
        await run_in_threadpool(self.shared.rename, body.source, body.destination)
        return _done(body.destination)

    async def truncate(self, request: Request) -> Response:
        query(request, "/v1/files/truncate")
        body = await json_body(request, TruncateBody)
        await run_in_threadpool(self.shared.truncate, body.path, body.size)
        return _done(body.path)

    async def times(self, request: Request) -> Response:
        query(request, "/v1/files/times")
        body = await json_body(request, TimesBody)
        await run_in_threadpool(self.shared.set_times, body.path, body.atime, body.mtime)
        return _done(body.path)

    async def chmod(self, request: Request) -> Response:
        query(request, "/v1/files/chmod")
        body = await json_body(request, ChmodBody)
        mode = await run_in_threadpool(self.shared.chmod, body.path, body.mode)
        return _done(body.path, mode=mode)

    async def statfs(self, request: Request) -> Response:
        query(request, "/v1/files/statfs")
        return JSONResponse(await run_in_threadpool(self.shared.statfs))

    async def symlink(self, request: Request) -> Response:
        query(request, "/v1/files/symlink")
        body = await json_body(request, SymlinkBody)
        await run_in_threadpool(self.shared.symlink, body.path, body.target)
        return _done(body.path)

    async def readlink(self, request: Request) -> Response:
        path = query(request, "/v1/files/readlink")["path"]
        return JSONResponse(
            {"path": path, "target": await run_in_threadpool(self.shared.readlink, path)}
        )

    async def link(self, request: Request) -> Response:
        query(request, "/v1/files/link")
        body = await json_body(request, LinkBody)
        await run_in_threadpool(self.shared.link, body.source, body.destination)
        return _done(body.destination)

    async def fsync(self, request: Request) -> Response:
        query(request, "/v1/files/fsync")
        body = await json_body(request, FsyncBody)
        await run_in_threadpool(self.shared.fsync, body.path)
        return _done(body.path)

    def routes(self) -> list[Route]:
        return [
            route("/v1/files/stat", {"GET": self.stat}),
            route("/v1/files/list", {"GET": self.listdir}),
            route("/v1/files/content", {"GET": self.read, "PUT": self.write}),
            route("/v1/files/checksum", {"GET": self.checksum}),
            route("/v1/files/archive", {"GET": self.read_archive, "POST": self.write_archive}),
            route("/v1/files/mkdir", {"POST": self.mkdir}),
            route("/v1/files", {"DELETE": self.remove}),
            route("/v1/files/rename", {"POST": self.rename}),
            route("/v1/files/truncate", {"POST": self.truncate}),
            route("/v1/files/times", {"POST": self.times}),
            route("/v1/files/chmod", {"POST": self.chmod}),
            route("/v1/files/statfs", {"GET": self.statfs}),
            route("/v1/files/symlink", {"POST": self.symlink}),
            route("/v1/files/readlink", {"GET": self.readlink}),
            route("/v1/files/link", {"POST": self.link}),
            route("/v1/files/fsync", {"POST": self.fsync}),
        ]


def _done(path: str, **extra: object) -> JSONResponse:
    """The answer to a change: the entry's path as the folder names it (for the next call)."""
    return JSONResponse({"ok": True, "path": "/" + "/".join(split_path(path)), **extra})


def _with_errno(error: StrongroomError, name: str) -> StrongroomError:
    error.errno_name = name
    return error


class _ClientGone(UnavailableError):
    """The client went away while its answer was being computed (answered to nobody)."""


async def _while_connected(request: Request, work: Callable[[threading.Event], str]) -> str:
    """``work(gone)`` in a worker thread; ``gone`` is set once the client disconnects,
    and ``work`` stops at its next piece (a checksum of a large file would otherwise
    hash on, for nobody, at 100% of a core)."""
    gone = threading.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    result: str | BaseException = ""
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            result = await run_in_threadpool(work, gone)
        except Exception as e:  # raised below, as itself (a task group would wrap it)
            result = e
        finally:
            group.cancel_scope.cancel()
    if isinstance(result, BaseException):
        raise result
    return result


async def _receive(request: Request, writer: _FileWriter) -> tuple[int, str]:
    """Stream the request body into ``writer``; (bytes written, SHA-256).

    A write that fails (the shared folder is full, above all) is answered only
    once the whole body is read: an answer while the client still sends reaches
    it as a broken connection, which says "the enclave is gone", not why.
    """
    try:
        # the chunks are handed on as they came, a batch at a time: no copy here
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            if writer.failed:
                continue  # read to the end, then say why
            if chunk:
                pending.append(chunk)
                size += len(chunk)
            if size >= WRITE_BATCH or len(pending) >= WRITE_BATCH_CHUNKS:
                await writer.put(pending)
                pending, size = [], 0
        if pending and not writer.failed:
            await writer.put(pending)
        return await writer.finish()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await writer.abort()
        raise


class _FileWriter:
    """Hashes and writes an upload in its own thread while the event loop keeps reading.

    Writing each chunk through the thread pool made the loop stop reading the
    socket at every chunk, so client and server took turns; with a queue the
    two overlap. The queue is bounded, so a slow disk slows the upload down
    instead of filling memory. The writer owns ``fd`` and closes it.
    """

    def __init__(self, fd: int, offset: int, key: bytes | None, limit: int) -> None:
        self._fd = fd
        self._offset = offset
        #: where the file must end at the latest (the shared folder's size)
        self._limit = limit
        self._written = 0
        self._digest: hashlib._Hash | StreamCheck = (
            hashlib.sha256() if key is None else StreamCheck(key)
        )
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=WRITE_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="upload-writer", daemon=True)
        try:
            self._thread.start()
        except RuntimeError as e:  # no thread to be had: the enclave's process limit
            os.close(fd)
            raise UnavailableError(
                "the enclave cannot start a writer thread (its process limit is reached)",
                hint="retry once the app's processes have ended",
            ) from e

    def _run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                if self._error is None:
                    end = self._offset + self._written + sum(len(c) for c in batch)
                    if end > self._limit:
                        raise OSError(errno.ENOSPC, "beyond the shared folder's size")
                    for chunk in batch:
                        self._digest.update(chunk)
                    self._written += _pwritev_all(self._fd, batch, self._offset + self._written)
        except BaseException as e:  # reported by finish()
            self._error = e
            while self._queue.get() is not None:  # drain, so put() never blocks forever
                pass
        finally:
            os.close(self._fd)

    @property
    def failed(self) -> bool:
        """A write failed: what is still put is dropped, and :meth:`finish` says why."""
        return self._error is not None

    async def put(self, data: list[bytes]) -> None:
        if self._error is not None:
            return
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            await run_in_threadpool(self._queue.put, data)

    async def finish(self) -> tuple[int, str]:
        await self.put_end()
        if self._error is not None:
            if isinstance(self._error, OSError):
                raise _write_failed(self._error) from self._error
            raise self._error
        return self._written, self._digest.hexdigest()

    async def put_end(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            await run_in_threadpool(self._queue.put, None)
        await run_in_threadpool(self._thread.join)

    async def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or InvalidInputError("upload aborted")
            await self.put_end()


class _Extraction:
    """:func:`.archive.extract` in its own thread; :meth:`result` waits for it."""

    def __init__(self, work: Callable[[], list[dict[str, object]]]) -> None:
        self._work = work
        self._entries: list[dict[str, object]] = []
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archive-extract", daemon=True)
        try:
            self._thread.start()
        except RuntimeError as e:  # no thread to be had: the enclave's process limit
            raise UnavailableError(
                "the enclave cannot start an extraction thread (its process limit is reached)",
                hint="retry once the app's processes have ended",
            ) from e

    def _run(self) -> None:
        try:
            self._entries = self._work()
        except BaseException as e:  # reported by result()
            self._error = e
        finally:
            self._done.set()

    def finished(self) -> bool:
        return self._done.is_set()

    def result(self) -> list[dict[str, object]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._entries


def _put_unless(body: archive.BodyStream, chunk: bytes | None, extraction: _Extraction) -> None:
    """Queue ``chunk`` for the extraction, unless it has ended (then nobody reads the queue)."""
    while not extraction.finished():
        try:
            body.queue.put(chunk, timeout=0.1)
            return
        except queue.Full:
            continue


def _check_key(request: Request) -> bytes | None:
    """The key of a keyed stream check, when the client asks for one (see
    :mod:`strongroom._internal.integrity`); None: the check is the SHA-256."""
    text = request.headers.get(KEY_HEADER)
    if text is None:
        return None
    key = parse_key(text)
    if key is None:
        raise InvalidInputError(f"{KEY_HEADER} must be {2 * 16} lower-case hex digits")
    return key


def _written(path: str, size: int, digest: str, key: bytes | None) -> dict[str, object]:
    """The answer to a write: the bytes' SHA-256, or their keyed check if one was asked for."""
    return {"path": path, "size": size, "sha256" if key is None else "check": digest}


def _open_sized(
    shared: SharedFolder, path: str, offset: int, length: int | None
) -> tuple[int, int, bytes | None]:
    """A descriptor of a regular file and its size, from the same open (no stat race),
    and, when what is asked for is at most :data:`SMALL_FILE`, those bytes already read
    (the descriptor is then closed)."""
    fd = shared.open_read(path)
    try:
        size = os.fstat(fd).st_size
        sending = max(0, size - offset) if length is None else max(0, min(length, size - offset))
        if sending > SMALL_FILE:
            return fd, size, None
        data = b"".join(chunks(fd, offset, sending))  # closes fd
        return -1, size, data
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _write_small(shared: SharedFolder, path: str, temporary: str, data: bytes) -> str:
    """Write a whole small file: under ``temporary`` first, renamed to ``path`` once
    complete (nothing truncated is ever seen under its name). Returns its SHA-256."""
    shared.check_replaceable(path)
    fd = shared.open_write(temporary, create=True, truncate=True, exclusive=True)
    try:
        try:
            _pwrite_all(fd, data, 0)
        except OSError as e:  # ENOSPC above all: the shared folder is bounded
            raise _write_failed(e) from e
        finally:
            os.close(fd)
        shared.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(StrongroomError):
            shared.remove(temporary)
        raise
    return hashlib.sha256(data).hexdigest()


def _write_failed(error: OSError) -> InvalidInputError:
    failed = (
        InsufficientSpaceError("write failed: no space left in the enclave's shared folder")
        if error.errno == errno.ENOSPC
        else InvalidInputError(f"write failed: {error.strerror}")
    )
    if error.errno is not None:
        failed.errno_name = errno.errorcode.get(error.errno)  # what a mount tells the kernel
    return failed


def _pwritev_all(fd: int, chunks: list[bytes], offset: int) -> int:
    """Write ``chunks`` at ``offset`` with as few calls as the kernel allows; the bytes written."""
    total = sum(len(c) for c in chunks)
    written = os.pwritev(fd, chunks, offset)
    if written < total:  # a short write (rare): the rest one by one
        _pwrite_all(fd, b"".join(chunks)[written:], offset + written)
    return total


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


async def _prefetched(chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """A large download's chunks, read ahead by a thread while the loop sends the last ones.

    Reading each chunk only once the one before had been sent made disk and
    socket take turns (a thread hop and a read per MiB in the gap); with a
    bounded queue of :data:`READ_AHEAD` chunks they overlap, and memory stays
    bounded. The thread ends, closing the file, when the download ends or
    the client goes away.
    """
    ahead: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def read() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        ahead.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: bytes | BaseException | None = None
        except BaseException as e:  # handed to the loop, raised there
            item = e
        finally:
            chunks.close()
        with contextlib.suppress(queue.Full):
            ahead.put(item, timeout=1.0)

    try:
        thread = threading.Thread(target=read, name="download-reader", daemon=True)
        thread.start()
    except RuntimeError:  # no thread to be had (the enclave's process limit): read in line
        async for chunk in _iterate_in_thread(chunks):
            yield chunk
        return
    try:
        while True:
            try:
                item = ahead.get_nowait()
            except queue.Empty:
                item = await run_in_threadpool(ahead.get)
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


async def _iterate_in_thread(chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """Read a blocking generator from a worker thread, one chunk at a time."""
    try:
        while (chunk := await run_in_threadpool(next, chunks, None)) is not None:
            yield chunk
    finally:
        chunks.close()


@functools.lru_cache(maxsize=KEY_SERVICE_CLIENTS)
def _key_service(
    region: str,
    endpoint: str | None,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None,
) -> KeyService:
    """A key-service client per run session: the host reuses a session for the runs of
    its key for a few minutes, and so does this its client (and its connection through
    the egress path, which costs a tunnel per new connection). The credentials were in
    this process's memory for the run anyway; they expire within 15 minutes."""
    # imported on first use: boto3 costs ~15 MiB, which the enclave's memory
    # limit should leave to the apps while no run needs it
    from strongroom.keys.aws import KmsKeyService

    return KmsKeyService.connect(
        region=region,
        endpoint_url=endpoint,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        credentials_label="the run's credentials",
    )


class RunApi:
    """``POST /v1/runs``: key release, decryption, execution, live output."""

    def __init__(
        self,
        shared: SharedFolder,
        environment: Callable[[Callable[[], KeyService]], runs.RunEnvironment],
        key_service_endpoint: str | None,
    ) -> None:
        self.shared = shared
        self.environment = environment
        #: the in-enclave address of the egress forwarder to the key service
        self.key_service_endpoint = key_service_endpoint

    async def start(self, request: Request) -> Response:
        query(request, "/v1/runs")
        body = await json_body(request, RunRequest)
        creds, ref = body.credentials, body.key_service
        endpoint = self.key_service_endpoint or ref.endpoint_url

        def key_service() -> KeyService:
            return _key_service(
                ref.region,
                endpoint,
                creds.access_key_id,
                creds.secret_access_key,
                creds.session_token,
            )

        spec = runs.RunSpec(
            package=body.package,
            entry=body.entry,
            args=tuple(body.args),
            env=tuple(body.env.items()),
            timeout_s=body.timeout_s,
        )
        environment = self.environment(key_service)
        # the request is checked before the stream begins: a refusal is a Problem
        prepared = await runs.prepare(spec, environment)
        events = runs.execute(prepared, environment)

        async def ndjson() -> AsyncIterator[bytes]:
            async for event in events:
                yield (json.dumps(event) + "\n").encode()

        return StreamingResponse(ndjson(), media_type="application/x-ndjson")

    def routes(self) -> list[Route]:
        return [route("/v1/runs", {"POST": self.start})]


__all__ = ["READ_CHUNK", "FilesApi", "RunApi", "RunRequest", "problem"]
