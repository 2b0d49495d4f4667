"""Build a local enclave image: a reproducible EIF that the local sandbox runs.

The sections mirror what ``nitro-cli build-enclave`` writes, with local meaning:

====  ==========  ===========================================================
#     type        content
====  ==========  ===========================================================
0     kernel      runtime descriptor (interpreter ABI; see :mod:`.runtime`)
1     cmdline     :data:`~strongroom.image.runtime.ENTRYPOINT`
2     metadata    name, version, build inputs — *not measured*, as on Nitro
3     ramdisk     the Strongroom runtime: ``strongroom`` and the distributions
                  the enclave server needs, under ``site-packages/``
4     ramdisk     the vendor's requirements, installed by pip (maybe empty)
5     ramdisk     the vendor's pins (:mod:`.pins`): the keys and package signers
                  this image may release keys for
====  ==========  ===========================================================

so PCR1 measures the Strongroom runtime (like Nitro's bootstrap ramdisk) and
PCR2 the vendor's part: its packages and its pins. The host's Python
interpreter and standard library are *not* in the image and not measured:
they play the part of Nitro's hypervisor.

Reproducibility is a requirement, not a nicety: a vendor must be able to
rebuild an image and get the PCR0 it approved. Nothing time- or
machine-dependent enters the file (deterministic tars, canonical JSON, a fixed
build time in the metadata), so two builds from the same inputs in the same
environment are bit-identical.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import strongroom
from strongroom.image._archive import collect_tree, is_volatile, write_tar
from strongroom.image.eif import Arch, Section, SectionInfo, SectionType, write_eif
from strongroom.image.errors import ImageBuildError
from strongroom.image.measure import Measurements, PcrCalculator
from strongroom.image.pins import NO_PINS, PINS_FILE, VendorPins
from strongroom.image.runtime import ENTRYPOINT, LOCAL_RUNTIME_KIND, RuntimeDescriptor

#: What the enclave server imports at run time; their dependency closure
#: (extras skipped, environment markers evaluated for this host) goes into the
#: runtime ramdisk. Distributions that are not installed are skipped.
RUNTIME_DISTRIBUTIONS: tuple[str, ...] = (
    "cbor2",
    "cryptography",
    "asn1crypto",
    "boto3",
    "botocore",
    "jmespath",
    "s3transfer",
    "python-dateutil",
    "six",
    "urllib3",
    "httpx",
    "httpcore",
    "h11",
    # the enclave API's HTTP parser (server/__main__.py): a large upload costs the
    # event loop about half what h11 costs, which push's target needs
    "httptools",
    "anyio",
    "idna",
    "sniffio",
    "certifi",
    "starlette",
    "uvicorn",
    "click",
    "pydantic",
    "pydantic-core",
    "typing-extensions",
    "annotated-types",
    "typing-inspection",
    "cffi",
    "pycparser",
)
DEFAULT_IMAGE_NAME = "strongroom-enclave"
DEFAULT_IMAGE_VERSION = "1.0"
#: Nitro's builder defaults (1 GiB, 2 vCPUs); the sandbox reads them from the header.
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 2
BUILD_TOOL = "strongroom"
#: The metadata schema requires a build time; a fixed one keeps builds
#: reproducible (the same epoch the archives use as mtime).
REPRODUCIBLE_BUILD_TIME = "1970-01-01T00:00:00+00:00"
SITE_PACKAGES = PurePosixPath("site-packages")
#: pip writes console scripts here, with the build host's interpreter path in
#: the shebang: not reproducible, and the sandbox runs ENTRYPOINT anyway.
_SCRIPTS_DIR = "bin"
_MACHINES = {
    "x86_64": Arch.X86_64,
    "amd64": Arch.X86_64,
    "aarch64": Arch.AARCH64,
    "arm64": Arch.AARCH64,
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    path: Path
    measurements: Measurements
    size: int
    sections: tuple[SectionInfo, ...]


def host_arch() -> Arch:
    machine = platform.machine().lower()
    try:
        return _MACHINES[machine]
    except KeyError:
        raise ImageBuildError(
            f"local images need an x86_64 or aarch64 host, this one is {machine!r}"
        ) from None


def runtime_distributions(
    roots: Iterable[str] = RUNTIME_DISTRIBUTIONS,
) -> list[importlib.metadata.Distribution]:
    """The installed dependency closure of ``roots``, sorted by canonical name."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [canonicalize_name(name) for name in roots]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = distribution
        for line in distribution.requires or ():
            try:
                requirement = Requirement(line)
            except InvalidRequirement as e:
                raise ImageBuildError(
                    f"installed distribution {name} has a malformed requirement {line!r}: {e}"
                ) from e
            # An empty "extra" makes every `extra == "..."` marker false.
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return [found[name] for name in sorted(found)]


def _distribution_files(distribution: importlib.metadata.Distribution) -> dict[str, Path]:
    name = distribution.metadata["Name"]
    if distribution.files is None:
        raise ImageBuildError(
            f"installed distribution {name} has no file list (RECORD)",
            hint=f"reinstall it with pip: pip install --force-reinstall {name}",
        )
    base = Path(os.path.normpath(str(distribution.locate_file(""))))
    files: dict[str, Path] = {}
    for entry in distribution.files:
        path = Path(os.path.normpath(base / str(entry)))
        if not path.is_relative_to(base) or not path.is_file():
            continue  # scripts in bin/, or files RECORD lists but that are gone
        relative = PurePosixPath(path.relative_to(base).as_posix())
        if not is_volatile(relative):
            files[str(SITE_PACKAGES / relative)] = path
    return files


def runtime_files(
    distributions: Sequence[importlib.metadata.Distribution],
) -> dict[str, Path]:
    """Archive name → source for the runtime ramdisk."""
    package_dir = Path(strongroom.__file__).parent
    files = collect_tree(package_dir, SITE_PACKAGES / "strongroom")
    for distribution in distributions:
        for name, path in _distribution_files(distribution).items():
            files.setdefault(name, path)
    # the demo's example app and dataset ship with the package, not in enclaves
    examples = f"{SITE_PACKAGES / 'strongroom' / 'examples'}/"
    return {name: path for name, path in files.items() if not name.startswith(examples)}


def _summary(distributions: Iterable[importlib.metadata.Distribution]) -> list[dict[str, str]]:
    return sorted(
        ({"Name": d.metadata["Name"], "Version": d.version} for d in distributions),
        key=lambda d: canonicalize_name(d["Name"]),
    )


def _install_requirements(
    requirements: Path, target: Path, pip_args: Sequence[str]
) -> dict[str, Path]:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-compile",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        *pip_args,
        "-r",
        str(requirements),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise ImageBuildError(
            f"pip could not install {requirements}: {detail}",
            hint="every requirement must be available as a wheel (pip --only-binary=:all:)",
        )
    files = collect_tree(target, PurePosixPath())
    return {name: path for name, path in files.items() if name.split("/")[0] != _SCRIPTS_DIR}


def _metadata(
    name: str,
    version: str,
    descriptor: RuntimeDescriptor,
    requirements_sha256: str | None,
    runtime: list[dict[str, str]],
    application: list[dict[str, str]],
) -> bytes:
    # The schema of aws-nitro-enclaves-image-format, so nitro-cli can describe
    # local images too; Strongroom's build inputs go in CustomMetadata.
    document: dict[str, Any] = {
        "ImageName": name,
        "ImageVersion": version,
        "BuildMetadata": {
            "BuildTime": REPRODUCIBLE_BUILD_TIME,
            "BuildTool": BUILD_TOOL,
            "BuildToolVersion": strongroom.__version__,
            "OperatingSystem": LOCAL_RUNTIME_KIND,
            "KernelVersion": f"python {descriptor.python} ({descriptor.abi})",
        },
        "DockerInfo": {},
        "CustomMetadata": {
            "CreatedBy": f"{BUILD_TOOL} {strongroom.__version__}",
            "BuildInputs": {
                "RequirementsSha256": requirements_sha256,
                "RuntimeDistributions": runtime,
                "ApplicationDistributions": application,
            },
        },
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_image(
    output: Path,
    *,
    requirements: Path | None = None,
    pins: VendorPins = NO_PINS,
    name: str = DEFAULT_IMAGE_NAME,
    version: str = DEFAULT_IMAGE_VERSION,
    default_mem_mib: int = DEFAULT_MEMORY_MIB,
    default_cpus: int = DEFAULT_CPUS,
    pip_args: Sequence[str] = (),
    progress: Progress | None = None,
) -> BuildResult:
    """Build a local image at ``output`` (atomically) and return its measurements.

    ``requirements`` is a pip requirements file for the vendor's application;
    ``pip_args`` are passed to pip as they are (``--no-index``,
    ``--find-links DIR``, an index URL...). ``pins`` are the keys (and
    signers) the image's enclave may release keys for: without any, it runs
    no sealed app.
    """

    def report(message: str) -> None:
        if progress is not None:
            progress(message)

    arch = host_arch()
    descriptor = RuntimeDescriptor.for_host()
    requirements_sha256 = None
    if requirements is not None:
        try:
            requirements_sha256 = hashlib.sha256(requirements.read_bytes()).hexdigest()
        except OSError as e:
            raise ImageBuildError(
                f"cannot read the requirements file {requirements}: {e.strerror}"
            ) from e
    report("resolving the runtime distributions")
    distributions = runtime_distributions()
    runtime = runtime_files(distributions)
    with tempfile.TemporaryDirectory(prefix="strongroom-image-") as tmp:
        application: dict[str, Path] = {}
        application_distributions: list[dict[str, str]] = []
        if requirements is not None:
            report(f"installing the requirements of {requirements} with pip")
            target = Path(tmp, "target")
            application = _install_requirements(requirements, target, pip_args)
            application_distributions = _summary(
                importlib.metadata.distributions(path=[str(target)])
            )
        pins_file = Path(tmp, PINS_FILE)
        pins_file.write_bytes(pins.to_bytes())
        metadata = _metadata(
            name,
            version,
            descriptor,
            requirements_sha256,
            _summary(distributions),
            application_distributions,
        )
        report(
            f"writing {output} ({len(runtime)} runtime files, {len(application)} application files)"
        )
        calculator = PcrCalculator()
        try:
            sections = write_eif(
                output,
                [
                    Section(SectionType.KERNEL, descriptor.to_bytes()),
                    Section(SectionType.CMDLINE, ENTRYPOINT.encode()),
                    Section(SectionType.METADATA, metadata),
                    Section(SectionType.RAMDISK, functools.partial(write_tar, files=runtime)),
                    Section(SectionType.RAMDISK, functools.partial(write_tar, files=application)),
                    Section(
                        SectionType.RAMDISK,
                        functools.partial(write_tar, files={PINS_FILE: pins_file}),
                    ),
                ],
                default_mem_mib=default_mem_mib,
                default_cpus=default_cpus,
                arch=arch,
                observer=calculator,
            )
        except OSError as e:
            raise ImageBuildError(f"cannot write {output}: {e}") from e
    last = sections[-1]
    return BuildResult(
        path=output,
        measurements=calculator.result(),
        size=last.data_offset + last.size,
        sections=sections,
    )
