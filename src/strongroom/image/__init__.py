"""Enclave images: build, measure, describe and unpack them.

On AWS an enclave image is an EIF built by ``nitro-cli build-enclave``, and the
vendor approves its PCR0 in the key policy. Locally, Strongroom builds images in
the *same* EIF v4 container (:mod:`.eif`), measured with the *same* public
formula (:mod:`.measure`), so one ``describe`` reads both and a measurement
means the same thing on both targets: ``PCRn = SHA384(48 zero bytes ‖
SHA384(measured bytes))``, over section contents only.

What each PCR covers in a **local** image (:mod:`.build`):

- **PCR0** — the whole measured image: runtime descriptor ‖ entrypoint ‖
  runtime tar ‖ requirements tar. This is the value key policies approve
  (``kms:RecipientAttestation:ImageSha384``).
- **PCR1** — the Strongroom runtime: runtime descriptor (interpreter ABI) ‖
  entrypoint ‖ runtime tar (``strongroom`` and the distributions the enclave
  server imports). It changes when Strongroom or those distributions change.
- **PCR2** — the vendor's requirements tar (what ``--requirements`` installed;
  an empty tar when there are none, so PCR2 is always defined).

Not measured, as on Nitro: the EIF header (default memory and CPUs), the
metadata section (name, version, build inputs), and the host's Python
interpreter and standard library, which the sandbox provides the way Nitro's
hypervisor provides the machine. The sandbox refuses an image built for another
interpreter ABI.

Images are reproducible: the same inputs in the same environment give a
bit-identical file, hence the same PCRs.
"""

from typing import TYPE_CHECKING

from strongroom._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from strongroom.image.build import RUNTIME_DISTRIBUTIONS, BuildResult, build_image
    from strongroom.image.describe import describe_image
    from strongroom.image.eif import (
        Arch,
        EifHeader,
        EifReader,
        Section,
        SectionInfo,
        SectionType,
        write_eif,
    )
    from strongroom.image.errors import ImageBuildError, ImageFormatError, IncompatibleImageError
    from strongroom.image.extract import extract_image, read_runtime_descriptor
    from strongroom.image.measure import HASH_ALGORITHM, Measurements, measure_image
    from strongroom.image.runtime import ENTRYPOINT, RuntimeDescriptor, host_abi

#: Every name is imported on first use: building pulls in packaging and
#: importlib.metadata (~150 ms), describing and extracting the x509 and tar
#: machinery, the EIF codec its tables; a command that only talks to an
#: enclave (``strongroom run``) needs none of it.
_LAZY = {
    "RUNTIME_DISTRIBUTIONS": "build",
    "BuildResult": "build",
    "build_image": "build",
    "describe_image": "describe",
    "Arch": "eif",
    "EifHeader": "eif",
    "EifReader": "eif",
    "Section": "eif",
    "SectionInfo": "eif",
    "SectionType": "eif",
    "write_eif": "eif",
    "ImageBuildError": "errors",
    "ImageFormatError": "errors",
    "IncompatibleImageError": "errors",
    "extract_image": "extract",
    "read_runtime_descriptor": "extract",
    "HASH_ALGORITHM": "measure",
    "Measurements": "measure",
    "measure_image": "measure",
    "ENTRYPOINT": "runtime",
    "RuntimeDescriptor": "runtime",
    "host_abi": "runtime",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "ENTRYPOINT",
    "HASH_ALGORITHM",
    "RUNTIME_DISTRIBUTIONS",
    "Arch",
    "BuildResult",
    "EifHeader",
    "EifReader",
    "ImageBuildError",
    "ImageFormatError",
    "IncompatibleImageError",
    "Measurements",
    "RuntimeDescriptor",
    "Section",
    "SectionInfo",
    "SectionType",
    "build_image",
    "describe_image",
    "extract_image",
    "host_abi",
    "measure_image",
    "read_runtime_descriptor",
    "write_eif",
]
