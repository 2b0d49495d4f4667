"""Ciphertext blobs of the local key service.

Layout (all integers big-endian)::

    magic    4 bytes   b"SRK\\x01"
    key id  16 bytes   the KMS key's UUID
    version  4 bytes   the key-material version used (rotation keeps old ones)
    nonce   12 bytes   random AES-GCM nonce
    sealed   n+16      AES-256-GCM(material, nonce, plaintext, aad)

``aad = magic ‖ key id ‖ version ‖ canonical(encryption context)`` where the
canonical context is compact JSON with sorted keys. So a blob names its key and
version (Decrypt needs no KeyId, as on KMS), and decrypting it under another
encryption context fails authentication, as on KMS.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strongroom.keys.base import InvalidCiphertextError

MAGIC = b"SRK\x01"
_HEADER = struct.Struct(">4s16sI")
NONCE_BYTES = 12
TAG_BYTES = 16
MIN_BLOB = _HEADER.size + NONCE_BYTES + TAG_BYTES
MAX_BLOB = 6144  # KMS's CiphertextBlob limit


@dataclass(frozen=True)
class BlobHeader:
    key_id: str
    version: int


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    return json.dumps(dict(context or {}), sort_keys=True, separators=(",", ":")).encode()


def parse_header(blob: bytes) -> BlobHeader:
    if not (MIN_BLOB <= len(blob) <= MAX_BLOB) or blob[:4] != MAGIC:
        raise InvalidCiphertextError("the ciphertext blob was not produced by this key service")
    _, raw_id, version = _HEADER.unpack_from(blob)
    return BlobHeader(key_id=str(uuid.UUID(bytes=raw_id)), version=version)


def seal(
    material: bytes,
    key_id: str,
    version: int,
    plaintext: bytes,
    context: Mapping[str, str] | None,
) -> bytes:
    header = _HEADER.pack(MAGIC, uuid.UUID(key_id).bytes, version)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(material).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + nonce + sealed


def open_blob(material: bytes, blob: bytes, context: Mapping[str, str] | None) -> bytes:
    header = blob[: _HEADER.size]
    nonce = blob[_HEADER.size : _HEADER.size + NONCE_BYTES]
    try:
        return AESGCM(material).decrypt(
            nonce, blob[_HEADER.size + NONCE_BYTES :], header + canonical_context(context)
        )
    except InvalidTag:
        raise InvalidCiphertextError(
            "the ciphertext is invalid for this key or encryption context",
            hint="decrypt with exactly the encryption context it was encrypted with",
        ) from None
