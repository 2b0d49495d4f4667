"""docs/FORMAT.md's test vectors: the document, the code and the spec agree.

The vectors are re-derived here from the primitives, following the text of
FORMAT.md (struct layout, HKDF, nonce, AAD), independently of the library.
"""

from __future__ import annotations

import hashlib
import io
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.sealing import read_header
from strongroom.sealing.stream import ChunkReader

from . import make_vectors as v


def test_document_holds_the_generated_vectors() -> None:
    document = v.FORMAT_MD.read_text()
    assert v.document_section(document) == v.render(), (
        "docs/FORMAT.md is stale: run .venv/bin/python tests/unit/sealing/make_vectors.py --write"
    )


def spec_header() -> bytes:
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
    size = 65 + len(tail)
    fixed = (
        b"STRONGRM"
        + bytes([1])
        + size.to_bytes(4, "big")
        + bytes([1])
        + v.CHUNK_SIZE.to_bytes(4, "big")
        + v.SALT
        + v.NONCE_PREFIX
        + v.CREATED.to_bytes(8, "big")
    )
    return fixed + tail


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


def test_bodies_follow_the_spec_and_decrypt() -> None:
    header = v.vector_header()
    for payload in v.PAYLOADS.values():
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
