"""An in-process stand-in for KMS, for bench_sealing.py: the bench measures the format, not KMS.

GenerateDataKey and Decrypt wrap data keys with AES-GCM under one master key
derived from a fixed string, so that every benchmark subprocess can decrypt
what another one sealed. It is not a key service and protects nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strongroom.keys.base import DataKey, Decrypted

KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/bench"
_MASTER = AESGCM(hashlib.sha256(b"strongroom bench master key").digest())


class BenchKeyService:
    """The two KeyService calls sealing makes."""

    def generate_data_key(
        self,
        key_id: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
        number_of_bytes: int = 32,
    ) -> DataKey:
        plaintext = os.urandom(number_of_bytes)
        nonce = os.urandom(12)
        blob = nonce + _MASTER.encrypt(nonce, plaintext, _aad(encryption_context))
        return DataKey(key_id=KEY_ARN, ciphertext_blob=blob, plaintext=plaintext)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> Decrypted:
        nonce, sealed = ciphertext_blob[:12], ciphertext_blob[12:]
        plaintext = _MASTER.decrypt(nonce, sealed, _aad(encryption_context))
        return Decrypted(key_id=KEY_ARN, plaintext=plaintext)


def _aad(context: Mapping[str, str] | None) -> bytes:
    return json.dumps(dict(context or {}), sort_keys=True).encode()
