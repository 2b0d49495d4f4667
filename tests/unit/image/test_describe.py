"""describe_image: nitro-cli describe-eif's keys, for local images and Nitro EIFs."""

from __future__ import annotations

import json
from pathlib import Path

from strongroom.image import describe_image, measure_image
from strongroom.image.eif import Arch
from strongroom.image.runtime import RuntimeDescriptor

from .conftest import PINS
from .samples import Builds, C, K, M, R, local_image, write_sections

NITRO_METADATA = {
    "ImageName": "hello",
    "ImageVersion": "1.0",
    "BuildMetadata": {
        "BuildTime": "2024-07-09T17:16:38.424202433+00:00",
        "BuildTool": "nitro-cli",
        "BuildToolVersion": "1.3.1",
        "OperatingSystem": "Linux",
        "KernelVersion": "4.14",
    },
    "DockerInfo": {"Id": "sha256:0123"},
}


def test_local_image(builds: Builds) -> None:
    description = describe_image(builds.app.path)
    json.dumps(description)  # JSON-ready
    assert list(description) == [
        "EifVersion",
        "Arch",
        "Measurements",
        "IsSigned",
        "CheckCRC",
        "ImageName",
        "ImageVersion",
        "Metadata",
        "DefaultMemoryMiB",
        "DefaultCPUs",
        "Size",
        "Sections",
        "Runtime",
        "Pins",
    ]
    assert description["Pins"] == PINS.describe()
    assert description["Pins"]["Keys"] == list(PINS.keys)
    assert description["Pins"]["Signers"][0].startswith("ed25519:")
    assert describe_image(builds.plain.path)["Pins"] == {"Keys": [], "Signers": []}
    assert description["EifVersion"] == 4
    assert description["Arch"] in ("x86_64", "aarch64")
    assert description["Measurements"] == builds.app.measurements.to_nitro_json()["Measurements"]
    assert description["IsSigned"] is False
    assert description["CheckCRC"] is True
    assert description["ImageName"] == "strongroom-enclave"
    assert description["ImageVersion"] == "1.0"
    assert description["Metadata"]["CustomMetadata"]["CreatedBy"].startswith("strongroom ")
    assert description["Size"] == builds.app.size
    assert description["Runtime"] == RuntimeDescriptor.for_host().to_json()
    sections = description["Sections"]
    assert [s["Type"] for s in sections] == ["kernel", "cmdline", "metadata"] + ["ramdisk"] * 3
    assert [s["Size"] for s in sections] == [s.size for s in builds.app.sections]
    assert sections[3]["Files"] > 100
    assert sections[4]["Files"] == 4  # __init__.py, METADATA, WHEEL, entry_points.txt
    assert "Files" not in sections[0]


def test_small_local_image_counts_files(tmp_path: Path) -> None:
    image = local_image(tmp_path / "a.eif", {"a": b"1", "b/c": b"2"}, {})
    description = describe_image(image)
    assert [s.get("Files") for s in description["Sections"]] == [None, None, None, 2, 0, 1]
    assert description["ImageName"] == "small"


def test_nitro_eif(tmp_path: Path) -> None:
    image = write_sections(
        tmp_path / "nitro.eif",
        [
            (K, b"MZ\x00\x00HdrS" + bytes(8000)),
            (C, b"reboot=k panic=30 pci=off nomodules console=ttyS0"),
            (M, json.dumps(NITRO_METADATA).encode()),
            (R, b"070701" + bytes(300)),
            (R, b"070701" + bytes(200)),
        ],
        default_mem_mib=512,
        default_cpus=4,
        arch=Arch.AARCH64,
    )
    description = describe_image(image)
    assert "Runtime" not in description
    assert description["Arch"] == "aarch64"
    assert description["ImageName"] == "hello"
    assert description["Metadata"] == NITRO_METADATA
    assert description["Measurements"]["PCR0"] == measure_image(image).pcr0
    assert (description["DefaultMemoryMiB"], description["DefaultCPUs"]) == (512, 4)
    assert all("Files" not in s for s in description["Sections"])


def test_damaged_image_is_described_not_refused(tmp_path: Path) -> None:
    image = local_image(tmp_path / "a.eif", {"a": b"content"}, {})
    data = bytearray(image.read_bytes())
    data[data.index(b"content")] ^= 1
    image.write_bytes(data)
    assert describe_image(image)["CheckCRC"] is False


def test_metadata_that_is_not_json(tmp_path: Path) -> None:
    image = write_sections(
        tmp_path / "a.eif", [(K, b"kernel"), (C, b"c"), (M, b"\xff not json"), (R, b"r")]
    )
    description = describe_image(image)
    assert description["Metadata"] is None
    assert "ImageName" not in description
