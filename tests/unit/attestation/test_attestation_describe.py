"""The JSON description the CLI prints next to a verdict."""

from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from strongroom.attestation.authority import LocalAuthority
from strongroom.attestation.describe import describe
from strongroom.attestation.document import AttestationDocument

from .helpers import NOW, PCRS


def test_describe_production_document(production_doc: bytes) -> None:
    description = describe(AttestationDocument.parse(production_doc))
    assert json.loads(json.dumps(description)) == description
    assert description["module_id"] == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    assert description["timestamp"] == "2024-09-07T14:37:39.545Z"
    assert description["digest"] == "SHA384"
    assert description["pcrs"]["0"].startswith("e72a46ca")
    assert len(description["pcrs"]) == 16
    assert description["debug_mode"] is False
    assert description["cabundle"][0]["subject"] == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert len(description["cabundle"]) == 4
    assert description["certificate"]["not_after"] == "2024-09-07T17:37:39+00:00"
    assert description["public_key"] == {
        "size": 1024,
        "sha256": hashlib.sha256(b"\x01" * 1024).hexdigest(),
        "type": "unrecognised",
    }
    assert description["user_data"]["size"] == 1024
    assert description["size"] == len(production_doc)


def test_describe_debug_document(debug_doc: bytes) -> None:
    assert describe(AttestationDocument.parse(debug_doc))["debug_mode"] is True


def test_describe_local_document(authority: LocalAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    data = authority.attest(PCRS, module_id="m", public_key=spki, nonce=b"\x07" * 8, now=NOW)
    description = describe(AttestationDocument.parse(data))
    assert description["public_key"]["type"] == "RSA-2048"
    assert description["nonce"] == {"size": 8, "hex": "07" * 8}
    assert description["user_data"] is None
    assert description["timestamp"] == "2030-06-01T12:00:00.000Z"
