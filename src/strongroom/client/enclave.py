"""The host's client of the enclave API.

One :class:`EnclaveClient` per enclave, over its control channel (a unix
socket locally, vsock on Nitro) through the same HTTP client for both
(:mod:`strongroom.transport.http`).
Problem bodies from the server become our own errors again; a channel that
breaks becomes :class:`EnclaveGoneError`, which says how to check on the
enclave.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from strongroom import errors
from strongroom._internal.integrity import KEY_HEADER, StreamCheck, new_key
from strongroom._internal.integrity import NAME as CHECK_NAME
from strongroom.errors import StrongroomError, TamperedError, UnavailableError
from strongroom.transport.base import Address
from strongroom.transport.http import ChannelError, HttpClient, Response

if TYPE_CHECKING:
    import concurrent.futures

    _Check = hashlib._Hash | StreamCheck

    from strongroom.client.transfer import LocalTarget

UPLOAD_CHUNK = 1024 * 1024
DOWNLOAD_CHUNK = 1024 * 1024
#: Transfers of more bytes than this are checked with a fresh key, not by their SHA-256
#: (the enclave answers smaller downloads with their SHA-256 anyway: server/api.py).
KEYED_CHECK_MIN = 1024 * 1024
#: Buffers a large download receives into ahead of the thread that writes them.
WRITE_BEHIND = 4
#: A run may be silent for a long time; reads wait this long between events.
RUN_READ_TIMEOUT_S = 24 * 3600.0


@functools.cache
def _background() -> concurrent.futures.ThreadPoolExecutor:
    """Runs the enclave-side checksum of a large download alongside the download itself.

    Made on first use: ``concurrent.futures`` (and the ``logging`` it imports)
    is ~5 ms that a ``run`` does not need.
    """
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="checksum")


#: What an archive upload sent: (path, size, SHA-256) per member.
_Sent = list[tuple[str, int, str]]
#: What it answered: ``{"path", "size", "sha256"}`` per file.
_Entries = list[dict[str, Any]]


def _ignore(_n: int) -> None:
    pass


class EnclaveGoneError(UnavailableError):
    default_hint = "check it with `strongroom enclave status`"


#: The fields of a file entry on the wire, and the JSON types each may have.
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "path": (str,),
    "type": (str,),
    "size": (int,),
    "mode": (int,),
    "mtime": (int, float),
}


@dataclass(frozen=True)
class RemoteEntry:
    path: str
    type: str
    size: int
    mode: int
    mtime: float

    @classmethod
    def from_json(cls, raw: object) -> RemoteEntry:
        """An entry as the enclave sent it, with the documented fields and types only.

        The values (names, types, sizes) are checked where they are used
        (:mod:`.transfer`); this only keeps a malformed answer from becoming
        a ``TypeError``.
        """
        if not isinstance(raw, dict) or set(raw) != set(_ENTRY_FIELDS):
            raise errors.InvalidInputError(f"the enclave answered a malformed file entry: {raw!r}")
        for name, kinds in _ENTRY_FIELDS.items():
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise errors.InvalidInputError(
                    f"the enclave answered a malformed file entry: {name} is {value!r}"
                )
        return cls(raw["path"], raw["type"], raw["size"], raw["mode"], float(raw["mtime"]))


_SPACE_FIELDS = ("block_size", "blocks", "blocks_free", "files", "files_free")


@dataclass(frozen=True)
class FolderSpace:
    """The shared folder's filesystem as ``/v1/files/statfs`` describes it."""

    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int

    @property
    def total_bytes(self) -> int:
        return self.blocks * self.block_size

    @property
    def free_bytes(self) -> int:
        return self.blocks_free * self.block_size

    def needed_bytes(self, sizes: Iterable[int]) -> int:
        """What files of ``sizes`` take on this filesystem: whole blocks each."""
        return sum(-(-size // self.block_size) * self.block_size for size in sizes)

    @classmethod
    def from_json(cls, raw: object) -> FolderSpace:
        checked: dict[str, int] = {}
        for name in _SPACE_FIELDS:
            value = raw.get(name) if isinstance(raw, dict) else None
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise errors.InvalidInputError(f"the enclave answered a malformed statfs: {raw!r}")
            checked[name] = value
        space = cls(**checked)
        if space.block_size == 0:
            raise errors.InvalidInputError("the enclave answered a block size of 0")
        return space


def _error_from(response: Response) -> StrongroomError:
    try:
        body = response.json()
        name, message, hint = body["error"], body["message"], body.get("hint")
    except (ValueError, KeyError, TypeError):
        return errors.ServiceError(f"enclave answered HTTP {response.status}")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, StrongroomError)):
        cls = {
            404: errors.NotFoundError,
            403: errors.AccessDeniedError,
            409: errors.AlreadyExistsError,
            422: errors.EvidenceError,
            503: errors.UnavailableError,
        }.get(response.status, errors.InvalidInputError)
    error = cls(message, hint=hint or None)
    if isinstance(name := body.get("errno"), str):
        error.errno_name = name
    return error


@dataclass(frozen=True)
class Verified:
    """What both ends of a transfer computed over its bytes, and found equal.

    ``sha256`` for small files (up to :data:`KEYED_CHECK_MIN` bytes): the
    content's SHA-256. For larger ones the keyed check of
    :mod:`strongroom._internal.integrity` (``aes-gmac``), which proves the same
    -- the bytes arrived unchanged, whole and in order -- at a fraction of the
    cost, but is no content identifier.
    """

    kind: str
    value: str

    @property
    def sha256(self) -> str | None:
        return self.value if self.kind == "sha256" else None


def _write_behind(
    fd: int,
    fill: Callable[[memoryview], int],
    check: _Check,
    progress: Callable[[int], None],
) -> None:
    """Receive into a ring of buffers while a thread writes the filled ones to ``fd``.

    Receiving and writing each copy every byte once; in one thread they took
    turns. A buffer is filled again only once written (the ring is the flow
    control), so memory stays at :data:`WRITE_BEHIND` buffers.
    """
    buffers = [memoryview(bytearray(DOWNLOAD_CHUNK)) for _ in range(WRITE_BEHIND)]
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    for index in range(WRITE_BEHIND):
        free.put(index)
    failed: list[OSError] = []

    def write() -> None:
        while (item := full.get()) is not None:
            index, n = item
            if not failed:
                view = buffers[index][:n]
                try:
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError as e:
                    failed.append(e)
            free.put(index)

    writer = threading.Thread(target=write, name="download-writer", daemon=True)
    writer.start()
    try:
        while not failed:
            index = free.get()
            n = fill(buffers[index])
            if not n:
                free.put(index)
                break
            check.update(buffers[index][:n])
            progress(n)
            full.put((index, n))
    finally:
        full.put(None)
        writer.join()
    if failed:
        raise errors.InvalidInputError(f"cannot write the download: {failed[0].strerror}")


def _new_check(size: int) -> tuple[_Check, dict[str, str]]:
    """The check a transfer of ``size`` bytes uses, and the header that asks the enclave for it."""
    if size > KEYED_CHECK_MIN:
        key = new_key()
        return StreamCheck(key), {KEY_HEADER: key.hex()}
    return hashlib.sha256(), {}


def _verified(check: _Check) -> Verified:
    kind = CHECK_NAME if isinstance(check, StreamCheck) else "sha256"
    return Verified(kind, check.hexdigest())


def _field(verified: Verified) -> str:
    """Where the enclave's answer to a write carries the value (see server/api.py)."""
    return "sha256" if verified.kind == "sha256" else "check"


class EnclaveClient:
    def __init__(
        self,
        address: Address,
        *,
        name: str = "enclave",
        enclave_id: str = "",
        key_service_reach: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = address
        self.name = name
        #: Which start of the enclave this is (a restarted enclave has a new one).
        self.enclave_id = enclave_id
        #: Where the enclave's key-service forwarder leads (None: not recorded).
        self.key_service_reach = key_service_reach
        self._http = (
            HttpClient(address, host="enclave")
            if timeout is None
            else HttpClient(address, host="enclave", timeout=timeout, connect_timeout=timeout)
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _channel(self) -> Iterator[None]:
        try:
            yield
        except ChannelError as e:
            raise EnclaveGoneError(
                f"lost the channel to enclave {self.name!r}: {e or type(e).__name__}"
            ) from e

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        with self._channel(), self._http.request(method, url, **kwargs) as response:
            if response.status >= 400:
                raise _error_from(response)
            return response.json()

    # --- describe / attest --------------------------------------------------

    def describe(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/describe")
        return result

    def attestation(self, nonce: bytes) -> bytes:
        """A document over ``nonce`` and the enclave's own identity key (nothing else)."""
        result = self._call("POST", "/v1/attestation", json={"nonce": nonce.hex()})
        return base64.b64decode(result["document"])

    # --- files --------------------------------------------------------------

    def stat(self, path: str) -> RemoteEntry:
        return RemoteEntry.from_json(self._call("GET", "/v1/files/stat", params={"path": path}))

    def list(self, path: str) -> list[RemoteEntry]:
        raw = self._call("GET", "/v1/files/list", params={"path": path})
        entries = raw.get("entries") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise errors.InvalidInputError(f"the enclave answered a malformed listing of {path}")
        return [RemoteEntry.from_json(e) for e in entries]

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        self._call("POST", "/v1/files/mkdir", json={"path": path, "parents": parents})

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._call(
            "DELETE", "/v1/files", params={"path": path, "recursive": str(recursive).lower()}
        )

    def checksum(self, path: str) -> str:
        result: str = self._call("GET", "/v1/files/checksum", params={"path": path})["sha256"]
        return result

    def read_head(self, path: str, length: int) -> bytes:
        """The first ``length`` bytes of a file (all of it, if shorter).

        Enough to read a sealed package's header without fetching the package.
        """
        return bytes(self.read_range(path, 0, length))

    # --- POSIX operations, one request each (the mount, :mod:`strongroom.client.mount`) ---

    def read_range(self, path: str, offset: int, length: int) -> bytearray:
        """Up to ``length`` bytes of ``path`` from ``offset`` (fewer at its end)."""
        params: dict[str, str | int] = {"path": path, "offset": offset, "length": length}
        with self._channel(), self._http.request("GET", "/v1/files/content", params=params) as r:
            if r.status >= 400:
                raise _error_from(r)
            # sized by what is coming, not by what was asked (a 4 KiB file read in 4 MiB blocks)
            declared = r.header("content-length")
            if declared is not None and declared.isdigit():
                length = min(length, int(declared))
            buffer = bytearray(length)
            got = 0
            with memoryview(buffer) as view:
                while got < length and (n := r.readinto(view[got:])):
                    got += n
            if r.read():
                raise errors.InvalidInputError(
                    f"the enclave answered more than {length} bytes of {path}"
                )
        if got < length:
            del buffer[got:]
        return buffer

    def write_at(self, path: str, offset: int, data: bytes, *, create: bool = False) -> None:
        """Write ``data`` into ``path`` at ``offset``, in place; verify what arrived."""
        params = {"path": path, "offset": str(offset), "create": str(create).lower()}
        self._put_checked(path, params, data)

    def put_file(self, path: str, data: bytes) -> None:
        """A whole file ``data`` at ``path``, replacing any there atomically; verified."""
        self._put_checked(path, {"path": path, "truncate": "true"}, data)

    def _put_checked(self, path: str, params: dict[str, str], data: bytes) -> None:
        """PUT ``data`` with the check its size calls for (:func:`_new_check`), compared."""
        check, headers = _new_check(len(data))
        check.update(data)
        verified = _verified(check)
        result = self._call("PUT", "/v1/files/content", params=params, body=data, headers=headers)
        if result.get("size") != len(data) or result.get(_field(verified)) != verified.value:
            raise TamperedError(f"a write to {path} arrived altered", hint="write it again")

    def rename(self, source: str, destination: str) -> None:
        self._call("POST", "/v1/files/rename", json={"source": source, "destination": destination})

    def truncate(self, path: str, size: int) -> None:
        self._call("POST", "/v1/files/truncate", json={"path": path, "size": size})

    def set_times(self, path: str, atime: float, mtime: float) -> None:
        self._call("POST", "/v1/files/times", json={"path": path, "atime": atime, "mtime": mtime})

    def chmod(self, path: str, mode: int) -> int:
        """Set ``path``'s permission bits; the mode the enclave applied (its owner, the
        enclave server, keeps read and write, and search on a directory)."""
        answer = self._call("POST", "/v1/files/chmod", json={"path": path, "mode": mode})
        applied = answer.get("mode") if isinstance(answer, dict) else None
        return applied if isinstance(applied, int) and not isinstance(applied, bool) else mode

    def symlink(self, path: str, target: str) -> None:
        self._call("POST", "/v1/files/symlink", json={"path": path, "target": target})

    def readlink(self, path: str) -> str:
        target = self._call("GET", "/v1/files/readlink", params={"path": path}).get("target")
        if not isinstance(target, str):
            raise errors.InvalidInputError(f"the enclave answered a malformed link of {path}")
        return target

    def link(self, source: str, destination: str) -> None:
        self._call("POST", "/v1/files/link", json={"source": source, "destination": destination})

    def fsync(self, path: str) -> None:
        self._call("POST", "/v1/files/fsync", json={"path": path})

    # --- whole files (push, pull) ---------------------------------------------

    def upload(self, local: Path, remote: str, *, progress: Callable[[int], None]) -> Verified:
        """Send ``local`` to ``remote``; verify what both sides computed over the bytes.

        ``local`` must be a regular file, opened without following a symlink
        (:func:`~.transfer.open_local_file`): push sends what the host named.
        A file of more than :data:`KEYED_CHECK_MIN` bytes is checked with a
        fresh key (see :class:`Verified`), a smaller one by its SHA-256.
        """
        from strongroom.client.transfer import open_local_file  # transfers only

        source = open_local_file(local)
        try:
            size = os.fstat(source.fileno()).st_size
            check, headers = _new_check(size)
        except BaseException:
            source.close()
            raise

        def body() -> Iterator[memoryview]:
            # one buffer: http.client has sent a piece before it asks for the next
            buffer = memoryview(bytearray(min(UPLOAD_CHUNK, max(size, 1))))
            fd = source.fileno()
            while n := os.readv(fd, [buffer]):
                piece = buffer[:n]
                check.update(piece)
                progress(n)
                yield piece

        try:
            result = self._call(
                "PUT",
                "/v1/files/content",
                params={"path": remote, "truncate": "true"},
                body=body(),
                # a known length sends the body as is, not re-framed in chunks
                headers={"content-length": str(size), **headers},
            )
        finally:
            source.close()
        verified = _verified(check)
        if not isinstance(result, dict) or result.get(_field(verified)) != verified.value:
            raise TamperedError(
                f"{local} arrived altered in the enclave as {remote}",
                hint="the transfer was corrupted; push it again",
            )
        return verified

    def download(
        self, remote: str, local: Path | LocalTarget, *, progress: Callable[[int], None]
    ) -> Verified:
        """Fetch ``remote`` into ``local`` via a temporary file, renamed once verified.

        A :class:`~.transfer.LocalTarget` is written below its root without
        following any symlink there (:func:`~.transfer.write_confined`); a
        plain path is the caller's own choice of file. A small file comes with
        its SHA-256; for a large one the enclave computes the keyed check of its
        copy (:class:`Verified`) on a second connection while the bytes stream
        on the first.
        """
        from strongroom.client.transfer import LocalTarget, write_confined  # transfers only

        target = local if isinstance(local, LocalTarget) else LocalTarget.of(local)
        with self._content(remote) as response:
            expected = response.header("x-sha256")
            if expected is None:
                key = new_key()
                check: _Check = StreamCheck(key)
                theirs = _background().submit(self._keyed_checksum, remote, key)
            else:
                check = hashlib.sha256()
            with write_confined(target) as f:
                if expected is None:  # large: written by a thread while the next bytes come
                    _write_behind(f.fileno(), response.readinto, check, progress)
                else:
                    buffer = memoryview(bytearray(DOWNLOAD_CHUNK))
                    while n := response.readinto(buffer):
                        chunk = buffer[:n]
                        f.write(chunk)
                        check.update(chunk)
                        progress(n)
                f.flush()
                verified = _verified(check)
                if expected is None:
                    expected = theirs.result()
                if expected != verified.value:
                    raise TamperedError(f"{remote} arrived altered", hint="pull it again")
        return verified

    def _keyed_checksum(self, remote: str, key: bytes) -> str:
        """The enclave's keyed check of ``remote`` (see :mod:`strongroom._internal.integrity`)."""
        result = self._call(
            "GET", "/v1/files/checksum", params={"path": remote}, headers={KEY_HEADER: key.hex()}
        )
        value = result.get("check") if isinstance(result, dict) else None
        if not isinstance(value, str):
            raise errors.InvalidInputError(
                f"the enclave answered no keyed check of {remote}",
                hint="is the enclave image older than this client? rebuild it",
            )
        return value

    @contextlib.contextmanager
    def _content(self, remote: str) -> Iterator[Response]:
        """The streamed body of ``remote`` (its SHA-256 in ``x-sha256`` when small)."""
        with (
            self._channel(),
            self._http.request("GET", "/v1/files/content", params={"path": remote}) as response,
        ):
            if response.status >= 400:
                raise _error_from(response)
            yield response

    # --- runs ---------------------------------------------------------------

    def run(self, request: dict[str, Any]) -> Iterable[dict[str, Any]]:
        """Start a run; yield its events as they arrive. Closing the iterator cancels it."""
        with (
            self._channel(),
            self._http.request(
                "POST", "/v1/runs", json=request, timeout=RUN_READ_TIMEOUT_S
            ) as response,
        ):
            if response.status >= 400:
                raise _error_from(response)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    # --- streams and space (push -, pull -, cat, push's free-space check) ---
    # Built on ``_call``/``_http`` like the methods above; they add, and change
    # nothing of, what the others do.

    def statfs(self) -> FolderSpace:
        """Sizes of the shared folder's filesystem (a fixed slice of enclave memory)."""
        return FolderSpace.from_json(self._call("GET", "/v1/files/statfs"))

    def download_to(self, remote: str, sink: BinaryIO, *, progress: Callable[[int], None]) -> str:
        """Stream ``remote`` into ``sink`` (standard output, for ``cat`` and ``pull -``).

        The bytes go out as they come, so there is nothing to rename: the
        SHA-256 is compared at the end, and a mismatch raises
        :class:`TamperedError` after the bytes were written.
        """
        digest = hashlib.sha256()
        with self._content(remote) as response:
            expected = response.header("x-sha256")
            for chunk in response.iter_bytes():
                sink.write(chunk)
                digest.update(chunk)
                progress(len(chunk))
        sink.flush()
        if expected is None:
            expected = self.checksum(remote)
        if expected != digest.hexdigest():
            raise TamperedError(
                f"{remote} arrived altered (the bytes written do not match the enclave's)",
                hint="discard what was written and fetch it again",
            )
        return digest.hexdigest()

    def upload_stream(
        self,
        source: BinaryIO,
        remote: str,
        *,
        size: int | None,
        progress: Callable[[int], None],
    ) -> tuple[int, str]:
        """Send what ``source`` yields (standard input) to ``remote``; ``(size, SHA-256)``.

        ``size`` is announced when known (stdin redirected from a file), else
        the body is chunked. The enclave writes it under a temporary name and
        renames it into place only when complete, as for :meth:`upload`.
        """
        digest = hashlib.sha256()
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            while chunk := source.read(UPLOAD_CHUNK):
                digest.update(chunk)
                sent += len(chunk)
                progress(len(chunk))
                yield chunk

        headers = {} if size is None else {"content-length": str(size)}
        result = self._call(
            "PUT",
            "/v1/files/content",
            params={"path": remote, "truncate": "true"},
            body=body(),
            headers=headers,
        )
        if result.get("sha256") != digest.hexdigest() or result.get("size") != sent:
            raise TamperedError(
                f"standard input arrived altered in the enclave as {remote}",
                hint="the transfer was corrupted; push it again",
            )
        return sent, digest.hexdigest()

    # --- archives: many small files in one request (push and pull, the mount's flusher) ---

    def upload_archive(
        self,
        remote_dir: str,
        members: Iterable[tuple[str, bytes, int, float]],
        *,
        progress: Callable[[int], None] = _ignore,
    ) -> _Entries:
        """Write many files under ``remote_dir`` in one streamed tar request.

        ``members`` yields ``(relative path, content, mode, mtime)`` and is
        consumed lazily, while the request is sent (a generator that reads
        each file when asked streams a large tree in bounded memory). The mode
        may carry permission bits only (``mode & ~0o777`` is refused); the
        mtime is seconds since the epoch (fractions kept). ``remote_dir`` and
        missing parents are created. Each file lands under a temporary name
        and is renamed into place once complete, with its mode and mtime.

        Returns the enclave's entries, ``{"path", "size", "sha256"}`` per
        file in the order given, each checked against the SHA-256 of what was
        sent (:class:`TamperedError` on any difference). A member the enclave
        refuses (a name with ``..``, one too long, no space left: see
        :mod:`strongroom.server.archive`) raises the matching error, whose
        message says how many members before it were written; those stay.
        """
        from strongroom.client.archive import tar_stream  # transfers only

        expected: _Sent = []
        base = "/" + "/".join(p for p in remote_dir.split("/") if p not in ("", "."))

        def sent(name: str, data: bytes) -> None:
            parts = [p for p in name.split("/") if p not in ("", ".")]
            path = base.rstrip("/") + "/" + "/".join(parts)
            expected.append((path, len(data), hashlib.sha256(data).hexdigest()))
            progress(len(data))

        result = self._call(
            "POST",
            "/v1/files/archive",
            params={"path": remote_dir},
            body=tar_stream(members, sent),
            headers={"content-type": "application/x-tar"},
        )
        entries = result.get("entries") if isinstance(result, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise errors.InvalidInputError("the enclave answered a malformed archive result")
        answered = [(e.get("path"), e.get("size"), e.get("sha256")) for e in entries]
        if answered != expected:
            wrong = next(
                (want[0] for want, got in zip(expected, answered, strict=False) if want != got),
                expected[len(answered)][0] if len(expected) > len(answered) else "an extra file",
            )
            raise TamperedError(
                f"the archive arrived altered in the enclave (first difference: {wrong})",
                hint="the transfer was corrupted; push it again",
            )
        return entries

    @contextlib.contextmanager
    def open_archive(self, remote_dir: str, *, max_size: int) -> Iterator[Response]:
        """The tar stream of the regular files of at most ``max_size`` bytes below ``remote_dir``.

        Each member carries its SHA-256 in a pax record; nothing in it is
        trusted here: :func:`strongroom.client.archive.pull_archive` checks
        every member before writing it.
        """
        params: dict[str, str | int] = {"path": remote_dir, "max_size": max_size}
        with (
            self._channel(),
            self._http.request("GET", "/v1/files/archive", params=params) as response,
        ):
            if response.status >= 400:
                raise _error_from(response)
            yield response
