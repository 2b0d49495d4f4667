"""Unpack a local image for the sandbox, measuring it in the same pass.

The sandbox must run exactly what was measured. So the image is read once:
every byte goes to the PCR hashers and, from the same read, into the extracted
tree; a second read (measure, then extract) would let a file swapped in
between run unmeasured. The extracted trees must not exist beforehand, for the
same reason: files already there would run without having been measured.

Before anything is written the image must be a *local* image (its kernel
section is a runtime descriptor, not a Linux kernel) for this host's
interpreter ABI, and its command line must be the entrypoint the sandbox runs.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from strongroom.errors import AlreadyExistsError, StrongroomError
from strongroom.image._archive import extract_tar
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


def extract_image(path: Path, dest: Path) -> Measurements:
    """Extract ramdisks 1-3 into ``dest/runtime``, ``dest/app-packages`` and ``dest/vendor``.

    Returns the measurements of exactly the bytes extracted. On any failure
    (including a CRC mismatch found at the end) both trees are removed.
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

    def consume(section: SectionInfo, stream: io.BufferedReader) -> None:
        if section.type is SectionType.KERNEL:
            data = read_at_most(stream, MAX_DESCRIPTOR_SIZE)
            descriptor = RuntimeDescriptor.parse(data) if data is not None else None
            if descriptor is None:
                raise _nitro_image(path)
            _check_host(descriptor)
        elif section.type is SectionType.CMDLINE:
            data = read_at_most(stream, MAX_DESCRIPTOR_SIZE)
            if data != ENTRYPOINT.encode():
                shown = data.decode(errors="replace") if data is not None else "(too long)"
                raise IncompatibleImageError(
                    f"the image's entrypoint is {shown!r}; the sandbox only runs {ENTRYPOINT!r}"
                )
        elif section.type is SectionType.RAMDISK:
            if len(created) == len(targets):
                raise ImageFormatError(f"a local image has {len(targets)} ramdisks, not more")
            target = targets[len(created)]
            target.mkdir(parents=True)
            created.append(target)
            extract_tar(stream, target, label=f"ramdisk {len(created)} ({target.name})")

    try:
        try:
            with EifReader(path) as reader:
                crc_ok = reader.scan(calculator, consume)
        except OSError as e:
            raise StrongroomError(f"cannot extract {path} into {dest}: {e}") from e
        if not crc_ok:
            raise ImageFormatError(f"{path}: CRC mismatch, the image is damaged")
        if len(created) != len(targets):
            raise ImageFormatError(
                f"a local image has {len(targets)} ramdisks, not {len(created)}",
                hint="images built before vendor pins existed must be rebuilt: "
                "`strongroom image build --key ... -o app.eif`",
            )
        return calculator.result()
    except BaseException:
        for target in created:
            shutil.rmtree(target, ignore_errors=True)
        raise
