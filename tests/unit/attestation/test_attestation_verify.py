"""The verifier: real Nitro documents, local documents, and every way a chain can be wrong."""

from __future__ import annotations

import base64
import re
import warnings
from datetime import UTC, timedelta

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.attestation.authority import LocalAuthority
from strongroom.attestation.describe import describe
from strongroom.attestation.document import AttestationDocument
from strongroom.attestation.errors import (
    CertificateChainError,
    DebugEnclaveError,
    FreshnessError,
    MeasurementMismatchError,
    NonceMismatchError,
    SignatureError,
    UnsafeAttestationWarning,
)
from strongroom.attestation.roots import TrustAnchor, aws_root, load_anchor
from strongroom.attestation.verify import CLOCK_SKEW, authenticate, verify
from strongroom.errors import StrongroomError, VerificationError

from .helpers import DEBUG_TIME, NOW, PCRS, PRODUCTION_DOC, PRODUCTION_TIME, Pki, rebuild

# --- the recorded Nitro documents -----------------------------------------------------


def test_production_document_verifies_at_its_own_time(production_doc: bytes) -> None:
    verified = verify(production_doc, trust_anchor=load_anchor("aws", None), at=PRODUCTION_TIME)
    assert verified.trust_anchor == "aws"
    assert verified.module_id == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    assert verified.timestamp == PRODUCTION_TIME
    assert verified.pcrs[0].hex().startswith("e72a46ca")
    assert verified.user_data == verified.nonce == b"\x01" * 1024
    assert verified.public_key is None  # 1024 bytes of 0x01 is not a key
    assert verified.document.public_key == b"\x01" * 1024
    assert not verified.is_debug


def test_production_document_meets_its_own_measurements(production_doc: bytes) -> None:
    doc = AttestationDocument.parse(production_doc)
    verify(
        doc,
        trust_anchor=aws_root(),
        at=PRODUCTION_TIME + timedelta(minutes=1),
        expect_pcrs={i: doc.pcrs[i] for i in (0, 1, 2, 4)},
        expect_nonce=b"\x01" * 1024,
        max_age=timedelta(minutes=5),
    )


def test_base64_text_is_accepted(production_doc: bytes) -> None:
    text = base64.b64encode(production_doc).decode()
    assert verify(text, trust_anchor=aws_root(), at=PRODUCTION_TIME).module_id


def test_naive_time_is_read_as_utc(production_doc: bytes) -> None:
    naive = PRODUCTION_TIME.replace(tzinfo=None)
    assert verify(production_doc, trust_anchor=aws_root(), at=naive).timestamp == PRODUCTION_TIME


def test_production_document_fails_now_because_the_chain_expired(production_doc: bytes) -> None:
    with pytest.raises(CertificateChainError, match=r"certificate chain: 'CN=.*' expired at 2024"):
        verify(production_doc, trust_anchor=aws_root())


def test_production_document_fails_before_its_leaf_was_issued(production_doc: bytes) -> None:
    with pytest.raises(CertificateChainError, match="is not valid before 2024-09-07T14:37:36"):
        verify(production_doc, trust_anchor=aws_root(), at=PRODUCTION_TIME - timedelta(minutes=1))


def test_debug_document_is_rejected(debug_doc: bytes) -> None:
    with pytest.raises(DebugEnclaveError, match=re.escape("debug-mode enclave (PCR0..2 are zero)")):
        verify(debug_doc, trust_anchor=aws_root(), at=DEBUG_TIME)


def test_debug_document_passes_when_explicitly_allowed(debug_doc: bytes) -> None:
    with pytest.warns(UnsafeAttestationWarning, match="debug-mode"):
        verified = verify(
            debug_doc, trust_anchor=aws_root(), at=DEBUG_TIME, unsafe_allow_debug=True
        )
    assert verified.is_debug


def test_allowing_debug_does_not_warn_for_production_documents(production_doc: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify(production_doc, trust_anchor=aws_root(), at=PRODUCTION_TIME, unsafe_allow_debug=True)


def test_pcr_mismatch_names_the_register(production_doc: bytes) -> None:
    expected = b"\x44" * 48
    with pytest.raises(MeasurementMismatchError, match=f"PCR4 mismatch: expected {expected.hex()}"):
        verify(
            production_doc, trust_anchor=aws_root(), at=PRODUCTION_TIME, expect_pcrs={4: expected}
        )


def test_missing_pcr_is_a_mismatch(production_doc: bytes) -> None:
    with pytest.raises(MeasurementMismatchError, match=r"PCR20 mismatch: .* absent"):
        verify(
            production_doc,
            trust_anchor=aws_root(),
            at=PRODUCTION_TIME,
            expect_pcrs={20: b"\x00" * 48},
        )


def test_nonce_mismatch(production_doc: bytes) -> None:
    with pytest.raises(NonceMismatchError, match="nonce mismatch: expected 02"):
        verify(production_doc, trust_anchor=aws_root(), at=PRODUCTION_TIME, expect_nonce=b"\x02")


def test_stale_document(production_doc: bytes) -> None:
    with pytest.raises(FreshnessError, match=re.escape("0:10:00 old (max age 0:05:00)")):
        verify(
            production_doc,
            trust_anchor=aws_root(),
            at=PRODUCTION_TIME + timedelta(minutes=10),
            max_age=timedelta(minutes=5),
        )


# --- local documents take the same path -----------------------------------------------


def test_local_document_round_trip(authority: LocalAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = authority.attest(
        PCRS, module_id="i-local-enc0", public_key=spki, user_data=b"u", nonce=b"n", now=NOW
    )
    verified = verify(
        document,
        trust_anchor=authority.root_certificate(),
        at=NOW + timedelta(seconds=2),
        expect_pcrs=PCRS,
        expect_nonce=b"n",
        max_age=timedelta(minutes=1),
    )
    assert verified.module_id == "i-local-enc0"
    assert verified.user_data == b"u"
    assert isinstance(verified.public_key, rsa.RSAPublicKey)
    assert verified.public_key.public_numbers() == key.public_key().public_numbers()


def test_local_document_with_pem_public_key(authority: LocalAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = authority.attest(PCRS, module_id="m", public_key=pem, now=NOW)
    verified = verify(document, trust_anchor=authority.root_certificate(), at=NOW)
    assert verified.public_key == key


def test_local_document_is_not_trusted_under_the_aws_root(authority: LocalAuthority) -> None:
    document = authority.attest(PCRS, module_id="m", now=NOW)
    with pytest.raises(CertificateChainError, match="is not the trust anchor 'aws'"):
        verify(document, trust_anchor=TrustAnchor(aws_root(), "aws"), at=NOW)


def test_aws_document_is_not_trusted_under_a_local_root(
    production_doc: bytes, authority: LocalAuthority
) -> None:
    with pytest.raises(CertificateChainError, match=r"CN=aws\.nitro-enclaves.* is not the trust"):
        verify(production_doc, trust_anchor=authority.root_certificate(), at=PRODUCTION_TIME)


def test_expired_leaf(authority: LocalAuthority) -> None:
    document = authority.attest(PCRS, module_id="m", now=NOW)
    with pytest.raises(CertificateChainError, match="'O=Strongroom,CN=m' expired at"):
        verify(document, trust_anchor=authority.root_certificate(), at=NOW + timedelta(hours=4))


def test_local_debug_document_is_rejected(authority: LocalAuthority) -> None:
    zeros = {0: bytes(48), 1: bytes(48), 2: bytes(48)}
    document = authority.attest(zeros, module_id="m", now=NOW)
    with pytest.raises(DebugEnclaveError):
        verify(document, trust_anchor=authority.root_certificate(), at=NOW)


# --- tampering ------------------------------------------------------------------------


def test_tampered_payload(production_doc: bytes) -> None:
    module_id = "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    forged = rebuild(production_doc, module_id=module_id.replace("a22", "b33"))
    with pytest.raises(SignatureError, match="COSE signature does not verify"):
        verify(forged, trust_anchor=aws_root(), at=PRODUCTION_TIME)


def test_tampered_pcr(production_doc: bytes) -> None:
    pcrs = dict(cbor2.loads(cbor2.loads(production_doc)[2])["pcrs"])
    pcrs[0] = b"\x00" * 48
    with pytest.raises(SignatureError):
        verify(rebuild(production_doc, pcrs=pcrs), trust_anchor=aws_root(), at=PRODUCTION_TIME)


def test_tampered_signature(production_doc: bytes) -> None:
    signature = bytearray(cbor2.loads(production_doc)[3])
    signature[10] ^= 0x01
    forged = rebuild(production_doc, signature=bytes(signature))
    with pytest.raises(SignatureError):
        verify(forged, trust_anchor=aws_root(), at=PRODUCTION_TIME)


def test_signature_of_zero_scalars(production_doc: bytes) -> None:
    forged = rebuild(production_doc, signature=bytes(96))
    with pytest.raises(SignatureError):
        verify(forged, trust_anchor=aws_root(), at=PRODUCTION_TIME)


def test_swapped_cabundle_order(production_doc: bytes) -> None:
    bundle = cbor2.loads(cbor2.loads(production_doc)[2])["cabundle"]
    swapped = [bundle[0], bundle[2], bundle[1], bundle[3]]
    with pytest.raises(CertificateChainError, match="was not issued by"):
        verify(
            rebuild(production_doc, cabundle=swapped), trust_anchor=aws_root(), at=PRODUCTION_TIME
        )


def test_cabundle_without_its_root(production_doc: bytes) -> None:
    bundle = cbor2.loads(cbor2.loads(production_doc)[2])["cabundle"]
    with pytest.raises(CertificateChainError, match="is not the trust anchor"):
        verify(
            rebuild(production_doc, cabundle=bundle[1:]),
            trust_anchor=aws_root(),
            at=PRODUCTION_TIME,
        )


def test_document_signed_by_another_key(pki: Pki) -> None:
    root, intermediate, leaf = pki.chain()
    document = pki.document(leaf, [root, intermediate], signing_key=intermediate.key)
    with pytest.raises(SignatureError):
        verify(document, trust_anchor=root.certificate, at=NOW)


def test_forged_chain_is_accepted_only_under_its_own_root(pki: Pki) -> None:
    root, intermediate, leaf = pki.chain()
    document = pki.document(leaf, [root, intermediate])
    assert verify(document, trust_anchor=root.certificate, at=NOW).trust_anchor == "CN=forged-root"
    with pytest.raises(CertificateChainError, match="not the trust anchor"):
        verify(document, trust_anchor=aws_root(), at=NOW)


def test_chain_claiming_the_aws_root(pki: Pki) -> None:
    """The real AWS root in cabundle[0] does not help an intermediate it did not sign."""
    aws = aws_root()
    attacker_root = pki.issue("attacker-root", None, ca=True)
    intermediate = pki.issue(
        "attacker-intermediate",
        attacker_root,
        ca=True,
        path_length=0,
        issuer_name=aws.subject,
    )
    leaf = pki.issue("attacker-leaf", intermediate, ca=False)
    bundle = [aws.public_bytes(serialization.Encoding.DER), intermediate.der]
    document = rebuild(pki.document(leaf, [intermediate]), cabundle=bundle)
    with pytest.raises(CertificateChainError, match="does not verify with the key of 'CN=aws"):
        verify(document, trust_anchor=aws, at=NOW)


# --- every certificate rule -----------------------------------------------------------


def _chain_case(pki: Pki, case: str) -> tuple[bytes, x509.Certificate]:
    root = pki.issue("root", None, ca=True, lifetime=timedelta(days=3650))
    intermediate_options: dict[str, object] = {"ca": True, "path_length": 0}
    leaf_options: dict[str, object] = {"ca": False, "lifetime": timedelta(hours=3)}
    signing_key = None
    extra_intermediate = False
    if case == "self-signed leaf":
        intermediate = pki.issue("intermediate", root, **intermediate_options)
        leaf = pki.issue("leaf", None, ca=False)
        return pki.document(leaf, [root, intermediate]), root.certificate
    if case == "intermediate not a CA":
        intermediate_options = {"ca": False, "key_cert_sign": True}
    elif case == "intermediate without basicConstraints":
        intermediate_options = {"ca": True, "basic_constraints": False}
    elif case == "intermediate without keyCertSign":
        intermediate_options = {"ca": True, "key_cert_sign": False}
    elif case == "path length exceeded":
        extra_intermediate = True
    elif case == "leaf is a CA":
        leaf_options = {"ca": True, "digital_signature": True}
    elif case == "leaf without digitalSignature":
        leaf_options = {"ca": False, "digital_signature": False}
    elif case == "sha256 signature":
        leaf_options = {"ca": False, "hash_algorithm": hashes.SHA256()}
    elif case == "unknown critical extension":
        unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
        leaf_options = {"ca": False, "extra_extensions": [(unknown, True)]}
    elif case == "P-256 leaf":
        leaf_options = {"ca": False, "key": ec.generate_private_key(ec.SECP256R1())}
        signing_key = ec.generate_private_key(ec.SECP384R1())
    elif case == "expired intermediate":
        intermediate_options = {
            "ca": True,
            "path_length": 0,
            "not_before": NOW - timedelta(days=40),
            "lifetime": timedelta(days=30),
        }
    elif case == "root not yet valid":
        root = pki.issue("root", None, ca=True, not_before=NOW + timedelta(days=1))
    intermediate = pki.issue("intermediate", root, **intermediate_options)
    bundle = [root, intermediate]
    issuer = intermediate
    if extra_intermediate:
        issuer = pki.issue("second-intermediate", intermediate, ca=True)
        bundle.append(issuer)
    leaf = pki.issue("leaf", issuer, **leaf_options)
    return pki.document(leaf, bundle, signing_key=signing_key), root.certificate


CHAIN_CASES = {
    "self-signed leaf": "'CN=leaf' was not issued by 'CN=intermediate'",
    "intermediate not a CA": "'CN=intermediate' is not a CA certificate",
    "intermediate without basicConstraints": "'CN=intermediate' is not a CA certificate",
    "intermediate without keyCertSign": "'CN=intermediate' lacks the keyCertSign key usage",
    "path length exceeded": "'CN=intermediate' has pathLenConstraint 0 but 1 intermediate",
    "leaf is a CA": "the leaf 'CN=leaf' is a CA certificate",
    "leaf without digitalSignature": "the leaf 'CN=leaf' lacks the digitalSignature key usage",
    "sha256 signature": "'CN=leaf' is signed with 1.2.840.10045.4.3.2, expected ecdsa-with-SHA384",
    "unknown critical extension": "unsupported critical extension 1.3.6.1.4.1.99999.1",
    "P-256 leaf": "'CN=leaf' does not have a P-384 key",
    "expired intermediate": "'CN=intermediate' expired at",
    "root not yet valid": "'CN=root' is not valid before",
}


@pytest.mark.parametrize("case", list(CHAIN_CASES))
def test_certificate_rules(pki: Pki, case: str) -> None:
    document, root = _chain_case(pki, case)
    with pytest.raises(CertificateChainError, match=re.escape(CHAIN_CASES[case])):
        verify(document, trust_anchor=root, at=NOW)


def test_chain_errors_are_verification_errors() -> None:
    assert issubclass(CertificateChainError, VerificationError)
    assert issubclass(SignatureError, VerificationError)


# --- time -----------------------------------------------------------------------------


def test_document_from_the_future(pki: Pki) -> None:
    root, intermediate, leaf = pki.chain()
    document = pki.document(leaf, [root, intermediate], timestamp=NOW + timedelta(minutes=10))
    with pytest.raises(FreshnessError, match="after the verification time"):
        verify(document, trust_anchor=root.certificate, at=NOW)


def test_small_clock_skew_is_tolerated(pki: Pki) -> None:
    root, intermediate, leaf = pki.chain()
    document = pki.document(leaf, [root, intermediate], timestamp=NOW + CLOCK_SKEW)
    verify(document, trust_anchor=root.certificate, at=NOW)


def test_authenticate_skips_the_expectations(debug_doc: bytes) -> None:
    verified = authenticate(debug_doc, trust_anchor=aws_root(), at=DEBUG_TIME)
    assert verified.is_debug
    assert verified.timestamp.tzinfo == UTC


# --- fuzzing the certificates inside an otherwise well-formed document ------------------

_FIELDS = cbor2.loads(cbor2.loads(PRODUCTION_DOC)[2])


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=4),
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
        min_size=1,
        max_size=3,
    ),
)
def test_fuzz_certificates(which: int, flips: list[tuple[int, int]]) -> None:
    """Damaged certificates end in our errors, whether parsing, describing or verifying."""
    bundle = list(_FIELDS["cabundle"])
    der = bytearray(_FIELDS["certificate"] if which == 4 else bundle[which])
    for position, mask in flips:
        der[position % len(der)] ^= mask
    if which == 4:
        data = rebuild(PRODUCTION_DOC, certificate=bytes(der))
    else:
        bundle[which] = bytes(der)
        data = rebuild(PRODUCTION_DOC, cabundle=bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about some damaged serials
        try:
            document = AttestationDocument.parse(data)
            describe(document)
            verify(document, trust_anchor=aws_root(), at=PRODUCTION_TIME)
        except StrongroomError:
            pass
