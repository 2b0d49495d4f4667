"""Key release end to end: enclave side (release.py) against a key-service stub (service.py)."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strongroom.attestation.authority import AuthorityAttestor, LocalAuthority
from strongroom.attestation.document import AttestationDocument
from strongroom.attestation.errors import (
    AttestationFormatError,
    CertificateChainError,
    FreshnessError,
)
from strongroom.attestation.recipient import seal_for_recipient
from strongroom.attestation.release import (
    decrypt_with_attestation,
    generate_data_key_with_attestation,
)
from strongroom.attestation.roots import aws_root
from strongroom.attestation.service import RecipientAttestation, verify_recipient
from strongroom.errors import AccessDeniedError, ServiceError, VerificationError
from strongroom.keys.base import DataKey, Decrypted, Recipient

from .helpers import NOW, PCRS, PRODUCTION_DOC, PRODUCTION_TIME

SECRET = b"the data key of the sealed app!!"


class StubKeys:
    """The Recipient half of a key service: verify, evaluate PCR0, seal."""

    def __init__(self, authority: LocalAuthority, approved: set[str], mode: str = "seal") -> None:
        self.anchors = [authority.root_certificate()]
        self.approved = approved
        self.mode = mode
        self.seen: list[RecipientAttestation] = []

    def _release(
        self, plaintext: bytes, recipient: Recipient | None
    ) -> tuple[bytes | None, bytes | None]:
        if self.mode == "plaintext":
            return plaintext, None
        if self.mode == "nothing":
            return None, None
        assert recipient is not None
        attestation = verify_recipient(
            recipient.attestation_document, anchors=self.anchors, now=datetime.now().astimezone()
        )
        self.seen.append(attestation)
        image = attestation.condition_values()["kms:RecipientAttestation:ImageSha384"]
        if image not in self.approved:
            raise AccessDeniedError(f"image {image[:16]}… is not approved")
        return None, seal_for_recipient(plaintext, attestation.public_key)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        recipient: Recipient | None = None,
    ) -> Decrypted:
        assert ciphertext_blob == b"blob" and encryption_context == {"app": "demo"}
        plaintext, sealed = self._release(SECRET, recipient)
        return Decrypted(key_id="arn:key", plaintext=plaintext, ciphertext_for_recipient=sealed)

    def generate_data_key(
        self,
        key_id: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> DataKey:
        plaintext, sealed = self._release(bytes(number_of_bytes), recipient)
        return DataKey(
            key_id="arn:" + key_id,
            ciphertext_blob=b"wrapped",
            plaintext=plaintext,
            ciphertext_for_recipient=sealed,
        )


@pytest.fixture
def live_authority(tmp_path: Path) -> LocalAuthority:
    return LocalAuthority.open_or_create(tmp_path / "ca")  # key release runs on the real clock


def _attestor(authority: LocalAuthority) -> AuthorityAttestor:
    return AuthorityAttestor(authority, PCRS, "i-local-enc0")


def test_decrypt_with_attestation(live_authority: LocalAuthority) -> None:
    keys = StubKeys(live_authority, approved={PCRS[0].hex()})
    plaintext = decrypt_with_attestation(
        keys, _attestor(live_authority), b"blob", encryption_context={"app": "demo"}
    )
    assert plaintext == SECRET
    (seen,) = keys.seen
    assert seen.public_key.key_size == 2048
    assert seen.image_sha384 == PCRS[0].hex()


def test_generate_data_key_with_attestation(live_authority: LocalAuthority) -> None:
    keys = StubKeys(live_authority, approved={PCRS[0].hex()})
    data_key = generate_data_key_with_attestation(
        keys, _attestor(live_authority), "k1", number_of_bytes=16
    )
    assert data_key == DataKey(key_id="arn:k1", ciphertext_blob=b"wrapped", plaintext=bytes(16))


def test_unapproved_image_is_denied(live_authority: LocalAuthority) -> None:
    keys = StubKeys(live_authority, approved={"00" * 48})
    with pytest.raises(AccessDeniedError):
        decrypt_with_attestation(
            keys, _attestor(live_authority), b"blob", encryption_context={"app": "demo"}
        )


def test_a_plaintext_answer_is_refused(live_authority: LocalAuthority) -> None:
    keys = StubKeys(live_authority, approved=set(), mode="plaintext")
    with pytest.raises(VerificationError, match="not bound to this enclave's attestation"):
        decrypt_with_attestation(
            keys, _attestor(live_authority), b"blob", encryption_context={"app": "demo"}
        )


def test_an_empty_answer_is_a_service_error(live_authority: LocalAuthority) -> None:
    keys = StubKeys(live_authority, approved=set(), mode="nothing")
    with pytest.raises(ServiceError):
        decrypt_with_attestation(
            keys, _attestor(live_authority), b"blob", encryption_context={"app": "demo"}
        )


# --- verify_recipient ----------------------------------------------------------------


def _rsa_spki(bits: int = 2048) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_condition_values(authority: LocalAuthority) -> None:
    pcrs = {index: bytes([0xAB + index]) * 48 for index in (0, 1, 2, 3, 4, 8, 9)}
    document = authority.attest(pcrs, module_id="m", public_key=_rsa_spki(), now=NOW)
    attestation = verify_recipient(
        base64.b64encode(document).decode(), anchors=[authority.root_certificate()], now=NOW
    )
    values = attestation.condition_values()
    prefix = "kms:RecipientAttestation:"
    assert values[prefix + "ImageSha384"] == values[prefix + "PCR0"] == pcrs[0].hex()
    assert set(values) == {prefix + "ImageSha384"} | {
        f"{prefix}PCR{index}" for index in (0, 1, 2, 3, 4, 8)
    }
    assert all(value == value.lower() for value in values.values())
    assert attestation.module_id == "m"
    assert attestation.timestamp == NOW


def test_debug_documents_reach_the_policy_without_warning(authority: LocalAuthority) -> None:
    zeros = {0: bytes(48), 1: bytes(48), 2: bytes(48)}
    document = authority.attest(zeros, module_id="m", public_key=_rsa_spki(), now=NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attestation = verify_recipient(document, anchors=[authority.root_certificate()], now=NOW)
    assert attestation.image_sha384 == "00" * 48


@pytest.mark.parametrize(
    ("public_key", "message"),
    [
        (None, "no public_key"),
        (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "PEM",
        ),
        (b"\x01" * 64, "not a DER SubjectPublicKeyInfo"),
        ("rsa-1024", "RSA-2048"),
        ("rsa-3072", "RSA-2048"),
        (
            ec.generate_private_key(ec.SECP384R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "RSA-2048",
        ),
    ],
    ids=["absent", "pem", "garbage", "rsa-1024", "rsa-3072", "ec"],
)
def test_recipient_key_requirements(
    authority: LocalAuthority, public_key: bytes | str | None, message: str
) -> None:
    if isinstance(public_key, str):
        public_key = _rsa_spki(int(public_key.split("-")[1]))
    document = authority.attest(PCRS, module_id="m", public_key=public_key, now=NOW)
    with pytest.raises(AttestationFormatError, match=message):
        verify_recipient(document, anchors=[authority.root_certificate()], now=NOW)


def test_untrusted_root(authority: LocalAuthority, tmp_path: Path) -> None:
    other = LocalAuthority.open_or_create(tmp_path / "other", now=NOW)
    document = authority.attest(PCRS, module_id="m", public_key=_rsa_spki(), now=NOW)
    with pytest.raises(CertificateChainError, match="none of the 2 trusted roots"):
        verify_recipient(document, anchors=[other.root_certificate(), aws_root()], now=NOW)


def test_stale_recipient_document(authority: LocalAuthority) -> None:
    document = authority.attest(PCRS, module_id="m", public_key=_rsa_spki(), now=NOW)
    with pytest.raises(FreshnessError):
        verify_recipient(
            document, anchors=[authority.root_certificate()], now=NOW + timedelta(minutes=6)
        )


def test_real_document_carries_no_usable_recipient_key() -> None:
    # The recorded production document's public_key is 1024 bytes of 0x01: KMS would refuse it.
    assert AttestationDocument.parse(PRODUCTION_DOC).public_key == b"\x01" * 1024
    with pytest.raises(AttestationFormatError, match="not a DER SubjectPublicKeyInfo"):
        verify_recipient(
            PRODUCTION_DOC,
            anchors=[aws_root()],
            now=PRODUCTION_TIME,
            max_age=timedelta(minutes=5),
        )
