"""The v1 payload: a deterministic tar of the application directory.

Writing (:func:`write_tar`) walks the directory and streams a POSIX.1-2001
(pax) tar into the chunk writer; nothing is buffered beyond one chunk and no
plaintext touches the disk. The same tree always gives the same bytes:

- entries in depth-first order, each directory's names sorted, a directory
  before its contents; names relative to the app directory, no ``./`` prefix;
- uid/gid 0, empty user and group names, mtime 0; mode 0755 for directories
  and owner-executable files, 0644 for other files, 0777 for symlinks;
- what :mod:`.ignore` skips (``.git/``, ``__pycache__/``, ``*.pyc``, ``.env``,
  ``.env.*``, the app's ``.strongroomignore``) is not in it at all;
- headers made by :meth:`tarfile.TarInfo.tobuf` in pax format (a pax record is
  added only for names that are long or not ASCII), file data padded to 512
  bytes, the archive ended by two zero blocks and nothing else.

The sealer refuses what the opener would refuse with its default limits (see
:mod:`.tree`): device files, FIFOs, sockets, symlinks that leave the tree,
names that are not UTF-8, too many entries or bytes.

Reading (:func:`extract_tar`) runs :mod:`tarfile` in streaming mode over the
authenticated plaintext, checks every member itself, creates it through a
:class:`~.tree.SafeTree`, then reads the payload to its end so that the final
chunk is authenticated and nothing follows the archive but zero padding.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from strongroom.errors import InvalidInputError, StrongroomError
from strongroom.sealing.stream import ChunkReader, ReadableInto
from strongroom.sealing.tree import (
    RESEAL_HINT,
    ExtractLimits,
    SafeTree,
    link_problem,
    name_problem,
    unsafe_entry,
)

if TYPE_CHECKING:  # the enclave extracts packages and never needs the sealer's rules
    from strongroom.sealing.ignore import IgnoreRules

BLOCK_SIZE = tarfile.BLOCKSIZE
#: tarfile's read-ahead in streaming mode. Its buffer is re-sliced on every
#: small read, so a few tens of KiB beat one chunk for archives of small files.
TAR_READ_BUFFER = 64 << 10
SYMLINK_MODE = 0o777

_END_OF_ARCHIVE = bytes(2 * BLOCK_SIZE)

T = TypeVar("T")


class PayloadSink(Protocol):
    def write(self, data: bytes) -> None: ...

    def copy_from(self, source: ReadableInto, size: int) -> int: ...


def write_tar(
    app_dir: Path, sink: PayloadSink, limits: ExtractLimits, ignore: IgnoreRules | None = None
) -> None:
    """Stream the deterministic tar of ``app_dir`` into ``sink``, without what ``ignore`` skips."""
    total_bytes = 0
    for count, (name, path, st) in enumerate(_walk(app_dir, limits, ignore), start=1):
        if count > limits.max_entries:
            raise _too_large(app_dir, f"more than {limits.max_entries} entries")
        info = tarfile.TarInfo(name)
        if stat.S_ISDIR(st.st_mode):
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        elif stat.S_ISLNK(st.st_mode):
            target = _read(path, os.readlink)
            _refuse_problem(path, link_problem(name, target, limits))
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, SYMLINK_MODE, target
        elif stat.S_ISREG(st.st_mode):
            total_bytes += st.st_size
            if total_bytes > limits.max_total_bytes:
                raise _too_large(app_dir, f"more than {limits.max_total_bytes} bytes of files")
            info.size = st.st_size
            info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        else:
            raise InvalidInputError(
                f"cannot seal {path}: it is a {_kind(st.st_mode)}",
                hint="sealed packages hold only files, directories and symlinks; remove it",
            )
        sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))
        if info.isreg():
            _copy_file(path, st, sink)
    sink.write(_END_OF_ARCHIVE)


def _walk(
    root: Path, limits: ExtractLimits, ignore: IgnoreRules | None = None
) -> Iterator[tuple[str, Path, os.stat_result]]:
    """``(name, path, lstat)`` of every entry under ``root`` that is not ignored, in
    archive order; a skipped directory is not entered."""
    # An explicit stack: app trees can be deeper than Python's recursion limit.
    stack: list[Iterator[str]] = [iter(_sorted_names(root))]
    prefixes: list[str] = [""]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            prefixes.pop()
            continue
        name = prefixes[-1] + child
        path = root / name
        st = _read(path, os.lstat)
        if ignore is not None and ignore.ignores(name, directory=stat.S_ISDIR(st.st_mode)):
            continue
        _refuse_problem(path, name_problem(name, limits))
        yield name, path, st
        if stat.S_ISDIR(st.st_mode):
            stack.append(iter(_sorted_names(path)))
            prefixes.append(name + "/")


def _sorted_names(directory: Path) -> list[str]:
    # Sorting str is sorting code points, which is sorting UTF-8 bytes.
    return sorted(_read(directory, os.listdir))


def _copy_file(path: Path, st: os.stat_result, sink: PayloadSink) -> None:
    fd = _read(path, lambda p: os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
    with open(fd, "rb", buffering=0) as source:
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode) or now.st_size != st.st_size:
                raise _changed(path)
            copied = sink.copy_from(source, st.st_size)
            grew = bool(source.read(1))
        except OSError as exc:
            raise _read_error(path, exc) from exc
    if copied != st.st_size or grew:
        raise _changed(path)
    sink.write(bytes(-st.st_size % BLOCK_SIZE))


def extract_tar(reader: ChunkReader, tree: SafeTree, limits: ExtractLimits) -> None:
    """Extract the tar read from ``reader`` into ``tree``, then check the payload's end."""
    # tarfile buffers up to TAR_READ_BUFFER ahead of what it has parsed.
    metadata_allowance = limits.max_metadata_bytes + 2 * TAR_READ_BUFFER
    reader.limit = metadata_allowance
    try:
        archive = _ForgetfulTarFile.open(
            fileobj=reader, mode="r|", bufsize=TAR_READ_BUFFER, encoding="utf-8", errors="strict"
        )
        while True:
            reader.limit = reader.tell() + metadata_allowance
            member = archive.next()
            reader.limit = None
            if member is None:
                break
            _extract_member(archive, member, tree)
        # tarfile stops at the first zero block: read the rest of the payload
        # through its buffer so the final chunk is authenticated.
        while rest := archive.fileobj.read(TAR_READ_BUFFER):
            if rest.count(0) != len(rest):
                raise InvalidInputError(
                    "the package has data after the end of its archive", hint=RESEAL_HINT
                )
    except tarfile.TarError as exc:
        raise InvalidInputError(
            f"the package's payload is not a valid archive: {exc}", hint=RESEAL_HINT
        ) from exc
    except UnicodeDecodeError:
        raise InvalidInputError(
            "the package's archive has a name that is not UTF-8", hint=RESEAL_HINT
        ) from None


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, tree: SafeTree) -> None:
    name = member.name
    if member.isdir():
        tree.add_directory(name)
    elif member.issym():
        tree.add_symlink(name, member.linkname)
    elif member.isreg():
        source = archive.extractfile(member)
        assert source is not None  # tarfile has a reader for every regular file
        with source:
            tree.add_file(name, source, member.size, executable=bool(member.mode & stat.S_IXUSR))
    elif member.islnk():
        raise unsafe_entry(name, "is a hard link (sealed packages hold none)")
    elif member.isdev():
        raise unsafe_entry(name, "is a device file or a FIFO")
    else:
        raise unsafe_entry(name, "has an unsupported type")


class _ForgetfulTarFile(tarfile.TarFile):
    """A TarFile that does not keep every member it has read.

    ``TarFile`` appends each member to ``members`` even in streaming mode, so
    a million-entry archive would hold a million ``TarInfo`` objects.
    """

    members: list[tarfile.TarInfo]

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        self.members.clear()
        return member


def _read(path: Path, call: Callable[[Path], T]) -> T:
    """``call(path)``, with an OSError translated into one naming the path."""
    try:
        return call(path)
    except OSError as exc:
        raise _read_error(path, exc) from exc


def _refuse_problem(path: Path, problem: str | None) -> None:
    if problem:
        raise InvalidInputError(
            f"cannot seal {path}: it {problem}",
            hint="fix or remove it: a package holds UTF-8 names, and links that stay inside "
            "the directory (relative, with '..' only at the start)",
        )


def _too_large(app_dir: Path, what: str) -> InvalidInputError:
    return InvalidInputError(
        f"cannot seal {app_dir}: it holds {what}, more than a package may hold",
        hint="openers refuse packages over their extraction limits; split the application",
    )


def _changed(path: Path) -> InvalidInputError:
    return InvalidInputError(
        f"{path} changed while it was being sealed", hint="seal a directory nobody is writing to"
    )


def _read_error(path: Path, exc: OSError) -> StrongroomError:
    return StrongroomError(
        f"cannot read {path}: {exc.strerror}", hint="check the permissions of the application"
    )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device file"
