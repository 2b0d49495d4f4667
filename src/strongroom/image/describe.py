"""Describe an image the way ``nitro-cli describe-eif`` does, for local and Nitro EIFs.

The keys ``nitro-cli`` prints (``EifVersion``, ``Measurements``, ``IsSigned``,
``CheckCRC``, ``ImageName``, ``ImageVersion``, ``Metadata``) keep their names
and meaning, so scripts written against either tool read both. Strongroom adds
``Arch``, the header's default resources, ``Size``, a ``Sections`` summary and,
for local images, the ``Runtime`` descriptor, the number of files in each
ramdisk and the vendor's ``Pins`` (key ARNs, signer fingerprints).
Signatures are reported (``IsSigned``, PCR8) but not verified.

Everything comes from one streaming pass over the file.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from strongroom.image._archive import count_files
from strongroom.image.eif import EifReader, SectionInfo, SectionType, read_at_most
from strongroom.image.errors import ImageFormatError
from strongroom.image.measure import PcrCalculator
from strongroom.image.pins import MAX_PINS_BYTES, PINS_FILE, VendorPins
from strongroom.image.runtime import MAX_DESCRIPTOR_SIZE, RuntimeDescriptor

#: Nitro metadata is a few KiB (build info plus ``docker inspect`` output).
MAX_METADATA_SIZE = 1024 * 1024
#: A local image's pins are its third ramdisk: one small file in a tar.
PINS_RAMDISK = 3
_MAX_PINS_TAR = MAX_PINS_BYTES + 64 * 1024


def _read_pins(stream: io.BufferedReader) -> VendorPins:
    data = read_at_most(stream, _MAX_PINS_TAR)
    if data is None:
        raise ImageFormatError("the pins ramdisk is too large")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            member = tar.getmember(PINS_FILE)
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is None:
                raise ImageFormatError(f"the pins ramdisk has no file {PINS_FILE}")
            return VendorPins.parse(extracted.read())
    except (tarfile.TarError, KeyError) as e:
        raise ImageFormatError(f"the pins ramdisk is not a valid tar with {PINS_FILE}") from e


def describe_image(path: Path) -> dict[str, Any]:
    """A JSON-ready description of the image at ``path``.

    A CRC mismatch is reported (``"CheckCRC": false``), not raised: describing
    a damaged image is how one finds out it is damaged.
    """
    calculator = PcrCalculator()
    descriptor: RuntimeDescriptor | None = None
    metadata: Any = None
    file_counts: dict[int, int] = {}
    pins: VendorPins | None = None

    def consume(section: SectionInfo, stream: io.BufferedReader) -> None:
        nonlocal descriptor, metadata, pins
        if section.type is SectionType.KERNEL:
            data = read_at_most(stream, MAX_DESCRIPTOR_SIZE)
            descriptor = RuntimeDescriptor.parse(data) if data is not None else None
        elif section.type is SectionType.METADATA:
            data = read_at_most(stream, MAX_METADATA_SIZE)
            if data is None:
                raise ImageFormatError(
                    f"the metadata section is larger than {MAX_METADATA_SIZE} bytes"
                )
            try:
                metadata = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError):
                metadata = None
        elif section.type is SectionType.RAMDISK and descriptor is not None:
            number = len(file_counts) + 1
            if number == PINS_RAMDISK:
                pins = _read_pins(stream)
                file_counts[section.index] = 1
            else:
                file_counts[section.index] = count_files(stream, label=f"ramdisk {number}")

    with EifReader(path) as reader:
        crc_ok = reader.scan(calculator, consume)
        header = reader.header
        sections = reader.sections
        size = reader.file_size
    measurements = calculator.result()

    description: dict[str, Any] = {
        "EifVersion": header.version,
        "Arch": header.arch.value,
        "Measurements": measurements.to_nitro_json()["Measurements"],
        "IsSigned": measurements.pcr8 is not None,
        "CheckCRC": crc_ok,
    }
    if isinstance(metadata, dict):
        for key in ("ImageName", "ImageVersion"):
            if isinstance(metadata.get(key), str):
                description[key] = metadata[key]
    description["Metadata"] = metadata
    description["DefaultMemoryMiB"] = header.default_mem_mib
    description["DefaultCPUs"] = header.default_cpus
    description["Size"] = size
    summary: list[dict[str, Any]] = []
    for section in sections:
        entry: dict[str, Any] = {"Type": section.type.label, "Size": section.size}
        if section.index in file_counts:
            entry["Files"] = file_counts[section.index]
        summary.append(entry)
    description["Sections"] = summary
    if descriptor is not None:
        description["Runtime"] = descriptor.to_json()
    if pins is not None:
        description["Pins"] = pins.describe()
    return description
