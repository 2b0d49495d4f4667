"""Fixtures for the sealing tests: an in-memory key service and small app trees.

:class:`FakeKeyService` implements the two KeyService calls sealing makes
(GenerateDataKey and Decrypt) with AES-GCM under per-key master keys, and
binds the encryption context as associated data, like KMS. The real key
service is tested in tests/unit/keys and tests/integration.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strongroom.errors import NotFoundError, TamperedError
from strongroom.keys.base import DataKey, Decrypted
from strongroom.sealing import inspect, seal
from strongroom.sealing.format import FORMAT_VERSION, build_header
from strongroom.sealing.stream import ChunkWriter, derive_payload_key

from .helpers import CHUNK, CONTEXT

ARN_PREFIX = "arn:aws:kms:eu-west-1:111122223333:key/"
_HINT = "(fake key service)"


class FakeKeyService:
    """GenerateDataKey and Decrypt over in-memory master keys."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self.calls: list[tuple[str, str | None, dict[str, str]]] = []

    def create_key(self, key_id: str) -> str:
        self._keys[key_id] = AESGCM.generate_key(bit_length=256)
        return ARN_PREFIX + key_id

    def generate_data_key(
        self,
        key_id: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
        number_of_bytes: int = 32,
        recipient: object = None,
    ) -> DataKey:
        key_id = self._resolve(key_id)
        context = dict(encryption_context or {})
        self.calls.append(("GenerateDataKey", key_id, context))
        plaintext = os.urandom(number_of_bytes)
        nonce = os.urandom(12)
        sealed = AESGCM(self._keys[key_id]).encrypt(nonce, plaintext, _aad(context))
        blob = key_id.encode().ljust(64, b"\0") + nonce + sealed
        return DataKey(key_id=ARN_PREFIX + key_id, ciphertext_blob=blob, plaintext=plaintext)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        recipient: object = None,
    ) -> Decrypted:
        context = dict(encryption_context or {})
        blob_key = ciphertext_blob[:64].rstrip(b"\0").decode(errors="replace")
        self.calls.append(("Decrypt", key_id, context))
        if key_id is not None and self._resolve(key_id) != blob_key:
            raise TamperedError("the ciphertext was not made under the requested key", hint=_HINT)
        if blob_key not in self._keys:
            raise TamperedError("invalid ciphertext (unknown key)", hint=_HINT)
        nonce, sealed = ciphertext_blob[64:76], ciphertext_blob[76:]
        try:
            plaintext = AESGCM(self._keys[blob_key]).decrypt(nonce, sealed, _aad(context))
        except InvalidTag:
            raise TamperedError(
                "invalid ciphertext (or wrong encryption context)", hint=_HINT
            ) from None
        return Decrypted(key_id=ARN_PREFIX + blob_key, plaintext=plaintext)

    def _resolve(self, key_id: str) -> str:
        key_id = key_id.removeprefix(ARN_PREFIX)
        if key_id not in self._keys:
            raise NotFoundError(f"key {key_id} does not exist", hint=_HINT)
        return key_id


def _aad(context: Mapping[str, str]) -> bytes:
    return json.dumps(dict(context), sort_keys=True).encode()


@pytest.fixture
def kms() -> FakeKeyService:
    return FakeKeyService()


@pytest.fixture
def key_arn(kms: FakeKeyService) -> str:
    return kms.create_key("vendor-key")


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A small app: nested dirs, an executable, a unicode name, an inside symlink."""
    root = tmp_path / "app"
    (root / "bin").mkdir(parents=True)
    (root / "models" / "v1").mkdir(parents=True)
    (root / "main.py").write_text("print('hello')\n")
    (root / "bin" / "run.sh").write_text("#!/bin/sh\nexec python3 main.py\n")
    (root / "bin" / "run.sh").chmod(0o755)
    (root / "models" / "v1" / "weights.bin").write_bytes(os.urandom(3000))
    (root / "données é.txt").write_text("unicode\n")
    (root / "empty").write_bytes(b"")
    (root / "models" / "latest").symlink_to("v1")
    return root


SealPayload = Callable[..., Path]


@pytest.fixture
def seal_payload(kms: FakeKeyService, key_arn: str) -> SealPayload:
    """Seal arbitrary payload bytes (a hand-made tar, say) as a package (v2 unless told)."""

    def make(
        payload: bytes,
        path: Path,
        *,
        chunk_size: int = CHUNK,
        context: Mapping[str, str] = CONTEXT,
        version: int = FORMAT_VERSION,
    ) -> Path:
        data_key = kms.generate_data_key(key_arn, encryption_context=context)
        assert data_key.plaintext is not None
        header = build_header(
            key_id=data_key.key_id,
            encrypted_data_key=data_key.ciphertext_blob,
            encryption_context=context,
            chunk_size=chunk_size,
            salt=os.urandom(32),
            nonce_prefix=os.urandom(7),
            created=0,
            version=version,
        )
        sink = io.BytesIO()
        sink.write(header.raw)
        writer = ChunkWriter(
            sink,
            derive_payload_key(data_key.plaintext, header.salt),
            header.nonce_prefix,
            header.aad,
            chunk_size,
        )
        writer.write(payload)
        writer.finish()
        path.write_bytes(sink.getvalue())
        return path

    return make


@pytest.fixture
def sealed(tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str) -> Path:
    """The app_dir fixture sealed with 64-byte chunks."""
    out = tmp_path / "app.sealed"
    seal(app_dir, out, kms, key_arn, context=CONTEXT, chunk_size=CHUNK)
    assert inspect(out).chunk_count
    return out
