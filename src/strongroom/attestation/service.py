"""Key-service side of a Recipient request: what the local key service checks, as KMS does.

Given the ``Recipient.AttestationDocument`` of a Decrypt / GenerateDataKey /
GenerateRandom request, :func:`verify_recipient`:

1. authenticates the document (chain to one of the pinned anchors, signature)
   at the service's clock, and rejects it if older than ``max_age`` or dated
   in the future;
2. requires a ``public_key`` that is an RSA-2048 DER SubjectPublicKeyInfo
   (PEM and other sizes are rejected, as KMS rejects them) — the result will be
   sealed to it;
3. returns the values the key policy is evaluated against
   (:meth:`RecipientAttestation.condition_values`).

Debug-mode documents are *not* rejected here, exactly as on AWS: a debug
enclave reports PCR0 as zeros, which never matches an approved image
measurement, so the key policy denies it — and a vendor who deliberately
approves the zero measurement for testing gets what they asked for. Deciding
that is the policy's job, not the parser's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from strongroom.attestation.document import AttestationDocument, load_document
from strongroom.attestation.errors import AttestationFormatError, CertificateChainError
from strongroom.attestation.roots import TrustAnchor
from strongroom.attestation.verify import authenticate, check_freshness

DEFAULT_MAX_AGE = timedelta(minutes=5)
RECIPIENT_KEY_SIZE = 2048
CONDITION_PREFIX = "kms:RecipientAttestation:"
#: PCRs that KMS exposes as condition keys.
CONDITION_PCRS = range(9)


@dataclass(frozen=True)
class RecipientAttestation:
    """A verified Recipient: the key to seal to and the measurements to evaluate."""

    public_key: rsa.RSAPublicKey = field(repr=False)
    pcrs: Mapping[int, bytes] = field(repr=False)
    image_sha384: str
    module_id: str
    timestamp: datetime

    def condition_values(self) -> dict[str, str]:
        """The ``kms:RecipientAttestation:*`` condition keys, lower-case hex."""
        values = {f"{CONDITION_PREFIX}ImageSha384": self.image_sha384}
        for index in CONDITION_PCRS:
            if index in self.pcrs:
                values[f"{CONDITION_PREFIX}PCR{index}"] = self.pcrs[index].hex()
        return values


def verify_recipient(
    document: bytes | str,
    *,
    anchors: Sequence[x509.Certificate],
    now: datetime,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> RecipientAttestation:
    """Verify a Recipient document (binary or base64) against any of ``anchors``."""
    doc = load_document(document)
    verified = authenticate(doc, trust_anchor=_anchor_for(doc, anchors), at=now)
    check_freshness(verified, at=now, max_age=max_age)
    if 0 not in doc.pcrs:
        raise AttestationFormatError("attestation document has no PCR0 (image measurement)")
    return RecipientAttestation(
        public_key=_recipient_key(doc.public_key),
        pcrs=doc.pcrs,
        image_sha384=doc.pcrs[0].hex(),
        module_id=doc.module_id,
        timestamp=verified.timestamp,
    )


def _anchor_for(doc: AttestationDocument, anchors: Sequence[x509.Certificate]) -> TrustAnchor:
    for certificate in anchors:
        anchor = TrustAnchor.of(certificate)
        if anchor.der == doc.cabundle[0]:
            return anchor
    raise CertificateChainError(
        f"certificate chain: the document's root is none of the {len(anchors)} trusted roots"
    )


def _recipient_key(raw: bytes | None) -> rsa.RSAPublicKey:
    if raw is None:
        raise AttestationFormatError("attestation document has no public_key to seal the result to")
    if raw.lstrip().startswith(b"-----BEGIN"):
        raise AttestationFormatError(
            "public_key is PEM; a Recipient needs a DER SubjectPublicKeyInfo"
        )
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationFormatError("public_key is not a DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != RECIPIENT_KEY_SIZE:
        raise AttestationFormatError(
            f"public_key must be an RSA-{RECIPIENT_KEY_SIZE} key for RSAES_OAEP_SHA_256"
        )
    return key
