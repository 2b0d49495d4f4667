"""The EIF container: layout, CRC, validation, streaming."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from pathlib import Path

import pytest

from strongroom.errors import InvalidInputError
from strongroom.image.eif import (
    CHUNK_SIZE,
    HEADER_SIZE,
    MAX_SIGNATURE_SIZE,
    SECTION_HEADER_SIZE,
    Arch,
    EifReader,
    Section,
    SectionInfo,
    SectionType,
    crc32_combine,
    write_eif,
)
from strongroom.image.errors import ImageFormatError
from strongroom.image.measure import PcrCalculator

from .samples import C, K, M, R, S, write_sections

SAMPLE = [
    (K, b"kernel-bytes"),
    (C, b"console=ttyS0"),
    (M, b'{"ImageName":"kat"}'),
    (R, b"ramdisk-one"),
    (R, b"ramdisk-two"),
]
#: The sample written with 512 MiB and 2 CPUs for x86_64 (pins the writer).
SAMPLE_CRC = 0xB97E9056


def independent_eif(
    sections: list[tuple[SectionType, bytes]], *, mem: int, cpus: int, flags: int
) -> bytes:
    """The EIF layout written straight from the specification, without the writer."""
    body = b""
    offsets, sizes = [], []
    for kind, data in sections:
        offsets.append(548 + len(body))
        sizes.append(len(data))
        body += struct.pack(">HHQ", kind, 0, len(data)) + data
    pad = [0] * (32 - len(sections))
    header = (
        b".eif"
        + struct.pack(">HHQQHH", 4, flags, mem, cpus, 0, len(sections))
        + struct.pack(">32Q", *(offsets + pad))
        + struct.pack(">32Q", *(sizes + pad))
        + struct.pack(">I", 0)
    )
    crc = zlib.crc32(header + body)
    return header + struct.pack(">I", crc) + body


def test_layout_sizes() -> None:
    assert HEADER_SIZE == 548
    assert SECTION_HEADER_SIZE == 12


def test_writer_matches_the_specification_byte_for_byte(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE, default_mem_mib=512, default_cpus=2)
    expected = independent_eif(SAMPLE, mem=512 * 1024 * 1024, cpus=2, flags=0)
    assert path.read_bytes() == expected
    assert struct.unpack(">I", expected[544:548])[0] == SAMPLE_CRC


def test_crc_covers_the_whole_file_except_itself(tmp_path: Path) -> None:
    data = write_sections(tmp_path / "a.eif", SAMPLE).read_bytes()
    assert struct.unpack(">I", data[544:548])[0] == zlib.crc32(data[:544] + data[548:])


def test_round_trip(tmp_path: Path) -> None:
    big = os.urandom(3 * CHUNK_SIZE + 17)

    def produce(out: io.BufferedIOBase) -> None:
        for start in range(0, len(big), 1000):
            out.write(big[start : start + 1000])

    path = tmp_path / "a.eif"
    written = write_eif(
        path,
        [
            Section(K, b"k" * 10),
            Section(C, b"c", flags=7),
            Section(M, b"{}"),
            Section(R, produce),
            Section(R, b""),
        ],
        default_mem_mib=2048,
        default_cpus=4,
        arch=Arch.AARCH64,
    )
    with EifReader(path) as reader:
        assert reader.header.version == 4
        assert reader.header.arch is Arch.AARCH64
        assert reader.header.default_mem == 2048 * 1024 * 1024
        assert reader.header.default_mem_mib == 2048
        assert reader.header.default_cpus == 4
        assert reader.sections == written
        assert [s.type for s in reader.sections] == [K, C, M, R, R]
        assert [s.size for s in reader.sections] == [10, 1, 2, len(big), 0]
        assert reader.sections[1].flags == 7
        assert reader.read_section(reader.sections[0], limit=100) == b"k" * 10
        assert reader.read_section(reader.sections[0], limit=9) is None
        chunks = []
        with reader.open_section(reader.sections[3]) as stream:
            while chunk := stream.read(65536):
                chunks.append(chunk)
        assert b"".join(chunks) == big
        assert reader.read_section(reader.sections[4], limit=0) == b""
        assert reader.scan() is True
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.stat().st_size == written[-1].data_offset + written[-1].size


def test_x86_64_flag(tmp_path: Path) -> None:
    with EifReader(write_sections(tmp_path / "a.eif", SAMPLE)) as reader:
        assert reader.header.flags == 0
        assert reader.header.arch is Arch.X86_64


def test_crc32_combine_matches_zlib() -> None:
    rng = random.Random(4)
    for length in (0, 1, 7, 100, 4096):
        data = rng.randbytes(length)
        for cut in {0, length // 3, length}:
            a, b = data[:cut], data[cut:]
            assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)


@pytest.mark.parametrize(
    "offset",
    [
        8,  # default_mem
        HEADER_SIZE - 8,  # unused field
        HEADER_SIZE + SECTION_HEADER_SIZE + 3,  # kernel data
        -5,  # last ramdisk data
    ],
)
def test_crc_detects_a_flipped_byte(tmp_path: Path, offset: int) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)
    with EifReader(path) as reader:
        assert reader.scan() is False


def test_crc_field_itself_is_checked(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    data = bytearray(path.read_bytes())
    data[546] ^= 0x80
    path.write_bytes(data)
    with EifReader(path) as reader:
        assert reader.scan() is False


# --- malformed files -----------------------------------------------------------


def patched(tmp_path: Path, offset: int, fmt: str, *values: int | bytes) -> Path:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(data)
    return path


def offset_field(index: int) -> int:
    return 28 + 8 * index


def size_field(index: int) -> int:
    return 28 + 8 * 32 + 8 * index


def expect_format_error(path: Path, match: str) -> None:
    with pytest.raises(ImageFormatError, match=match) as info:
        EifReader(path)
    assert "\n" not in info.value.message
    assert isinstance(info.value, InvalidInputError)


def test_bad_magic(tmp_path: Path) -> None:
    expect_format_error(patched(tmp_path, 0, "4s", b"\x7fELF"), "bad magic")


@pytest.mark.parametrize("version", [0, 1, 5, 0xFFFF])
def test_bad_version(tmp_path: Path, version: int) -> None:
    expect_format_error(patched(tmp_path, 4, ">H", version), f"unsupported EIF version {version}")


@pytest.mark.parametrize("count", [0, 1, 33, 0xFFFF])
def test_bad_section_count(tmp_path: Path, count: int) -> None:
    expect_format_error(patched(tmp_path, 26, ">H", count), "2 to 32 sections")


def test_section_offset_beyond_the_file(tmp_path: Path) -> None:
    # Move every section after the first far away: the first misplaced one is reported.
    path = patched(tmp_path, offset_field(1), ">Q", 1 << 40)
    expect_format_error(path, "section 1 is at offset")


def test_section_size_beyond_the_file(tmp_path: Path) -> None:
    expect_format_error(patched(tmp_path, size_field(4), ">Q", 1 << 40), "runs past the end")


def test_sizes_disagree(tmp_path: Path) -> None:
    # Header and section header both valid on their own, but not together.
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    data = bytearray(path.read_bytes())
    struct.pack_into(">Q", data, HEADER_SIZE + 4, 11)  # kernel section header: 11 bytes
    path.write_bytes(data)
    expect_format_error(path, "header says 11 bytes")


def test_truncated_file(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    expect_format_error(path, "runs past the end")
    path.write_bytes(data[:100])
    expect_format_error(path, "shorter than the 548-byte header")


def test_trailing_bytes(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    path.write_bytes(path.read_bytes() + b"x")
    expect_format_error(path, "1 unexpected bytes after the last section")


@pytest.mark.parametrize("code", [0, 6, 0xFFFF])
def test_invalid_section_type(tmp_path: Path, code: int) -> None:
    expect_format_error(patched(tmp_path, HEADER_SIZE, ">H", code), f"invalid type {code}")


def test_not_a_file(tmp_path: Path) -> None:
    expect_format_error(tmp_path / "missing.eif", "cannot open image")
    expect_format_error(tmp_path, "is not a regular file")


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ([(C, b"c"), (R, b"r"), (M, b"{}")], "exactly one kernel"),
        ([(K, b"k"), (K, b"k"), (C, b"c"), (R, b"r"), (M, b"{}")], "exactly one kernel"),
        ([(K, b"k"), (R, b"r"), (M, b"{}")], "exactly one cmdline"),
        ([(K, b"k"), (C, b"c"), (M, b"{}")], "at least one ramdisk"),
        ([(R, b"r"), (K, b"k"), (C, b"c"), (M, b"{}")], "before the kernel"),
        ([(K, b"k"), (C, b"c"), (R, b"r")], "must have a metadata section"),
        ([(K, b"k"), (C, b"c"), (R, b"r"), (M, b"{}"), (M, b"{}")], "at most one metadata"),
        ([(K, b"k"), (C, b"c"), (R, b"r"), (M, b"{}"), (S, b""), (S, b"")], "at most one sig"),
        ([(K, b"k"), (C, b"c")] + [(R, b"r")] * 30 + [(M, b"{}")], "2 to 32 sections"),
    ],
)
def test_writer_refuses_what_the_format_forbids(
    tmp_path: Path, sections: list[tuple[SectionType, bytes]], match: str
) -> None:
    with pytest.raises(ImageFormatError, match=match):
        write_sections(tmp_path / "a.eif", sections)
    assert list(tmp_path.iterdir()) == []


def test_reader_refuses_what_the_format_forbids(tmp_path: Path) -> None:
    # Swap the cmdline and ramdisk types in place: the file is otherwise sound.
    path = write_sections(tmp_path / "a.eif", [(K, b"k"), (C, b"c"), (R, b"r"), (M, b"{}")])
    data = bytearray(path.read_bytes())
    struct.pack_into(">H", data, HEADER_SIZE + SECTION_HEADER_SIZE + 1, R)
    path.write_bytes(data)
    expect_format_error(path, "exactly one cmdline")


def test_oversized_signature(tmp_path: Path) -> None:
    sections = [(K, b"k"), (C, b"c"), (M, b"{}"), (R, b"r"), (S, bytes(MAX_SIGNATURE_SIZE + 1))]
    expect_format_error(write_sections(tmp_path / "a.eif", sections), "signature section is")


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    before = path.read_bytes()

    def broken(out: io.BufferedIOBase) -> None:
        out.write(b"partial")
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        write_eif(
            path,
            [Section(K, b"k"), Section(C, b"c"), Section(M, b"{}"), Section(R, broken)],
            default_mem_mib=1,
            default_cpus=1,
            arch=Arch.X86_64,
        )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.eif"]


# --- the single pass ------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[SectionType, bytes]] = []

    def start_section(self, section_type: SectionType) -> None:
        self.seen.append((section_type, b""))

    def update(self, data: bytes) -> None:
        kind, so_far = self.seen[-1]
        self.seen[-1] = (kind, so_far + data)


def test_scan_shows_every_byte_once_whatever_the_consumer_reads(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    consumed: dict[int, bytes] = {}

    def consume(section: SectionInfo, stream: io.BufferedReader) -> None:
        consumed[section.index] = stream.read(3 if section.index % 2 else 100)

    recorder = Recorder()
    with EifReader(path) as reader:
        assert reader.scan(recorder, consume) is True
    assert recorder.seen == SAMPLE
    assert consumed == {
        0: b"kernel-bytes",
        1: b"con",
        2: b'{"ImageName":"kat"}',
        3: b"ram",
        4: b"ramdisk-two",
    }


def test_scan_notices_a_header_changed_underneath(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    with EifReader(path) as reader:
        with path.open("r+b") as f:
            f.seek(16)
            f.write(b"\x09")
        with pytest.raises(ImageFormatError, match="changed while"):
            reader.scan(PcrCalculator())
