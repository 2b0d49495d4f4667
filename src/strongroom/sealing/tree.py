"""Safe extraction: the only code that creates files from a package's entries.

Archive readers (tar for v1, zip for legacy packages) hand every entry to a
:class:`SafeTree`, which decides whether it may exist and creates it. The
rules, shared with the sealer so that it refuses to make what an opener would
reject:

- Names are relative, UTF-8, ``/``-separated, with no empty, ``.`` or ``..``
  component, at most ``max_path_length`` bytes and 255 bytes per component.
- Only directories, regular files and symbolic links exist. Hard links,
  devices, FIFOs and anything else are refused (the sealer stores each name of
  a hard-linked file as a regular file, so it never needs one).
- A symlink target is relative, and is a run of ``..`` followed by plain
  names; the ``..`` run may not climb above the tree root. Because no entry
  can live under a symlink (see below), that run climbs through real
  directories, so every symlink resolves inside the tree whatever is created
  later — and ``..`` after a name, which could climb out through another
  symlink, is refused.
- Every entry is created relative to a directory file descriptor opened with
  ``O_NOFOLLOW``, so an entry cannot go through a symlink (or a file), and
  with ``O_EXCL`` semantics, so a name cannot be created twice: duplicates
  and clashes with earlier entries are refused.
- Modes are normalized: directories 0755, files 0755 if the owner-execute bit
  is set and 0644 otherwise; owners, times and other bits are not restored.
- ``max_entries`` and ``max_total_bytes`` bound the work a package can cause.

The tree assumes nobody else writes under its root while it works: callers
extract into a fresh private directory (``unseal`` uses a temporary one).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from strongroom.errors import InvalidInputError, StrongroomError

UNSAFE_HINT = "the package was built to escape its directory or is damaged; do not use it"
RESEAL_HINT = "ask the vendor to re-seal the application with `strongroom seal`"

GiB = 1 << 30
NAME_MAX = 255
#: Reads of file data stay below glibc's mmap threshold (128 KiB), so that
#: their buffers are recycled instead of page-faulted in for every read.
COPY_BUFFER_SIZE = 64 << 10
DIR_MODE = 0o755
FILE_MODE = 0o644
EXEC_MODE = 0o755

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what opening one package may create, read or hold in memory."""

    #: Sum of the sizes of all regular files.
    max_total_bytes: int = 64 * GiB
    max_entries: int = 1_000_000
    #: Bytes of an entry name or a symlink target (UTF-8).
    max_path_length: int = 4096
    #: Bytes the tar reader may consume for one entry's headers (pax records, long names).
    max_metadata_bytes: int = 1 << 20
    #: Legacy packages are decrypted in memory: the largest file accepted.
    max_legacy_package_bytes: int = 2 * GiB

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise InvalidInputError(
                    f"extract limit {name} must be positive", hint="use positive limits"
                )


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def name_problem(name: str, limits: ExtractLimits) -> str | None:
    """Why ``name`` may not be an entry name, or None if it may."""
    if not name:
        return "has an empty name"
    if "\x00" in name:
        return "contains a NUL character"
    if name.startswith("/"):
        return "is an absolute path"
    if not _is_utf8(name):
        return "is not valid UTF-8"
    if len(name.encode("utf-8")) > limits.max_path_length:
        return f"is longer than {limits.max_path_length} bytes"
    for part in name.split("/"):
        if part == "..":
            return "goes outside the tree ('..')"
        if part in ("", "."):
            return "is not a normalized path"
        if len(part.encode("utf-8")) > NAME_MAX:
            return f"has a component longer than {NAME_MAX} bytes"
    return None


def link_problem(name: str, target: str, limits: ExtractLimits) -> str | None:
    """Why a symlink ``name`` -> ``target`` could resolve outside the tree, or None."""
    if not target or "\x00" in target:
        return "is a symlink with an empty or invalid target"
    if target.startswith("/"):
        return f"is a symlink to an absolute path ({target})"
    if not _is_utf8(target):
        return "is a symlink whose target is not valid UTF-8"
    if len(target.encode("utf-8")) > limits.max_path_length:
        return f"is a symlink with a target longer than {limits.max_path_length} bytes"
    steps = [step for step in target.split("/") if step not in ("", ".")]
    ups = 0
    while ups < len(steps) and steps[ups] == "..":
        ups += 1
    if ".." in steps[ups:]:
        return f"is a symlink whose target ({target}) uses '..' after a name"
    if ups > name.count("/"):
        return f"is a symlink pointing outside the tree ({target})"
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SafeTree:
    """Creates validated entries under ``root``, an existing empty directory.

    With ``create_parents`` (zip archives often omit directories), missing
    parent directories are created; without it (tar payloads, whose sealer
    always writes a directory before its contents) a missing parent is refused.
    """

    def __init__(self, root: Path, limits: ExtractLimits, *, create_parents: bool) -> None:
        self._limits = limits
        self._create_parents = create_parents
        # The root is the caller's choice, so it may be reached through a symlink.
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # The parent directory of the previous entry, kept open: archives list
        # siblings together, so most entries reuse it.
        self._cached_parts: tuple[str, ...] = ()
        self._cached_fd = self._root_fd
        self._entries = 0
        self.total_bytes = 0

    def __enter__(self) -> SafeTree:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._forget_parent()
        os.close(self._root_fd)

    def add_directory(self, name: str, *, exist_ok: bool = False) -> None:
        parts = self._admit(name)
        parent = self._parent_fd(name, parts[:-1])
        try:
            os.mkdir(parts[-1], DIR_MODE, dir_fd=parent)
            # mkdir honours the umask; the format says 0755.
            os.chmod(parts[-1], DIR_MODE, dir_fd=parent)
        except FileExistsError:
            if not (exist_ok and self._is_real_dir(parent, parts[-1])):
                raise _duplicate(name) from None
        except OSError as exc:
            raise _write_error(name, exc) from exc

    def add_symlink(self, name: str, target: str) -> None:
        parts = self._admit(name)
        problem = link_problem(name, target, self._limits)
        if problem:
            raise unsafe_entry(name, problem)
        parent = self._parent_fd(name, parts[:-1])
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        except FileExistsError:
            raise _duplicate(name) from None
        except OSError as exc:
            raise _write_error(name, exc) from exc

    def add_file(self, name: str, source: Readable, size: int, *, executable: bool) -> None:
        """Create ``name`` with exactly the ``size`` bytes ``source`` yields."""
        parts = self._admit(name)
        if self.total_bytes + size > self._limits.max_total_bytes:
            raise InvalidInputError(
                f"the package unpacks to more than {self._limits.max_total_bytes} bytes",
                hint="raise the extraction size limit if the application is really this large",
            )
        self.total_bytes += size
        parent = self._parent_fd(name, parts[:-1])
        try:
            fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            raise _duplicate(name) from None
        except OSError as exc:
            raise _write_error(name, exc) from exc
        try:
            self._copy(name, source, size, fd)
            os.fchmod(fd, EXEC_MODE if executable else FILE_MODE)
        except OSError as exc:
            raise _write_error(name, exc) from exc
        finally:
            os.close(fd)

    def _copy(self, name: str, source: Readable, size: int, fd: int) -> None:
        remaining = size
        while remaining:
            data = source.read(min(remaining, COPY_BUFFER_SIZE))
            if not data:
                raise InvalidInputError(
                    f"archive entry {name!r} is shorter than it declares", hint=RESEAL_HINT
                )
            remaining -= len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        if source.read(1):
            raise InvalidInputError(
                f"archive entry {name!r} is longer than it declares", hint=RESEAL_HINT
            )

    def _admit(self, name: str) -> tuple[str, ...]:
        self._entries += 1
        if self._entries > self._limits.max_entries:
            raise InvalidInputError(
                f"the package has more than {self._limits.max_entries} entries",
                hint="raise the extraction entry limit if the application really has this many",
            )
        problem = name_problem(name, self._limits)
        if problem:
            raise unsafe_entry(name, problem)
        return tuple(name.split("/"))

    def _parent_fd(self, name: str, parts: tuple[str, ...]) -> int:
        if parts == self._cached_parts:
            return self._cached_fd
        self._forget_parent()
        if not parts:
            return self._root_fd
        fd = os.dup(self._root_fd)
        try:
            for depth, part in enumerate(parts, start=1):
                child = self._open_dir(name, fd, part, parts[:depth])
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._cached_parts, self._cached_fd = parts, fd
        return fd

    def _open_dir(self, name: str, parent: int, part: str, prefix: tuple[str, ...]) -> int:
        where = "/".join(prefix)
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not self._create_parents:
                raise unsafe_entry(name, f"comes before its directory {where!r}") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise unsafe_entry(
                    name, f"goes through {where!r}, which is a symlink or a file"
                ) from None
            raise _write_error(name, exc) from exc
        try:
            os.mkdir(part, DIR_MODE, dir_fd=parent)
            os.chmod(part, DIR_MODE, dir_fd=parent)
            return os.open(part, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _write_error(name, exc) from exc

    def _forget_parent(self) -> None:
        if self._cached_fd != self._root_fd:
            os.close(self._cached_fd)
        self._cached_parts, self._cached_fd = (), self._root_fd

    @staticmethod
    def _is_real_dir(parent: int, part: str) -> bool:
        return stat.S_ISDIR(os.stat(part, dir_fd=parent, follow_symlinks=False).st_mode)


def unsafe_entry(name: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"unsafe archive entry {name!r}: it {problem}", hint=UNSAFE_HINT)


def _duplicate(name: str) -> InvalidInputError:
    return unsafe_entry(name, "appears twice or clashes with an earlier entry")


def _write_error(name: str, exc: OSError) -> StrongroomError:
    return StrongroomError(
        f"cannot create {name!r}: {exc.strerror}",
        hint="check the free space and permissions of the destination",
    )
