"""Nitro attestation documents: parse and build them exactly as Nitro does.

A document is a COSE_Sign1 structure (RFC 8152), untagged as ``/dev/nsm``
returns it (tag 18 is accepted too)::

    [protected: bstr({1: -35}), unprotected: {}, payload: bstr, signature: bstr(96)]

signed with ES384 (ECDSA P-384, SHA-384; raw ``r‖s``) over
``CBOR(["Signature1", protected, b"", payload])``. The payload is a CBOR map
with text keys in this order: ``module_id``, ``digest``, ``timestamp``,
``pcrs``, ``certificate``, ``cabundle``, ``public_key``, ``user_data``,
``nonce``.

Where this module sits in the security state machine of a document::

    bytes ──parse()──▶ AttestationDocument          well formed, nothing trusted
          ──verify.authenticate()──▶ VerifiedDocument   chain to a pinned root, signature
          ──verify.verify()──▶ accepted             PCRs, nonce, age, not debug mode

A parsed document is only *well formed*: every type, size and field has been
checked, but nothing says who made it. Never act on its contents before
:mod:`strongroom.attestation.verify` has accepted it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from strongroom.attestation import _cbor
from strongroom.attestation.errors import AttestationFormatError

#: Largest document accepted (the limit AWS KMS applies to ``AttestationDocument``).
MAX_DOCUMENT_SIZE = 262_144
#: Largest ``public_key``, ``user_data`` and ``nonce`` (real documents carry up to 1024 bytes).
MAX_USER_FIELD_SIZE = 1024
#: Largest DER certificate in ``certificate`` / ``cabundle`` (the Nitro specification's bound).
MAX_CERTIFICATE_SIZE = 1024
#: Most certificates in ``cabundle`` (real bundles carry 4).
MAX_CABUNDLE_LENGTH = 16
#: Most PCRs in a document, and the exclusive upper bound of a PCR index.
MAX_PCRS = 32
#: Allowed PCR value sizes (SHA-256, SHA-384, SHA-512 banks).
PCR_SIZES = frozenset({32, 48, 64})
#: Longest ``module_id`` accepted (real ones are ~40 characters).
MAX_MODULE_ID_LENGTH = 256
#: The only digest Nitro reports.
DIGEST = "SHA384"

#: COSE algorithm identifier of ES384, the only one Nitro uses.
COSE_ALG_ES384 = -35
COSE_HEADER_ALG = 1
COSE_HEADER_CRIT = 2
#: A CBOR tag 18 (COSE_Sign1) header byte, as in a tagged document.
COSE_SIGN1_TAG_BYTE = 0xD2
#: An ES384 signature: r and s, 48 big-endian bytes each.
SIGNATURE_SIZE = 96
_P384_SCALAR_SIZE = 48
#: The protected header every Nitro document carries: ``{1: -35}``.
PROTECTED_HEADER = cbor2.dumps({COSE_HEADER_ALG: COSE_ALG_ES384})

PAYLOAD_FIELDS = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
_REQUIRED_FIELDS = PAYLOAD_FIELDS[:6]
#: Latest timestamp a ``datetime`` can hold (9999-12-31T23:59:59.999Z), in ms.
_MAX_TIMESTAMP_MS = 253_402_300_799_999


@dataclass(frozen=True)
class AttestationDocument:
    """A well-formed (not yet verified) attestation document and its raw parts."""

    module_id: str
    digest: str
    timestamp: int
    """Milliseconds since the Unix epoch, as the document carries it; see :attr:`time`."""
    pcrs: Mapping[int, bytes] = field(repr=False)
    certificate: bytes = field(repr=False)
    cabundle: tuple[bytes, ...] = field(repr=False)
    public_key: bytes | None = field(repr=False)
    user_data: bytes | None = field(repr=False)
    nonce: bytes | None = field(repr=False)
    protected: bytes = field(repr=False)
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> AttestationDocument:
        """Parse a binary document, raising :class:`AttestationFormatError` on any defect."""
        data = bytes(data)
        if len(data) > MAX_DOCUMENT_SIZE:
            raise AttestationFormatError(
                f"attestation document is {len(data)} bytes (limit {MAX_DOCUMENT_SIZE})"
            )
        body = data[1:] if data[:1] == bytes([COSE_SIGN1_TAG_BYTE]) else data
        cose = _cbor.loads(body, what="COSE_Sign1")
        if not isinstance(cose, list) or len(cose) != 4:
            raise AttestationFormatError("COSE_Sign1: expected an array of 4 items")
        protected, unprotected, payload, signature = cose
        protected = _bytes(protected, "COSE_Sign1 protected header", 0, MAX_DOCUMENT_SIZE)
        if not isinstance(unprotected, dict):
            raise AttestationFormatError("COSE_Sign1 unprotected header: expected a map")
        payload = _bytes(payload, "COSE_Sign1 payload", 1, MAX_DOCUMENT_SIZE)
        signature = _bytes(signature, "COSE_Sign1 signature", 0, MAX_DOCUMENT_SIZE)
        if len(signature) != SIGNATURE_SIZE:
            raise AttestationFormatError(
                f"COSE_Sign1 signature is {len(signature)} bytes, expected {SIGNATURE_SIZE}"
                " (ES384 r‖s)"
            )
        _check_headers(protected, unprotected)
        return cls(
            **_parse_payload(payload),
            protected=protected,
            payload=payload,
            signature=signature,
            raw=data,
        )

    @property
    def time(self) -> datetime:
        """When the document was made (UTC)."""
        return datetime.fromtimestamp(self.timestamp / 1000, tz=UTC)

    def leaf_certificate(self) -> x509.Certificate:
        """The certificate whose key signed the document."""
        return x509.load_der_x509_certificate(self.certificate)

    def ca_certificates(self) -> tuple[x509.Certificate, ...]:
        """The CA bundle, root first, as the document orders it."""
        return tuple(x509.load_der_x509_certificate(der) for der in self.cabundle)

    def signature_verifies(self, public_key: ec.EllipticCurvePublicKey) -> bool:
        """Whether the COSE signature verifies with ``public_key`` (which must be P-384)."""
        if not isinstance(public_key.curve, ec.SECP384R1):
            return False
        r = int.from_bytes(self.signature[:_P384_SCALAR_SIZE], "big")
        s = int.from_bytes(self.signature[_P384_SCALAR_SIZE:], "big")
        try:
            public_key.verify(
                encode_dss_signature(r, s),
                signature_input(self.protected, self.payload),
                ec.ECDSA(hashes.SHA384()),
            )
        except InvalidSignature:
            return False
        return True


def load_document(data: bytes | str) -> AttestationDocument:
    """Parse a document given as binary CBOR or as base64 text (detected, not guessed).

    A binary document starts with ``0x84`` (an array of 4) or ``0xD2`` (tag 18);
    no base64 text can start with those bytes, so anything else is decoded as
    base64 (whitespace ignored) and must then be a binary document.
    """
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError as exc:
            raise AttestationFormatError("attestation document: not base64 text") from exc
    if data[:1] in (b"\x84", bytes([COSE_SIGN1_TAG_BYTE])):
        return AttestationDocument.parse(data)
    if len(data) > 2 * MAX_DOCUMENT_SIZE:
        raise AttestationFormatError(
            f"attestation document: {len(data)} bytes of text is too large for base64"
        )
    try:
        raw = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        if all(32 <= c < 127 or c in b"\t\r\n" for c in data[:4096]):
            message = "attestation document: text, but not valid base64"
            raise AttestationFormatError(message) from exc
        raise AttestationFormatError(
            f"attestation document: not a COSE_Sign1 (it starts with byte 0x{data[0]:02x}; "
            "a document is a CBOR array of 4, or tag 18, or that as base64 text)"
            if data
            else "attestation document: the file is empty"
        ) from exc
    if raw[:1] not in (b"\x84", bytes([COSE_SIGN1_TAG_BYTE])):
        raise AttestationFormatError("attestation document: base64 text does not hold a COSE_Sign1")
    return AttestationDocument.parse(raw)


def signature_input(protected: bytes, payload: bytes) -> bytes:
    """The bytes COSE_Sign1 signs: ``CBOR(["Signature1", protected, b"", payload])``."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign_document(
    *,
    module_id: str,
    timestamp: int,
    pcrs: Mapping[int, bytes],
    certificate: bytes,
    cabundle: Sequence[bytes],
    public_key: bytes | None = None,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    signing_key: ec.EllipticCurvePrivateKey,
) -> bytes:
    """Build and sign an untagged document laid out exactly as Nitro lays it out.

    ``timestamp`` is in milliseconds since the epoch; ``cabundle`` is root first.
    Absent optional fields are written as null, as Nitro does. The result is
    parsed back before it is returned, so this never emits a document that
    :meth:`AttestationDocument.parse` would reject.
    """
    if not isinstance(signing_key.curve, ec.SECP384R1):
        raise AttestationFormatError(f"ES384 needs a P-384 key, not {signing_key.curve.name}")
    fields: dict[str, Any] = {
        "module_id": module_id,
        "digest": DIGEST,
        "timestamp": timestamp,
        "pcrs": {index: bytes(pcrs[index]) for index in sorted(pcrs)},
        "certificate": certificate,
        "cabundle": list(cabundle),
        "public_key": public_key,
        "user_data": user_data,
        "nonce": nonce,
    }
    payload = cbor2.dumps(fields)
    der_signature = signing_key.sign(
        signature_input(PROTECTED_HEADER, payload), ec.ECDSA(hashes.SHA384())
    )
    r, s = decode_dss_signature(der_signature)
    signature = r.to_bytes(_P384_SCALAR_SIZE, "big") + s.to_bytes(_P384_SCALAR_SIZE, "big")
    document = cbor2.dumps([PROTECTED_HEADER, {}, payload, signature])
    AttestationDocument.parse(document)
    return document


def _check_headers(protected: bytes, unprotected: dict[Any, Any]) -> None:
    header = _cbor.loads(protected, what="COSE protected header") if protected else {}
    if not isinstance(header, dict):
        raise AttestationFormatError("COSE protected header: expected a map")
    for where, labels in (("protected", header), ("unprotected", unprotected)):
        for label in labels:
            if isinstance(label, bool) or not isinstance(label, int | str):
                raise AttestationFormatError(f"COSE {where} header: invalid label {label!r}")
    alg = header.get(COSE_HEADER_ALG)
    if alg is None:
        raise AttestationFormatError("COSE protected header: no algorithm (label 1)")
    if type(alg) is not int or alg != COSE_ALG_ES384:
        raise AttestationFormatError(
            f"COSE protected header: unsupported algorithm {alg!r} (only ES384 = -35)"
        )
    if COSE_HEADER_CRIT in header:
        crit = header[COSE_HEADER_CRIT]
        if not isinstance(crit, list) or not crit:
            raise AttestationFormatError("COSE protected header: crit must be a non-empty array")
        for label in crit:
            if type(label) is not int or label != COSE_HEADER_ALG:
                raise AttestationFormatError(
                    f"COSE protected header: unknown critical header {label!r}"
                )
    for label in (COSE_HEADER_ALG, COSE_HEADER_CRIT):
        if label in unprotected:
            raise AttestationFormatError(
                f"COSE unprotected header: label {label} must be in the protected header"
            )


def _parse_payload(payload: bytes) -> dict[str, Any]:
    doc = _cbor.loads(payload, what="attestation payload")
    if not isinstance(doc, dict):
        raise AttestationFormatError("attestation payload: expected a map")
    for key in doc:
        if not isinstance(key, str) or key not in PAYLOAD_FIELDS:
            raise AttestationFormatError(f"attestation payload: unknown field {key!r}")
    for name in _REQUIRED_FIELDS:
        if doc.get(name) is None:
            raise AttestationFormatError(f"attestation payload: missing field {name!r}")

    module_id = doc["module_id"]
    if not isinstance(module_id, str) or not 0 < len(module_id) <= MAX_MODULE_ID_LENGTH:
        raise AttestationFormatError(
            f"module_id: expected text of 1 to {MAX_MODULE_ID_LENGTH} characters"
        )
    if doc["digest"] != DIGEST:
        raise AttestationFormatError(f"digest: expected {DIGEST!r}, got {doc['digest']!r}")
    timestamp = doc["timestamp"]
    if type(timestamp) is not int or not 0 < timestamp <= _MAX_TIMESTAMP_MS:
        raise AttestationFormatError("timestamp: expected a positive integer (ms since epoch)")

    certificate = _certificate(doc["certificate"], "certificate")
    cabundle = doc["cabundle"]
    if not isinstance(cabundle, list) or not 0 < len(cabundle) <= MAX_CABUNDLE_LENGTH:
        raise AttestationFormatError(
            f"cabundle: expected an array of 1 to {MAX_CABUNDLE_LENGTH} certificates"
        )
    return {
        "module_id": module_id,
        "digest": DIGEST,
        "timestamp": timestamp,
        "pcrs": _pcrs(doc["pcrs"]),
        "certificate": certificate,
        "cabundle": tuple(_certificate(der, f"cabundle[{i}]") for i, der in enumerate(cabundle)),
        "public_key": _optional(doc.get("public_key"), "public_key", 1),
        "user_data": _optional(doc.get("user_data"), "user_data", 0),
        "nonce": _optional(doc.get("nonce"), "nonce", 0),
    }


def _pcrs(value: object) -> Mapping[int, bytes]:
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_PCRS:
        raise AttestationFormatError(f"pcrs: expected a map of 1 to {MAX_PCRS} entries")
    pcrs: dict[int, bytes] = {}
    for index, pcr in value.items():
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise AttestationFormatError(f"pcrs: invalid index {index!r} (expected 0 to 31)")
        if not isinstance(pcr, bytes) or len(pcr) not in PCR_SIZES:
            raise AttestationFormatError(f"PCR{index}: expected 32, 48 or 64 bytes")
        pcrs[index] = pcr
    return MappingProxyType(pcrs)


def _certificate(value: object, what: str) -> bytes:
    der = _bytes(value, what, 1, MAX_CERTIFICATE_SIZE)
    try:
        certificate = x509.load_der_x509_certificate(der)
        # cryptography decodes names, extensions and keys lazily: decode them now, so that
        # a parsed document never fails later (while describing or verifying it).
        _ = (
            certificate.subject.rfc4514_string(),
            certificate.issuer.rfc4514_string(),
            certificate.extensions,
            certificate.public_key(),
        )
    except Exception as exc:  # ValueError, TypeError, InvalidVersion, DuplicateExtension, ...
        raise AttestationFormatError(f"{what}: not a usable DER X.509 certificate ({exc})") from exc
    return der


def _optional(value: object, what: str, min_size: int) -> bytes | None:
    return None if value is None else _bytes(value, what, min_size, MAX_USER_FIELD_SIZE)


def _bytes(value: object, what: str, min_size: int, max_size: int) -> bytes:
    if not isinstance(value, bytes):
        raise AttestationFormatError(f"{what}: expected a byte string, got {type(value).__name__}")
    if not min_size <= len(value) <= max_size:
        raise AttestationFormatError(
            f"{what}: {len(value)} bytes (expected {min_size} to {max_size})"
        )
    return value
