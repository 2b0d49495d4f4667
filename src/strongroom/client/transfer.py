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
import re
import secrets
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from strongroom._internal.services import process_start_time
from strongroom.errors import InvalidInputError, NotFoundError, UsageError

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
    @property
    def mtime(self) -> float: ...


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
    #: As listed: with the size, what tells a file pulled from one rewritten since.
    mtime: float = 0.0
    #: The directory pulled whose listing named this file (None: a file named itself);
    #: small files of it come in one archive (:mod:`.archive`).
    listed: str | None = None


def _entry(entry: Entry, *, asked: str | None = None) -> tuple[str, ...]:
    if entry.type not in ENTRY_TYPES:
        raise _hostile(f"the enclave listed {entry.path!r} with the unknown type {entry.type!r}")
    if isinstance(entry.size, bool) or not isinstance(entry.size, int) or entry.size < 0:
        raise _hostile(f"the enclave listed {entry.path!r} with the size {entry.size!r}")
    parts = remote_parts(entry.path)
    if asked is not None and entry.path != normalised(asked):
        raise _hostile(f"the enclave answered {entry.path!r} when asked about {asked!r}")
    return parts


#: LOCAL or REMOTE spelled ``-``: standard output for pull, standard input for push.
STDIO = "-"


@dataclass(frozen=True)
class Destination:
    """Where the user asked a copy to go, read as ``cp -r`` reads it.

    ``directory``: it exists as a directory (through a link: the user's
    choice), or is spelled with a trailing ``/`` (then it is created if
    missing). A file goes into a directory destination, else becomes it. A
    directory goes into a destination that *exists* as a directory, else the
    destination becomes the copy (with or without ``/``, as ``cp -r`` and
    ``docker cp`` do); it must not exist as a file. Several sources always go
    into it.
    """

    typed: str
    exists: bool
    directory: bool

    @classmethod
    def local(cls, typed: str | Path) -> Destination:
        path = Path(typed)
        spelled = str(typed).endswith("/")
        return cls(str(typed), path.exists() or path.is_symlink(), path.is_dir() or spelled)

    def require_directory(self, sources: int, *, side: str) -> None:
        """Several sources need a directory to go into, as for ``cp``."""
        if sources > 1 and not self.directory:
            raise UsageError(
                f"{self.typed}: {sources} sources need a directory destination, "
                f"and {self.typed} {'is a file' if self.exists else 'does not exist'}",
                hint=f"name an existing {side} directory, or end it with / to have it created",
            )

    def receives(self, sources: int, *, directory: bool) -> bool:
        """Whether a source goes *into* this destination (rather than becoming it)."""
        if sources > 1:
            return True
        return self.directory and (self.exists or not directory)


def copies_contents(typed: str) -> bool:
    """Whether a source spelled ``dir/.`` (or ``.``) means its contents, as ``cp -r`` does."""
    return typed == "." or typed.endswith("/.")


def plan_pull(enclave: Lister, remotes: Sequence[str], local: str | Path) -> list[PullItem]:
    """Every file to pull and where it goes; refuses the whole pull on a hostile answer.

    As ``cp -r`` (:class:`Destination`): a directory ``/out`` lands as
    ``LOCAL/out/...`` when LOCAL is a directory, else LOCAL becomes the copy
    (``LOCAL/...``); ``/out/.`` and the root ``/`` always land as
    ``LOCAL/...``. A single file lands in LOCAL when LOCAL is a directory,
    else as LOCAL itself. Symlinks and other non-files in the shared folder
    are listed by the enclave but not pulled.
    """
    destination = Destination.local(local)
    destination.require_directory(len(remotes), side="local")
    root = Path(local)
    plan: list[PullItem] = []
    visited = 0
    for remote in remotes:
        entry = enclave.stat(normalised(remote))
        parts = _entry(entry, asked=remote)
        if entry.type == "dir":
            if destination.exists and not destination.directory:
                raise UsageError(
                    f"cannot copy the directory {entry.path} onto the file {local}",
                    hint="name a directory (existing, or new) as LOCAL",
                )
            # "/" has no name of its own; "/out/." means the contents of /out
            into = destination.receives(len(remotes), directory=True)
            base = parts[-1:] if into and not copies_contents(remote) else ()
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
                        target = LocalTarget(root, (*below, name))
                        item = PullItem(child.path, target, child.size, child.mtime, entry.path)
                        plan.append(item)
        elif entry.type == "file":
            if not parts:
                raise _hostile(f"the enclave says its root {entry.path!r} is a file")
            into = destination.receives(len(remotes), directory=False)
            target = LocalTarget(root, parts[-1:]) if into else LocalTarget.of(root)
            plan.append(PullItem(entry.path, target, entry.size, entry.mtime))
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


def plan_stdout(enclave: Lister, remotes: Sequence[str]) -> Entry:
    """The one regular file ``pull REMOTE -`` copies to standard output."""
    if len(remotes) != 1:
        raise UsageError(
            f"pull to - (standard output) copies one file, not {len(remotes)}",
            hint="pull them into a directory instead",
        )
    entry = enclave.stat(normalised(remotes[0]))
    _entry(entry, asked=remotes[0])
    if entry.type != "file":
        raise UsageError(
            f"{entry.path} is a {entry.type}: pull to - (standard output) copies one regular file",
            hint="pull a directory into a local directory instead",
        )
    return entry


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


#: A pull's temporary file: ``.strongroom-pull-<pid>-<start>-<random>.part``. The
#: pid and its start time (clock ticks since boot) name the process that writes it,
#: so a later pull can tell one left by a killed client (that process is gone) from
#: one being written right now (it is not).
_PARTIAL = re.compile(r"\.strongroom-pull-(\d{1,10})-(\d{1,20})-[0-9a-f]{16}\.part")
_swept: set[tuple[int, int]] = set()
_swept_lock = threading.Lock()


def _partial_name() -> str:
    pid = os.getpid()
    return f".strongroom-pull-{pid}-{process_start_time(pid) or 0}-{secrets.token_hex(8)}.part"


def is_stale_partial(name: str) -> bool:
    """Whether ``name`` is a pull's temporary whose writer no longer runs."""
    match = _PARTIAL.fullmatch(name)
    if match is None:
        return False
    pid, started = int(match[1]), int(match[2])
    return process_start_time(pid) != started


def sweep_partials(dir_fd: int) -> list[str]:
    """Remove what killed pulls left in this directory (once per directory and process).

    Only names of the pattern above whose process is gone: a live pull's
    temporary, or any other file, is never touched.
    """
    st = os.fstat(dir_fd)
    with _swept_lock:
        if (st.st_dev, st.st_ino) in _swept:
            return []
        _swept.add((st.st_dev, st.st_ino))
    removed = []
    for name in os.listdir(dir_fd):
        if is_stale_partial(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
    return removed


@contextlib.contextmanager
def write_confined(target: LocalTarget) -> Iterator[BinaryIO]:
    """A new file that becomes ``target`` only if the block completes.

    It is written under a temporary name (``O_EXCL|O_NOFOLLOW``) in the
    target's directory, opened by descriptor, and renamed in that directory,
    so a symlink planted on the way is never followed and an interrupted pull
    never leaves a truncated file under the final name. A pull killed before
    it could remove its temporary (``kill -9``) leaves it behind; the next pull
    into that directory removes it (:func:`sweep_partials`).
    """
    target.root.mkdir(parents=True, exist_ok=True)
    dir_fd = _open_directories(target.root, target.parts[:-1])
    name = target.parts[-1]
    partial = _partial_name()
    try:
        sweep_partials(dir_fd)
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
        files += [(path, PurePosixPath(source.name, rel)) for path, rel in _source_files(source)]
    return files


def _source_files(source: Path) -> list[tuple[Path, PurePosixPath]]:
    """(file, path relative to ``source``) of a pushed file ('.' for itself) or directory."""
    mode = source.lstat().st_mode
    if stat.S_ISREG(mode):
        return [(source, PurePosixPath("."))]
    if stat.S_ISDIR(mode):
        return _walk(source)
    raise _refuse_push(source, _kind(mode))


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
                found.append((path, PurePosixPath(*path.relative_to(source).parts)))
            elif not stat.S_ISDIR(mode):
                raise _refuse_push(path, _kind(mode))
    return found


@dataclass(frozen=True)
class PushItem:
    local: Path
    remote: str
    size: int


class Stater(Protocol):
    """What push needs of an enclave to plan (an :class:`~.enclave.EnclaveClient`)."""

    def stat(self, path: str) -> Entry: ...


def remote_destination(enclave: Stater, remote: str) -> Destination:
    """REMOTE as the shared folder has it (see :class:`Destination`)."""
    try:
        entry: Entry | None = enclave.stat(remote)
    except NotFoundError:
        entry = None
    root = normalised(remote) == "/"  # the shared folder itself: always there
    spelled = remote.endswith("/") or root
    exists = entry is not None or root
    return Destination(remote, exists, spelled or (entry is not None and entry.type == "dir"))


def plan_push(enclave: Stater, sources: Sequence[str], remote: str) -> list[PushItem]:
    """Every file to push and the shared-folder path it goes to, as ``cp -r`` would.

    A file goes into REMOTE when REMOTE is a directory (or ends with ``/``),
    else becomes REMOTE; a directory ``data`` lands as ``REMOTE/data/...``
    when REMOTE is a directory, else REMOTE becomes the copy; ``data/.`` means
    its contents. Symlinks and special files refuse the whole push first.
    """
    walked = [(typed, _source_files(Path(typed))) for typed in sources]  # refusals come first
    destination = remote_destination(enclave, remote)
    destination.require_directory(len(sources), side="shared-folder")
    base = PurePosixPath(normalised(remote))
    plan: list[PushItem] = []
    for typed, files in walked:
        source = Path(typed)
        is_dir = source.is_dir()
        if is_dir and destination.exists and not destination.directory:
            raise UsageError(
                f"cannot copy the directory {typed} onto the file {remote}",
                hint="name a directory of the shared folder (existing, or new) as REMOTE",
            )
        into = destination.receives(len(sources), directory=is_dir)
        contents = copies_contents(typed) or source.name in ("", ".", "..")
        below = base / source.name if into and not contents else base
        for path, rel in files:
            target = below / rel if is_dir else (base / source.name if into else base)
            plan.append(PushItem(path, str(target), path.stat().st_size))
    targets: dict[str, Path] = {}
    for item in plan:
        if (other := targets.setdefault(item.remote, item.local)) != item.local:
            raise UsageError(
                f"{other} and {item.local} would both be pushed to {item.remote}",
                hint="push them into different directories",
            )
    return plan


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
