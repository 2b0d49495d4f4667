"""Many small files in one request: tar archives into and out of the shared folder.

A request per file costs about a millisecond of round trip, so 5,000 small
files cost seconds. ``POST /v1/files/archive?path=DIR`` takes them as one
streamed ``application/x-tar`` body; ``GET /v1/files/archive?path=DIR``
answers them as one.

Extraction (:func:`extract`) trusts nothing in the archive. Each member is
checked *before anything of it is written*:

- only regular files and directories; a symlink, hard link, device, FIFO,
  sparse or any other member type is refused;
- its name is relative, with no ``..``, no empty or NUL-bearing component, no
  component over :data:`NAME_MAX` bytes, and ``DIR/name`` obeys the shared
  folder's path rules (:func:`~.files.split_path`);
- its mode carries permission bits only: a setuid, setgid or sticky bit is
  refused, never silently dropped;
- its size fits in the shared folder's free space (and one inode is left).

A refusal ends the extraction with a problem naming the member and saying how
many members before it were extracted (they stay: the archive is not
all-or-nothing); nothing of the refused member, or of any after it, is
written. Each regular file is written under a temporary name (registered
with the server's :class:`~.api.Temporaries`, so listings hide it), its
permission bits and mtime applied, and renamed into place only once complete;
an interrupted or refused member leaves nothing behind. ``DIR`` and missing
parents of a member are created (mode 0755) as ``mkdir -p`` would; a
directory member's own mode and mtime are applied once the archive is done,
as ``tar`` does. Every directory is entered one component at a time with
``O_NOFOLLOW`` from the shared root (see :mod:`.files`), once per run of
members in the same directory.

The download archive (:func:`archive_chunks`) holds every regular file below
``DIR`` up to a size, in pax format, each with its SHA-256 in the pax record
:data:`SHA256_RECORD`; symlinks, special files, in-flight uploads and larger
files are left out (the client fetches larger ones one by one).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Generator
from typing import IO, Any, Protocol, cast

from strongroom.errors import (
    InsufficientSpaceError,
    InvalidInputError,
    NotFoundError,
    PathEscapeError,
    StrongroomError,
    UsageError,
)
from strongroom.server.files import (
    _DIR_FLAGS,
    _OPEN_FLAGS,
    MAX_PATH,
    TIME_MAX,
    TIME_MIN,
    FileStat,
    SharedFolder,
    _open_directory,
    _translate,
    kept_mode,
    refuse_existing,
    split_path,
)

#: Longest file name (one path component, in bytes) Linux accepts.
NAME_MAX = 255
#: Members one upload archive may hold (the answer lists each of them).
MAX_MEMBERS = 100_000
#: Largest file a download archive carries; larger ones are fetched on their own.
MAX_DOWNLOAD_MEMBER = 1024 * 1024
#: The pax record that carries a member's SHA-256 (hex) in a download archive.
SHA256_RECORD = "STRONGROOM.sha256"
#: What tarfile reads from the body at a time, and how much archive a download yields at once.
TAR_BUFFER = 256 * 1024
#: A member's data is written in pieces of this size.
WRITE_PIECE = 1024 * 1024
#: Member types extracted as regular files (``CONTTYPE`` is a regular file to every reader).
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


class Registry(Protocol):
    """The server's record of in-flight temporaries (:class:`~.api.Temporaries`)."""

    def new(self, parts: list[str]) -> str: ...
    def done(self, path: str, *, removed: bool = True) -> None: ...


def member_parts(base: list[str], name: str) -> list[str]:
    """The shared-folder components of member ``name`` extracted under ``base``."""
    if not name or name.startswith("/"):
        raise PathEscapeError(f"member name {name!r} is not a relative path")
    raw = name.split("/")
    if raw and raw[-1] == "":  # "dir/": a directory spelled with its slash
        raw.pop()
    parts = [p for p in raw if p != "."]
    if not parts or any(p in ("", "..") for p in parts):
        raise PathEscapeError(
            f"member name {name!r} leaves {'/' + '/'.join(base)} or has an empty component",
            hint="member names are relative and may not contain '..'",
        )
    for part in parts:
        if "\x00" in part:
            raise PathEscapeError(f"member name {name!r} contains NUL")
        if len(os.fsencode(part)) > NAME_MAX:
            raise InvalidInputError(
                f"member name {name!r}: a component is longer than {NAME_MAX} bytes"
            )
    full = "/" + "/".join([*base, *parts])
    if len(full) > MAX_PATH:
        raise InvalidInputError(f"member name {name!r}: the path is longer than {MAX_PATH}")
    split_path(full)  # the shared folder's own rules, once more
    return [*base, *parts]


class _Directories:
    """The descriptor of the directory members are being written into, kept between members."""

    def __init__(self, shared: SharedFolder) -> None:
        self._shared = shared
        self._parts: list[str] | None = None
        self._fd = -1

    def open(self, parts: list[str]) -> int:
        """A descriptor of ``parts`` (created, with its parents, if missing); not to be closed."""
        if parts == self._parts:
            return self._fd
        self.close()
        path = "/" + "/".join(parts)
        fd = os.open(self._shared.root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    child = _open_directory(fd, part, path)
                except OSError:
                    child = _open_directory(fd, part, path)  # says why: a symlink, a file
                os.close(fd)
                fd = child
        except OSError as e:
            os.close(fd)
            raise _translate(e, path) from e
        except BaseException:
            os.close(fd)
            raise
        self._parts, self._fd = list(parts), fd
        return fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._parts, self._fd = None, -1


def _os_call(function: Callable[..., Any], path: str, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, its OSError translated to our own error for ``path``."""
    try:
        return function(*args, **kwargs)
    except OSError as e:
        raise _translate(e, path) from e


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse a member that is neither a regular file nor a directory, or a mode beyond 0777."""
    if member.type not in _FILE_TYPES and not member.isdir():
        kind = _TYPE_NAMES.get(member.type, f"member of type {member.type!r}")
        raise UsageError(
            f"it is a {kind}: an archive may hold regular files and directories only",
            hint="leave links and special files out of the archive",
        )
    if member.mode & ~0o777:
        raise UsageError(
            f"its mode {oct(member.mode)} has bits beyond the permissions (setuid, setgid, sticky)",
            hint="the shared folder takes permission bits only (mode & 0o777)",
        )
    if not TIME_MIN <= member.mtime <= TIME_MAX:
        raise UsageError(
            f"its mtime {member.mtime!r} is outside what the shared folder stores "
            f"({TIME_MIN} to {TIME_MAX})"
        )


def _check_space(dir_fd: int, size: int, path: str) -> None:
    st = os.fstatvfs(dir_fd)
    needed = -(-size // st.f_frsize) * st.f_frsize if st.f_frsize else size
    if needed > st.f_bavail * st.f_frsize or st.f_favail < 1:
        raise InsufficientSpaceError(
            f"{path}: {size} bytes do not fit in the shared folder's "
            f"{st.f_bavail * st.f_frsize} free bytes"
        )


def _write_member(
    dir_fd: int, name: str, temporary: str, data: IO[bytes], member: tarfile.TarInfo, path: str
) -> str:
    """Write one regular file under ``temporary``, rename it to ``name``; its SHA-256."""
    digest = hashlib.sha256()
    fd = _os_call(
        os.open,
        path,
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS,
        0o600,
        dir_fd=dir_fd,
    )
    try:
        try:
            written = 0
            while piece := data.read(min(WRITE_PIECE, member.size - written)):
                digest.update(piece)
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
                written += len(piece)
            if written != member.size:
                raise InvalidInputError(f"{path}: the archive ends inside this member")
            os.fchmod(fd, kept_mode(member.mode, directory=False))
            mtime_ns = int(member.mtime * 1e9)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise InsufficientSpaceError(
                    f"{path}: no space left in the enclave's shared folder"
                ) from e
            raise _translate(e, path) from e
        finally:
            os.close(fd)
        _os_call(os.rename, path, temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    return digest.hexdigest()


def extract(
    shared: SharedFolder, temporaries: Registry, directory: str, body: io.RawIOBase
) -> list[dict[str, object]]:
    """Extract the tar stream ``body`` under ``directory``; an entry per regular file written.

    See the module docstring for what is refused. On a refusal the error says
    which member and how many were extracted before it.
    """
    base = split_path(directory)
    dirs = _Directories(shared)
    entries: list[dict[str, object]] = []
    directories: list[tuple[list[str], int, float]] = []
    done = 0
    name = ""
    try:
        dirs.open(base)  # DIR itself, created if missing
        stream = cast(IO[bytes], body)
        with tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_BUFFER) as tar:
            for member in tar:
                name = member.name
                if done >= MAX_MEMBERS:
                    raise InvalidInputError(f"an archive may hold at most {MAX_MEMBERS} members")
                _check_member(member)
                parts = member_parts(base, name)
                path = "/" + "/".join(parts)
                if member.isdir():
                    parent = dirs.open(parts[:-1])
                    refuse_existing(parent, parts[-1], path, directory=True)
                    dirs.open(parts)
                    directories.append(
                        (parts, kept_mode(member.mode, directory=True), member.mtime)
                    )
                    done += 1
                    continue
                parent = dirs.open(parts[:-1])
                refuse_existing(parent, parts[-1], path, directory=False)
                _check_space(parent, member.size, path)
                data = tar.extractfile(member)
                if data is None:  # not a regular file (checked above)
                    raise UsageError("it is not a regular file")
                temporary = temporaries.new(parts)
                try:
                    digest = _write_member(
                        parent, parts[-1], temporary.rsplit("/", 1)[1], data, member, path
                    )
                finally:
                    temporaries.done(temporary)
                entries.append({"path": path, "size": member.size, "sha256": digest})
                done += 1
            name = ""
        for parts, mode, mtime in directories:
            fd = dirs.open(parts)
            os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))
    except StrongroomError as e:
        located = type(e)(_where(name, done, e.message), hint=e.hint)
        located.errno_name = e.errno_name
        raise located from e
    except (tarfile.TarError, EOFError) as e:
        raise InvalidInputError(_where(name, done, f"malformed archive: {e}")) from e
    except OSError as e:
        raise _translate(e, "/" + "/".join(base)) from e
    finally:
        dirs.close()
    return entries


def _where(name: str, done: int, message: str) -> str:
    if not name:
        return f"archive refused after {done} member(s) were extracted: {message}"
    return (
        f"archive member {name!r} refused: {message}; {done} member(s) before it were "
        "extracted, nothing of it or of any after it was written"
    )


def _tar_header(name: str, size: int, mode: int, mtime: float, digest: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.pax_headers = {SHA256_RECORD: digest}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def archive_chunks(
    shared: SharedFolder,
    directory: str,
    max_size: int,
    hide: Callable[[list[FileStat]], list[FileStat]] = lambda entries: entries,
) -> Generator[bytes, None, None]:
    """The download archive of ``directory`` (see the module docstring), a piece at a time.

    Runs in a worker thread; a directory or file that disappears meanwhile is
    left out, not an error (the client fetches what it misses on its own).
    """
    base = "/" + "/".join(split_path(directory))
    out = bytearray()
    stack = [base]
    while stack:
        listed = stack.pop()
        try:
            entries = shared.list(listed)
        except (NotFoundError, PathEscapeError, UsageError):
            continue
        entries = hide(entries)
        for entry in reversed(entries):
            if entry.type == "dir":
                stack.append(entry.path)
        for entry in entries:
            if entry.type != "file" or entry.size > max_size:
                continue
            data = _read_small(shared, entry.path, max_size)
            if data is None:
                continue
            rel = entry.path[len(base) :].lstrip("/")
            out += _tar_header(
                rel, len(data), entry.mode, entry.mtime, hashlib.sha256(data).hexdigest()
            )
            out += data
            out += bytes(-len(data) % tarfile.BLOCKSIZE)
            if len(out) >= TAR_BUFFER:
                yield bytes(out)
                out.clear()
    out += bytes(2 * tarfile.BLOCKSIZE)  # the end of the archive
    yield bytes(out)


def _read_small(shared: SharedFolder, path: str, max_size: int) -> bytes | None:
    """A file's bytes if it is still a regular file of at most ``max_size`` bytes."""
    try:
        fd = shared.open_read(path)
    except (NotFoundError, PathEscapeError, UsageError, InvalidInputError):
        return None  # gone, or swapped for something else meanwhile
    try:
        pieces = []
        size = 0
        while size <= max_size and (piece := os.read(fd, max_size + 1 - size)):
            pieces.append(piece)
            size += len(piece)
    finally:
        os.close(fd)
    return b"".join(pieces) if size <= max_size else None


class BodyStream(io.RawIOBase):
    """A request body, as a blocking file for :mod:`tarfile` in a worker thread.

    The event loop :meth:`feed`s chunks as they arrive (``None`` at the end);
    :meth:`readinto` waits for them. The queue is bounded, so a slow
    extraction slows the upload instead of filling memory.
    """

    def __init__(self, depth: int) -> None:
        import queue

        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._pending = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            if self._ended:
                return 0
            chunk = self.queue.get()
            if chunk is None:
                self._ended = True
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
