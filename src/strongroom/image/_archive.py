"""Deterministic tar archives for ramdisks, and their safe extraction.

Reproducible measurements need byte-identical archives from identical inputs:
entries sorted by path, directories before their contents, owner 0:0 with empty
names, mtime 0, modes normalised to 0644/0755, PAX format (long and non-ASCII
names get a PAX ``path`` record, nothing time-dependent), no compression, and
no byte-code caches or installer bookkeeping that differ between machines.

Extraction accepts regular files and directories only: a ramdisk has no reason
to carry links or device nodes, and refusing them removes whole classes of
escape. Every name is checked before anything is written for it, and files are
created by this module, not by tarfile: ``O_EXCL | O_NOFOLLOW`` in a tree that
holds nothing but the directories and files made here (so no path can lead
through a link), read-only from the start (0444, or 0555 for executables).
Each file's SHA-256 is taken from the very bytes written, so a later check of
the tree (the enclave's image cache) compares against what was measured, not
against a second read of the disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from strongroom.image.errors import ImageFormatError

FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
DIRECTORY_MODE = 0o755
#: Modes of unpacked files: nothing in an unpacked image is ever written again.
UNPACKED_FILE_MODE = 0o444
UNPACKED_EXECUTABLE_MODE = 0o555
_COPY_CHUNK = 1 << 20
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Files an installer writes about *this* installation (hashes of byte-code,
#: which installer, which URL): they differ between machines and runs.
_INSTALLER_FILES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


def is_volatile(relative: PurePosixPath) -> bool:
    """Whether a file is build-machine state rather than package content."""
    if "__pycache__" in relative.parts or relative.suffix == ".pyc":
        return True
    return relative.parent.name.endswith(".dist-info") and relative.name in _INSTALLER_FILES


def collect_tree(root: Path, prefix: PurePosixPath) -> dict[str, Path]:
    """Regular files under ``root`` (symlinked directories not followed), keyed by
    their archive name ``prefix/relative``, volatile files left out."""
    files: dict[str, Path] = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for filename in filenames:
            path = Path(directory, filename)
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if path.is_file() and not is_volatile(relative):
                files[str(prefix / relative)] = path
    return files


def _sort_key(name: str) -> tuple[str, ...]:
    return tuple(name.split("/"))


def _directories(names: Iterable[str]) -> set[str]:
    directories: set[str] = set()
    for name in names:
        for parent in PurePosixPath(name).parents:
            if str(parent) != ".":
                directories.add(str(parent))
    return directories


def write_tar(out: io.BufferedIOBase, files: Mapping[str, Path]) -> None:
    """Stream a deterministic tar of ``files`` (archive name → source) into ``out``."""
    entries: list[tuple[str, Path | None]] = [(name, None) for name in _directories(files)]
    entries += files.items()
    entries.sort(key=lambda entry: _sort_key(entry[0]))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, source in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if source is None:
                info.type = tarfile.DIRTYPE
                info.mode = DIRECTORY_MODE
                tar.addfile(info)
                continue
            with source.open("rb") as f:
                st = os.fstat(f.fileno())
                info.size = st.st_size
                info.mode = EXECUTABLE_MODE if st.st_mode & 0o111 else FILE_MODE
                tar.addfile(info, f)


def _checked_name(member: tarfile.TarInfo, label: str) -> str:
    if not (member.isreg() or member.isdir()):
        raise ImageFormatError(
            f"{label} contains {member.name!r}, which is not a regular file or directory"
        )
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or str(name) in ("", "."):
        raise ImageFormatError(f"{label} contains the unsafe path {member.name!r}")
    return str(name)


@dataclass(frozen=True)
class FileDigest:
    """One regular file of an unpacked tree, as it was written."""

    sha256: str
    size: int
    #: Permission bits, as created (the umask applies).
    mode: int


@dataclass
class UnpackedTree:
    """What an extraction wrote: files by relative POSIX path, and the directories."""

    files: dict[str, FileDigest] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    def add_dir(self, name: str) -> None:
        """Record ``name`` and its parents (a tar may leave parents implicit)."""
        path = PurePosixPath(name)
        for part in (path, *path.parents):
            if str(part) != ".":
                self.dirs.add(str(part))


def _write_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, label: str
) -> FileDigest:
    source = tar.extractfile(member)
    if source is None:  # only for links, which _checked_name refused
        raise ImageFormatError(f"{label}: {member.name!r} has no data")
    mode = UNPACKED_EXECUTABLE_MODE if member.mode & 0o111 else UNPACKED_FILE_MODE
    digest = hashlib.sha256()
    size = 0
    with open(os.open(target, _CREATE_FLAGS, mode), "wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        created = os.fstat(out.fileno()).st_mode & 0o7777
    return FileDigest(digest.hexdigest(), size, created)


def extract_tar(stream: io.BufferedIOBase, dest: Path, *, label: str) -> UnpackedTree:
    """Extract a tar stream into the (empty) directory ``dest``; return what was written.

    Raises :class:`ImageFormatError` for an unsafe or malformed archive; what
    was written until then stays for the caller to remove.
    """
    tree = UnpackedTree()
    names: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = _checked_name(member, label)
                if name in names:
                    raise ImageFormatError(f"{label} contains {name!r} twice")
                names.add(name)
                target = dest / name
                parent = str(PurePosixPath(name).parent)
                if parent != "." and parent not in tree.dirs:
                    target.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
                    tree.add_dir(parent)
                if member.isdir():
                    if name not in tree.dirs:
                        target.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
                        tree.add_dir(name)
                else:
                    tree.files[name] = _write_member(tar, member, target, label)
    except tarfile.TarError as e:
        raise ImageFormatError(f"{label} cannot be extracted: {e}") from e
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        raise ImageFormatError(
            f"{label} names {e.filename} both as a file and as a directory"
        ) from e
    return tree


def count_files(stream: io.BufferedIOBase, *, label: str) -> int:
    """The number of regular files in a tar stream."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return sum(1 for member in tar if member.isreg())
    except tarfile.TarError as e:
        raise ImageFormatError(f"{label} is not a valid tar archive: {e}") from e
