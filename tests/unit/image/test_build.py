"""Building local images: reproducibility, what each PCR covers, archive hygiene."""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import pytest

import strongroom
from strongroom.image import ENTRYPOINT, build_image, measure_image
from strongroom.image.build import runtime_distributions
from strongroom.image.eif import EifReader, SectionType
from strongroom.image.errors import ImageBuildError
from strongroom.image.runtime import RuntimeDescriptor

from .samples import Builds, make_wheel


def section_bytes(path: Path, index: int) -> bytes:
    with EifReader(path) as reader, reader.open_section(reader.sections[index]) as stream:
        return stream.read()


def tar_members(path: Path, index: int, tmp_path: Path) -> list[tarfile.TarInfo]:
    archive = tmp_path / f"ramdisk-{index}.tar"
    archive.write_bytes(section_bytes(path, index))
    with tarfile.open(archive) as tar:
        return tar.getmembers()


def test_builds_are_bit_identical(builds: Builds) -> None:
    assert builds.app.path.read_bytes() == builds.app_again.path.read_bytes()
    assert builds.app.measurements == builds.app_again.measurements


def test_a_one_byte_change_in_the_requirements_moves_pcr0_and_pcr2_only(builds: Builds) -> None:
    before, after = builds.app.measurements, builds.app_changed.measurements
    assert before.pcr1 == after.pcr1
    assert before.pcr0 != after.pcr0
    assert before.pcr2 != after.pcr2


def test_runtime_is_pcr1_and_requirements_are_pcr2(builds: Builds) -> None:
    # Same runtime with or without requirements; PCR2 is always defined.
    assert builds.plain.measurements.pcr1 == builds.app.measurements.pcr1
    assert builds.plain.measurements.pcr2 != builds.app.measurements.pcr2


def test_build_result_matches_the_file(builds: Builds) -> None:
    result = builds.app
    assert result.size == result.path.stat().st_size
    assert measure_image(result.path) == result.measurements
    with EifReader(result.path) as reader:
        assert reader.sections == result.sections
        assert reader.header.default_mem_mib == 1024
        assert reader.header.default_cpus == 2
    kinds = [s.type for s in result.sections]
    assert kinds == [
        SectionType.KERNEL,
        SectionType.CMDLINE,
        SectionType.METADATA,
        SectionType.RAMDISK,
        SectionType.RAMDISK,
        SectionType.RAMDISK,
    ]


def test_kernel_and_cmdline_sections(builds: Builds) -> None:
    kernel = section_bytes(builds.plain.path, 0)
    assert kernel == RuntimeDescriptor.for_host().to_bytes()
    descriptor = json.loads(kernel)
    assert descriptor == {
        "abi": descriptor["abi"],
        "kind": "strongroom-local-runtime",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "strongroom": strongroom.__version__,
    }
    assert kernel == json.dumps(descriptor, sort_keys=True, separators=(",", ":")).encode()
    assert section_bytes(builds.plain.path, 1) == ENTRYPOINT.encode()


def test_metadata_records_the_build_inputs(builds: Builds) -> None:
    metadata = json.loads(section_bytes(builds.app.path, 2))
    assert metadata["ImageName"] == "strongroom-enclave"
    assert metadata["ImageVersion"] == "1.0"
    assert metadata["BuildMetadata"]["BuildTool"] == "strongroom"
    inputs = metadata["CustomMetadata"]["BuildInputs"]
    expected = hashlib.sha256(builds.requirements.read_bytes()).hexdigest()
    assert inputs["RequirementsSha256"] == expected
    assert inputs["ApplicationDistributions"] == [{"Name": "tinyapp", "Version": "1.0"}]
    names = {d["Name"].lower().replace("_", "-") for d in inputs["RuntimeDistributions"]}
    assert {"cryptography", "cffi", "pydantic-core", "uvicorn"} <= names
    plain = json.loads(section_bytes(builds.plain.path, 2))
    assert plain["CustomMetadata"]["BuildInputs"]["RequirementsSha256"] is None


def test_runtime_ramdisk_is_deterministic_and_clean(builds: Builds, tmp_path: Path) -> None:
    members = tar_members(builds.plain.path, 3, tmp_path)
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert "site-packages/strongroom/__init__.py" in names
    assert "site-packages/strongroom/image/eif.py" in names
    assert any(n.startswith("site-packages/cryptography/") for n in names)
    assert any(n.endswith(".dist-info/METADATA") for n in names)
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == 0
        assert member.isfile() or member.isdir()
        assert member.mode in ((0o644, 0o755) if member.isfile() else (0o755,))
        assert member.name.startswith("site-packages")
        parts = member.name.split("/")
        assert "__pycache__" not in parts and not member.name.endswith(".pyc")
        if len(parts) > 1 and parts[-2].endswith(".dist-info"):
            assert parts[-1] not in {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def test_application_ramdisk(builds: Builds, tmp_path: Path) -> None:
    names = [m.name for m in tar_members(builds.app.path, 4, tmp_path)]
    assert "tinyapp/__init__.py" in names
    assert "tinyapp-1.0.dist-info/METADATA" in names
    assert not any(n == "bin" or n.startswith("bin/") for n in names)  # console script
    assert tar_members(builds.plain.path, 4, tmp_path) == []


def test_runtime_closure_skips_extras_and_foreign_markers() -> None:
    names = {d.metadata["Name"].lower().replace("_", "-") for d in runtime_distributions()}
    assert "cffi" in names and "pycparser" in names
    # click needs colorama only on Windows; uvicorn's "standard" extra is skipped
    # (httptools is in the image, as a root of its own: the server's HTTP parser).
    assert "colorama" not in names
    assert not names & {"uvloop", "websockets", "watchfiles", "python-dotenv"}
    assert "httptools" in names


def test_distributions_that_are_not_installed_are_skipped() -> None:
    assert runtime_distributions(["no-such-distribution-here", "six"])[0].metadata["Name"] == "six"


def test_pip_failure_is_a_build_error(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("no-such-distribution-here==1.0\n")
    empty = tmp_path / "wheels"
    make_wheel(empty, b"", name="other")
    with pytest.raises(ImageBuildError, match="pip could not install") as info:
        build_image(
            tmp_path / "out.eif",
            requirements=requirements,
            pip_args=["--no-index", "--find-links", str(empty)],
        )
    assert "\n" not in info.value.message
    assert not (tmp_path / "out.eif").exists()


def test_missing_requirements_file(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="cannot read the requirements file"):
        build_image(tmp_path / "out.eif", requirements=tmp_path / "missing.txt")


def test_the_vendor_pins_are_measured_in_pcr2(builds: Builds, tmp_path: Path) -> None:
    from strongroom.image import extract_image
    from strongroom.image.pins import NO_PINS, PINS_FILE, VendorPins

    from .conftest import PINS

    dest = tmp_path / "enclave"
    extract_image(builds.app.path, dest)
    assert VendorPins.load(dest / "vendor" / PINS_FILE) == PINS
    unpinned = build_image(tmp_path / "unpinned.eif", pins=NO_PINS)
    assert unpinned.measurements.pcr1 == builds.plain.measurements.pcr1
    assert unpinned.measurements.pcr2 == builds.plain.measurements.pcr2
    repinned = build_image(tmp_path / "pinned.eif", pins=PINS)
    # same runtime, other pins: PCR1 stays, PCR2 and the approved PCR0 change
    assert repinned.measurements.pcr1 == builds.plain.measurements.pcr1
    assert repinned.measurements.pcr2 != builds.plain.measurements.pcr2
    assert repinned.measurements.pcr0 != builds.plain.measurements.pcr0
