"""Verifying attestation documents: one code path for Nitro and local documents.

A verification is a fixed sequence of steps; each runs only when every step
before it passed, and each failure raises its own error naming what failed:

====  ===========  ==============================================  ===========================
step  what         accepts when                                    else raises
====  ===========  ==============================================  ===========================
1     parse        well-formed COSE_Sign1 and payload              AttestationFormatError
2     chain        ``cabundle[0]`` is the pinned anchor (DER);     CertificateChainError
                   ``[certificate, cabundle[n-1..1]]`` chains to
                   it; every certificate valid at ``at``
3     signature    COSE_Sign1 verifies with the leaf's key         SignatureError
4     freshness    not dated in the future (beyond CLOCK_SKEW),    FreshnessError
                   not older than ``max_age``
5     debug        PCR0..2 not zero (a debug-mode enclave's        DebugEnclaveError
                   memory is readable by its parent)
6     PCRs         every expected PCR present and equal            MeasurementMismatchError
7     nonce        equal to the expected nonce                     NonceMismatchError
====  ===========  ==============================================  ===========================

Steps 1–3 are :func:`authenticate`: the document was made by the holder of a
key the anchor certified, while that certification was valid. Steps 4–7 are
the caller's expectations. Nothing branches on where a document came from: a
local-authority document differs from a Nitro one only in the pinned anchor.
Every decision takes its time from the ``at`` argument, so tests and audits
can replay a verification at a fixed instant.
"""

from __future__ import annotations

import hmac
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from strongroom.attestation._chain import validate_chain
from strongroom.attestation._time import utc
from strongroom.attestation.document import AttestationDocument, load_document
from strongroom.attestation.errors import (
    DebugEnclaveError,
    FreshnessError,
    MeasurementMismatchError,
    NonceMismatchError,
    SignatureError,
    UnsafeAttestationWarning,
)
from strongroom.attestation.roots import TrustAnchor

#: How far in the future of the verification time a document may be dated.
CLOCK_SKEW = timedelta(seconds=60)
#: PCRs that a debug-mode enclave reports as all zeros.
DEBUG_PCRS = (0, 1, 2)
NO_EXPECTED_PCRS: Mapping[int, bytes] = MappingProxyType({})


@dataclass(frozen=True)
class VerifiedDocument:
    """A document whose chain and signature verified under ``trust_anchor`` at a time."""

    document: AttestationDocument = field(repr=False)
    trust_anchor: str
    module_id: str
    timestamp: datetime
    pcrs: Mapping[int, bytes] = field(repr=False)
    public_key: PublicKeyTypes | None = field(repr=False)
    """The parsed ``public_key`` (DER SubjectPublicKeyInfo or PEM), or None if absent
    or not a key; the raw bytes are ``document.public_key``."""
    user_data: bytes | None = field(repr=False)
    nonce: bytes | None = field(repr=False)
    is_debug: bool


def authenticate(
    document: bytes | str | AttestationDocument,
    *,
    trust_anchor: x509.Certificate | TrustAnchor,
    at: datetime | None = None,
) -> VerifiedDocument:
    """Steps 1–3: parse, validate the chain to ``trust_anchor`` and check the signature."""
    doc = document if isinstance(document, AttestationDocument) else load_document(document)
    anchor = TrustAnchor.of(trust_anchor)
    leaf_key = validate_chain(doc, anchor, utc(at))
    if not doc.signature_verifies(leaf_key):
        raise SignatureError(
            "COSE signature does not verify with the key of the document's certificate"
        )
    return VerifiedDocument(
        document=doc,
        trust_anchor=anchor.name,
        module_id=doc.module_id,
        timestamp=doc.time,
        pcrs=doc.pcrs,
        public_key=parse_public_key(doc.public_key),
        user_data=doc.user_data,
        nonce=doc.nonce,
        is_debug=is_debug(doc.pcrs),
    )


def verify(
    document: bytes | str | AttestationDocument,
    *,
    trust_anchor: x509.Certificate | TrustAnchor,
    at: datetime | None = None,
    expect_pcrs: Mapping[int, bytes] = NO_EXPECTED_PCRS,
    expect_nonce: bytes | None = None,
    max_age: timedelta | None = None,
    unsafe_allow_debug: bool = False,
) -> VerifiedDocument:
    """Run all seven steps (see the module docstring) at ``at`` (default: now).

    ``unsafe_allow_debug=True`` admits debug-mode documents with an
    :class:`UnsafeAttestationWarning`: their PCRs prove nothing about the code
    that runs, since the parent instance can read and change its memory.
    """
    when = utc(at)
    verified = authenticate(document, trust_anchor=trust_anchor, at=when)
    check_freshness(verified, at=when, max_age=max_age)
    if verified.is_debug:
        if not unsafe_allow_debug:
            raise DebugEnclaveError("debug-mode enclave (PCR0..2 are zero)")
        warnings.warn(
            f"accepting a debug-mode enclave document from {verified.module_id!r} "
            "(unsafe_allow_debug=True): its measurements prove nothing",
            UnsafeAttestationWarning,
            stacklevel=2,
        )
    for index in sorted(expect_pcrs):
        expected, actual = expect_pcrs[index], verified.pcrs.get(index)
        if actual is None:
            raise MeasurementMismatchError(
                f"PCR{index} mismatch: expected {expected.hex()}, absent"
            )
        if not hmac.compare_digest(expected, actual):
            raise MeasurementMismatchError(
                f"PCR{index} mismatch: expected {expected.hex()}, got {actual.hex()}"
            )
    if expect_nonce is not None and (
        verified.nonce is None or not hmac.compare_digest(expect_nonce, verified.nonce)
    ):
        got = "none" if verified.nonce is None else verified.nonce.hex()
        raise NonceMismatchError(f"nonce mismatch: expected {expect_nonce.hex()}, got {got}")
    return verified


def check_freshness(verified: VerifiedDocument, *, at: datetime, max_age: timedelta | None) -> None:
    """Step 4: reject documents dated in the future of ``at``, or older than ``max_age``."""
    when = utc(at)
    if verified.timestamp - when > CLOCK_SKEW:
        raise FreshnessError(
            f"document is dated {verified.timestamp.isoformat()}, "
            f"{verified.timestamp - when} after the verification time {when.isoformat()}",
            hint="check the clocks of this machine and of the enclave host",
        )
    if max_age is not None and when - verified.timestamp > max_age:
        raise FreshnessError(
            f"document from {verified.timestamp.isoformat()} is {when - verified.timestamp} old "
            f"(max age {max_age})",
            hint="request a fresh attestation document",
        )


def is_debug(pcrs: Mapping[int, bytes]) -> bool:
    """Whether any of PCR0..2 is all zeros, as in a debug-mode enclave."""
    return any(index in pcrs and not any(pcrs[index]) for index in DEBUG_PCRS)


def parse_public_key(raw: bytes | None) -> PublicKeyTypes | None:
    """A document's ``public_key`` (DER SubjectPublicKeyInfo or PEM) as a key, else None."""
    if raw is None:
        return None
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_public_key(raw)
        return serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        return None
