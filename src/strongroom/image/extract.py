"""Unpack a local image for the sandbox, measuring it in the same pass.

The sandbox must run exactly what was measured. So the image is read once:
every byte goes to the PCR hashers and, from the same read, into the extracted
tree; a second read (measure, then extract) would let a file swapped in
between run unmeasured. The extracted trees must not exist beforehand, for the
same reason: files already there would run without having been measured.
The digest of every file is taken as it is written (:class:`UnpackedImage`),
for the enclave's image cache to check the tree against later.

Before anything is written the image must be a *local* image (its kernel
section is a runtime descriptor, not a Linux kernel) for this host's
interpreter ABI, and its command line must be the entrypoint the sandbox runs.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from strongroom.errors import AlreadyExistsError, StrongroomError
from strongroom.image._archive import FileDigest, UnpackedTree, extract_tar
from strongroom.image.eif import EifReader, SectionInfo, SectionType, read_at_most
from strongroom.image.errors import ImageFormatError, IncompatibleImageError
from strongroom.image.measure import Measurements, PcrCalculator
from strongroom.image.runtime import (
    ENTRYPOINT,
    MAX_DESCRIPTOR_SIZE,
    RuntimeDescriptor,
    host_abi,
)

RUNTIME_DIR = "runtime"
APP_PACKAGES_DIR = "app-packages"
VENDOR_DIR = "vendor"
_RAMDISK_DIRS = (RUNTIME_DIR, APP_PACKAGES_DIR, VENDOR_DIR)


def _nitro_image(path: Path) -> IncompatibleImageError:
    return IncompatibleImageError(
        f"{path} is a Nitro EIF; run it with the aws target",
        hint="the local sandbox runs images built by `strongroom image build`",
    )


def _check_host(descriptor: RuntimeDescriptor) -> None:
    host = host_abi()
    if descriptor.abi != host:
        raise IncompatibleImageError(
            f"the image was built for {descriptor.abi} (Python {descriptor.python}), "
            f"this host runs {host}",
            hint="rebuild the image with `strongroom image build` using this host's Python",
        )


def read_runtime_descriptor(path: Path) -> RuntimeDescriptor:
    """The runtime descriptor of a local image (no CRC check: this reads a few bytes).

    Raises :class:`IncompatibleImageError` for a Nitro EIF.
    """
    with EifReader(path) as reader:
        (kernel,) = reader.sections_of(SectionType.KERNEL)
        data = reader.read_section(kernel, limit=MAX_DESCRIPTOR_SIZE)
    descriptor = RuntimeDescriptor.parse(data) if data is not None else None
    if descriptor is None:
        raise _nitro_image(path)
    return descriptor


@dataclass(frozen=True)
class SectionLayout:
    """Types and sizes of an image's sections, in file order.

    The PCRs hash section contents back to back, so two images can share them
    while splitting the same bytes differently between ramdisks: whatever is
    keyed by a measurement must also compare the layout.
    """

    sections: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, reader: EifReader) -> SectionLayout:
        return cls(tuple((int(s.type), s.size) for s in reader.sections))

    def to_json(self) -> list[list[int]]:
        return [list(section) for section in self.sections]


@dataclass(frozen=True)
class UnpackedImage:
    """An extracted local image: its measurements and layout, and every file written."""

    measurements: Measurements
    layout: SectionLayout
    #: One tree per ramdisk directory (``runtime``, ``app-packages``, ``vendor``).
    trees: dict[str, UnpackedTree]

    def files(self) -> dict[str, FileDigest]:
        """Every file, by its path relative to the destination."""
        return {
            f"{top}/{name}": digest
            for top, tree in self.trees.items()
            for name, digest in tree.files.items()
        }

    def dirs(self) -> set[str]:
        """Every directory, relative to the destination (the ramdisk directories included)."""
        nested = {f"{top}/{name}" for top, tree in self.trees.items() for name in tree.dirs}
        return set(self.trees) | nested


class _LocalImageChecks:
    """The checks every start of a local image makes, as a :meth:`EifReader.scan` consumer.

    The kernel section must be a runtime descriptor for this host, the command
    line the sandbox's entrypoint, and there must be exactly three ramdisks;
    each ramdisk is handed to ``on_ramdisk`` (or left to be measured only).
    """

    def __init__(
        self, path: Path, on_ramdisk: Callable[[int, io.BufferedReader], None] | None = None
    ) -> None:
        self.path = path
        self.on_ramdisk = on_ramdisk
        self.ramdisks = 0

    def __call__(self, section: SectionInfo, stream: io.BufferedReader) -> None:
        if section.type is SectionType.KERNEL:
            data = read_at_most(stream, MAX_DESCRIPTOR_SIZE)
            descriptor = RuntimeDescriptor.parse(data) if data is not None else None
            if descriptor is None:
                raise _nitro_image(self.path)
            _check_host(descriptor)
        elif section.type is SectionType.CMDLINE:
            data = read_at_most(stream, MAX_DESCRIPTOR_SIZE)
            if data != ENTRYPOINT.encode():
                shown = data.decode(errors="replace") if data is not None else "(too long)"
                raise IncompatibleImageError(
                    f"the image's entrypoint is {shown!r}; the sandbox only runs {ENTRYPOINT!r}"
                )
        elif section.type is SectionType.RAMDISK:
            if self.ramdisks == len(_RAMDISK_DIRS):
                raise ImageFormatError(f"a local image has {len(_RAMDISK_DIRS)} ramdisks, not more")
            if self.on_ramdisk is not None:
                self.on_ramdisk(self.ramdisks, stream)
            self.ramdisks += 1

    def finish(self, crc_ok: bool) -> None:
        if not crc_ok:
            raise ImageFormatError(f"{self.path}: CRC mismatch, the image is damaged")
        if self.ramdisks != len(_RAMDISK_DIRS):
            raise ImageFormatError(
                f"a local image has {len(_RAMDISK_DIRS)} ramdisks, not {self.ramdisks}",
                hint="images built before vendor pins existed must be rebuilt: "
                "`strongroom image build --key ... -o app.eif`",
            )


def measure_local_image(path: Path) -> tuple[Measurements, SectionLayout]:
    """Measure a local image in one streaming pass, with every check an extraction makes.

    What a start of an image already unpacked once reads: nothing is
    written, so it costs one SHA-384 over the file.
    """
    calculator = PcrCalculator()
    checks = _LocalImageChecks(path)
    try:
        with EifReader(path) as reader:
            crc_ok = reader.scan(calculator, checks)
            layout = SectionLayout.of(reader)
    except OSError as e:
        raise StrongroomError(f"cannot read {path}: {e}") from e
    checks.finish(crc_ok)
    return calculator.result(), layout


def unpack_image(path: Path, dest: Path) -> UnpackedImage:
    """Extract ramdisks 1-3 into ``dest/runtime``, ``dest/app-packages`` and ``dest/vendor``.

    Returns the measurements of exactly the bytes extracted, and the digest of
    every file as written. On any failure (including a CRC mismatch found at
    the end) the trees are removed.
    """
    targets = [dest / name for name in _RAMDISK_DIRS]
    for target in targets:
        if target.exists() or target.is_symlink():
            raise AlreadyExistsError(
                f"{target} already exists; extract into a fresh directory",
                hint="files already there would run without being measured",
            )
    calculator = PcrCalculator()
    created: list[Path] = []
    trees: dict[str, UnpackedTree] = {}

    def extract(index: int, stream: io.BufferedReader) -> None:
        target = targets[index]
        target.mkdir(parents=True)
        created.append(target)
        label = f"ramdisk {index + 1} ({target.name})"
        trees[target.name] = extract_tar(stream, target, label=label)

    checks = _LocalImageChecks(path, extract)
    try:
        try:
            with EifReader(path) as reader:
                crc_ok = reader.scan(calculator, checks)
                layout = SectionLayout.of(reader)
        except OSError as e:
            raise StrongroomError(f"cannot extract {path} into {dest}: {e}") from e
        checks.finish(crc_ok)
        return UnpackedImage(calculator.result(), layout, trees)
    except BaseException:
        for target in created:
            shutil.rmtree(target, ignore_errors=True)
        raise


def extract_image(path: Path, dest: Path) -> Measurements:
    """:func:`unpack_image`, for callers that need only the measurements."""
    return unpack_image(path, dest).measurements
