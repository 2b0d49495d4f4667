"""Authentic packages with hostile archives: refused, and nothing is left anywhere.

The archives are built by hand with tarfile and sealed as arbitrary payloads,
as a malicious (or buggy) sealer would; the sealer itself refuses to make them.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from strongroom.errors import InvalidInputError
from strongroom.sealing import ExtractLimits, unseal

from .helpers import leftovers, snapshot

if TYPE_CHECKING:
    from .conftest import FakeKeyService, SealPayload

Entry = tuple[str, str, bytes | str]  # (kind, name, data or link target)


def make_tar(*entries: Entry, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for kind, name, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(value, bytes)
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chardev": tarfile.CHRTYPE,
                "blockdev": tarfile.BLKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "contiguous": tarfile.CONTTYPE,
                "odd": b"Z",
            }[kind]
            if kind in ("symlink", "hardlink"):
                assert isinstance(value, str)
                info.linkname = value
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def open_payload(
    tmp_path: Path, seal_payload: SealPayload, kms: FakeKeyService
) -> Callable[..., Path]:
    """Seal ``payload``, unseal it into tmp/work/out; returns the output directory."""

    def run(payload: bytes, limits: ExtractLimits | None = None) -> Path:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        package = seal_payload(payload, tmp_path / "evil.sealed")
        out = work / "out"
        unseal(package, out, kms, limits=limits or ExtractLimits())
        return out

    return run


def rejected(
    open_payload: Callable[..., Path],
    tmp_path: Path,
    payload: bytes,
    match: str,
    limits: ExtractLimits | None = None,
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InvalidInputError, match=match):
        open_payload(payload, limits)
    work = tmp_path / "work"
    assert not (work / "out").exists()
    assert leftovers(work) == [] and list(work.iterdir()) == []
    # Nothing escaped next to the work directory either.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "evil.sealed", "work"})


def test_benign_hand_made_tar_opens(open_payload: Callable[..., Path]) -> None:
    out = open_payload(
        make_tar(
            ("dir", "a", ""),
            ("file", "a/f", b"data"),
            ("symlink", "a/l", "f"),
            ("symlink", "up", "a/f"),
            ("contiguous", "c", ""),
        )
    )
    assert snapshot(out) == {
        "a": ("dir", b"", False),
        "a/f": ("file", b"data", False),
        "a/l": ("link", "f", False),
        "up": ("link", "a/f", False),
        "c": ("file", b"", False),
    }


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([("file", "../x", b"evil")], r"'\.\./x': it goes outside the tree"),
        ([("dir", "a", ""), ("file", "a/../../x", b"evil")], "goes outside the tree"),
        ([("file", "/tmp/strongroom-evil", b"evil")], "is an absolute path"),
        ([("file", "./x", b"")], "is not a normalized path"),
        ([("file", "a//b", b"")], "is not a normalized path"),
        ([("symlink", "l", "../../etc")], "pointing outside the tree"),
        ([("symlink", "l", "/etc/passwd")], "symlink to an absolute path"),
        ([("dir", "d", ""), ("symlink", "d/l", "../..")], "pointing outside the tree"),
        # d -> . is harmless alone, but d/.. would then be the parent of the tree.
        ([("symlink", "d", "."), ("symlink", "l", "d/../x")], "uses '..' after a name"),
        ([("file", "f", b"x"), ("hardlink", "h", "f")], "is a hard link"),
        ([("hardlink", "h", "/etc/passwd")], "is a hard link"),
        ([("chardev", "null", "")], "is a device file or a FIFO"),
        ([("blockdev", "sda", "")], "is a device file or a FIFO"),
        ([("fifo", "pipe", "")], "is a device file or a FIFO"),
        ([("odd", "z", "")], "has an unsupported type"),
        ([("file", "f", b"1"), ("file", "f", b"2")], "appears twice or clashes"),
        ([("dir", "d", ""), ("dir", "d", "")], "appears twice or clashes"),
        ([("dir", "d", ""), ("file", "d", b"x")], "appears twice or clashes"),
        ([("file", "f", b"x"), ("symlink", "f", "g")], "appears twice or clashes"),
        ([("dir", "real", ""), ("symlink", "l", "real"), ("file", "l/x", b"")], "goes through 'l'"),
        (
            [("file", "f", b"x"), ("file", "f/x", b"")],
            "goes through 'f', which is a symlink or a file",
        ),
        ([("file", "a/b", b"x")], "comes before its directory 'a'"),
    ],
)
def test_hostile_entries(
    open_payload: Callable[..., Path], tmp_path: Path, entries: list[Entry], match: str
) -> None:
    rejected(open_payload, tmp_path, make_tar(*entries), match)


def test_nul_in_a_pax_name(open_payload: Callable[..., Path], tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"path": "bad\x00name"}
        tar.addfile(info, io.BytesIO(b""))
    rejected(open_payload, tmp_path, buffer.getvalue(), "contains a NUL character")


def test_gnu_long_names_are_checked_too(open_payload: Callable[..., Path], tmp_path: Path) -> None:
    name = "../" + "x" * 200
    payload = make_tar(("file", name, b"evil"), fmt=tarfile.GNU_FORMAT)
    rejected(open_payload, tmp_path, payload, "goes outside the tree")


def test_limits(open_payload: Callable[..., Path], tmp_path: Path) -> None:
    three = make_tar(("file", "a", b"1"), ("file", "b", b"2"), ("file", "c", b"3"))
    rejected(open_payload, tmp_path, three, "more than 2 entries", ExtractLimits(max_entries=2))
    big = make_tar(("file", "a", b"x" * 600), ("file", "b", b"x" * 600))
    limits = ExtractLimits(max_total_bytes=1000)
    rejected(open_payload, tmp_path, big, "unpacks to more than 1000 bytes", limits)
    long = make_tar(("dir", "d" * 40, ""), ("file", "d" * 40 + "/" + "f" * 40, b""))
    rejected(
        open_payload, tmp_path, long, "longer than 64 bytes", ExtractLimits(max_path_length=64)
    )
    link = make_tar(("symlink", "l", "x" * 100))
    rejected(
        open_payload, tmp_path, link, "target longer than 64", ExtractLimits(max_path_length=64)
    )
    component = make_tar(("file", "n" * 256, b""))
    rejected(open_payload, tmp_path, component, "component longer than 255 bytes")


def test_oversized_metadata_is_refused_before_it_is_buffered(
    open_payload: Callable[..., Path], tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"comment": "x" * 400_000}
        tar.addfile(info, io.BytesIO(b""))
    limits = ExtractLimits(max_metadata_bytes=1000)
    rejected(open_payload, tmp_path, buffer.getvalue(), "oversized metadata record", limits)


def test_data_after_the_end_of_the_archive(
    open_payload: Callable[..., Path], tmp_path: Path
) -> None:
    payload = make_tar(("file", "f", b"x")) + b"hidden"
    rejected(open_payload, tmp_path, payload, "data after the end of its archive")


def test_zero_padding_after_the_archive_is_fine(open_payload: Callable[..., Path]) -> None:
    out = open_payload(make_tar(("file", "f", b"x")) + bytes(5000))
    assert (out / "f").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "not a valid archive"),
        (os.urandom(3000), "not a valid archive"),
        (make_tar(("file", "f", b"x" * 2000))[:1200], "not a valid archive"),
    ],
    ids=["empty", "random", "cut-short"],
)
def test_payload_that_is_not_a_tar(
    open_payload: Callable[..., Path], tmp_path: Path, payload: bytes, match: str
) -> None:
    rejected(open_payload, tmp_path, payload, match)


def test_escape_attempts_leave_nothing_outside(
    open_payload: Callable[..., Path], tmp_path: Path
) -> None:
    """After refusals, none of the targets the archives aimed at exist."""
    attempts = [
        make_tar(("file", "../escaped", b"evil")),
        make_tar(("symlink", "l", ".."), ("file", "l/escaped", b"evil")),
        make_tar(("symlink", "d", "."), ("symlink", "l", "d/../escaped")),
    ]
    for payload in attempts:
        with pytest.raises(InvalidInputError):
            open_payload(payload)
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "work" / "escaped").exists()
