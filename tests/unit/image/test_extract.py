"""Unpacking local images for the sandbox: measured and extracted in one pass, safely."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

import strongroom
from strongroom.errors import AlreadyExistsError
from strongroom.image import extract_image, measure_image, read_runtime_descriptor
from strongroom.image.errors import ImageFormatError, IncompatibleImageError
from strongroom.image.pins import NO_PINS, PINS_FILE, VendorPins
from strongroom.image.runtime import RuntimeDescriptor

from .samples import Builds, C, K, M, R, local_image, tar_bytes, write_sections

RUNTIME = {"site-packages/mod.py": b"print('runtime')\n", "site-packages/pkg/data.txt": b"x"}
APP = {"tinyapp/__init__.py": b"VALUE = 1\n"}


def test_extract_measures_what_it_extracts(tmp_path: Path) -> None:
    image = local_image(tmp_path / "a.eif", RUNTIME, APP)
    dest = tmp_path / "enclave"
    assert extract_image(image, dest) == measure_image(image)
    assert (dest / "runtime/site-packages/mod.py").read_bytes() == RUNTIME["site-packages/mod.py"]
    assert (dest / "runtime/site-packages/pkg/data.txt").read_bytes() == b"x"
    assert (dest / "app-packages/tinyapp/__init__.py").read_bytes() == APP["tinyapp/__init__.py"]
    assert sorted(p.name for p in dest.iterdir()) == ["app-packages", "runtime", "vendor"]
    assert VendorPins.load(dest / "vendor" / PINS_FILE) == NO_PINS


def test_extract_a_built_image(builds: Builds, tmp_path: Path) -> None:
    dest = tmp_path / "enclave"
    assert extract_image(builds.app.path, dest) == builds.app.measurements
    source = Path(strongroom.__file__).parent / "image" / "eif.py"
    extracted = dest / "runtime/site-packages/strongroom/image/eif.py"
    assert extracted.read_bytes() == source.read_bytes()
    assert (dest / "app-packages/tinyapp/__init__.py").read_text() == "VALUE = 1\n"
    assert not list(dest.rglob("__pycache__"))


def test_read_runtime_descriptor(builds: Builds) -> None:
    assert read_runtime_descriptor(builds.plain.path) == RuntimeDescriptor.for_host()


def nitro_image(path: Path) -> Path:
    return write_sections(
        path,
        [
            (K, b"MZ\x00\x00HdrS" + bytes(5000)),  # looks like a bzImage
            (C, b"reboot=k panic=30 pci=off nomodules console=ttyS0"),
            (M, b"{}"),
            (R, b"070701" + bytes(100)),
            (R, b"070701" + bytes(100)),
        ],
    )


def test_nitro_eif_is_refused(tmp_path: Path) -> None:
    image = nitro_image(tmp_path / "nitro.eif")
    with pytest.raises(IncompatibleImageError, match="is a Nitro EIF; run it with the aws target"):
        extract_image(image, tmp_path / "enclave")
    assert not (tmp_path / "enclave").exists() or not any((tmp_path / "enclave").iterdir())
    with pytest.raises(IncompatibleImageError, match="Nitro EIF"):
        read_runtime_descriptor(image)


def test_abi_mismatch_is_refused(tmp_path: Path) -> None:
    other = RuntimeDescriptor(python="2.7", abi="cp27mu-linux_sparc", strongroom="0")
    image = local_image(tmp_path / "a.eif", RUNTIME, APP, descriptor=other.to_bytes())
    with pytest.raises(IncompatibleImageError, match="built for cp27mu-linux_sparc") as info:
        extract_image(image, tmp_path / "enclave")
    assert "rebuild" in info.value.hint
    assert not (tmp_path / "enclave/runtime").exists()


def test_malformed_descriptor_is_refused(tmp_path: Path) -> None:
    bad = b'{"kind":"strongroom-local-runtime","python":"3.11"}'
    image = local_image(tmp_path / "a.eif", RUNTIME, APP, descriptor=bad)
    with pytest.raises(ImageFormatError, match="malformed runtime descriptor"):
        extract_image(image, tmp_path / "enclave")


def test_other_entrypoint_is_refused(tmp_path: Path) -> None:
    image = local_image(tmp_path / "a.eif", RUNTIME, APP, cmdline=b"sh -c evil")
    with pytest.raises(IncompatibleImageError, match="entrypoint is 'sh -c evil'"):
        extract_image(image, tmp_path / "enclave")
    assert not (tmp_path / "enclave/runtime").exists()


def test_existing_trees_are_refused(tmp_path: Path) -> None:
    image = local_image(tmp_path / "a.eif", RUNTIME, APP)
    planted = tmp_path / "enclave/app-packages/planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("unmeasured")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        extract_image(image, tmp_path / "enclave")
    assert planted.exists()
    assert not (tmp_path / "enclave/runtime").exists()


def test_damaged_image_is_removed_after_extraction(tmp_path: Path) -> None:
    image = local_image(tmp_path / "a.eif", RUNTIME, APP)
    data = bytearray(image.read_bytes())
    position = data.index(b"VALUE = 1")
    data[position] = ord("v")  # file content: the tar still parses
    image.write_bytes(data)
    with pytest.raises(ImageFormatError, match="CRC mismatch"):
        extract_image(image, tmp_path / "enclave")
    assert list((tmp_path / "enclave").iterdir()) == []


def test_wrong_number_of_ramdisks(tmp_path: Path) -> None:
    descriptor = RuntimeDescriptor.for_host().to_bytes()
    entry = b"python -m strongroom.server"
    one = [(K, descriptor), (C, entry), (M, b"{}"), (R, tar_bytes(RUNTIME))]
    with pytest.raises(ImageFormatError, match="3 ramdisks, not 1"):
        extract_image(write_sections(tmp_path / "one.eif", one), tmp_path / "e1")
    two = [*one, (R, tar_bytes({}))]  # built before images pinned their vendor's keys
    with pytest.raises(ImageFormatError, match="3 ramdisks, not 2") as excinfo:
        extract_image(write_sections(tmp_path / "two.eif", two), tmp_path / "e2")
    assert "image build --key" in excinfo.value.hint
    four = [*two, (R, tar_bytes({})), (R, tar_bytes({}))]
    with pytest.raises(ImageFormatError, match="3 ramdisks, not more"):
        extract_image(write_sections(tmp_path / "four.eif", four), tmp_path / "e4")
    assert list((tmp_path / "e4").iterdir()) == []


def evil_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([(member("../escape.py"), b"x")], "unsafe path '../escape.py'"),
        ([(member("a/../../escape.py"), b"x")], "unsafe path"),
        ([(member("/etc/escape.py"), b"x")], "unsafe path '/etc/escape.py'"),
        ([(member("link", tarfile.SYMTYPE, "/etc/passwd"), b"")], "not a regular file"),
        ([(member("inner", tarfile.SYMTYPE, "ok.py"), b"")], "not a regular file"),
        ([(member("hard", tarfile.LNKTYPE, "/etc/passwd"), b"")], "not a regular file"),
        ([(member("dev", tarfile.CHRTYPE), b"")], "not a regular file"),
        ([(member("fifo", tarfile.FIFOTYPE), b"")], "not a regular file"),
        ([(member("a.py"), b"1"), (member("a.py"), b"2")], "contains 'a.py' twice"),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], match: str
) -> None:
    descriptor = RuntimeDescriptor.for_host().to_bytes()
    image = write_sections(
        tmp_path / "evil.eif",
        [
            (K, descriptor),
            (C, b"python -m strongroom.server"),
            (M, b"{}"),
            (R, tar_bytes(RUNTIME)),
            (R, evil_tar(*members)),
        ],
    )
    dest = tmp_path / "deep/enclave"
    with pytest.raises(ImageFormatError, match=match):
        extract_image(image, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "deep/escape.py").exists()
    assert not (tmp_path / "escape.py").exists()


def test_garbage_ramdisk_is_refused(tmp_path: Path) -> None:
    descriptor = RuntimeDescriptor.for_host().to_bytes()
    image = write_sections(
        tmp_path / "a.eif",
        [
            (K, descriptor),
            (C, b"python -m strongroom.server"),
            (M, b"{}"),
            (R, b"\x01" * 1024),
            (R, tar_bytes({})),
        ],
    )
    with pytest.raises(ImageFormatError, match="cannot be extracted"):
        extract_image(image, tmp_path / "enclave")
