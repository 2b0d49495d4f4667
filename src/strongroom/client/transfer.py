"""What ``push`` reads and ``pull`` writes on the host, and nothing else.

``pull`` writes where the enclave's answers say, and the enclave is not the
host's friend: an app that took over the server (or a stand-in for it) may
list ``/out/../../../../etc/x``, an absolute name, a name with ``/`` or NUL
inside, or a "child" that is not under the directory it was asked to list.
So, on the host side:

- every entry of a listing must be exactly ``<listed directory>/<one valid
  name>`` (:func:`child_name`); a name is valid when it is not empty, ``.`` or
  ``..``, has no ``/`` or NUL, and fits in ``NAME_MAX`` bytes;
- the local target of an entry is the destination joined with validated
  names only (:class:`LocalTarget`), never a path the server wrote;
- the whole listing is checked, and the destination with it
  (:func:`check_destination`), before the first byte is written: a hostile
  listing is refused whole, with one error naming the bad entry;
- nothing is written through a symlink that exists in the destination:
  directories are created and opened one name at a time from a descriptor of
  the destination (``mkdirat``, ``openat(O_DIRECTORY|O_NOFOLLOW)``), a file is
  created ``O_EXCL|O_NOFOLLOW`` under a temporary name in its directory and
  renamed there only once verified; an existing symlink (or a file where a
  directory is needed) is refused, not followed.

The destination the user typed is the user's own choice: it (and its
parents) may be or contain symlinks; only what lies below it is confined.

``push`` sends only regular files: a symlink, given or met inside a
directory, is refused (the host decides what leaves its disk, not a link),
and so is a FIFO or device, which would block or never end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from strongroom.errors import InvalidInputError, UsageError

#: Longest file name (in bytes) Linux accepts, and the longest path the server does.
NAME_MAX = 255
MAX_REMOTE_PATH = 4096
#: A pull looks at most at this many entries (a listing without end is hostile too).
MAX_PULL_ENTRIES = 1_000_000
ENTRY_TYPES = frozenset({"file", "dir", "symlink", "other"})

_HOSTILE_HINT = (
    "the enclave's listing names a file outside the directory it was asked to list; "
    "nothing was written (is the enclave server compromised?)"
)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Entry(Protocol):
    """A file entry as the enclave describes it (a :class:`~.enclave.RemoteEntry`)."""

    @property
    def path(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def size(self) -> int: ...


class Lister(Protocol):
    """What pull needs of an enclave to plan (an :class:`~.enclave.EnclaveClient`)."""

    def stat(self, path: str) -> Entry: ...
    def list(self, path: str) -> Sequence[Entry]: ...


def _hostile(message: str) -> InvalidInputError:
    return InvalidInputError(message, hint=_HOSTILE_HINT)


def check_name(name: object, *, entry: object) -> str:
    """``name`` if it is one valid file name, else the error naming ``entry``."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise _hostile(f"the enclave listed {entry!r}: {name!r} is not a file name")
    if "/" in name or "\x00" in name:
        raise _hostile(f"the enclave listed {entry!r}: a name may not contain '/' or NUL")
    try:
        encoded = os.fsencode(name)
    except UnicodeError:
        raise _hostile(f"the enclave listed {entry!r}: the name is not encodable") from None
    if len(encoded) > NAME_MAX:
        raise _hostile(f"the enclave listed {entry!r}: a name is longer than {NAME_MAX} bytes")
    return name


def remote_parts(path: object) -> tuple[str, ...]:
    """The names of an absolute, normalised shared-folder path the enclave answered."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > MAX_REMOTE_PATH:
        raise _hostile(f"the enclave answered the path {path!r}: not an absolute shared path")
    if path == "/":
        return ()
    return tuple(check_name(part, entry=path) for part in path[1:].split("/"))


def normalised(remote: str) -> str:
    """``remote`` as the enclave names it: absolute, without empty or ``.`` parts."""
    return "/" + "/".join(p for p in remote.split("/") if p not in ("", "."))


def child_name(listed: str, child: object) -> str:
    """The one name by which ``child`` is directly under the directory ``listed``."""
    prefix = listed.rstrip("/") + "/"
    if not isinstance(child, str) or not child.startswith(prefix):
        raise _hostile(f"the enclave listed {child!r} as an entry of {listed}")
    return check_name(child[len(prefix) :], entry=child)


@dataclass(frozen=True)
class LocalTarget:
    """Where one pulled file goes: ``root`` (the user's) joined with validated ``parts``."""

    root: Path
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a local target needs a file name")
        for part in self.parts:
            check_name(part, entry="/".join(self.parts))

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    @classmethod
    def of(cls, local: Path) -> LocalTarget:
        """``local`` itself, as the user typed it (its directory is the user's choice)."""
        if local.name in ("", ".", ".."):
            raise UsageError(f"{local}: name a file, or an existing directory")
        return cls(local.parent, (local.name,))


@dataclass(frozen=True)
class PullItem:
    remote: str
    target: LocalTarget
    size: int


def _entry(entry: Entry, *, asked: str | None = None) -> tuple[str, ...]:
    if entry.type not in ENTRY_TYPES:
        raise _hostile(f"the enclave listed {entry.path!r} with the unknown type {entry.type!r}")
    if isinstance(entry.size, bool) or not isinstance(entry.size, int) or entry.size < 0:
        raise _hostile(f"the enclave listed {entry.path!r} with the size {entry.size!r}")
    parts = remote_parts(entry.path)
    if asked is not None and entry.path != normalised(asked):
        raise _hostile(f"the enclave answered {entry.path!r} when asked about {asked!r}")
    return parts


def plan_pull(enclave: Lister, remotes: Sequence[str], local: Path) -> list[PullItem]:
    """Every file to pull and where it goes; refuses the whole pull on a hostile answer.

    As ``cp -r``: a directory ``/out`` lands as ``LOCAL/out/...`` (the root
    ``/`` as ``LOCAL/...``); a single file lands as ``LOCAL`` itself unless
    ``LOCAL`` is a directory or several remotes are named. Symlinks and other
    non-files in the shared folder are listed by the enclave but not pulled.
    """
    into_directory = local.is_dir() or len(remotes) > 1
    plan: list[PullItem] = []
    visited = 0
    for remote in remotes:
        entry = enclave.stat(remote)
        parts = _entry(entry, asked=remote)
        if entry.type == "dir":
            base = parts[-1:]  # "/" has no name of its own
            stack: list[tuple[str, tuple[str, ...]]] = [(entry.path, base)]
            while stack:
                listed, below = stack.pop()
                seen: set[str] = set()
                for child in enclave.list(listed):
                    visited += 1
                    if visited > MAX_PULL_ENTRIES:
                        raise _hostile(f"the enclave listed more than {MAX_PULL_ENTRIES} entries")
                    _entry(child)
                    name = child_name(listed, child.path)
                    if name in seen:
                        raise _hostile(f"the enclave listed {child.path!r} twice")
                    seen.add(name)
                    if child.type == "dir":
                        stack.append((child.path, (*below, name)))
                    elif child.type == "file":
                        target = LocalTarget(local, (*below, name))
                        plan.append(PullItem(child.path, target, child.size))
        elif entry.type == "file":
            if not parts:
                raise _hostile(f"the enclave says its root {entry.path!r} is a file")
            target = LocalTarget(local, parts[-1:]) if into_directory else LocalTarget.of(local)
            plan.append(PullItem(entry.path, target, entry.size))
        else:
            raise InvalidInputError(
                f"{entry.path} is a {entry.type}: pull copies files and directories only",
                hint="symlinks in the shared folder are listed but never followed",
            )
    targets: dict[Path, str] = {}
    for item in plan:
        if (other := targets.setdefault(item.target.path, item.remote)) != item.remote:
            raise UsageError(
                f"{other} and {item.remote} would both be pulled to {item.target.path}",
                hint="pull them into different directories",
            )
    return plan


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "special file"


def _refuse_local(path: Path, kind: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path} is a {kind}: pull does not write through it",
        hint="remove it, or pull into a fresh directory",
    )


def check_destination(targets: Sequence[LocalTarget]) -> None:
    """Refuse, before anything is written, a destination with a symlink in the way.

    The writes check again (by descriptor), since the destination may change
    meanwhile; this makes a refusal happen before the first file, not midway.
    """
    checked: set[tuple[Path, bool]] = set()  # (path, whether it must be a file)
    for target in targets:
        path = target.root
        for depth, part in enumerate(target.parts, start=1):
            path = path / part
            last = depth == len(target.parts)
            if (path, last) in checked:
                continue
            checked.add((path, last))
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                break  # created below, by us
            if (last and not stat.S_ISREG(mode)) or (not last and not stat.S_ISDIR(mode)):
                raise _refuse_local(path, _kind(mode))


def _open_directories(root: Path, parts: Sequence[str]) -> int:
    """A descriptor of ``root/parts...``, creating each directory, following no symlink."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    path = root
    try:
        for part in parts:
            path = path / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o777, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                raise _refuse_local(path, _kind(mode)) from e
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def write_confined(target: LocalTarget) -> Iterator[BinaryIO]:
    """A new file that becomes ``target`` only if the block completes.

    It is written under a temporary name (``O_EXCL|O_NOFOLLOW``) in the
    target's directory, opened by descriptor, and renamed in that directory,
    so a symlink planted on the way is never followed and an interrupted pull
    never leaves a truncated file under the final name.
    """
    target.root.mkdir(parents=True, exist_ok=True)
    dir_fd = _open_directories(target.root, target.parts[:-1])
    name = target.parts[-1]
    partial = f".{secrets.token_hex(8)}.part"
    try:
        fd = os.open(
            partial,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o666,
            dir_fd=dir_fd,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(mode):
                    raise _refuse_local(target.path, _kind(mode))
            os.replace(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


# --- push ---------------------------------------------------------------------------------


def _refuse_push(path: Path, kind: str) -> UsageError:
    return UsageError(
        f"{path} is a {kind}: push copies regular files and directories only",
        hint="name the file it points to" if kind == "symlink" else "leave it out",
    )


def local_files(sources: Sequence[Path]) -> list[tuple[Path, PurePosixPath]]:
    """(local file, path relative to the destination) for every file to push.

    A directory is walked without following links; any symlink or special file,
    given or found, refuses the whole push before anything is sent.
    """
    files: list[tuple[Path, PurePosixPath]] = []
    for source in sources:
        mode = source.lstat().st_mode
        if stat.S_ISREG(mode):
            files.append((source, PurePosixPath(source.name)))
        elif stat.S_ISDIR(mode):
            files += _walk(source)
        else:
            raise _refuse_push(source, _kind(mode))
    return files


def _walk(source: Path) -> list[tuple[Path, PurePosixPath]]:
    def fail(error: OSError) -> None:
        raise InvalidInputError(f"cannot read {error.filename}: {error.strerror}") from error

    found = []
    for root, dirs, names in os.walk(source, onerror=fail):
        dirs.sort()
        for name in sorted([*dirs, *names]):
            path = Path(root, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                found.append((path, PurePosixPath(*path.relative_to(source.parent).parts)))
            elif not stat.S_ISDIR(mode):
                raise _refuse_push(path, _kind(mode))
    return found


def open_local_file(path: Path) -> BinaryIO:
    """``path`` opened for reading only if it is a regular file (not through a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(path):
            raise _refuse_push(path, "symlink") from e
        raise InvalidInputError(f"cannot read {path}: {e.strerror}") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refuse_push(path, _kind(mode))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
