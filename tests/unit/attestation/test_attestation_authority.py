"""The local attestation authority: a Nitro-shaped PKI in the workspace."""

from __future__ import annotations

import stat
import time
from datetime import timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from strongroom.attestation.authority import (
    INTERMEDIATE_CERT_FILE,
    INTERMEDIATE_KEY_FILE,
    LEAF_LIFETIME,
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    AuthorityAttestor,
    LocalAuthority,
)
from strongroom.attestation.base import Attestor
from strongroom.attestation.document import AttestationDocument
from strongroom.attestation.errors import AttestationFormatError
from strongroom.attestation.verify import verify
from strongroom.errors import ConfigError

from .helpers import NOW, PCRS


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_modes(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    LocalAuthority.open_or_create(ca_dir, now=NOW)
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / ROOT_KEY_FILE) == 0o600
    assert _mode(ca_dir / INTERMEDIATE_KEY_FILE) == 0o600
    assert _mode(ca_dir / ROOT_CERT_FILE) == 0o644
    assert _mode(ca_dir / INTERMEDIATE_CERT_FILE) == 0o644


def _extension(certificate: x509.Certificate, kind: type) -> x509.Extension[x509.ExtensionType]:
    return certificate.extensions.get_extension_for_class(kind)


def test_pki_mirrors_nitro(authority: LocalAuthority) -> None:
    root = authority.root_certificate()
    intermediate = authority.intermediate_certificate(now=NOW)
    assert "CN=strongroom-local-root" in root.subject.rfc4514_string()
    assert root.issuer == root.subject
    for certificate in (root, intermediate):
        key = certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
        assert _extension(certificate, x509.KeyUsage).value.key_cert_sign
    root_constraints = _extension(root, x509.BasicConstraints)
    assert root_constraints.critical and root_constraints.value.ca
    intermediate_constraints = _extension(intermediate, x509.BasicConstraints).value
    assert intermediate_constraints.ca and intermediate_constraints.path_length == 0
    lifetime = intermediate.not_valid_after_utc - intermediate.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=31)
    assert root.not_valid_after_utc - root.not_valid_before_utc > timedelta(days=3650)
    intermediate.verify_directly_issued_by(root)


def test_document_shape(authority: LocalAuthority) -> None:
    data = authority.attest(PCRS, module_id="i-local-enc0", nonce=b"n", now=NOW)
    assert data[:6] == bytes.fromhex("8444a1013822")
    doc = AttestationDocument.parse(data)
    assert doc.timestamp == int(NOW.timestamp() * 1000)
    assert doc.cabundle[0] == authority.root_certificate().public_bytes(serialization.Encoding.DER)
    assert doc.cabundle[1] == authority.intermediate_certificate(now=NOW).public_bytes(
        serialization.Encoding.DER
    )
    leaf = doc.leaf_certificate()
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == LEAF_LIFETIME
    usage = _extension(leaf, x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not _extension(leaf, x509.BasicConstraints).value.ca
    fields = cbor2.loads(doc.payload)
    assert fields["public_key"] is None and fields["user_data"] is None


def test_each_document_gets_a_fresh_leaf(authority: LocalAuthority) -> None:
    first = AttestationDocument.parse(authority.attest(PCRS, module_id="m", now=NOW))
    second = AttestationDocument.parse(authority.attest(PCRS, module_id="m", now=NOW))
    assert first.certificate != second.certificate
    assert first.cabundle == second.cabundle


def test_reopening_keeps_root_and_intermediate(tmp_path: Path) -> None:
    first = LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)
    second = LocalAuthority.open_or_create(tmp_path / "ca", now=NOW + timedelta(days=1))
    assert second.root_certificate() == first.root_certificate()
    assert second.intermediate_certificate(now=NOW) == first.intermediate_certificate(now=NOW)


def test_intermediate_is_renewed_near_expiry(tmp_path: Path) -> None:
    authority = LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)
    old = authority.intermediate_certificate(now=NOW)
    later = NOW + timedelta(days=25)
    document = authority.attest(PCRS, module_id="m", now=later)
    renewed = authority.intermediate_certificate(now=later)
    assert renewed != old
    verify(document, trust_anchor=authority.root_certificate(), at=later, expect_pcrs=PCRS)
    # another process opening the CA sees the renewed intermediate on disk
    reopened = LocalAuthority.open_or_create(tmp_path / "ca", now=later)
    assert reopened.intermediate_certificate(now=later) == renewed
    assert reopened.root_certificate() == authority.root_certificate()


def test_incomplete_ca_is_an_error(tmp_path: Path) -> None:
    LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)
    (tmp_path / "ca" / ROOT_KEY_FILE).unlink()
    with pytest.raises(ConfigError, match="incomplete"):
        LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)


def test_mismatched_root_key_is_an_error(tmp_path: Path) -> None:
    LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)
    LocalAuthority.open_or_create(tmp_path / "other", now=NOW)
    (tmp_path / "ca" / ROOT_KEY_FILE).write_bytes((tmp_path / "other" / ROOT_KEY_FILE).read_bytes())
    with pytest.raises(ConfigError, match="does not belong"):
        LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)


def test_corrupt_key_is_an_error(tmp_path: Path) -> None:
    LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)
    (tmp_path / "ca" / ROOT_KEY_FILE).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="unreadable"):
        LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)


def test_oversized_fields_are_refused(authority: LocalAuthority) -> None:
    with pytest.raises(AttestationFormatError, match="user_data: 1025 bytes"):
        authority.attest(PCRS, module_id="m", user_data=b"x" * 1025, now=NOW)
    with pytest.raises(AttestationFormatError, match="module_id"):
        authority.attest(PCRS, module_id="", now=NOW)


def test_authority_attestor(tmp_path: Path) -> None:
    authority = LocalAuthority.open_or_create(tmp_path / "ca")  # the attestor uses the clock
    attestor = AuthorityAttestor(authority, PCRS, "i-local-enc0")
    assert isinstance(attestor, Attestor)
    data = attestor.attest(public_key=b"key", user_data=b"data", nonce=b"nonce")
    verified = verify(
        data,
        trust_anchor=authority.root_certificate(),
        expect_pcrs=PCRS,
        expect_nonce=b"nonce",
        max_age=timedelta(minutes=1),
    )
    assert verified.user_data == b"data"
    assert verified.document.public_key == b"key"
    assert verified.module_id == "i-local-enc0"


def test_issuing_is_fast(authority: LocalAuthority) -> None:
    count = 20
    started = time.perf_counter()
    for _ in range(count):
        authority.attest(PCRS, module_id="m", public_key=b"k" * 294, nonce=b"n" * 32, now=NOW)
    per_document = (time.perf_counter() - started) / count
    assert per_document < 0.05, f"{per_document * 1000:.1f} ms per document"
