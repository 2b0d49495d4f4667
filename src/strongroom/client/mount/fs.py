"""The shared folder as a FUSE filesystem (libfuse 3 through mfusepy).

Each operation the kernel asks for becomes Files API requests on one
:class:`EnclaveClient`. What makes it fast without making it wrong:

- **Attributes** are kept :data:`ATTR_TTL_S` (here and in the kernel), and a
  listing primes them for every entry, so ``ls -l`` costs one request. Our own
  changes drop what they touch at once; changes the app makes inside the
  enclave show within the TTL.
- **Writes** to a handle are gathered while they run on (``cp`` writes 128 KiB
  at a time) and sent as one request per :data:`WRITE_BLOCK`, the next block
  filling while the last is on its way. A new file is not made in the enclave
  until it has content or is closed, and then in one whole-file request (which
  lands atomically); a small one, once closed, waits in the write-back
  (:mod:`.writeback`) and goes with others in one archive request. A
  directory whose whole listing we hold answers lookups of new names itself.
- **Reads** running on are fetched :data:`READ_BLOCK` at a time, the next
  :data:`READ_AHEAD` blocks in the background while the kernel takes the
  current one.
- ``close`` sends what is buffered and reports its failure; ``fsync`` also
  asks the enclave to flush the file. Nothing is fsynced on close unless asked.

- ``fsync`` of a directory makes the mount and the enclave agree below it:
  what waits is sent, what is cached here and in the kernel is dropped
  (``strongroom run`` does it before and after the app).

Failures: a request fails after :data:`REQUEST_TIMEOUT_S`; a heartbeat checks
every :data:`HEARTBEAT_S` that the enclave still answers *and is the same
start of it* (its identity key). Once it does not, every operation fails
with ``ENOTCONN`` at once, never hangs, and never reaches a restarted
enclave that happens to reuse the socket. A request that fails while the
enclave still answers as itself fails only its own operation (``EIO``).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mfusepy

from strongroom import errors
from strongroom.client.enclave import EnclaveClient, EnclaveGoneError, RemoteEntry
from strongroom.client.mount.writeback import Pending, WriteBack
from strongroom.errors import StrongroomError

log = logging.getLogger("strongroom.client.mount")

ATTR_TTL_S = 1.0
NEGATIVE_TTL_S = 0.5
WRITE_BLOCK = 8 * 1024 * 1024
READ_BLOCK = 4 * 1024 * 1024
READ_AHEAD = 2
WRITES_IN_FLIGHT = 2
MAX_WRITE = 1024 * 1024
REQUEST_TIMEOUT_S = 5.0
HEARTBEAT_S = 1.0
#: What the enclave makes a new file with (and what needs no chmod after).
_DEFAULT_FILE_MODE = 0o644
_DEFAULT_DIR_MODE = 0o755
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2

_ERRNO_BY_CLASS: tuple[tuple[type[StrongroomError], int], ...] = (
    (EnclaveGoneError, errno.ENOTCONN),
    (errors.NotFoundError, errno.ENOENT),
    (errors.AlreadyExistsError, errno.EEXIST),
    (errors.InsufficientSpaceError, errno.ENOSPC),
    (errors.AccessDeniedError, errno.EACCES),
    (errors.PathEscapeError, errno.EPERM),
    (errors.UnavailableError, errno.EIO),
    (errors.TamperedError, errno.EIO),
    (errors.UsageError, errno.EINVAL),
    (errors.InvalidInputError, errno.EINVAL),
)


def errno_of(error: StrongroomError) -> int:
    """The errno the kernel should see for ``error`` (the enclave's own, when it sent one)."""
    if error.errno_name is not None and isinstance(
        code := getattr(errno, error.errno_name, None), int
    ):
        return code
    return next((code for cls, code in _ERRNO_BY_CLASS if isinstance(error, cls)), errno.EIO)


F = TypeVar("F", bound=Callable[..., Any])


def _operation(method: F) -> F:
    """Answer the kernel with an errno for every failure; fail fast once the enclave is gone."""

    @functools.wraps(method)
    def wrapper(self: SharedFolderFS, *args: Any) -> Any:
        if self.gone is not None:
            raise mfusepy.FuseOSError(errno.ENOTCONN)
        try:
            return method(self, *args)
        except StrongroomError as e:
            code = errno_of(e)
            if isinstance(e, EnclaveGoneError) and not self.still_there():
                self.lose(str(e))
            elif isinstance(e, EnclaveGoneError):
                code = errno.EIO  # one request failed (a timeout, under load): only this one
            if code == errno.EIO:
                log.warning("%s%r: %s", method.__name__, args[:1], e.message)
            raise mfusepy.FuseOSError(code) from e

    return wrapper  # type: ignore[return-value]


@dataclass
class _Handle:
    """An open file: its buffered writes, its read-ahead and a failure to report."""

    path: str
    #: Not yet made in the enclave (created here, nothing sent yet).
    new: bool = False
    mode: int = _DEFAULT_FILE_MODE
    times: tuple[float, float] | None = None
    buffer_at: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    #: Blocks on their way to the enclave, oldest first.
    sending: list[concurrent.futures.Future[None]] = field(default_factory=list)
    #: The size the file has once everything buffered or in flight has landed.
    size: int = 0
    block_at: int = -1
    block: bytes | bytearray = b""
    #: Blocks being fetched ahead of the reader, in order: (offset, its fetch).
    ahead: list[tuple[int, concurrent.futures.Future[bytearray]]] = field(default_factory=list)
    failure: StrongroomError | None = None
    #: Closed once already, its content left waiting in the write-back.
    parked: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dirty(self) -> bool:
        return self.new or bool(self.buffer) or bool(self.sending)

    def drop_blocks(self) -> None:
        self.block_at, self.block, self.ahead = -1, b"", []


class SharedFolderFS(mfusepy.Operations):  # type: ignore[misc]
    """The FUSE operations; ``mfusepy.FUSE(SharedFolderFS(...), DIR, ...)`` serves them."""

    use_ns = True

    def __init__(
        self,
        client: EnclaveClient,
        *,
        identity_key: str,
        read_only: bool,
        on_ready: Callable[[], None] = lambda: None,
        on_lost: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.client = client
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.identity_key = identity_key
        self.read_only = read_only
        self.uid, self.gid = os.getuid(), os.getgid()
        self.gone: str | None = None
        self._attrs: dict[str, tuple[float, RemoteEntry | None]] = {}
        #: Directories whose every name we know, until when: a lookup of any other
        #: name there is answered "no such file" with no request (``tar -x``).
        self._listed: dict[str, tuple[float, set[str]]] = {}
        self._free_bytes = 0
        self._fuse: ctypes.c_void_p | None = None
        self._handles: dict[int, _Handle] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="mount-io")
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._writeback = WriteBack(self._upload)

    # --- life ---------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.entry_timeout = ATTR_TTL_S
            config.attr_timeout = ATTR_TTL_S
            config.negative_timeout = NEGATIVE_TTL_S
            # the kernel keeps a file's pages across opens while its size and mtime stay
            config.auto_cache = 1
        if conn is not None:
            conn.max_write = MAX_WRITE
            conn.max_readahead = MAX_WRITE
        self._free_bytes = self.client.statfs().free_bytes
        # libfuse's handle on this mount, to tell the kernel to drop what it caches
        self._fuse = ctypes.c_void_p(mfusepy._libfuse.fuse_get_context().contents.fuse)
        self._heartbeat.start()
        log.info("serving the shared folder of enclave %s", self.client.name)
        self.on_ready()

    def destroy(self, path: str) -> None:
        """Unmounted: send what is still buffered (``unmount`` waits for this)."""
        self._stop.set()
        for number in list(self._handles):
            handle = self._handles.get(number)
            if handle is not None and self.gone is None:
                try:
                    self._settle(handle)
                except StrongroomError as e:
                    log.error("%s: lost at unmount: %s", handle.path, e.message)
        if self.gone is None:
            self._writeback.close()
        self._pool.shutdown(wait=True)

    def lose(self, reason: str) -> None:
        if self.gone is None:
            self.gone = reason
            log.error("the enclave is gone (%s): every operation now fails", reason)
            self.on_lost(reason)

    def still_there(self) -> bool:
        """Whether the enclave mounted still answers, as itself (after a failed request)."""
        try:
            return self.client.describe().get("identity_key") == self.identity_key
        except StrongroomError:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                key = self.client.describe().get("identity_key")
                self._free_bytes = self.client.statfs().free_bytes
            except StrongroomError as e:
                self.lose(e.message)
                return
            if key != self.identity_key:
                self.lose("the enclave was restarted (its identity key changed)")
                return

    # --- attributes -----------------------------------------------------------

    def _entry(self, path: str) -> RemoteEntry | None:
        now = time.monotonic()
        cached = self._attrs.get(path)
        if cached is not None and cached[0] > now:
            return cached[1]
        parent, _, name = path.rpartition("/")
        listed = self._listed.get(parent or "/")
        if name and listed is not None and listed[0] > now and name not in listed[1]:
            return None
        try:
            entry: RemoteEntry | None = self.client.stat(path)
        except errors.NotFoundError:
            entry = None
        self._attrs[path] = (now + (ATTR_TTL_S if entry else NEGATIVE_TTL_S), entry)
        return entry

    def _forget(self, *paths: str, below: bool = False) -> None:
        """Drop what is cached of ``paths`` (and, ``below``, of everything under them)."""
        with self._lock:
            for path in paths:
                self._attrs.pop(path, None)
                self._listed.pop(path, None)
                if below:
                    for cache in (self._attrs, self._listed):
                        for key in [k for k in cache if k.startswith(path.rstrip("/") + "/")]:
                            del cache[key]
            for handle in self._handles.values():
                if any(
                    handle.path == p or handle.path.startswith(p.rstrip("/") + "/") for p in paths
                ):
                    handle.drop_blocks()

    def _known(self, entry: RemoteEntry) -> None:
        """Cache what we just made the enclave hold, so nobody asks it back."""
        with self._lock:
            self._attrs[entry.path] = (time.monotonic() + ATTR_TTL_S, entry)

    def _name_added(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        listed = self._listed.get(parent or "/")
        if listed is not None:
            listed[1].add(name)

    def _name_removed(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        listed = self._listed.get(parent or "/")
        if listed is not None:
            listed[1].discard(name)

    def _attributes(self, entry: RemoteEntry) -> dict[str, Any]:
        kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(entry.type, stat.S_IFREG)
        ns = int(entry.mtime * 1e9)
        return {
            "st_mode": kind | entry.mode,
            "st_nlink": 2 if entry.type == "dir" else 1,
            "st_size": entry.size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime": ns,
            "st_ctime": ns,
            "st_atime": ns,
            "st_blocks": -(-entry.size // 512),
        }

    def _open_handles(self, path: str) -> list[_Handle]:
        """The open files at or below ``path``."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            return [
                h for h in self._handles.values() if h.path == path or h.path.startswith(prefix)
            ]

    @_operation
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        waiting = self._writeback.get(path)
        if waiting is not None:
            mtime = waiting.times[1] if waiting.times else time.time()
            return self._attributes(
                RemoteEntry(path, "file", len(waiting.data), waiting.mode, mtime)
            )
        exact = [h for h in self._open_handles(path) if h.path == path]
        if any(h.new for h in exact):
            new = next(h for h in exact if h.new)
            now = new.times[1] if new.times else time.time()
            return self._attributes(RemoteEntry(path, "file", new.size, new.mode, now))
        entry = self._entry(path)
        if entry is None or entry.type == "other":
            raise mfusepy.FuseOSError(errno.ENOENT)
        attrs = self._attributes(entry)
        if exact:
            attrs["st_size"] = max([entry.size, *(h.size for h in exact if h.dirty)])
        return attrs

    @_operation
    def readdir(self, path: str, fh: int) -> Iterator[str | tuple[str, dict[str, Any], int]]:
        for handle in self._open_handles(path):
            if handle.new:
                self._settle(handle)  # a file being written is listed once it exists there
        listed_at = time.monotonic()
        entries = self.client.list(path)
        entries += [
            RemoteEntry(p.path, "file", len(p.data), p.mode, p.times[1] if p.times else time.time())
            for p in self._writeback.children(path)
        ]
        expires = listed_at + ATTR_TTL_S
        names: list[str | tuple[str, dict[str, Any], int]] = [".", ".."]
        seen: set[str] = set()
        with self._lock:
            for entry in entries:
                name = entry.path.rsplit("/", 1)[1]
                if name in seen:
                    continue  # sent while we listed: the enclave's copy is listed already
                seen.add(name)
                if entry.type == "other":
                    continue  # a FIFO or socket an app made: nothing the host can use
                self._attrs[entry.path] = (expires, entry)
                names.append((name, self._attributes(entry), 0))
            self._listed[path] = (expires, seen)
        return iter(names)

    @_operation
    def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
        """Make this mount and the enclave agree at and below ``path``.

        What was written here lands there, and what is cached here (names,
        attributes, pages; ours and the kernel's) is dropped, so what an app
        wrote meanwhile is seen at the next look rather than after the TTL.
        ``strongroom run`` asks this of its enclave's mounts before and after
        the app runs.
        """
        self._settle_below(path)
        prefix = path.rstrip("/") + "/"
        with self._lock:
            cached = [p for p in self._attrs if p == path or p.startswith(prefix)]
        self._forget(path, below=True)
        if self._fuse is not None:
            for known in cached:
                # the inode's attributes and pages; an unknown path is simply not cached
                mfusepy._libfuse.fuse_invalidate_path(self._fuse, known.encode())
        self._writeback.report()

    @_operation
    def statfs(self, path: str) -> dict[str, int]:
        space = self.client.statfs()
        return {
            "f_bsize": space.block_size,
            "f_frsize": space.block_size,
            "f_blocks": space.blocks,
            "f_bfree": space.blocks_free,
            "f_bavail": space.blocks_free,
            "f_files": space.files,
            "f_ffree": space.files_free,
            "f_favail": space.files_free,
            "f_namemax": 255,
        }

    # --- files ----------------------------------------------------------------

    def _new_handle(self, handle: _Handle) -> int:
        with self._lock:
            number = next(self._numbers)
            self._handles[number] = handle
        return number

    def _handle(self, fh: int) -> _Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return handle

    def _writable(self) -> None:
        if self.read_only:
            raise mfusepy.FuseOSError(errno.EROFS)

    @_operation
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._writable()
        self._writeback.drain(path)
        for other in self._open_handles(path):
            self._settle(other)
        self._forget(path)
        self._name_added(path)
        # permission bits only, as the Files API keeps (setgid from a parent, say, is dropped)
        return self._new_handle(_Handle(path, new=True, mode=mode & 0o777))

    @_operation
    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self._writable()
        self._writeback.drain(path)
        for other in self._open_handles(path):
            if other.path == path:
                self._settle(other)  # what another handle wrote is there before we read
        entry = self._entry(path)
        if entry is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if flags & os.O_TRUNC:
            # libfuse asks the kernel to leave O_TRUNC to open (atomic_o_trunc)
            self.client.truncate(path, 0)
            for other in self._open_handles(path):
                if other.path == path:
                    other.size = 0
            self._forget(path)
            return self._new_handle(_Handle(path, size=0))
        return self._new_handle(_Handle(path, size=entry.size))

    @_operation
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handle(fh)
        self._unpark(handle)
        with handle.lock:
            if handle.dirty:
                self._send(handle, wait=True)
            block = self._block(handle, offset)
            start = offset - handle.block_at
            with memoryview(block) as view:
                data = bytes(view[start : start + size])  # the one copy, for the kernel
            if len(data) < size and len(block) == READ_BLOCK:  # the read spans two blocks
                block = self._block(handle, offset + len(data))
                with memoryview(block) as view:
                    data += view[: size - len(data)]
            return data

    def _block(self, handle: _Handle, offset: int) -> bytes | bytearray:
        """The block holding ``offset``: the one held, the next one fetched ahead, or a new one.

        A reader that runs on into the next block keeps :data:`READ_AHEAD`
        blocks on their way, on as many connections, so the enclave reads
        while the kernel copies.
        """
        if handle.block_at <= offset < handle.block_at + len(handle.block):
            return handle.block
        running_on = offset == 0 or (
            handle.block_at >= 0 and offset == handle.block_at + len(handle.block)
        )
        if handle.ahead and handle.ahead[0][0] == offset:
            _, fetch = handle.ahead.pop(0)
            handle.block_at, handle.block = offset, fetch.result()
        else:
            handle.ahead = []
            handle.block_at, handle.block = (
                offset,
                self.client.read_range(handle.path, offset, READ_BLOCK),
            )
        if running_on and len(handle.block) == READ_BLOCK:
            next_at = handle.ahead[-1][0] + READ_BLOCK if handle.ahead else offset + READ_BLOCK
            while len(handle.ahead) < READ_AHEAD:
                fetch = self._pool.submit(self.client.read_range, handle.path, next_at, READ_BLOCK)
                handle.ahead.append((next_at, fetch))
                next_at += READ_BLOCK
        return handle.block

    @_operation
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._writable()
        handle = self._handle(fh)
        self._unpark(handle)
        with handle.lock:
            self._report(handle)
            handle.drop_blocks()
            if handle.buffer and offset != handle.buffer_at + len(handle.buffer):
                self._send(handle, wait=False)
            if not handle.buffer:
                handle.buffer_at = offset
            handle.buffer += data
            handle.size = max(handle.size, offset + len(data))
            if len(handle.buffer) >= WRITE_BLOCK:
                self._send(handle, wait=False)
        return len(data)

    def _send(self, handle: _Handle, *, wait: bool) -> None:
        """Send the buffered block (caller holds ``handle.lock``).

        At most :data:`WRITES_IN_FLIGHT` blocks are on their way (they never
        overlap: a write that does not run on sends the buffer first); ``wait``
        waits for all of them.
        """
        while handle.sending and (wait or len(handle.sending) >= WRITES_IN_FLIGHT):
            try:
                handle.sending.pop(0).result()
            except StrongroomError as e:
                handle.failure = handle.failure or e
        self._report(handle)
        if handle.new:
            # made in the enclave with its first content, in one atomic whole-file write
            data, handle.buffer = bytes(handle.buffer), bytearray()
            if handle.buffer_at:
                data = bytes(handle.buffer_at) + data
            self._materialise(handle, data)
            return
        if not handle.buffer:
            return
        data, at, handle.buffer = bytes(handle.buffer), handle.buffer_at, bytearray()
        self._forget(handle.path)
        if wait:
            self.client.write_at(handle.path, at, data)
        else:
            handle.sending.append(self._pool.submit(self.client.write_at, handle.path, at, data))

    def _materialise(self, handle: _Handle, data: bytes) -> None:
        # not new any more, whatever happens: a failure is this write's to report,
        # and a retry must not make an empty file of what was taken from the buffer
        handle.new = False
        self._put_whole(handle.path, data, handle.mode, handle.times)

    def _put_whole(
        self, path: str, data: bytes, mode: int, times: tuple[float, float] | None
    ) -> None:
        """A whole new file with its mode and times, one request for each that differs."""
        self.client.put_file(path, data)
        if mode != _DEFAULT_FILE_MODE:
            self.client.chmod(path, mode)
        if times is not None:
            self.client.set_times(path, *times)
        mtime = times[1] if times else time.time()
        self._known(RemoteEntry(path, "file", len(data), mode, mtime))

    def _report(self, handle: _Handle) -> None:
        """Raise (once) the failure of a write that was sent in the background."""
        if handle.failure is not None:
            failure, handle.failure = handle.failure, None
            raise failure

    def _settle(self, handle: _Handle) -> None:
        with handle.lock:
            if handle.dirty:
                self._send(handle, wait=True)
            self._report(handle)

    def _park(self, handle: _Handle) -> bool:
        """Leave a small new file's content to the write-back (caller holds ``handle.lock``)."""
        if not handle.new or handle.sending:
            return False
        size = handle.buffer_at + len(handle.buffer)
        if not self._writeback.room_for(size, self._free_bytes):
            return False
        data = bytes(handle.buffer_at) + handle.buffer if handle.buffer_at else bytes(handle.buffer)
        now = time.monotonic()
        self._writeback.keep(Pending(handle.path, data, handle.mode, handle.times, now))
        handle.new, handle.buffer, handle.parked = False, bytearray(), True
        return True

    def _unpark(self, handle: _Handle) -> None:
        """A parked file used again (a write after close on a dup'ed descriptor): send it."""
        if handle.parked:
            self._writeback.drain(handle.path)
            handle.parked = False

    def _close(self, handle: _Handle) -> None:
        with handle.lock:
            parked = self._park(handle)
        if not parked:
            self._settle(handle)
        self._writeback.report()

    @_operation
    def flush(self, path: str, fh: int) -> None:
        """A ``close``: what is buffered goes (its failure is this close's to report).

        A small new file is left for its last close (``release``) to park: a
        shell's ``>`` redirection closes one of two descriptors before any byte
        is written. Opening it elsewhere meanwhile sends it first (:meth:`open`).
        """
        handle = self._handle(fh)
        size = handle.buffer_at + len(handle.buffer)
        if handle.new and self._writeback.room_for(size, self._free_bytes):
            self._writeback.report()
            return
        self._close(handle)

    @_operation
    def release(self, path: str, fh: int) -> None:
        handle = self._handle(fh)
        try:
            self._close(handle)
        finally:
            with self._lock:
                self._handles.pop(fh, None)

    @_operation
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        handle = self._handle(fh)
        self._unpark(handle)
        self._settle(handle)
        self._writeback.report()
        self.client.fsync(handle.path)

    def _upload(self, batch: list[Pending]) -> list[tuple[Pending, StrongroomError]]:
        """Send waiting files in one archive request; the ones that failed, with why."""
        now = time.time()
        members = [
            (p.path.lstrip("/"), p.data, p.mode, p.times[1] if p.times else now) for p in batch
        ]
        try:
            self.client.upload_archive("/", members)
        except EnclaveGoneError as gone:
            return [(p, gone) for p in batch]
        except StrongroomError:
            # one member was refused (no space, most likely): find which, file by file
            return [(p, failed) for p in batch if (failed := self._upload_one(p)) is not None]
        for pending, (_, data, mode, mtime) in zip(batch, members, strict=True):
            self._known(RemoteEntry(pending.path, "file", len(data), mode, mtime))
        return []

    def _upload_one(self, pending: Pending) -> StrongroomError | None:
        try:
            self._put_whole(pending.path, pending.data, pending.mode, pending.times)
        except StrongroomError as e:
            return e
        return None

    @_operation
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._writable()
        self._settle_below(path)  # buffered and waiting writes first, then the cut
        self.client.truncate(path, length)
        for handle in self._open_handles(path):
            if handle.path == path:
                handle.size = length
        self._forget(path)

    # --- names ----------------------------------------------------------------

    def _settle_below(self, *paths: str) -> None:
        """Everything written at or below ``paths`` (buffered or waiting) is in the enclave."""
        for path in paths:
            for handle in self._open_handles(path):
                self._settle(handle)
        self._writeback.drain(*paths)

    @_operation
    def unlink(self, path: str) -> None:
        self._writable()
        self._settle_below(path)
        self.client.remove(path)
        self._forget(path)
        self._name_removed(path)

    @_operation
    def mkdir(self, path: str, mode: int) -> None:
        self._writable()
        self._writeback.drain(path)
        self.client.mkdir(path, parents=False)
        if stat.S_IMODE(mode) != _DEFAULT_DIR_MODE:
            self.client.chmod(path, stat.S_IMODE(mode))
        self._forget(path)
        self._name_added(path)
        with self._lock:  # new, so empty: its every name is known
            self._listed[path] = (time.monotonic() + ATTR_TTL_S, set())

    @_operation
    def rmdir(self, path: str) -> None:
        self._writable()
        self._settle_below(path)
        self.client.remove(path)
        self._forget(path, below=True)
        self._name_removed(path)

    @_operation
    def rename(self, old: str, new: str) -> None:
        self._writable()
        self._settle_below(old, new)
        self.client.rename(old, new)
        self._forget(old, new, below=True)
        self._name_removed(old)
        self._name_added(new)
        with self._lock:
            for handle in self._handles.values():
                if handle.path == old or handle.path.startswith(old + "/"):
                    handle.path = new + handle.path[len(old) :]

    @_operation
    def symlink(self, target: str, source: str) -> None:
        """``ln -s source target``: ``target`` is the new link, ``source`` what it points to."""
        self._writable()
        self._writeback.drain(target)
        self.client.symlink(target, source)
        self._forget(target)
        self._name_added(target)

    @_operation
    def readlink(self, path: str) -> str:
        return self.client.readlink(path)

    @_operation
    def link(self, target: str, source: str) -> None:
        """``ln source target``: ``target`` is the new name of the file ``source``."""
        self._writable()
        self._settle_below(source, target)
        self.client.link(source, target)
        self._forget(target, source)
        self._name_added(target)

    # --- metadata -------------------------------------------------------------

    @_operation
    def chmod(self, path: str, mode: int) -> None:
        self._writable()
        if mode & 0o7000:
            raise mfusepy.FuseOSError(errno.EPERM)  # the Files API sets permission bits only
        # a file not yet in the enclave gets the mode the enclave will give it: the
        # owner (the enclave server) keeps read and write (server.files.kept_mode)
        pending = stat.S_IMODE(mode) | 0o600
        new = [h for h in self._open_handles(path) if h.path == path and h.new]
        if new:
            new[0].mode = pending
            return
        if self._writeback.change(path, mode=pending):
            return
        applied = self.client.chmod(path, stat.S_IMODE(mode))
        self._changed(path, mode=applied)

    def _changed(self, path: str, *, mode: int | None = None, mtime: float | None = None) -> None:
        """Update a cached entry after our own chmod or utimens (else drop it)."""
        cached = self._attrs.get(path)
        if cached is None or cached[1] is None:
            self._forget(path)
            return
        entry = cached[1]
        self._known(
            RemoteEntry(
                path,
                entry.type,
                entry.size,
                entry.mode if mode is None else mode,
                entry.mtime if mtime is None else mtime,
            )
        )

    @_operation
    def chown(self, path: str, uid: int, gid: int) -> None:
        """Everything belongs to the mounting user: only a change to that is accepted."""
        self._writable()
        if uid not in (-1, self.uid) or gid not in (-1, self.gid):
            raise mfusepy.FuseOSError(errno.EPERM)

    @_operation
    def utimens(self, path: str, times: tuple[Time, Time] | None = None) -> None:
        """Times as :class:`StrongroomFuse` passes them: seconds, or ``"now"`` / ``"omit"``."""
        self._writable()
        wanted: tuple[Time, Time] = times if times is not None else ("now", "now")
        now = time.time()
        new = [h for h in self._open_handles(path) if h.path == path and h.new]
        if new:
            new[0].times = _resolved(wanted, new[0].times or (now, now))
            return
        waiting = self._writeback.get(path)
        if waiting is not None and self._writeback.change(
            path, times=_resolved(wanted, waiting.times or (now, now))
        ):
            return
        # what is still to land at or below it first: a later write would move its
        # mtime again (a file landing in a directory moves the directory's)
        self._settle_below(path)
        current = (0.0, 0.0)
        if "omit" in wanted:
            entry = self._entry(path)
            if entry is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            current = (entry.mtime, entry.mtime)  # the Files API keeps no atime of its own
        resolved = _resolved(wanted, current)
        self.client.set_times(path, *resolved)
        self._changed(path, mtime=resolved[1])


#: A time for ``utimens``: seconds since the epoch, or the kernel's UTIME_NOW / UTIME_OMIT.
Time = float | str


def _resolved(wanted: tuple[Time, Time], current: tuple[float, float]) -> tuple[float, float]:
    now = time.time()
    a, m = (
        now if value == "now" else old if value == "omit" else float(value)
        for value, old in zip(wanted, current, strict=True)
    )
    return a, m


class StrongroomFuse(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE with the fixes a faithful filesystem needs.

    - ``rename`` with flags (``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``): mfusepy drops
      them, which would turn "rename unless it exists" into "replace it"; refuse
      instead (``EINVAL``), so callers fall back to their own check.
    - ``utimens``: seconds from the raw ``timespec`` pairs, with UTIME_NOW and
      UTIME_OMIT kept recognisable (mfusepy folds them into a number).
    - ``create`` without mfusepy's per-call signature inspection.
    """

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        # mfusepy inspects the operation's signature on every create (a tenth of a
        # ``tar -x`` of small files); ours is known
        fip.contents.fh = self.operations.create(path.decode(self.encoding, self.errors), mode)
        return 0

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        if flags:
            return -errno.EINVAL
        result: int = self.rename_fuse_2(old, new)
        return result

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times: tuple[Time, Time] | None = None
        if buf:
            pair = (buf.contents.actime, buf.contents.modtime)
            special = {_UTIME_NOW: "now", _UTIME_OMIT: "omit"}
            a, m = (special.get(t.tv_nsec) or t.tv_sec + t.tv_nsec / 1e9 for t in pair)
            times = (a, m)
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        result: int = self.operations.utimens(decoded, times)
        return result
