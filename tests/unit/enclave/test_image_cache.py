"""The image cache on real files: reuse, every way a host can change a cached copy, bounds.

Small hand-made images (three ramdisks of a few files) unpacked into a real
``run/image-cache``; the compiler sandbox is real bubblewrap. Each attack on a
cached copy is followed by the next start, which must not use the copy and
must unpack the image again, exactly as measured.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.image.samples import local_image

from strongroom.enclave import _image_cache
from strongroom.enclave._bytecode import compile_sources, pyc_path
from strongroom.enclave._image_cache import MANIFEST, TREE, CachedImage, ImageCache
from strongroom.enclave.sandbox import bwrap_path
from strongroom.errors import TamperedError
from strongroom.image import measure_image

RUNTIME = {
    "site-packages/mod.py": b"VALUE = 'measured'\n",
    "site-packages/pkg/__init__.py": b"",
    "site-packages/pkg/data.txt": b"x" * 5000,
    "site-packages/broken.py": b"def (:\n",  # does not compile: no bytecode, no harm
}
APP = {"tinyapp/__init__.py": b"VALUE = 1\n"}
SOURCE = "runtime/site-packages/mod.py"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return local_image(tmp_path / "a.eif", RUNTIME, APP)


@pytest.fixture
def cache(tmp_path: Path) -> ImageCache:
    return ImageCache(tmp_path / "run" / "image-cache")


@pytest.fixture
def opened() -> Iterator[list[CachedImage]]:
    """Entries opened by a test, closed (let go of) at its end."""
    entries: list[CachedImage] = []
    yield entries
    for entry in entries:
        entry.close()


def open_and_close(cache: ImageCache, image: Path) -> CachedImage:
    cached = cache.open(image)
    cached.close()
    return cached


@contextlib.contextmanager
def unsealed(*paths: Path) -> Iterator[None]:
    """Make ``paths`` writable for the block, then give them their modes back: what a
    host that hides its changes does."""
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in paths}
    for path, mode in modes.items():
        path.chmod(mode | 0o200)
    try:
        yield
    finally:
        for path, mode in modes.items():
            if path.exists() and not path.is_symlink():
                path.chmod(mode)


def entry_of(cache: ImageCache, image: Path) -> Path:
    return cache.root / measure_image(image).pcr0


def test_a_second_start_uses_the_checked_copy(cache: ImageCache, image: Path) -> None:
    phases: list[str] = []
    first = cache.open(image, progress=phases.append)
    first.close()
    assert not first.reused and first.measurements == measure_image(image)
    assert phases == ["unpacking the image (its first start in this workspace)"]
    entry = entry_of(cache, image)
    assert cache.entries() == [entry.name]
    assert (entry / TREE / SOURCE).read_bytes() == RUNTIME["site-packages/mod.py"]
    # sealed: nothing in the entry is writable, not even by its owner's mistake
    for path in [entry, *entry.rglob("*")]:
        assert stat.S_IMODE(path.lstat().st_mode) & 0o222 == 0, path
    phases.clear()
    second = cache.open(image, progress=phases.append)
    second.close()
    assert second.reused and second.measurements == first.measurements
    assert second.discarded is None and second.path == entry
    assert phases == ["measuring the image and checking the copy unpacked at an earlier start"]


def _edit(path: Path) -> None:  # same size, same mode, same owner: only the bytes differ
    size = path.stat().st_size
    with unsealed(path):
        path.write_bytes(b"VALUE = 'swapped'\n".ljust(size)[:size])


def _add(path: Path) -> None:
    with unsealed(path.parent):
        (path.parent / "sitecustomize.py").write_text("import os\n")
        (path.parent / "sitecustomize.py").chmod(0o444)


def _symlink(path: Path) -> None:
    with unsealed(path.parent):
        path.unlink()
        path.symlink_to("/etc/hostname")


def _chmod(path: Path) -> None:
    path.chmod(0o644)


def _remove(path: Path) -> None:
    with unsealed(path.parent):
        path.unlink()


def _dir_writable(path: Path) -> None:
    path.parent.chmod(0o755)


def _replace(path: Path) -> None:  # the same bytes and mode, in a new file
    data = path.read_bytes()
    with unsealed(path.parent):
        path.unlink()
        path.write_bytes(b"VALUE = 'swapped'\n"[: len(data)].ljust(len(data)))
        path.chmod(0o444)


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        (_edit, "differs from what was unpacked"),
        (_add, "sitecustomize.py is not part of the image"),
        (_symlink, "cannot be opened"),
        (_chmod, "is writable"),
        (_remove, "mod.py is missing"),
        (_dir_writable, "is writable"),
        (_replace, "differs from what was unpacked"),
    ],
)
def test_a_changed_copy_is_set_aside_and_the_image_unpacked_again(
    cache: ImageCache, image: Path, attack: Callable[[Path], None], reason: str
) -> None:
    open_and_close(cache, image)
    entry = entry_of(cache, image)
    attack(entry / TREE / SOURCE)
    again = open_and_close(cache, image)
    assert not again.reused and again.discarded is not None and reason in again.discarded
    assert again.measurements == measure_image(image)
    # the new copy is what the image holds, and the changed one is gone
    assert (entry / TREE / SOURCE).read_bytes() == RUNTIME["site-packages/mod.py"]
    assert not (entry / TREE / "runtime/site-packages/sitecustomize.py").exists()
    assert [p.name for p in cache.root.iterdir() if not p.name.endswith(".lock")] == [entry.name]
    assert open_and_close(cache, image).reused


@pytest.mark.parametrize(
    "manifest",
    [
        b"",
        b"{not json",
        json.dumps({"format": "strongroom-image-cache/1"}).encode(),
    ],
)
def test_a_broken_manifest_is_cleaned_up(cache: ImageCache, image: Path, manifest: bytes) -> None:
    open_and_close(cache, image)
    path = entry_of(cache, image) / MANIFEST
    with unsealed(path.parent, path):
        path.write_bytes(manifest)
    again = open_and_close(cache, image)
    assert not again.reused and again.discarded is not None
    assert open_and_close(cache, image).reused


def test_a_manifest_made_for_another_image_is_refused(
    cache: ImageCache, image: Path, tmp_path: Path
) -> None:
    """A host that renames one image's copy to another image's PCR0: the manifest says so."""
    other = local_image(tmp_path / "b.eif", {**RUNTIME, "site-packages/mod.py": b"VALUE = 'b'  \n"})
    open_and_close(cache, other)
    os.rename(entry_of(cache, other), entry_of(cache, image))
    again = open_and_close(cache, image)
    assert not again.reused and again.discarded == "its manifest is for another image"
    assert (entry_of(cache, image) / TREE / SOURCE).read_bytes() == RUNTIME["site-packages/mod.py"]


def test_a_copy_swapped_for_a_link_or_given_away_is_not_used(
    cache: ImageCache, image: Path, tmp_path: Path
) -> None:
    open_and_close(cache, image)
    entry = entry_of(cache, image)
    elsewhere = tmp_path / "elsewhere"
    os.rename(entry, elsewhere)
    entry.symlink_to(elsewhere)  # the same files, through a link
    again = open_and_close(cache, image)
    assert not again.reused and again.discarded is not None and "symbolic link" in again.discarded
    assert not entry.is_symlink() and open_and_close(cache, image).reused
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root (CI runs as root)")
    os.chown(entry / TREE / SOURCE, 1, 1, follow_symlinks=False)
    again = open_and_close(cache, image)
    assert not again.reused and again.discarded is not None and "owned by uid 1" in again.discarded


def test_a_manifest_for_another_layout_is_not_used(cache: ImageCache, image: Path) -> None:
    open_and_close(cache, image)
    path = entry_of(cache, image) / MANIFEST
    manifest = json.loads(path.read_bytes())
    manifest["layout"][-1][1] += 512  # the same PCRs, the bytes split otherwise
    with unsealed(path.parent, path):
        path.write_text(json.dumps(manifest))
    again = open_and_close(cache, image)
    assert not again.reused  # not even a candidate: unpacked again, in its place
    assert _image_cache.Manifest.parse(path.read_bytes()).layout == _image_cache._layout_of(image)
    assert open_and_close(cache, image).reused


def test_an_entry_in_use_is_moved_aside_not_removed(
    cache: ImageCache, image: Path, opened: list[CachedImage]
) -> None:
    opened.append(cache.open(image))  # an enclave runs from it
    entry = entry_of(cache, image)
    inode = entry.stat().st_ino
    _edit(entry / TREE / SOURCE)
    again = cache.open(image)
    opened.append(again)
    assert not again.reused and entry.stat().st_ino != inode
    [retired] = [p for p in cache.root.iterdir() if p.name.startswith(".retired-")]
    assert retired.stat().st_ino == inode  # still there, for the enclave that mounts it
    opened.pop(0).close()
    cache.evict()
    assert not retired.exists()


def test_the_cache_keeps_a_few_entries_least_recently_used_first_out_never_one_in_use(
    tmp_path: Path, opened: list[CachedImage]
) -> None:
    cache = ImageCache(tmp_path / "cache", max_entries=2)
    images = [
        local_image(tmp_path / f"{n}.eif", {**RUNTIME, "site-packages/mod.py": bytes([65 + n]) * n})
        for n in range(4)
    ]
    keys = [measure_image(i).pcr0 for i in images]
    opened.append(cache.open(images[0]))  # in use throughout: it counts, and stays
    for image in images[1:]:
        open_and_close(cache, image)
    assert set(cache.entries()) == {keys[0], keys[3]}
    opened.pop().close()
    assert open_and_close(cache, images[3]).reused  # the most recently used
    assert set(cache.entries()) == {keys[0], keys[3]}
    open_and_close(cache, images[1])  # unpacked again: the oldest (0) goes
    assert set(cache.entries()) == {keys[1], keys[3]}


def test_what_a_killed_start_left_is_swept_unless_someone_still_holds_it(
    cache: ImageCache, image: Path
) -> None:
    open_and_close(cache, image)
    left = cache.root / ".staging-deadbeef"
    (left / TREE).mkdir(parents=True)
    (left / TREE / "half.py").write_text("half")
    held = cache.root / ".staging-0123abcd"
    held.mkdir()
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a build in progress
    try:
        open_and_close(cache, image)
        assert not left.exists() and held.exists()
    finally:
        os.close(fd)
    cache.evict()
    assert not held.exists()


def test_two_starts_at_once_unpack_once(cache: ImageCache, image: Path) -> None:
    results: list[CachedImage] = []
    threads = [threading.Thread(target=lambda: results.append(cache.open(image))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(r.reused for r in results) == [False, True]
        assert results[0].path == results[1].path == entry_of(cache, image)
    finally:
        for result in results:
            result.close()
    assert [p.name for p in cache.root.iterdir() if not p.name.endswith(".lock")] == [
        results[0].path.name
    ]


def test_an_image_that_changes_while_it_is_unpacked_is_refused(
    cache: ImageCache, image: Path, tmp_path: Path
) -> None:
    other = local_image(tmp_path / "b.eif", {**RUNTIME, "site-packages/mod.py": b"VALUE = 'b'  \n"})
    layout = _image_cache._layout_of(image)
    cache.root.mkdir(parents=True)
    with pytest.raises(TamperedError, match="changed while the enclave was starting"):
        cache._build(image, layout, measure_image(other))  # measured as `other`, then unpacked
    assert [p.name for p in cache.root.iterdir() if not p.name.endswith(".lock")] == []


def test_bytecode_is_compiled_from_checked_sources_and_checked_like_the_rest(
    cache: ImageCache, image: Path
) -> None:
    bwrap = bwrap_path()
    cached = cache.open(image)
    try:
        problem = cache.add_bytecode(
            cached,
            lambda sources, stop: compile_sources(bwrap, sources, cancelled=stop),
            threading.Event(),
        )
    finally:
        cached.close()
    assert problem is None and cached.has_bytecode
    entry = entry_of(cache, image)
    pyc = entry / TREE / str(pyc_path(SOURCE))
    assert pyc.read_bytes()[16:] and stat.S_IMODE(pyc.stat().st_mode) == 0o444
    assert not (entry / TREE / str(pyc_path("runtime/site-packages/broken.py"))).exists()
    manifest = _image_cache.Manifest.parse((entry / MANIFEST).read_bytes())
    assert manifest.bytecode and str(pyc_path(SOURCE)) in manifest.files
    for path in [entry, *entry.rglob("*")]:  # sealed again
        assert stat.S_IMODE(path.lstat().st_mode) & 0o222 == 0, path
    again = cache.open(image)
    again.close()
    assert again.reused and again.has_bytecode
    # bytecode is a file like the others: swapped, the copy is not used
    data = pyc.read_bytes()
    with unsealed(pyc):
        pyc.write_bytes(data[:16] + bytes(len(data) - 16))
    replaced = open_and_close(cache, image)
    assert not replaced.reused and replaced.discarded is not None
    assert "__pycache__/mod." in replaced.discarded and not replaced.has_bytecode


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_stopped_compile_adds_nothing(cache: ImageCache, image: Path, when: str) -> None:
    """The enclave stops before its bytecode is compiled (or while it is): the copy keeps
    no bytecode, and stays usable."""
    cancelled = threading.Event()
    if when == "before":
        cancelled.set()

    def compile_then_stop(sources: Iterable[tuple[str, bytes]], stop: threading.Event) -> Any:
        def stopping() -> Iterator[tuple[str, bytes]]:
            for source in sources:
                yield source
                cancelled.set()  # the enclave stops after the first source was handed over

        return compile_sources(bwrap_path(), stopping(), cancelled=stop)

    cached = cache.open(image)
    try:
        problem = cache.add_bytecode(cached, compile_then_stop, cancelled)
    finally:
        cached.close()
    assert problem == "the enclave stopped before its bytecode was compiled"
    assert not cached.has_bytecode and not list(entry_of(cache, image).rglob("*.pyc"))
    assert open_and_close(cache, image).reused
