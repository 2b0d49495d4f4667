"""docs/FORMAT.md's test vectors: the document, the code and the spec agree.

The vectors are re-derived here from the primitives, following the text of
FORMAT.md (struct layout, manifest JSON, Ed25519 signature, HKDF, nonce,
AAD), independently of the library.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.sealing import SealedHeader, read_header, verify_signature
from strongroom.sealing.stream import ChunkReader

from . import make_vectors as v


def test_document_holds_the_generated_vectors() -> None:
    document = v.FORMAT_MD.read_text()
    assert v.document_section(document) == v.render(), (
        "docs/FORMAT.md is stale: run .venv/bin/python tests/unit/sealing/make_vectors.py --write"
    )


def spec_header(version: int = 1, manifest: bytes = b"", signed: bool = False) -> bytes:
    key_id = v.KEY_ID.encode()
    context = struct.pack(">H", len(v.CONTEXT))
    for key in sorted(v.CONTEXT):
        for text in (key.encode(), v.CONTEXT[key].encode()):
            context += struct.pack(">H", len(text)) + text
    tail = (
        struct.pack(">H", len(key_id))
        + key_id
        + struct.pack(">H", len(v.ENCRYPTED_DATA_KEY))
        + v.ENCRYPTED_DATA_KEY
        + context
    )
    signature_section = 0
    if version == 2:
        tail += struct.pack(">I", len(manifest)) + manifest
        signature_section = 2 + (96 if signed else 0)
    size = 65 + len(tail) + signature_section
    fixed = (
        b"STRONGRM"
        + bytes([version])
        + size.to_bytes(4, "big")
        + bytes([1])
        + v.CHUNK_SIZE.to_bytes(4, "big")
        + v.SALT
        + v.NONCE_PREFIX
        + v.CREATED.to_bytes(8, "big")
    )
    if version == 1:
        return fixed + tail
    if not signed:
        return fixed + tail + b"\x00\x00"
    key = Ed25519PrivateKey.from_private_bytes(v.SIGNING_SEED)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signature = key.sign(b"strongroom package header v2\x00" + fixed + tail)
    return fixed + tail + struct.pack(">H", 96) + public + signature


def spec_manifest() -> bytes:
    """The manifest of the vectors, written as FORMAT.md describes its canonical JSON."""
    document = {
        "entries": ["main.py", "tools/train.py"],
        "env": ["CLASSIFIER_THREADS"],
        "egress": ["api.example.com:443"],
        "resources": {"memory_mib": 512, "processes": 64},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def spec_body(header: bytes, payload: bytes) -> bytes:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=v.SALT, info=b"strongroom v1 payload key"
    ).derive(v.DATA_KEY)
    aad = hashlib.sha256(header).digest()
    count = len(payload) // v.CHUNK_SIZE + 1
    body = b""
    for i in range(count):
        final = i == count - 1
        nonce = v.NONCE_PREFIX + i.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
        piece = payload[i * v.CHUNK_SIZE : (i + 1) * v.CHUNK_SIZE]
        body += AESGCM(key).encrypt(nonce, piece, aad)
    return body


def test_header_follows_the_spec() -> None:
    header = v.vector_header()
    assert header.raw == spec_header()
    parsed = read_header(io.BytesIO(header.raw))
    assert parsed == header


def test_v2_headers_follow_the_spec() -> None:
    signed = v.signed_header()
    assert v.MANIFEST.canonical() == spec_manifest()
    assert signed.raw == spec_header(2, spec_manifest(), signed=True)
    parsed = read_header(io.BytesIO(signed.raw))
    assert parsed == signed
    assert isinstance(parsed, SealedHeader)
    assert parsed.manifest == v.MANIFEST and parsed.format == "strongroom-v2"
    public = signed.raw[-96:-64]
    assert parsed.signer == public and verify_signature(parsed, [public]) == public

    plain = v.plain_header()
    assert plain.raw == spec_header(2)
    parsed = read_header(io.BytesIO(plain.raw))
    assert parsed == plain
    assert isinstance(parsed, SealedHeader)
    assert parsed.manifest is None and parsed.signer is None


def test_v1_header_is_still_read() -> None:
    parsed = read_header(io.BytesIO(spec_header()))
    assert isinstance(parsed, SealedHeader)
    assert (parsed.version, parsed.format, parsed.manifest, parsed.signer) == (
        1,
        "strongroom-v1",
        None,
        None,
    )


def test_bodies_follow_the_spec_and_decrypt() -> None:
    cases = [(v.vector_header(), name) for name in v.PAYLOADS]
    cases += [(v.signed_header(), name) for name in v.V2_PAYLOADS]
    for header, name in cases:
        payload = v.PAYLOADS[name]
        body = v.seal_payload(header, payload)
        assert body == spec_body(header.raw, payload)
        reader = ChunkReader(
            io.BytesIO(body),
            v.derive_payload_key(v.DATA_KEY, v.SALT),
            v.NONCE_PREFIX,
            header.aad,
            v.CHUNK_SIZE,
        )
        assert reader.read() == payload


def test_tar_vector_is_stable() -> None:
    """The same tree gives the same tar, run after run."""
    assert v.tar_of_tree() == v.tar_of_tree()
