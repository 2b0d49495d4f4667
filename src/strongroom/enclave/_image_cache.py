"""Verified unpacked copies of images, kept in the workspace and keyed by measurement.

Unpacking an image (~55 MB in ~3,000 files for the runtime alone) and the
enclave server compiling its ~800 modules are most of a first ``enclave
start``. A start of an image started before instead uses the copy made then,
with its bytecode -- after checking that it is still exactly what was measured.

Layout of ``run/image-cache/`` (mode 0700)::

    .lock               held to publish, evict and sweep entries
    .<layout>.lock      held while a start of an image with that section layout
                        looks for, checks or unpacks its entry (and to add bytecode)
    <PCR0>/             an entry: read-only (directories 0555, files 0444 or 0555)
        manifest.json   the PCRs, the section layout, every directory and every
                        file with its size, mode and SHA-256
        tree/           runtime/, app-packages/, vendor/ (and, once added, the
                        sources' __pycache__/); the sandbox's /image
    .staging-<random>/  an entry being unpacked (its builder holds a lock on it)
    .retired-<random>/  an entry moved aside; removed once no enclave uses it

Invariants:

- **What runs is what was measured.** An entry is made by unpacking the image
  in the same pass that measures it, each file's digest taken from the bytes
  written (:func:`~strongroom.image.extract.unpack_image`). A later start
  measures the image again (one SHA-384 over the file, in a thread beside the
  check), and uses the entry only if its manifest is for exactly these PCRs,
  section layout and interpreter ABI, and the tree holds exactly the
  manifest's directories and files -- sizes, read-only modes, SHA-256
  digests, owned by this user, no link or other kind of file. The check reads
  the tree through the very directory descriptor that bubblewrap then mounts
  (``--ro-bind-fd``): the directory checked is the directory mounted. An
  entry that fails is moved aside and the image unpacked again; the start
  says so.
- **Bytecode from measured bytes.** While the enclave that unpacked an entry
  runs, its supervisor reads the entry's sources, checks each against the
  manifest, has them compiled in a sandbox of their own (:mod:`._bytecode`)
  and adds the ``.pyc`` files -- each renamed into place whole, then listed
  with its digest in a new manifest (:meth:`ImageCache.add_bytecode`). A
  ``.pyc`` is used by the import system only while its source is unchanged,
  and checked like every other file at the next start.
- **Complete or absent.** An entry is unpacked under ``.staging-*``, sealed
  read-only, then renamed into place; a build that fails removes its staging
  directory, one that was killed leaves it to the next sweep. Adding bytecode
  replaces the manifest last: stopped half-way, it leaves files the manifest
  does not list, and the next start's check moves the entry aside.
- **Never removed while in use.** Each enclave holds a shared ``flock`` on its
  entry while it runs (released by the kernel however the supervisor ends);
  an entry is removed only by whoever gets that lock exclusively. (Removing a
  directory that a running enclave has mounted would unmount it there.)
- **Bounded.** At most :data:`MAX_ENTRIES` entries are kept: the least
  recently started go first, but never one in use.
- **Two starts at once** of the same image: the second waits for the first's
  unpacking, then checks and uses its entry.

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
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from strongroom._internal.background import Background
from strongroom._internal.files import locked
from strongroom.enclave._bytecode import (
    MAX_SOURCE_BYTES,
    SOURCE_SUFFIX,
    Compiled,
    pyc_data,
    pyc_path,
)
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
_WRITABLE_DIR_MODE = 0o755
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_BITS = 0o222
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_STAGING = ".staging-"
_RETIRED = ".retired-"

Progress = Callable[[str], None]
#: Compiles ``(path, source)`` pairs to code bytes until cancelled (see :mod:`._bytecode`).
SourceCompiler = Callable[[Iterable[tuple[str, bytes]], threading.Event], Compiled]


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
    #: Whether the ``.pyc`` files of the sources were added (:meth:`ImageCache.add_bytecode`).
    bytecode: bool = False

    def to_bytes(self) -> bytes:
        value = {
            "format": FORMAT,
            "abi": self.abi,
            "bytecode": self.bytecode,
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
                "format", "abi", "bytecode", "pcrs", "layout", "dirs", "files"
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
            if not isinstance(value["bytecode"], bool):
                raise ValueError("bytecode is not a boolean")
            return cls(
                measurements,
                layout,
                dirs,
                files,
                abi=str(value["abi"]),
                bytecode=value["bytecode"],
            )
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
    #: Whether the entry holds the bytecode of its sources (else: ImageCache.add_bytecode).
    has_bytecode: bool = False

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

    def open(self, image: Path, *, progress: Progress | None = None) -> CachedImage:
        """A checked entry for ``image``: reused if one is valid, else unpacked now.

        Starts of images with the same section layout (read from the image's
        headers) are serialised. If an entry has that layout, the image is
        measured in a thread while the entry is checked (both are mostly
        hashing), and the entry is used only if it is for exactly the PCRs
        just measured. Otherwise the image is unpacked, measured in that pass.
        """
        report = progress or (lambda _message: None)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        layout = _layout_of(image)
        with locked(self._lock_of(layout)):
            cached, discarded, measurements = self._reuse_any(image, layout, report)
            if cached is None:
                report("unpacking the image (its first start in this workspace)")
                cached = self._build(image, layout, measurements)
                cached.discarded = discarded
        self.evict()
        return cached

    def _lock_of(self, layout: SectionLayout) -> Path:
        digest = hashlib.sha256(json.dumps(layout.to_json()).encode()).hexdigest()[:32]
        return self.root / f".{digest}.lock"

    def _reuse_any(
        self, image: Path, layout: SectionLayout, report: Progress
    ) -> tuple[CachedImage | None, str | None, Measurements | None]:
        """A checked entry for ``image`` if one is valid; else why this image's entry was
        not (if it had one), and the measurements if they were taken."""
        candidate = self._candidate(layout)
        if candidate is None:
            return None, None, None
        report("measuring the image and checking the copy unpacked at an earlier start")
        measuring = Background(lambda: measure_local_image(image), name="measure")
        cached, problem = self._try_reuse(candidate, layout)
        measurements, measured_layout = measuring.result()
        if measured_layout != layout:
            if cached is not None:
                cached.close()
            raise _changed(image)
        key = measurements.pcr0
        if cached is not None and cached.measurements == measurements:
            return cached, None, measurements
        if cached is not None:
            cached.close()  # another image's copy, of the same layout
        discarded = problem if candidate == key else None
        if candidate != key and (self.root / key).exists():
            report("checking the copy unpacked at an earlier start")
            cached, problem = self._try_reuse(key, layout)
            if cached is not None and cached.measurements == measurements:
                return cached, None, measurements
            if cached is not None:
                cached.close()
                self._retire(self.root / key)
            discarded = problem or "its manifest is for another image"
        return None, discarded, measurements

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
        """:meth:`_reuse`, or None and why: an entry that fails its check is moved aside."""
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
        return CachedImage(
            manifest.measurements,
            tree_fd,
            entry_fd,
            path,
            reused=True,
            has_bytecode=manifest.bytecode,
        )

    # --- build ----------------------------------------------------------------

    def _build(
        self, image: Path, layout: SectionLayout, expected: Measurements | None
    ) -> CachedImage:
        """Unpack ``image`` into a new entry (measured in that pass); it must still have
        ``layout`` (and the ``expected`` PCRs, if they were measured already)."""
        staging = self.root / f"{_STAGING}{secrets.token_hex(8)}"
        staging.mkdir(mode=0o700)
        entry_fd = os.open(staging, _DIR_FLAGS)
        fcntl.flock(entry_fd, fcntl.LOCK_EX)  # being built: sweeps leave it alone
        tree_fd = -1
        try:
            unpacked = unpack_image(image, staging / TREE)
            measurements = unpacked.measurements
            if unpacked.layout != layout or expected not in (None, measurements):
                raise _changed(image)
            manifest = Manifest(measurements, layout, unpacked.dirs(), unpacked.files())
            tree_fd = _open_dir(TREE, dir_fd=entry_fd, label=TREE)
            _write_manifest(entry_fd, manifest)
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

    # --- bytecode -------------------------------------------------------------

    def add_bytecode(
        self, cached: CachedImage, compile_sources: SourceCompiler, cancelled: threading.Event
    ) -> str | None:
        """Compile the entry's sources (checked against its manifest) and add their
        ``.pyc`` files to it, under a new manifest; return what went wrong, if anything.

        Called while an enclave runs from the entry (its shared lock is held): each
        ``.pyc`` appears whole (written aside, then renamed), and the import system
        uses it only for the unchanged source it was made from. Compiling happens
        outside the entry's lock; the additions, under it. Stopped by ``cancelled``
        (the enclave ends) before the additions begin.
        """
        if cached.has_bytecode:
            return None
        manifest = _read_manifest(cached.entry_fd)
        if manifest.bytecode:
            cached.has_bytecode = True
            return None
        tree_fd = _open_dir(TREE, dir_fd=cached.entry_fd, label=TREE)
        try:
            sources: dict[str, os.stat_result] = {}
            compiled = compile_sources(_checked_sources(tree_fd, manifest, sources), cancelled)
            if cancelled.is_set():
                return "the enclave stopped before its bytecode was compiled"
            with locked(self._lock_of(manifest.layout)):
                if _read_manifest(cached.entry_fd) != manifest or not _same_file(
                    os.stat(cached.path, follow_symlinks=False), os.fstat(cached.entry_fd)
                ):
                    return "the entry changed while its bytecode was compiled"
                _add_pyc_files(cached.entry_fd, tree_fd, manifest, compiled.codes, sources)
            cached.has_bytecode = True
            return compiled.problem
        except CacheEntryInvalid as e:
            return f"the entry failed its check ({e})"
        finally:
            os.close(tree_fd)

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
        """Remove what killed builds left, retired entries nobody uses, and the least
        recently used entries beyond :attr:`max_entries` (entries in use count first,
        and are never removed)."""
        with locked(self.root / ".lock"):
            for path in self.root.iterdir():
                if path.name.startswith((_STAGING, _RETIRED)):
                    _remove_if_unused(path)
            unused = [key for key in self._by_recent_use() if not _in_use(self.root / key)]
            keep = max(0, self.max_entries - (len(self.entries()) - len(unused)))
            for key in unused[keep:]:
                _remove_if_unused(self.root / key)

    def entries(self) -> list[str]:
        """The keys (PCR0) of the published entries."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))


def _checked_sources(
    tree_fd: int, manifest: Manifest, stats: dict[str, os.stat_result]
) -> Iterator[tuple[str, bytes]]:
    """The entry's Python sources, each as read and found equal to its manifest digest
    (its status noted in ``stats``, for its ``.pyc`` header)."""
    for name, expected in sorted(manifest.files.items()):
        if not name.endswith(SOURCE_SUFFIX) or expected.size > MAX_SOURCE_BYTES:
            continue
        fd = os.open(name, _FILE_FLAGS, dir_fd=tree_fd)
        with open(fd, "rb", buffering=0) as f:
            status = os.fstat(fd)
            data = f.read(expected.size + 1)
        if hashlib.sha256(data).hexdigest() != expected.sha256:
            raise CacheEntryInvalid(f"{name} differs from what was unpacked")
        stats[name] = status
        yield name, data


def _add_pyc_files(
    entry_fd: int,
    tree_fd: int,
    manifest: Manifest,
    codes: dict[str, bytes],
    sources: dict[str, os.stat_result],
) -> None:
    """Write the ``.pyc`` files of ``codes`` and a manifest that lists them, unsealing
    only the directories that change, and sealing them again."""
    added: dict[str, FileDigest] = {}
    new_dirs: set[str] = set()
    unsealed: list[int] = [os.open(".", _DIR_FLAGS, dir_fd=entry_fd)]
    opened: dict[str, int] = {}
    try:
        os.fchmod(unsealed[0], _WRITABLE_DIR_MODE)
        for source, code in sorted(codes.items()):
            target = pyc_path(source)
            if target is None or target in manifest.files:
                continue  # no bytecode here, or the image ships its own (measured)
            cache_dir = str(PurePosixPath(target).parent)
            if cache_dir not in opened:
                fd = _open_cache_dir(tree_fd, cache_dir, cache_dir in manifest.dirs, unsealed)
                if fd < 0:
                    continue  # the image has a file named __pycache__ there
                opened[cache_dir] = fd
                if cache_dir not in manifest.dirs:
                    new_dirs.add(cache_dir)
            data = pyc_data(code, sources[source])
            name = PurePosixPath(target).name
            _write_whole(opened[cache_dir], name, data)
            added[target] = FileDigest(hashlib.sha256(data).hexdigest(), len(data), 0o444)
        manifest.files.update(added)
        manifest.dirs |= new_dirs
        manifest.bytecode = True
        _write_manifest(entry_fd, manifest, replace=True)
    finally:
        for fd in [*unsealed, *opened.values()]:
            with contextlib.suppress(OSError):
                os.fchmod(fd, _SEALED_DIR_MODE)
            os.close(fd)


def _open_cache_dir(tree_fd: int, cache_dir: str, exists: bool, unsealed: list[int]) -> int:
    """A writable descriptor of ``cache_dir`` (a ``__pycache__``), made if need be; its
    parent is unsealed to make it (and noted in ``unsealed``). -1 if it cannot be."""
    parent = _open_path(tree_fd, str(PurePosixPath(cache_dir).parent))
    unsealed.append(parent)
    name = PurePosixPath(cache_dir).name
    if not exists:
        os.fchmod(parent, _WRITABLE_DIR_MODE)
        try:
            os.mkdir(name, _WRITABLE_DIR_MODE, dir_fd=parent)
        except FileExistsError:
            return -1
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError:
        return -1
    os.fchmod(fd, _WRITABLE_DIR_MODE)
    return fd


def _open_path(tree_fd: int, relative: str) -> int:
    """A descriptor of the directory ``relative`` below ``tree_fd``, each step without
    following a link."""
    fd = os.open(".", _DIR_FLAGS, dir_fd=tree_fd)
    for part in PurePosixPath(relative).parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def _write_whole(dir_fd: int, name: str, data: bytes) -> None:
    """Make ``name`` a read-only file of ``data``: written aside, then renamed into
    place (over what was there), so that a reader meanwhile sees all of it or nothing."""
    temporary = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, _CREATE_FLAGS, 0o444, dir_fd=dir_fd)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


# --- file system helpers ---------------------------------------------------------------


def _open_dir(path: Path | str, *, dir_fd: int | None = None, label: str | None = None) -> int:
    """A descriptor of the directory ``path`` (never through a link)."""
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
            raise
        try:
            is_link = stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        kind = "a symbolic link" if is_link else "not a directory"
        raise CacheEntryInvalid(f"{label or 'its directory'} is {kind}") from e


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _changed(image: Path) -> TamperedError:
    return TamperedError(
        f"{image} changed while the enclave was starting",
        hint="start it again once nothing writes to the image",
    )


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


def _write_manifest(entry_fd: int, manifest: Manifest, *, replace: bool = False) -> None:
    """Write the manifest of an entry (``replace``: over the one it has, whole)."""
    if replace:
        _write_whole(entry_fd, MANIFEST, manifest.to_bytes())
        return
    fd = os.open(MANIFEST, _CREATE_FLAGS, 0o444, dir_fd=entry_fd)
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
        entries = list(scan)
    for entry in entries:
        path = f"{prefix}{entry.name}"
        # The entry's type is only a hint for which check to make: directories are
        # opened O_DIRECTORY and files O_NOFOLLOW, and each is checked by fstat.
        if path in manifest.dirs and entry.is_dir(follow_symlinks=False):
            seen_dirs.add(path)
            fd = _open_dir(entry.name, dir_fd=dir_fd, label=path)
            try:
                _check_dir(fd, f"{path}/", manifest, seen_dirs, seen_files)
            finally:
                os.close(fd)
        elif path in manifest.files:
            seen_files.add(path)
            _check_file(dir_fd, entry.name, path, manifest.files[path])
        elif entry.is_symlink():
            raise CacheEntryInvalid(f"{path} is a symbolic link")
        else:
            raise CacheEntryInvalid(f"{path} is not part of the image")


def _check_file(dir_fd: int, name: str, path: str, expected: FileDigest) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise CacheEntryInvalid(f"{path} cannot be opened ({e.strerror})") from e
    try:
        status = os.fstat(fd)
        _check_owned_read_only(status, path)
        if not stat.S_ISREG(status.st_mode) or stat.S_IMODE(status.st_mode) != expected.mode:
            raise CacheEntryInvalid(f"{path} has mode {stat.S_IMODE(status.st_mode):o}")
        if status.st_size != expected.size:
            raise CacheEntryInvalid(f"{path} has {status.st_size} bytes, not {expected.size}")
        digest = hashlib.sha256()
        while chunk := os.read(fd, _READ_CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    if digest.hexdigest() != expected.sha256:
        raise CacheEntryInvalid(f"{path} differs from what was unpacked")


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


def _in_use(path: Path) -> bool:
    """Whether an enclave holds the entry (a shared lock on its directory)."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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
