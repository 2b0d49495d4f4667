"""Verified unpacked copies of images, kept in the workspace and keyed by measurement.

Unpacking an image (~60 MB in ~3,000 files for the runtime alone) and the
enclave server compiling its modules are most of a first ``enclave start``. A
start of an image started before instead reuses the copy made then -- after
checking that it is still exactly what was measured.

Layout of ``run/image-cache/`` (mode 0700)::

    .lock               held to publish, evict and sweep entries
    .<PCR0>.lock        held while a start looks up, checks or builds that image's entry
    <PCR0>/             an entry: read-only (directories 0555, files 0444 or 0555)
        manifest.json   the PCRs, the section layout, every directory and every
                        file with its size, mode and SHA-256
        tree/           runtime/, app-packages/, vendor/ and their bytecode;
                        the sandbox's /image
    .staging-<random>/  an entry being built (its builder holds a lock on it)
    .retired-<random>/  an entry moved aside; removed once no enclave uses it

Invariants:

- **What runs is what was measured.** An entry is built by unpacking the
  image in the same pass that measures it, taking each file's digest from the
  bytes written (:func:`~strongroom.image.extract.unpack_image`), plus
  bytecode compiled from those files in a sandbox (:mod:`._bytecode`). A later
  start measures the image again (one SHA-384 over the file), and uses the
  entry only if its manifest is for exactly these PCRs and section layout and
  the tree holds exactly the manifest's directories and files, with their
  sizes, read-only modes and SHA-256 digests, owned by this user, and no link
  or other kind of file. The check reads the tree through the very directory
  descriptor that bubblewrap then mounts (``--ro-bind-fd``), so the directory
  checked is the directory mounted. An entry that fails is moved aside and the
  image unpacked again; the start says so.
- **Complete or absent.** An entry is built under ``.staging-*``, sealed
  read-only, then renamed into place; a build that fails removes its staging
  directory, and one that was killed leaves it to the next sweep.
- **Never removed while in use.** Each enclave holds a shared ``flock`` on its
  entry while it runs (released by the kernel however the supervisor ends);
  an entry is removed only by whoever gets that lock exclusively. (Removing a
  directory that a running enclave has mounted would unmount it there.)
- **Bounded.** At most :data:`MAX_ENTRIES` entries are kept: the least
  recently started go first, but never one in use.
- **Two starts at once** of the same image: the second waits for the first's
  build, then checks and reuses it.

What the check cannot stop: the workspace's owner (or root) changing a file
*after* the check, while the enclave runs, or rewriting a manifest to match
the files it changed. Whoever can do that can also sign attestation documents
with the workspace CA; the local target is not a boundary against them (see
docs/SECURITY.md). Without the cache the same window existed between
unpacking and use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom._internal.background import Background
from strongroom._internal.files import locked
from strongroom.enclave._bytecode import Bytecode
from strongroom.errors import StrongroomError, TamperedError
from strongroom.image import Measurements
from strongroom.image._archive import FileDigest
from strongroom.image.eif import EifReader
from strongroom.image.extract import SectionLayout, measure_local_image, unpack_image
from strongroom.image.runtime import host_abi

#: Entries kept; more only while that many enclaves run from other images.
MAX_ENTRIES = 3
MANIFEST = "manifest.json"
TREE = "tree"
FORMAT = "strongroom-image-cache/1"
#: A manifest lists every file of an image: large images make large manifests.
MAX_MANIFEST_BYTES = 64 << 20
_READ_CHUNK = 1 << 20
_SEALED_DIR_MODE = 0o555
_WRITE_BITS = 0o222
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_STAGING = ".staging-"
_RETIRED = ".retired-"

Progress = Callable[[str], None]
#: Compiles the sources of a tree (its descriptor, its path, the sources) into bytecode.
Compiler = Callable[[int, Path, list[str]], Bytecode]


class CacheEntryInvalid(Exception):
    """An entry is not (or no longer) exactly what its image unpacks to."""


@dataclass
class Manifest:
    """What an entry must hold, and for which image."""

    measurements: Measurements
    layout: SectionLayout
    dirs: set[str]
    files: dict[str, FileDigest]
    abi: str = field(default_factory=host_abi)

    def to_bytes(self) -> bytes:
        value = {
            "format": FORMAT,
            "abi": self.abi,
            "pcrs": {"PCR0": self.measurements.pcr0, "PCR1": self.measurements.pcr1,
                     "PCR2": self.measurements.pcr2},
            "layout": self.layout.to_json(),
            "dirs": sorted(self.dirs),
            "files": {name: [d.sha256, d.size, d.mode] for name, d in sorted(self.files.items())},
        }  # fmt: skip
        return json.dumps(value, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """A manifest as written by :meth:`to_bytes`; anything else is invalid."""
        try:
            value = json.loads(data)
            if not isinstance(value, dict) or set(value) != {
                "format", "abi", "pcrs", "layout", "dirs", "files"
            } or value["format"] != FORMAT:  # fmt: skip
                raise ValueError("not a manifest of this format")
            pcrs = value["pcrs"]
            measurements = Measurements(pcr0=pcrs["PCR0"], pcr1=pcrs["PCR1"], pcr2=pcrs["PCR2"])
            layout = SectionLayout(tuple((int(t), int(s)) for t, s in value["layout"]))
            dirs = {_relative(name) for name in value["dirs"]}
            files = {
                _relative(name): FileDigest(str(sha), int(size), int(mode))
                for name, (sha, size, mode) in value["files"].items()
            }
            return cls(measurements, layout, dirs, files, abi=str(value["abi"]))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CacheEntryInvalid(f"its manifest is malformed ({e})") from e


def _relative(name: object) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"unsafe name {name!r}")
    return name


@dataclass
class CachedImage:
    """An entry in use by one enclave: mount :attr:`tree_fd`; :meth:`close` when it ends."""

    measurements: Measurements
    #: The entry's ``tree`` directory, as checked: what the sandbox mounts at /image.
    tree_fd: int
    #: The entry's directory; its shared lock says the entry is in use.
    entry_fd: int
    path: Path
    reused: bool
    #: Why an entry of this image was not reused (it was unpacked again), if one existed.
    discarded: str | None = None

    def close(self) -> None:
        for name in ("tree_fd", "entry_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)


class ImageCache:
    """The cache of one workspace (``run/image-cache``)."""

    def __init__(self, root: Path, *, max_entries: int = MAX_ENTRIES) -> None:
        self.root = root
        self.max_entries = max_entries

    def open(
        self,
        image: Path,
        *,
        progress: Progress | None = None,
        compiler: Compiler | None = None,
    ) -> CachedImage:
        """A checked entry for ``image``: reused if one is valid, else built now.

        The image is measured in a thread while the entry whose section layout
        matches is checked (both are mostly hashing): the entry is used only if
        it is for exactly the PCRs just measured.
        """
        report = progress or (lambda _message: None)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        layout = _layout_of(image)
        measuring = Background(lambda: measure_local_image(image), name="measure")
        discarded = None
        candidate = self._candidate(layout)
        if candidate is not None:
            report("measuring the image and checking the copy unpacked at an earlier start")
            cached, problem = self._try_reuse(candidate, layout)
            measurements, measured_layout = measuring.result()
            if cached is not None:
                if (cached.measurements, measured_layout) == (measurements, layout):
                    self.evict()
                    return cached
                cached.close()  # another image's copy; this image's is looked up by its PCR0
            elif candidate == measurements.pcr0:
                discarded = problem
        else:
            report("measuring the image")
            measurements, measured_layout = measuring.result()
        key = measurements.pcr0
        with locked(self.root / f".{key}.lock"):
            if candidate != key and (self.root / key).exists():
                report("checking the copy unpacked at an earlier start")
                try:
                    cached = self._reuse(key, measured_layout)
                    if cached.measurements == measurements:
                        return cached
                    cached.close()
                    discarded = "its manifest is for another image"
                except CacheEntryInvalid as e:
                    discarded = str(e)
                self._retire(self.root / key)
            report("unpacking the image (its first start in this workspace)")
            cached = self._build(image, measurements, measured_layout, report, compiler)
            cached.discarded = discarded
        self.evict()
        return cached

    def _candidate(self, layout: SectionLayout) -> str | None:
        """The most recently used entry for an image with ``layout``, if any."""
        for key in self._by_recent_use():
            try:
                manifest = _read_manifest_at(self.root / key)
            except (CacheEntryInvalid, OSError):
                return key  # this one's check will say what is wrong with it
            if (manifest.layout, manifest.abi) == (layout, host_abi()):
                return key
        return None

    def _by_recent_use(self) -> list[str]:
        entries = []
        for path in self.root.iterdir():
            if not path.name.startswith("."):
                with contextlib.suppress(OSError):
                    entries.append((path.lstat().st_mtime, path.name))
        return [name for _, name in sorted(entries, reverse=True)]

    def _try_reuse(self, key: str, layout: SectionLayout) -> tuple[CachedImage | None, str | None]:
        """:meth:`_reuse` under the entry's lock; an entry that fails is moved aside."""
        with locked(self.root / f".{key}.lock"):
            try:
                return self._reuse(key, layout), None
            except CacheEntryInvalid as e:
                self._retire(self.root / key)
                return None, str(e)

    # --- reuse ----------------------------------------------------------------

    def _reuse(self, key: str, layout: SectionLayout) -> CachedImage:
        """The entry ``key``, checked (its ``measurements`` are its manifest's: the
        caller compares them with what it measured)."""
        path = self.root / key
        entry_fd = _open_dir(path)
        try:
            fcntl.flock(entry_fd, fcntl.LOCK_SH)
            status = os.fstat(entry_fd)
            if not _same_file(os.stat(path, follow_symlinks=False), status):
                raise CacheEntryInvalid("it was moved aside while this start opened it")
            _check_owned_read_only(status, "its directory")
            manifest = _read_manifest(entry_fd)
            if (manifest.layout, manifest.abi, manifest.measurements.pcr0) != (
                layout,
                host_abi(),
                key,
            ):
                raise CacheEntryInvalid("its manifest is for another image")
            tree_fd = _open_dir(TREE, dir_fd=entry_fd, label=TREE)
            try:
                _check_tree(tree_fd, manifest)
                os.utime(entry_fd)  # most recently used
            except BaseException:
                os.close(tree_fd)
                raise
        except (CacheEntryInvalid, OSError) as e:
            os.close(entry_fd)
            if isinstance(e, OSError):
                raise CacheEntryInvalid(f"it cannot be read ({e})") from e
            raise
        return CachedImage(manifest.measurements, tree_fd, entry_fd, path, reused=True)

    # --- build ----------------------------------------------------------------

    def _build(
        self,
        image: Path,
        measurements: Measurements,
        layout: SectionLayout,
        report: Progress,
        compiler: Compiler | None,
    ) -> CachedImage:
        staging = self.root / f"{_STAGING}{secrets.token_hex(8)}"
        staging.mkdir(mode=0o700)
        entry_fd = _open_dir(staging)
        fcntl.flock(entry_fd, fcntl.LOCK_EX)  # being built: sweeps leave it alone
        tree_fd = -1
        try:
            unpacked = unpack_image(image, staging / TREE)
            if (unpacked.measurements, unpacked.layout) != (measurements, layout):
                raise TamperedError(
                    f"{image} changed while the enclave was starting",
                    hint="start it again once nothing writes to the image",
                )
            manifest = Manifest(measurements, layout, unpacked.dirs(), unpacked.files())
            tree_fd = _open_dir(TREE, dir_fd=entry_fd, label=TREE)
            if compiler is not None:
                report("compiling the image's Python bytecode")
                self._add_bytecode(manifest, compiler(tree_fd, staging / TREE, _sources(manifest)))
            _write_manifest(staging, manifest)
            _seal(entry_fd)
            path = self._publish(staging, entry_fd, measurements.pcr0)
        except BaseException as e:
            if tree_fd >= 0:
                os.close(tree_fd)
            _remove(staging)
            os.close(entry_fd)
            if isinstance(e, OSError):
                raise StrongroomError(
                    f"cannot unpack {image} into {self.root}: {e.strerror or e}",
                    hint="check the free space and permissions of the workspace",
                ) from e
            raise
        return CachedImage(measurements, tree_fd, entry_fd, path, reused=False)

    @staticmethod
    def _add_bytecode(manifest: Manifest, bytecode: Bytecode) -> None:
        if bytecode.problem:
            print(f"image cache: no bytecode for some modules: {bytecode.problem}", file=sys.stderr)
        manifest.dirs |= bytecode.dirs
        manifest.files.update(bytecode.files)

    def _publish(self, staging: Path, entry_fd: int, key: str) -> Path:
        """Rename the sealed staging directory into place; keep using it (shared lock)."""
        path = self.root / key
        with locked(self.root / ".lock"):
            if path.exists() or path.is_symlink():
                self._retire(path)
            os.rename(staging, path)
            fcntl.flock(entry_fd, fcntl.LOCK_SH)
        return path

    # --- removal --------------------------------------------------------------

    def _retire(self, path: Path) -> None:
        """Move an entry aside (a rename never unmounts it), and remove it if unused."""
        retired = self.root / f"{_RETIRED}{secrets.token_hex(8)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, retired)
            _remove_if_unused(retired)

    def evict(self) -> None:
        """Remove what is left of killed builds, retired entries nobody uses, and the
        least recently used entries beyond :attr:`max_entries`."""
        with locked(self.root / ".lock"):
            entries: list[tuple[float, Path]] = []
            for path in self.root.iterdir():
                if path.name.startswith((_STAGING, _RETIRED)):
                    _remove_if_unused(path)
                elif not path.name.startswith(".") and path.is_dir():
                    entries.append((path.lstat().st_mtime, path))
            entries.sort(reverse=True)
            for _, path in entries[self.max_entries :]:
                _remove_if_unused(path)

    def entries(self) -> list[str]:
        """The keys (PCR0) of the published entries."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))


def _sources(manifest: Manifest) -> list[str]:
    from strongroom.enclave._bytecode import sources_to_compile

    return sources_to_compile(manifest.files)


# --- file system helpers ---------------------------------------------------------------


def _open_dir(path: Path | str, *, dir_fd: int | None = None, label: str | None = None) -> int:
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except (NotADirectoryError, FileNotFoundError) as e:
        raise CacheEntryInvalid(f"{label or path} is not a directory") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CacheEntryInvalid(f"{label or path} is a symbolic link") from e
        raise


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _layout_of(image: Path) -> SectionLayout:
    """The section layout from the image's headers (a few hundred bytes read)."""
    with EifReader(image) as reader:
        return SectionLayout.of(reader)


def _read_manifest_at(entry: Path) -> Manifest:
    fd = _open_dir(entry)
    try:
        return _read_manifest(fd)
    finally:
        os.close(fd)


def _read_manifest(entry_fd: int) -> Manifest:
    try:
        fd = os.open(MANIFEST, _FILE_FLAGS, dir_fd=entry_fd)
    except OSError as e:
        raise CacheEntryInvalid(f"it has no readable manifest ({e.strerror})") from e
    with open(fd, "rb") as f:
        status = os.fstat(f.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise CacheEntryInvalid("its manifest is not a regular file")
        _check_owned_read_only(status, MANIFEST)
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise CacheEntryInvalid("its manifest is too large")
    return Manifest.parse(data)


def _write_manifest(staging: Path, manifest: Manifest) -> None:
    fd = os.open(staging / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    with open(fd, "wb") as f:
        f.write(manifest.to_bytes())


def _check_tree(tree_fd: int, manifest: Manifest) -> None:
    """Raise :class:`CacheEntryInvalid` unless the tree is exactly the manifest's."""
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    _check_dir(tree_fd, "", manifest, seen_dirs, seen_files)
    if missing := (manifest.dirs - seen_dirs) or (set(manifest.files) - seen_files):
        raise CacheEntryInvalid(f"{min(missing)} is missing")


def _check_owned_read_only(status: os.stat_result, name: str) -> None:
    if status.st_uid != os.geteuid():
        raise CacheEntryInvalid(f"{name} is owned by uid {status.st_uid}")
    if status.st_mode & _WRITE_BITS:
        raise CacheEntryInvalid(f"{name} is writable (mode {stat.S_IMODE(status.st_mode):o})")


def _check_dir(
    dir_fd: int, prefix: str, manifest: Manifest, seen_dirs: set[str], seen_files: set[str]
) -> None:
    _check_owned_read_only(os.fstat(dir_fd), prefix or TREE)
    with os.scandir(dir_fd) as scan:
        names = [entry.name for entry in scan]
    for name in names:
        path = f"{prefix}{name}"
        status = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(status.st_mode) and path in manifest.dirs:
            seen_dirs.add(path)
            fd = _open_dir(name, dir_fd=dir_fd, label=path)
            try:
                _check_dir(fd, f"{path}/", manifest, seen_dirs, seen_files)
            finally:
                os.close(fd)
        elif stat.S_ISREG(status.st_mode) and path in manifest.files:
            seen_files.add(path)
            _check_file(dir_fd, name, path, manifest.files[path])
        elif stat.S_ISLNK(status.st_mode):
            raise CacheEntryInvalid(f"{path} is a symbolic link")
        else:
            raise CacheEntryInvalid(f"{path} is not part of the image")


def _check_file(dir_fd: int, name: str, path: str, expected: FileDigest) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise CacheEntryInvalid(f"{path} cannot be opened ({e.strerror})") from e
    with open(fd, "rb", buffering=0) as f:
        status = os.fstat(fd)
        _check_owned_read_only(status, path)
        if not stat.S_ISREG(status.st_mode) or stat.S_IMODE(status.st_mode) != expected.mode:
            raise CacheEntryInvalid(f"{path} has mode {stat.S_IMODE(status.st_mode):o}")
        if status.st_size != expected.size:
            raise CacheEntryInvalid(f"{path} has {status.st_size} bytes, not {expected.size}")
        digest = _sha256(f)
    if digest != expected.sha256:
        raise CacheEntryInvalid(f"{path} differs from what was unpacked")


def _sha256(f: Any) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_READ_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _seal(entry_fd: int) -> None:
    """Make every directory of an entry read-only, deepest first (files are born so)."""
    _each_dir(entry_fd, after=lambda fd: os.fchmod(fd, _SEALED_DIR_MODE))


def _each_dir(
    dir_fd: int,
    *,
    before: Callable[[int], None] | None = None,
    after: Callable[[int], None] | None = None,
) -> None:
    """Call ``before`` on ``dir_fd`` and every directory below it (parents first), and
    ``after`` (children first), through descriptors: no link is ever followed, and
    at most one descriptor per level is open."""
    if before is not None:
        before(dir_fd)
    with os.scandir(dir_fd) as scan:
        names = [entry.name for entry in scan if entry.is_dir(follow_symlinks=False)]
    for name in names:
        child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            _each_dir(child, before=before, after=after)
        finally:
            os.close(child)
    if after is not None:
        after(dir_fd)


def _remove_if_unused(path: Path) -> None:
    """Remove an entry (or staging directory) unless someone holds its lock."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        if path.is_symlink() or path.is_file():
            path.unlink()
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    try:
        _remove(path)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a sealed tree: its directories are made writable (through descriptors, so
    a planted link is never followed), then it is removed."""

    def writable(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o700)

    with contextlib.suppress(OSError):
        fd = os.open(path, _DIR_FLAGS)
        try:
            _each_dir(fd, before=writable)
        finally:
            os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
