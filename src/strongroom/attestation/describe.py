"""A JSON-ready description of an attestation document, for ``inspect``/``verify`` output.

Describing is not verifying: the CLI prints this next to the verdict of
:func:`strongroom.attestation.verify.verify`, and a description of a document
that failed verification is only a description of what the document *claims*.
Binary fields are shown as hex when short, and as size plus SHA-256 otherwise.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strongroom.attestation.document import AttestationDocument
from strongroom.attestation.verify import is_debug, parse_public_key

#: Binary fields up to this size are shown in full (as hex).
MAX_INLINE_BYTES = 64


def describe(doc: AttestationDocument) -> dict[str, Any]:
    """What the document claims, as plain JSON types."""
    return {
        "module_id": doc.module_id,
        "timestamp": doc.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "digest": doc.digest,
        "pcrs": {str(index): value.hex() for index, value in sorted(doc.pcrs.items())},
        "debug_mode": is_debug(doc.pcrs),
        "certificate": _certificate(doc.leaf_certificate()),
        "cabundle": [_certificate(certificate) for certificate in doc.ca_certificates()],
        "public_key": _public_key_description(doc.public_key),
        "user_data": _blob(doc.user_data),
        "nonce": _blob(doc.nonce),
        "size": len(doc.raw),
    }


def _certificate(certificate: x509.Certificate) -> dict[str, str]:
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }


def _public_key_description(raw: bytes | None) -> dict[str, Any] | None:
    description = _blob(raw)
    if description is None:
        return None
    key = parse_public_key(raw)
    if isinstance(key, rsa.RSAPublicKey):
        description["type"] = f"RSA-{key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        description["type"] = f"EC {key.curve.name}"
    else:
        description["type"] = "unrecognised" if key is None else type(key).__name__
    return description


def _blob(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    if len(raw) <= MAX_INLINE_BYTES:
        return {"size": len(raw), "hex": raw.hex()}
    return {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
