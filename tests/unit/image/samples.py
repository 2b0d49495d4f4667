"""Sample images for the tests: small hand-made EIFs and tiny wheels."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from strongroom.image.build import BuildResult
from strongroom.image.eif import Arch, Section, SectionType, write_eif
from strongroom.image.pins import NO_PINS, PINS_FILE, VendorPins
from strongroom.image.runtime import ENTRYPOINT, RuntimeDescriptor

K, C, R, S, M = (
    SectionType.KERNEL,
    SectionType.CMDLINE,
    SectionType.RAMDISK,
    SectionType.SIGNATURE,
    SectionType.METADATA,
)


def write_sections(
    path: Path,
    sections: list[tuple[SectionType, bytes]],
    *,
    default_mem_mib: int = 512,
    default_cpus: int = 2,
    arch: Arch = Arch.X86_64,
) -> Path:
    write_eif(
        path,
        [Section(kind, data) for kind, data in sections],
        default_mem_mib=default_mem_mib,
        default_cpus=default_cpus,
        arch=arch,
    )
    return path


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """A small tar made with plain tarfile (not the code under test)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def local_image(
    path: Path,
    runtime: Mapping[str, bytes],
    app: Mapping[str, bytes] | None = None,
    *,
    descriptor: bytes | None = None,
    cmdline: bytes = ENTRYPOINT.encode(),
    pins: VendorPins = NO_PINS,
) -> Path:
    """A small local image with hand-picked ramdisk contents."""
    return write_sections(
        path,
        [
            (K, descriptor if descriptor is not None else RuntimeDescriptor.for_host().to_bytes()),
            (C, cmdline),
            (M, b'{"ImageName":"small","ImageVersion":"0"}'),
            (R, tar_bytes(runtime)),
            (R, tar_bytes(app or {})),
            (R, tar_bytes({PINS_FILE: pins.to_bytes()})),
        ],
    )


def make_wheel(directory: Path, module_source: bytes, *, name: str = "tinyapp") -> Path:
    """A minimal pure-Python wheel (with a console script) that pip installs offline."""
    version = "1.0"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module_source,
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: strongroom-tests\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": f"[console_scripts]\n{name} = {name}:main\n".encode(),
    }
    record = []
    for file_name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{file_name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file_name, data in files.items():
            archive.writestr(zipfile.ZipInfo(file_name, (1980, 1, 1, 0, 0, 0)), data)
    return wheel


@dataclass(frozen=True)
class Builds:
    plain: BuildResult
    app: BuildResult
    app_again: BuildResult
    app_changed: BuildResult
    requirements: Path
