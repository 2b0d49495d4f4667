"""Helpers shared by the attestation tests: recorded documents, frozen times, a forgeable PKI."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from strongroom.attestation.document import sign_document

ASSETS = Path(__file__).resolve().parents[2] / "assets"
PRODUCTION_TIME = datetime(2024, 9, 7, 14, 37, 39, 545000, tzinfo=UTC)
DEBUG_TIME = datetime(2024, 9, 7, 14, 38, 6, 508000, tzinfo=UTC)
#: The frozen "now" of documents made by the tests themselves.
NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
PCRS = {0: bytes([0xA0]) * 48, 1: bytes([0xA1]) * 48, 2: bytes([0xA2]) * 48, 4: bytes([4]) * 48}


def asset_document(name: str) -> bytes:
    """A recorded document from tests/assets, decoded from base64."""
    return base64.b64decode((ASSETS / name).read_bytes())


PRODUCTION_DOC = asset_document("nitro-attestation-production.b64")
DEBUG_DOC = asset_document("nitro-attestation-debug.b64")


#: Marks a payload field to remove in :func:`rebuild`.
DELETE = object()


def rebuild(document: bytes, **changes: Any) -> bytes:
    """Re-encode ``document`` with COSE parts or payload fields replaced (signature kept).

    Keys ``protected``, ``unprotected``, ``signature`` replace COSE parts;
    ``payload`` replaces the payload bytes; any other key replaces a payload
    field (``...=DELETE`` removes it).
    """
    protected, unprotected, payload, signature = cbor2.loads(document)
    fields = cbor2.loads(payload)
    for name, value in changes.items():
        if name in ("protected", "unprotected", "signature", "payload"):
            continue
        if value is DELETE:
            fields.pop(name, None)
        else:
            fields[name] = value
    payload = changes.get("payload", cbor2.dumps(fields))
    return cbor2.dumps(
        [
            changes.get("protected", protected),
            changes.get("unprotected", unprotected),
            payload,
            changes.get("signature", signature),
        ]
    )


# --- a PKI whose every property a test can spoil ---------------------------------------


@dataclass
class Cert:
    key: Any
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


@dataclass
class Pki:
    """Issue certificates and documents with chosen defects, at the frozen time NOW."""

    now: datetime = NOW

    def issue(
        self,
        name: str,
        issuer: Cert | None,
        *,
        ca: bool,
        path_length: int | None = None,
        key_cert_sign: bool | None = None,
        digital_signature: bool | None = None,
        basic_constraints: bool = True,
        lifetime: timedelta = timedelta(days=10),
        not_before: datetime | None = None,
        key: Any = None,
        hash_algorithm: hashes.HashAlgorithm | None = None,
        issuer_name: x509.Name | None = None,
        extra_extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    ) -> Cert:
        key = key or ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = not_before or self.now - timedelta(hours=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name or (issuer.certificate.subject if issuer else subject))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
        )
        if basic_constraints:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                critical=True,
            )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=not ca if digital_signature is None else digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca if key_cert_sign is None else key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        for extension, critical in extra_extensions:
            builder = builder.add_extension(extension, critical=critical)
        signer = issuer.key if issuer else key
        return Cert(key, builder.sign(signer, hash_algorithm or hashes.SHA384()))

    def chain(self) -> tuple[Cert, Cert, Cert]:
        """A sound root → intermediate → leaf chain."""
        root = self.issue("forged-root", None, ca=True, lifetime=timedelta(days=3650))
        intermediate = self.issue("forged-intermediate", root, ca=True, path_length=0)
        leaf = self.issue("forged-leaf", intermediate, ca=False, lifetime=timedelta(hours=3))
        return root, intermediate, leaf

    def document(
        self,
        leaf: Cert,
        cabundle: list[Cert],
        *,
        signing_key: Any = None,
        timestamp: datetime | None = None,
        pcrs: dict[int, bytes] | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        moment = timestamp or self.now
        return sign_document(
            module_id="i-forged-enc0",
            timestamp=int(moment.timestamp() * 1000),
            pcrs=PCRS if pcrs is None else pcrs,
            certificate=leaf.der,
            cabundle=[cert.der for cert in cabundle],
            public_key=public_key,
            user_data=None,
            nonce=nonce,
            signing_key=signing_key or leaf.key,
        )
