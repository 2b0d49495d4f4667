"""PCR computation, checked against hashlib directly and against fixed vectors."""

from __future__ import annotations

import datetime
import hashlib
import io
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from strongroom.image import HASH_ALGORITHM, Measurements, measure_image
from strongroom.image.eif import Arch, Section, write_eif
from strongroom.image.errors import ImageFormatError
from strongroom.image.measure import PcrCalculator, signing_certificate_der

from .samples import C, K, M, R, S, write_sections

SAMPLE = [
    (K, b"kernel-bytes"),
    (C, b"console=ttyS0"),
    (M, b'{"ImageName":"kat"}'),
    (R, b"ramdisk-one"),
    (R, b"ramdisk-two"),
]
# Known answers for SAMPLE, computed once with the formula and committed.
KAT_PCR0 = (
    "0c0a8697f6f297dadd9165cf4c7081abb5a3d8e2142e263cec4f9a53323815da"
    "7b283a7964d4210ea36e92d51f0e04ec"
)
KAT_PCR1 = (
    "c65704136beafecb14fed54195f30c7daf058f937a07cef51d6bc7f4e8f7414f"
    "c74e51ce4e09d52e213e3b2e62f522c1"
)
KAT_PCR2 = (
    "2cd856f1e4972f1947f680062077b9dc8d0c6179f7098d8ff298ff592accf884"
    "ed26df19b87937cbfe620dc14fc57bad"
)
#: PCR2 of an image with a single ramdisk: the extend of SHA384(b"").
EMPTY_PCR = (
    "21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c"
    "10edb30948c90ba67310f7b964fc500a"
)


def extend(measured: bytes) -> str:
    """The formula, written independently: SHA384(48 zero bytes ‖ SHA384(data))."""
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(measured).digest()).hexdigest()


def test_known_answer(tmp_path: Path) -> None:
    measurements = measure_image(write_sections(tmp_path / "a.eif", SAMPLE))
    assert measurements == Measurements(pcr0=KAT_PCR0, pcr1=KAT_PCR1, pcr2=KAT_PCR2)
    assert measurements.hash_algorithm == "Sha384 { ... }" == HASH_ALGORITHM


def test_matches_an_independent_computation(tmp_path: Path) -> None:
    kernel, cmdline = b"\x7fkernel" * 1000, b"init=/init"
    ramdisks = [bytes([n]) * (70_000 * n + 1) for n in range(1, 4)]
    sections = [(K, kernel), (C, cmdline), (M, b"{}")] + [(R, r) for r in ramdisks]
    measurements = measure_image(write_sections(tmp_path / "a.eif", sections))
    assert measurements.pcr0 == extend(kernel + cmdline + b"".join(ramdisks))
    assert measurements.pcr1 == extend(kernel + cmdline + ramdisks[0])
    assert measurements.pcr2 == extend(b"".join(ramdisks[1:]))
    assert measurements.pcr8 is None


def test_single_ramdisk_has_the_empty_pcr2(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", [(K, b"k"), (C, b"c"), (M, b"{}"), (R, b"r")])
    assert measure_image(path).pcr2 == EMPTY_PCR == extend(b"")


def test_empty_first_ramdisk_still_counts_as_first(tmp_path: Path) -> None:
    path = write_sections(
        tmp_path / "a.eif", [(K, b"k"), (C, b"c"), (M, b"{}"), (R, b""), (R, b"app")]
    )
    measurements = measure_image(path)
    assert measurements.pcr1 == extend(b"kc")
    assert measurements.pcr2 == extend(b"app")


def test_section_order_is_file_order(tmp_path: Path) -> None:
    # cmdline after the ramdisks: still hashed where it sits in the file.
    path = write_sections(
        tmp_path / "a.eif", [(K, b"k"), (R, b"r1"), (M, b"{}"), (R, b"r2"), (C, b"c")]
    )
    measurements = measure_image(path)
    assert measurements.pcr0 == extend(b"kr1r2c")
    assert measurements.pcr1 == extend(b"kr1c")


def test_metadata_and_header_are_not_measured(tmp_path: Path) -> None:
    other = [(kind, b'{"ImageName":"other"}' if kind is M else data) for kind, data in SAMPLE]
    a = measure_image(write_sections(tmp_path / "a.eif", SAMPLE))
    b = measure_image(
        write_sections(tmp_path / "b.eif", other, default_mem_mib=1, arch=Arch.AARCH64)
    )
    assert a == b


def test_damaged_image_gets_no_measurement(tmp_path: Path) -> None:
    path = write_sections(tmp_path / "a.eif", SAMPLE)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(data)
    with pytest.raises(ImageFormatError, match="CRC mismatch"):
        measure_image(path)


def test_measured_while_writing_equals_measured_when_reading(tmp_path: Path) -> None:
    calculator = PcrCalculator()

    def produce(out: io.BufferedIOBase) -> None:
        out.write(b"ramdisk-")
        out.write(b"two")

    path = tmp_path / "a.eif"
    write_eif(
        path,
        [Section(kind, data) for kind, data in SAMPLE[:-1]] + [Section(R, produce)],
        default_mem_mib=1,
        default_cpus=1,
        arch=Arch.X86_64,
        observer=calculator,
    )
    assert calculator.result() == measure_image(path) == Measurements(KAT_PCR0, KAT_PCR1, KAT_PCR2)


# --- signed images (PCR8) -------------------------------------------------------


def certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA384())
    )


@pytest.mark.parametrize("as_integer_array", [True, False])
def test_signed_image_has_pcr8(tmp_path: Path, as_integer_array: bool) -> None:
    cert = certificate()
    pem = cert.public_bytes(Encoding.PEM)
    # serde_cbor (the reference) writes Vec<u8> as an array of integers.
    encoded = list(pem) if as_integer_array else pem
    signature = cbor2.dumps([{"signing_certificate": encoded, "signature": [1, 2, 3]}])
    path = write_sections(tmp_path / "a.eif", [*SAMPLE, (S, signature)])
    measurements = measure_image(path)
    assert measurements.pcr8 == extend(cert.public_bytes(Encoding.DER))
    assert (measurements.pcr0, measurements.pcr1, measurements.pcr2) == (
        KAT_PCR0,
        KAT_PCR1,
        KAT_PCR2,
    )
    assert measurements.to_nitro_json()["Measurements"]["PCR8"] == measurements.pcr8
    assert set(measurements.pcrs()) == {0, 1, 2, 8}


@pytest.mark.parametrize(
    ("section", "match"),
    [
        (b"\xff\xff", "not valid CBOR"),
        (cbor2.dumps([]), "no signing certificate"),
        (cbor2.dumps([{"signing_certificate": "text"}]), "not bytes"),
        (cbor2.dumps([{"signing_certificate": b"not pem"}]), "not a PEM certificate"),
    ],
)
def test_malformed_signature_section(section: bytes, match: str) -> None:
    with pytest.raises(ImageFormatError, match=match):
        signing_certificate_der(section)


# --- the Measurements value -------------------------------------------------------


def test_nitro_json_shape() -> None:
    measurements = Measurements(KAT_PCR0, KAT_PCR1, KAT_PCR2)
    assert measurements.to_nitro_json() == {
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            "PCR0": KAT_PCR0,
            "PCR1": KAT_PCR1,
            "PCR2": KAT_PCR2,
        }
    }
    assert measurements.pcrs() == {
        0: bytes.fromhex(KAT_PCR0),
        1: bytes.fromhex(KAT_PCR1),
        2: bytes.fromhex(KAT_PCR2),
    }


@pytest.mark.parametrize("bad", ["", KAT_PCR0[:-2], KAT_PCR0.upper(), "g" * 96])
def test_measurements_reject_malformed_values(bad: str) -> None:
    with pytest.raises(ValueError, match="96 lower-case hex"):
        Measurements(bad, KAT_PCR1, KAT_PCR2)
    with pytest.raises(ValueError, match="pcr8"):
        Measurements(KAT_PCR0, KAT_PCR1, KAT_PCR2, pcr8=bad)
