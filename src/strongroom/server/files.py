"""The shared folder, as the host sees it through the enclave API.

The host reaches files inside the enclave only through this module, and only
inside the shared folder. Every path is walked component by component with
``openat(O_NOFOLLOW)`` from a descriptor of the shared root, so neither ``..``,
an absolute path, nor a symlink — even one the sealed app creates while the
host is walking — can lead outside it. Symlinks inside the shared folder are
listed and read (``readlink``) but never followed; the API creates one only
with a relative target that points down from the link's folder, no ``..``
(:func:`contained_target`), because an app that follows a host-made link to
``/enclave/app/model`` would read its own secret as if it were the host's
data, and write what it derives from it where the host can read it. Hard
links join two names of one regular file, both inside the folder.

This is what keeps the decrypted app (in a sibling private folder) out of the
host's reach.

An app may also plant things that are not files: a FIFO, a unix socket (and,
where a kernel lets it, a device node). Opening a FIFO for reading blocks until
a writer comes, which the app controls, so every open here is ``O_NONBLOCK``
(plus ``O_NOCTTY``): the type is checked with ``lstat`` *before* the open and
again with ``fstat`` on the descriptor (the app may swap the entry in between),
anything but a regular file (or a directory, for walks) is refused with a
one-line :class:`UsageError`, and ``O_NONBLOCK`` is cleared only on a regular
file. No call here ever waits on something the app controls; the API still
runs them off its event loop, because even a tmpfs read takes time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from strongroom.errors import (
    AlreadyExistsError,
    InsufficientSpaceError,
    InvalidInputError,
    NotFoundError,
    PathEscapeError,
    StrongroomError,
    UsageError,
)

MAX_PATH = 4096
READ_CHUNK = 1024 * 1024
#: The times a file in the shared folder can have, in seconds since the epoch
#: (1901-12-13 to 2446-05-10: what tmpfs and ext4 store, 34 bits from -2**31);
#: the kernel would clamp anything beyond, so the API refuses it instead.
TIME_MIN = -(2**31)
TIME_MAX = 2**34 - 2**31 - 1
#: Added to every open: never wait (a FIFO with no writer), never follow a
#: symlink, never acquire a controlling terminal, never leak into a child.
_OPEN_FLAGS = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS
_SPECIAL_HINT = "something inside the enclave made it; the Files API moves regular files only"


@dataclass(frozen=True)
class FileStat:
    path: str
    type: str  # file | dir | symlink | other
    size: int
    mode: int
    mtime: float

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "mode": self.mode,
            "mtime": self.mtime,
        }


def split_path(path: str) -> list[str]:
    """Validate a shared-folder path; return its components ('' or '/' → [])."""
    if len(path) > MAX_PATH or "\x00" in path:
        raise PathEscapeError("path is too long or contains NUL")
    parts = [p for p in PurePosixPath("/" + path).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise PathEscapeError(
            f"path {path!r} leaves the shared folder", hint="paths may not contain '..'"
        )
    return parts


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _special(mode: int) -> str | None:
    """What a non-file, non-directory, non-symlink entry is (None for those three)."""
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return None


def _refuse_special(path: str, kind: str) -> StrongroomError:
    return _with_errno(
        UsageError(
            f"{path} is a {kind}: only regular files are read or written", hint=_SPECIAL_HINT
        ),
        "EPERM",
    )


def _open_at(dir_fd: int, name: str, path: str, flags: int, *, directory_ok: bool = False) -> int:
    """Open ``name`` in ``dir_fd`` without ever blocking; only a regular file (or a directory).

    ``lstat`` first, so a FIFO or device is refused without being opened at
    all; then ``fstat`` on the descriptor, because the app may have swapped the
    entry in between (the ``O_NONBLOCK`` open of the swapped-in FIFO returns at
    once, and is refused here).
    """
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise _with_errno(
                NotFoundError(f"{path}: no such file or directory"), "ENOENT"
            ) from None
    except OSError as e:
        raise _translate(e, path) from e
    else:
        if (kind := _special(before.st_mode)) is not None:
            raise _refuse_special(path, kind)
    try:
        fd = os.open(name, flags | _OPEN_FLAGS, 0o644, dir_fd=dir_fd)
    except OSError as e:
        raise _translate(e, path) from e
    try:
        mode = os.fstat(fd).st_mode
        if (kind := _special(mode)) is not None:
            raise _refuse_special(path, kind)
        if stat.S_ISDIR(mode) and not directory_ok:
            raise _with_errno(UsageError(f"{path}: not a regular file"), "EISDIR")
        if stat.S_ISREG(mode):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_directory(dir_fd: int, name: str, path: str) -> int:
    """A directory on the way down ``path``: a symlink is refused (never followed), a
    file is "not a directory", as POSIX says."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except OSError:
                link = False
            if not link:
                raise _with_errno(
                    UsageError(f"{path}: {name} is not a directory"), "ENOTDIR"
                ) from e
            raise _with_errno(
                PathEscapeError(f"{path}: {name} is a symlink, which the Files API never follows"),
                "ELOOP",
            ) from e
        raise _translate(e, path) from e


def _open_path(dir_fd: int, name: str, path: str) -> int:
    """An ``O_PATH`` descriptor of a regular file or directory ``name`` (never followed)."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        raise _translate(e, path) from e
    try:
        mode = os.fstat(fd).st_mode
        if (kind := _special(mode)) is not None:
            raise _refuse_special(path, kind)
        if stat.S_ISLNK(mode):
            raise _with_errno(
                PathEscapeError(f"{path} is a symlink, which the Files API never follows"),
                "ELOOP",
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _chmod_fd(fd: int, mode: int, path: str) -> None:
    """``fchmod`` of an ``O_PATH`` descriptor (through its /proc link, as libc's
    ``fchmodat(AT_SYMLINK_NOFOLLOW)`` does): the inode held, never a path."""
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    except OSError as e:
        raise _translate(e, path) from e


def kept_mode(mode: int, *, directory: bool) -> int:
    """``mode``'s permission bits plus what the owner (the server) needs: read and
    write, and search on a directory. Used for every mode the API applies."""
    return (mode & 0o777) | (0o700 if directory else 0o600)


def _translate(e: OSError, path: str) -> Exception:
    translated = _translated(e, path)
    if isinstance(translated, StrongroomError) and e.errno is not None:
        translated.errno_name = errno.errorcode.get(e.errno)
    return translated


def _with_errno(error: StrongroomError, name: str) -> StrongroomError:
    error.errno_name = name
    return error


def _translated(e: OSError, path: str) -> Exception:
    if e.errno == errno.ENOENT:
        return NotFoundError(f"{path}: no such file or directory")
    if e.errno == errno.EEXIST:
        return AlreadyExistsError(f"{path}: already exists")
    if e.errno == errno.ELOOP:
        return PathEscapeError(f"{path}: a symlink, which the Files API never follows")
    if e.errno == errno.ENOTDIR:
        return UsageError(f"{path}: not a directory")
    if e.errno == errno.ENOTEMPTY:
        return UsageError(f"{path}: directory not empty", hint="remove it recursively")
    if e.errno == errno.EISDIR:
        return UsageError(f"{path}: is a directory")
    if e.errno == errno.ENOSPC:
        return InsufficientSpaceError(f"{path}: no space left in the enclave's shared folder")
    if e.errno == errno.ENXIO:
        # O_NONBLOCK write-open of a FIFO nobody reads, or any open of a socket
        return _refuse_special(path, "FIFO, device or socket")
    return InvalidInputError(f"{path}: {e.strerror}")


class SharedFolder:
    """File operations confined to one directory tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """Yield (descriptor of the parent directory, final name) for ``path``."""
        parts = split_path(path)
        if not parts:
            raise _with_errno(
                UsageError("this operation needs a path inside the shared folder, not its root"),
                "EBUSY",
            )
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                child = _open_directory(fd, part, path)
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _directory(self, path: str) -> Iterator[int]:
        parts = split_path(path)
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                child = _open_directory(fd, part, path)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _entry(self, path: str) -> Iterator[int]:
        """An ``O_PATH`` descriptor of a regular file or a directory (the root too).

        ``O_PATH`` needs no permission on the entry itself, so a mode the
        entry has (even 0) never stops the server from changing it.
        """
        parts = split_path(path)
        if not parts:
            fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            with self._parent(path) as (parent, name):
                fd = _open_path(parent, name, path)
        try:
            yield fd
        finally:
            os.close(fd)

    def capacity(self) -> int:
        """The shared folder's size in bytes: no file in it can be larger."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize

    def check_fits(self, end: int, path: str) -> None:
        """Refuse, before any work, a file that would end beyond the folder's size."""
        capacity = self.capacity()
        if end > capacity:
            raise _with_errno(
                InsufficientSpaceError(
                    f"{path}: {end} bytes is more than the shared folder holds ({capacity})"
                ),
                "EFBIG",
            )

    def _stat(self, path: str) -> FileStat:
        parts = split_path(path)
        if not parts:
            st = os.stat(self.root)
        else:
            with self._parent(path) as (fd, name):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as e:
                    raise _translate(e, path) from e
        return FileStat(
            "/" + "/".join(parts),
            _kind(st.st_mode),
            st.st_size,
            stat.S_IMODE(st.st_mode),
            st.st_mtime,
        )

    def stat(self, path: str) -> FileStat:
        return self._stat(path)

    def list(self, path: str) -> list[FileStat]:
        base = "/" + "/".join(split_path(path))
        with self._directory(path) as fd:
            entries = []
            for name in sorted(os.listdir(fd)):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed by the app meanwhile
                entries.append(
                    FileStat(
                        f"{base.rstrip('/')}/{name}",
                        _kind(st.st_mode),
                        st.st_size,
                        stat.S_IMODE(st.st_mode),
                        st.st_mtime,
                    )
                )
            return entries

    def walk(self, path: str) -> Iterator[FileStat]:
        """Every entry below ``path`` (depth first), for recursive pulls."""
        for entry in self.list(path):
            yield entry
            if entry.type == "dir":
                yield from self.walk(entry.path)

    def open_read(self, path: str) -> int:
        """An O_RDONLY descriptor of a regular file (the caller closes it)."""
        with self._parent(path) as (fd, name):
            return _open_at(fd, name, path, os.O_RDONLY)

    def read(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        """Chunks of a file. The file is opened (and checked) now, read lazily."""
        return chunks(self.open_read(path), offset, length)

    def open_write(
        self, path: str, *, create: bool = True, truncate: bool = False, exclusive: bool = False
    ) -> int:
        flags = os.O_WRONLY
        if create:
            flags |= os.O_CREAT
        if truncate:
            flags |= os.O_TRUNC
        if exclusive:
            flags |= os.O_EXCL
        with self._parent(path) as (fd, name):
            return _open_at(fd, name, path, flags)

    def check_replaceable(self, path: str) -> None:
        """Refuse, before an upload starts, to replace what a whole-file write may not.

        A whole-file write lands under a temporary name and is renamed over
        ``path``: that must not silently swap out a FIFO, socket or device an
        app made (refused like any other access), nor fail only at the end, after
        the upload, because ``path`` is a directory.
        """
        with self._parent(path) as (fd, name):
            refuse_existing(fd, name, path, directory=False)

    def mkdir(self, path: str, *, parents: bool = False) -> None:
        parts = split_path(path)
        if not parts:
            raise _with_errno(UsageError("the shared folder's root already exists"), "EEXIST")
        for depth in range(1 if parents else len(parts), len(parts) + 1):
            sub = "/".join(parts[:depth])
            with self._parent(sub) as (fd, name):
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    if depth == len(parts) and not parents:
                        raise _with_errno(
                            AlreadyExistsError(f"{sub}: already exists"), "EEXIST"
                        ) from None
                    if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise _with_errno(
                            UsageError(f"{sub}: exists and is not a directory"), "EEXIST"
                        ) from None
                except OSError as e:
                    raise _translate(e, sub) from e

    def remove(self, path: str, *, recursive: bool = False) -> None:
        with self._parent(path) as (fd, name):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if recursive:
                        _remove_tree(fd, name)
                    else:
                        os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            except OSError as e:
                raise _translate(e, path) from e

    def rename(self, source: str, destination: str) -> None:
        with self._parent(source) as (sfd, sname), self._parent(destination) as (dfd, dname):
            try:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            except OSError as e:
                raise _translate(e, f"{source} -> {destination}") from e

    def truncate(self, path: str, size: int) -> None:
        self.check_fits(size, path)
        fd = self.open_write(path, create=False)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def set_times(self, path: str, atime: float, mtime: float) -> None:
        if not split_path(path):
            try:
                os.utime(self.root, (atime, mtime))
            except OSError as e:
                raise _translate(e, path) from e
            return
        with self._parent(path) as (fd, name):
            try:
                os.utime(name, (atime, mtime), dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                raise _translate(e, path) from e

    def chmod(self, path: str, mode: int) -> int:
        """Set a regular file's or a directory's permission bits; the mode it now has.

        The owner -- the enclave server itself -- keeps read and write (and
        search, on a directory) whatever is asked (:func:`kept_mode`): a
        mode of 0 would otherwise lock the server out of the folder it
        serves (nothing could read, change or remove the entry again). Only
        permission bits; never a FIFO's or a device's.
        """
        if mode & ~0o777:
            raise _with_errno(
                UsageError(f"mode {oct(mode)} may only carry permission bits"), "EPERM"
            )
        with self._entry(path) as fd:
            kept = kept_mode(mode, directory=stat.S_ISDIR(os.fstat(fd).st_mode))
            _chmod_fd(fd, kept, path)
        return kept

    def symlink(self, path: str, target: str) -> None:
        """Make ``path`` a symlink to ``target``, which must stay inside the folder."""
        contained_target(path, target)
        with self._parent(path) as (fd, name):
            try:
                os.symlink(target, name, dir_fd=fd)
            except OSError as e:
                raise _translate(e, path) from e

    def readlink(self, path: str) -> str:
        with self._parent(path) as (fd, name):
            try:
                return os.readlink(name, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    raise _with_errno(UsageError(f"{path}: not a symlink"), "EINVAL") from e
                raise _translate(e, path) from e

    def link(self, source: str, destination: str) -> None:
        """A second name for the regular file ``source`` (never a symlink's target)."""
        with self._parent(source) as (sfd, sname), self._parent(destination) as (dfd, dname):
            try:
                mode = os.stat(sname, dir_fd=sfd, follow_symlinks=False).st_mode
                if not stat.S_ISREG(mode):
                    raise _with_errno(
                        UsageError(f"{source}: only a regular file can be hard-linked"), "EPERM"
                    )
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            except OSError as e:
                raise _translate(e, f"{source} -> {destination}") from e

    def fsync(self, path: str) -> None:
        """Flush a regular file (or a directory, the root too) to its filesystem."""
        if not split_path(path):
            target = os.open(self.root, _DIR_FLAGS)
        else:
            with self._parent(path) as (fd, name):
                target = _open_at(fd, name, path, os.O_RDONLY, directory_ok=True)
        try:
            os.fsync(target)
        finally:
            os.close(target)

    def statfs(self) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {
            "block_size": st.f_frsize,
            "blocks": st.f_blocks,
            "blocks_free": st.f_bavail,
            "files": st.f_files,
            "files_free": st.f_favail,
            "name_max": st.f_namemax,
        }

    def host_path(self, path: str) -> Path:
        """The real path of a shared-folder path *inside the enclave* (for app arguments)."""
        return self.root.joinpath(*split_path(path))


def refuse_existing(dir_fd: int, name: str, path: str, *, directory: bool) -> None:
    """Refuse to replace a FIFO, socket or device, a directory by a file, a file by a directory."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise _translate(e, path) from e
    if (kind := _special(mode)) is not None:
        raise _refuse_special(path, kind)
    if stat.S_ISDIR(mode) and not directory:
        raise _with_errno(UsageError(f"{path}: is a directory"), "EISDIR")
    if directory and not stat.S_ISDIR(mode):
        raise _with_errno(UsageError(f"{path}: exists and is not a directory"), "ENOTDIR")


def contained_target(path: str, target: str) -> str:
    """``target`` if a symlink at ``path`` may point to it: relative, and never up (no ``..``).

    A link that only points *down* from its own directory stays inside the
    folder wherever it is moved and whatever links it leads through, as long
    as every link the host made is one: a name-only check that allowed ``..``
    ("``../data/x`` stays inside from ``/out``") breaks once the link is
    renamed up the tree, or chained through a link that points up. Links an
    app makes are the app's affair (the server follows none).
    """
    parts = split_path(path)
    if not parts:
        raise _with_errno(UsageError("the shared folder's root cannot be a symlink"), "EEXIST")
    if not target or len(target) > MAX_PATH or "\x00" in target:
        raise _with_errno(InvalidInputError("a symlink needs a target"), "EINVAL")
    if target.startswith("/"):
        raise _with_errno(
            PathEscapeError(
                f"symlink target {target!r} is absolute",
                hint="inside the enclave it names the enclave's own files; make it relative",
            ),
            "EPERM",
        )
    if ".." in target.split("/"):
        raise _with_errno(
            PathEscapeError(
                f"symlink target {target!r} climbs with '..'",
                hint="a symlink may only point down from its own folder; copy the file instead",
            ),
            "EPERM",
        )
    return target


def _remove_tree(parent_fd: int, name: str) -> None:
    """``rm -r`` of ``name`` in ``parent_fd``, descending only into real directories.

    Not :func:`shutil.rmtree`: it opens what it believes to be a directory
    without ``O_NONBLOCK``, so an app that swaps a directory for a FIFO at the
    right moment would park the thread until the app writes to it.
    """
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        # an app took the owner's bits away (the API never does): the server owns
        # the directory, so it may give them back, through a descriptor that
        # cannot be swapped for a symlink meanwhile
        held = os.open(
            name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
        )
        try:
            os.chmod(f"/proc/self/fd/{held}", 0o700)
        finally:
            os.close(held)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(fd):
            try:
                st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(fd, child)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def chunks(fd: int, offset: int, length: int | None) -> Generator[bytes, None, None]:
    """Read ``fd`` (which this closes) in :data:`READ_CHUNK` pieces from ``offset``."""
    try:
        remaining = length
        while remaining is None or remaining > 0:
            want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
            chunk = os.pread(fd, want, offset)
            if not chunk:
                return
            offset += len(chunk)
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        os.close(fd)
