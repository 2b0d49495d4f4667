"""Read and write Enclave Image Files (EIF v4), the container format of Nitro Enclaves.

Local images use the same container as real ``nitro-cli`` images, so one reader
(and one ``describe``) serves both, and the measurements follow the public PCR
formula. The layout follows aws/aws-nitro-enclaves-image-format:

- a 548-byte big-endian header: magic ``.eif``, version u16, flags u16 (bit 0:
  aarch64), default memory u64 (**bytes**), default CPUs u64, reserved u16,
  section count u16, 32 section offsets u64, 32 section sizes u64, unused u32,
  and a CRC-32 (ISO-HDLC, the one :func:`zlib.crc32` computes) over the whole file
  except the CRC field itself;
- then the sections, each a 12-byte header (type u16, flags u16, size u64)
  followed by its data.

Invariants the reader enforces before anyone looks at a section:

- sections are contiguous from the end of the header to the end of the file, in
  the order the header lists them, and each section header agrees with the size
  the file header gives (so no byte of the file is outside a section, and the
  reference reader, which walks the sections sequentially, sees the same thing);
- exactly one kernel and one command line, at least one ramdisk, all ramdisks
  after the kernel, at most one signature and one metadata section (metadata
  mandatory from version 4), as the format requires.

Sections are streamed, never loaded whole: ramdisks can be hundreds of MB.
:meth:`EifReader.scan` reads the file once, in order, checking the CRC and
handing every section's bytes to an observer (the PCR hashers) *and* to a
consumer (an extractor) from the same read, so what is measured is exactly what
is consumed. :func:`write_eif` streams too: section contents may be produced by
a callable writing into the file, and the CRC is assembled with
:func:`crc32_combine` so the data is never read back.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from strongroom._internal.files import PUBLIC_MODE
from strongroom.image.errors import ImageFormatError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

MAGIC = b".eif"
CURRENT_VERSION = 4
#: Versions 2 and 3 (older nitro-cli releases) share the layout of version 4;
#: 0 and 1 were never published.
READABLE_VERSIONS = frozenset({2, 3, 4})
MAX_SECTIONS = 32
MIN_SECTIONS = 2
ARCH_AARCH64_FLAG = 0x1
#: Largest signature section the format allows (``SIGNATURE_MAX_SIZE``).
MAX_SIGNATURE_SIZE = 32 * 1024
#: Read and hash in chunks of this size: large enough to keep hashing fast,
#: small enough that a scan holds no significant memory.
CHUNK_SIZE = 1024 * 1024
MIB = 1024 * 1024

_HEADER = struct.Struct(f">4sHHQQHH{MAX_SECTIONS}Q{MAX_SECTIONS}QII")
_SECTION_HEADER = struct.Struct(">HHQ")
HEADER_SIZE = _HEADER.size
SECTION_HEADER_SIZE = _SECTION_HEADER.size
_CRC_OFFSET = HEADER_SIZE - 4


class SectionType(enum.IntEnum):
    """Section types of the EIF format (0, "invalid", is rejected)."""

    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5

    @property
    def label(self) -> str:
        """Lower-case name used in JSON output (``"ramdisk"``)."""
        return self.name.lower()


class Arch(enum.StrEnum):
    """CPU architecture an image targets (EIF header flag bit 0)."""

    X86_64 = "x86_64"
    AARCH64 = "aarch64"


@dataclass(frozen=True)
class EifHeader:
    """The fields of an EIF header that mean something."""

    version: int
    flags: int
    default_mem: int
    """Default enclave memory in bytes (the unit the format uses)."""
    default_cpus: int
    num_sections: int
    crc32: int

    @property
    def arch(self) -> Arch:
        return Arch.AARCH64 if self.flags & ARCH_AARCH64_FLAG else Arch.X86_64

    @property
    def default_mem_mib(self) -> int:
        return self.default_mem // MIB


@dataclass(frozen=True)
class SectionInfo:
    """Where one section sits in the file."""

    index: int
    type: SectionType
    flags: int
    offset: int
    """Offset of the section *header*; the data follows 12 bytes later."""
    size: int
    """Size of the section data, header excluded."""

    @property
    def data_offset(self) -> int:
        return self.offset + SECTION_HEADER_SIZE


SectionProducer = Callable[[io.BufferedIOBase], None]
"""Writes a section's bytes into the stream it is given (e.g. a streamed tar)."""


@dataclass(frozen=True)
class Section:
    """A section to write: its bytes, or a producer that streams them into a file."""

    type: SectionType
    data: bytes | SectionProducer
    flags: int = 0


class SectionObserver(Protocol):
    """Sees every section's bytes, in file order (the PCR hashers implement this)."""

    def start_section(self, section_type: SectionType) -> None: ...

    def update(self, data: bytes) -> None: ...


SectionConsumer = Callable[[SectionInfo, io.BufferedReader], None]
"""Reads (part of) a section's bytes during :meth:`EifReader.scan`."""


def check_section_types(types: Sequence[SectionType], version: int) -> None:
    """Enforce the section composition rules of the format, in file order."""
    if not MIN_SECTIONS <= len(types) <= MAX_SECTIONS:
        raise ImageFormatError(
            f"an EIF has {MIN_SECTIONS} to {MAX_SECTIONS} sections, this one has {len(types)}"
        )
    for required in (SectionType.KERNEL, SectionType.CMDLINE):
        if types.count(required) != 1:
            raise ImageFormatError(
                f"an EIF has exactly one {required.label} section, "
                f"this one has {types.count(required)}"
            )
    if SectionType.RAMDISK not in types:
        raise ImageFormatError("an EIF has at least one ramdisk section, this one has none")
    if types.index(SectionType.RAMDISK) < types.index(SectionType.KERNEL):
        raise ImageFormatError("a ramdisk section comes before the kernel section")
    for single in (SectionType.SIGNATURE, SectionType.METADATA):
        if types.count(single) > 1:
            raise ImageFormatError(f"an EIF has at most one {single.label} section")
    if version >= 4 and SectionType.METADATA not in types:
        raise ImageFormatError(f"an EIF of version {version} must have a metadata section")


def _pread(fd: int, size: int, offset: int) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as e:
        raise ImageFormatError(f"cannot read the image: {e.strerror}") from e


def read_at_most(stream: io.BufferedIOBase, limit: int) -> bytes | None:
    """Read ``stream`` to the end, or return None if it holds more than ``limit`` bytes."""
    data = stream.read(limit + 1)
    return None if len(data) > limit else data


class _SectionStream(io.RawIOBase):
    """A read-only stream over one section's data, read with ``pread``.

    Positional reads keep independent streams on one file descriptor from
    disturbing each other. During a scan the stream also feeds each byte,
    exactly once, to the running CRC and to the observer.
    """

    def __init__(
        self,
        fd: int,
        section: SectionInfo,
        *,
        crc: int | None = None,
        observer: SectionObserver | None = None,
    ) -> None:
        super().__init__()
        self._fd = fd
        self._pos = section.data_offset
        self._end = section.data_offset + section.size
        self._index = section.index
        self.crc = crc
        self._observer = observer

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self._pull(len(view))
        view[: len(data)] = data
        return len(data)

    def _pull(self, size: int) -> bytes:
        size = min(size, self._end - self._pos)
        if size <= 0:
            return b""
        data = _pread(self._fd, size, self._pos)
        if not data:
            raise ImageFormatError(
                f"the image is truncated: section {self._index} ends early "
                "(was the file modified while being read?)"
            )
        self._pos += len(data)
        if self.crc is not None:
            self.crc = zlib.crc32(data, self.crc)
        if self._observer is not None:
            self._observer.update(data)
        return data

    def drain(self) -> None:
        """Consume whatever the consumer left unread, so it is still measured."""
        while self._pull(CHUNK_SIZE):
            pass


class EifReader:
    """An open, structurally validated EIF.

    Opening checks the header and every section header (cheap: a few hundred
    bytes). The CRC covers the whole file, so it is checked by :meth:`scan`,
    which reads everything once anyway.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ImageFormatError(f"cannot open image {path}: {e.strerror}") from e
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    def _load(self) -> None:
        status = os.fstat(self._fd)
        if not stat.S_ISREG(status.st_mode):
            raise ImageFormatError(f"{self.path} is not a regular file")
        self.file_size = status.st_size
        if self.file_size < HEADER_SIZE:
            raise ImageFormatError(
                f"{self.path} is not an EIF: {self.file_size} bytes, "
                f"shorter than the {HEADER_SIZE}-byte header"
            )
        self._raw_header = _pread(self._fd, HEADER_SIZE, 0)
        fields = _HEADER.unpack(self._raw_header)
        magic, version, flags, default_mem, default_cpus, _reserved, count = fields[:7]
        offsets = fields[7 : 7 + MAX_SECTIONS]
        sizes = fields[7 + MAX_SECTIONS : 7 + 2 * MAX_SECTIONS]
        crc = fields[-1]
        if magic != MAGIC:
            raise ImageFormatError(f"{self.path} is not an EIF: bad magic {magic!r}")
        if version not in READABLE_VERSIONS:
            raise ImageFormatError(
                f"unsupported EIF version {version} (supported: "
                f"{', '.join(map(str, sorted(READABLE_VERSIONS)))})"
            )
        if not MIN_SECTIONS <= count <= MAX_SECTIONS:
            raise ImageFormatError(
                f"an EIF has {MIN_SECTIONS} to {MAX_SECTIONS} sections, the header says {count}"
            )
        self.header = EifHeader(
            version=version,
            flags=flags,
            default_mem=default_mem,
            default_cpus=default_cpus,
            num_sections=count,
            crc32=crc,
        )
        sections: list[SectionInfo] = []
        self._raw_section_headers: list[bytes] = []
        expected = HEADER_SIZE
        for index in range(count):
            offset, size = offsets[index], sizes[index]
            if offset != expected:
                raise ImageFormatError(
                    f"section {index} is at offset {offset}, expected {expected} "
                    "(sections must follow each other without gaps)"
                )
            if offset + SECTION_HEADER_SIZE + size > self.file_size:
                raise ImageFormatError(
                    f"section {index} ({size} bytes at offset {offset}) runs past the end "
                    f"of the file ({self.file_size} bytes)"
                )
            raw = _pread(self._fd, SECTION_HEADER_SIZE, offset)
            type_code, section_flags, header_size = _SECTION_HEADER.unpack(raw)
            try:
                section_type = SectionType(type_code)
            except ValueError:
                raise ImageFormatError(f"section {index} has invalid type {type_code}") from None
            if header_size != size:
                raise ImageFormatError(
                    f"section {index} header says {header_size} bytes, the EIF header says {size}"
                )
            if section_type is SectionType.SIGNATURE and size > MAX_SIGNATURE_SIZE:
                raise ImageFormatError(
                    f"signature section is {size} bytes, more than {MAX_SIGNATURE_SIZE}"
                )
            sections.append(SectionInfo(index, section_type, section_flags, offset, size))
            self._raw_section_headers.append(raw)
            expected = offset + SECTION_HEADER_SIZE + size
        if expected != self.file_size:
            raise ImageFormatError(
                f"{self.file_size - expected} unexpected bytes after the last section"
            )
        check_section_types([s.type for s in sections], version)
        self.sections: tuple[SectionInfo, ...] = tuple(sections)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EifReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sections_of(self, section_type: SectionType) -> list[SectionInfo]:
        return [s for s in self.sections if s.type is section_type]

    def open_section(self, section: SectionInfo) -> io.BufferedReader:
        """Stream one section's data (no CRC check: use :meth:`scan` for that)."""
        return io.BufferedReader(_SectionStream(self._fd, section), CHUNK_SIZE)

    def read_section(self, section: SectionInfo, *, limit: int) -> bytes | None:
        """A small section's data, or None if it is larger than ``limit``."""
        if section.size > limit:
            return None
        with self.open_section(section) as stream:
            return stream.read()

    def scan(
        self,
        observer: SectionObserver | None = None,
        consume: SectionConsumer | None = None,
    ) -> bool:
        """Read the whole file once, in order; return whether the CRC matches.

        For each section, ``observer`` is told the section type and then sees
        all of its bytes; ``consume`` (if given) gets a stream over the same
        bytes and may read as much as it likes. What it leaves unread is read
        afterwards, so the observer always sees every byte exactly once.
        """
        raw_header = _pread(self._fd, HEADER_SIZE, 0)
        if raw_header != self._raw_header:
            raise ImageFormatError("the image header changed while it was being read")
        crc = zlib.crc32(raw_header[:_CRC_OFFSET])
        for section, raw in zip(self.sections, self._raw_section_headers, strict=True):
            if _pread(self._fd, SECTION_HEADER_SIZE, section.offset) != raw:
                raise ImageFormatError(
                    f"section {section.index} header changed while the image was being read"
                )
            crc = zlib.crc32(raw, crc)
            if observer is not None:
                observer.start_section(section.type)
            stream = _SectionStream(self._fd, section, crc=crc, observer=observer)
            if consume is not None:
                # Read-ahead by the buffer is harmless: the raw stream has
                # already observed those bytes, and drain() goes on after them.
                consume(section, io.BufferedReader(stream, CHUNK_SIZE))
            stream.drain()
            assert stream.crc is not None
            crc = stream.crc
        return crc == self.header.crc32


# --- writing ------------------------------------------------------------------


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    result = 0
    row = 0
    while vector:
        if vector & 1:
            result ^= matrix[row]
        vector >>= 1
        row += 1
    return result


def _gf2_square(matrix: Sequence[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


_CRC32_POLY = 0xEDB88320


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A‖B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``.

    Python's :mod:`zlib` does not expose zlib's ``crc32_combine``. We need it
    because the EIF header comes first but its CRC covers the sections written
    after it: combining lets the writer stream each section once. The CRC
    register after feeding ``n`` zero bytes is a linear map of the register
    before; squaring that 32x32 GF(2) matrix doubles ``n``.
    """
    if len2 <= 0:
        return crc1
    # Operator for one zero bit, then squared three times: one zero byte.
    operator = [_CRC32_POLY] + [1 << n for n in range(31)]
    for _ in range(3):
        operator = _gf2_square(operator)
    while True:
        if len2 & 1:
            crc1 = _gf2_times(operator, crc1)
        len2 >>= 1
        if not len2:
            return crc1 ^ crc2
        operator = _gf2_square(operator)


class _SectionSink(io.BufferedIOBase):
    """Where a section producer writes: counts, CRCs and observes every byte."""

    def __init__(self, out: io.BufferedIOBase, observer: SectionObserver | None) -> None:
        super().__init__()
        self._out = out
        self._observer = observer
        self.size = 0
        self.crc = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        chunk = bytes(data)
        self._out.write(chunk)
        self.size += len(chunk)
        self.crc = zlib.crc32(chunk, self.crc)
        if self._observer is not None:
            self._observer.update(chunk)
        return len(chunk)


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[io.BufferedRandom]:
    """Like :func:`strongroom._internal.files.atomic_write`, for a streamed file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PUBLIC_MODE)
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_eif(
    out: Path,
    sections: Sequence[Section],
    *,
    default_mem_mib: int,
    default_cpus: int,
    arch: Arch,
    observer: SectionObserver | None = None,
) -> tuple[SectionInfo, ...]:
    """Write an EIF v4 atomically, streaming each section once, in the given order.

    ``observer`` sees every section's bytes as they are written (to measure the
    image without reading it back). Returns where each section landed.
    """
    check_section_types([s.type for s in sections], CURRENT_VERSION)
    if default_mem_mib < 0 or default_cpus < 0:
        raise ValueError("default memory and CPU count must not be negative")
    infos: list[SectionInfo] = []
    with _atomic_output(out) as f:
        f.write(bytes(HEADER_SIZE))
        position = HEADER_SIZE
        body_crc = 0
        for index, section in enumerate(sections):
            f.write(bytes(SECTION_HEADER_SIZE))
            if observer is not None:
                observer.start_section(section.type)
            sink = _SectionSink(f, observer)
            if isinstance(section.data, bytes):
                sink.write(section.data)
            else:
                section.data(sink)
            raw = _SECTION_HEADER.pack(section.type, section.flags, sink.size)
            f.seek(position)
            f.write(raw)
            f.seek(0, os.SEEK_END)
            body_crc = crc32_combine(body_crc, zlib.crc32(raw), SECTION_HEADER_SIZE)
            body_crc = crc32_combine(body_crc, sink.crc, sink.size)
            infos.append(SectionInfo(index, section.type, section.flags, position, sink.size))
            position += SECTION_HEADER_SIZE + sink.size
        offsets = [s.offset for s in infos] + [0] * (MAX_SECTIONS - len(infos))
        sizes = [s.size for s in infos] + [0] * (MAX_SECTIONS - len(infos))
        header = _HEADER.pack(
            MAGIC,
            CURRENT_VERSION,
            ARCH_AARCH64_FLAG if arch is Arch.AARCH64 else 0,
            default_mem_mib * MIB,
            default_cpus,
            0,
            len(infos),
            *offsets,
            *sizes,
            0,
            0,
        )
        crc = crc32_combine(zlib.crc32(header[:_CRC_OFFSET]), body_crc, position - HEADER_SIZE)
        f.seek(0)
        f.write(header[:_CRC_OFFSET] + struct.pack(">I", crc))
    return tuple(infos)
