"""Image measurements (PCRs), computed exactly as Nitro Enclaves computes them.

Each PCR is one TPM-style extend from zero of a SHA-384 content digest::

    PCRn = SHA384(48 zero bytes ‖ SHA384(measured bytes))

- PCR0: kernel ‖ cmdline ‖ every ramdisk, in file order;
- PCR1: kernel ‖ cmdline ‖ the first ramdisk;
- PCR2: every ramdisk after the first (with a single ramdisk this is the extend
  of ``SHA384(b"")``: the reference reader always reports it);
- PCR8: only for signed images: the DER of the signing certificate stored in the
  signature section.

Only section *contents* are measured: the EIF header, section headers, the
metadata section and the signature section itself are not (the metadata can be
edited without changing the measurement, as on Nitro). Sections are hashed
once, as they stream past, each chunk fed to every hasher that covers it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strongroom.image.errors import ImageFormatError

if TYPE_CHECKING:
    from strongroom.image.eif import SectionType

#: What ``nitro-cli`` prints as the hash algorithm (Rust's ``Debug`` of ``Sha384``).
HASH_ALGORITHM = "Sha384 { ... }"
PCR_SIZE = 48
_PCR_HEX_LENGTH = 2 * PCR_SIZE


def _extend_from_zero(content_digest: bytes) -> bytes:
    return hashlib.sha384(bytes(PCR_SIZE) + content_digest).digest()


@dataclass(frozen=True)
class Measurements:
    """PCR values of an image, as lower-case hex (the form key policies compare)."""

    pcr0: str
    pcr1: str
    pcr2: str
    pcr8: str | None = None
    hash_algorithm: str = HASH_ALGORITHM

    def __post_init__(self) -> None:
        for name in ("pcr0", "pcr1", "pcr2", "pcr8"):
            value = getattr(self, name)
            if value is None and name == "pcr8":
                continue
            if (
                not isinstance(value, str)
                or len(value) != _PCR_HEX_LENGTH
                or value.strip("0123456789abcdef")
            ):
                raise ValueError(f"{name} must be {_PCR_HEX_LENGTH} lower-case hex digits")

    def pcrs(self) -> dict[int, bytes]:
        """The PCRs by index, as raw bytes (the form attestation documents carry)."""
        values = {0: self.pcr0, 1: self.pcr1, 2: self.pcr2}
        if self.pcr8 is not None:
            values[8] = self.pcr8
        return {index: bytes.fromhex(value) for index, value in values.items()}

    def to_nitro_json(self) -> dict[str, dict[str, str]]:
        """The JSON ``nitro-cli build-enclave`` prints."""
        measurements = {
            "HashAlgorithm": self.hash_algorithm,
            "PCR0": self.pcr0,
            "PCR1": self.pcr1,
            "PCR2": self.pcr2,
        }
        if self.pcr8 is not None:
            measurements["PCR8"] = self.pcr8
        return {"Measurements": measurements}


def _certificate_bytes(value: Any) -> bytes:
    # The reference serialises Vec<u8> with serde_cbor: an array of integers.
    # Accept a byte string too.
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise ImageFormatError("the signature section's signing_certificate is not bytes")


def signing_certificate_der(signature_section: bytes) -> bytes:
    """The DER of the first signing certificate in an EIF signature section."""
    # imported here: only signed (Nitro) images need them, and every command that
    # merely looks at enclaves imports this module
    import cbor2
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        signatures = cbor2.loads(signature_section)
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise ImageFormatError(f"the signature section is not valid CBOR: {e}") from e
    if (
        not isinstance(signatures, list)
        or not signatures
        or not isinstance(signatures[0], dict)
        or "signing_certificate" not in signatures[0]
    ):
        raise ImageFormatError("the signature section has no signing certificate")
    pem = _certificate_bytes(signatures[0]["signing_certificate"])
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ImageFormatError(f"the signing certificate is not a PEM certificate: {e}") from e
    return certificate.public_bytes(Encoding.DER)


class PcrCalculator:
    """Computes the measurements from the sections as they stream past.

    Implements :class:`strongroom.image.eif.SectionObserver`, so the same object
    measures an image while it is written, read, described or extracted.
    """

    def __init__(self) -> None:
        # here, not at the top: holding Measurements (enclave status, run) needs no EIF codec
        from strongroom.image.eif import MAX_SIGNATURE_SIZE, SectionType

        self._types = SectionType
        self._max_signature = MAX_SIGNATURE_SIZE
        self._image = hashlib.sha384()  # PCR0
        self._bootstrap = hashlib.sha384()  # PCR1
        self._application = hashlib.sha384()  # PCR2
        self._targets: tuple[hashlib._Hash, ...] = ()
        self._ramdisks = 0
        self._signature: bytearray | None = None
        self._collecting: bytearray | None = None

    def start_section(self, section_type: SectionType) -> None:
        self._targets = ()
        self._collecting = None
        types = self._types
        if section_type in (types.KERNEL, types.CMDLINE):
            self._targets = (self._image, self._bootstrap)
        elif section_type is types.RAMDISK:
            first = self._ramdisks == 0
            self._targets = (self._image, self._bootstrap if first else self._application)
            self._ramdisks += 1
        elif section_type is types.SIGNATURE:
            self._signature = self._collecting = bytearray()

    def update(self, data: bytes) -> None:
        for hasher in self._targets:
            hasher.update(data)
        if self._collecting is not None:
            self._collecting += data
            if len(self._collecting) > self._max_signature:
                raise ImageFormatError(
                    f"the signature section is larger than {self._max_signature} bytes"
                )

    def result(self) -> Measurements:
        pcr8 = None
        if self._signature is not None:
            certificate = signing_certificate_der(bytes(self._signature))
            pcr8 = _extend_from_zero(hashlib.sha384(certificate).digest()).hex()
        return Measurements(
            pcr0=_extend_from_zero(self._image.digest()).hex(),
            pcr1=_extend_from_zero(self._bootstrap.digest()).hex(),
            pcr2=_extend_from_zero(self._application.digest()).hex(),
            pcr8=pcr8,
        )


def measure_image(path: Path) -> Measurements:
    """Measure an EIF (local or Nitro) in one streaming pass.

    Raises :class:`ImageFormatError` if the CRC does not match: a damaged file
    must not get a measurement someone might approve.
    """
    from strongroom.image.eif import EifReader

    calculator = PcrCalculator()
    with EifReader(path) as reader:
        crc_ok = reader.scan(calculator)
    if not crc_ok:
        raise ImageFormatError(f"{path}: CRC mismatch, the image is damaged")
    return calculator.result()
