"""Enclave-side key release: get a key out of the key service *into this enclave only*.

The protocol, run inside the enclave for every release:

1. generate an ephemeral RSA-2048 key pair (it lives only in enclave memory
   and only for this call);
2. attest, binding the DER SubjectPublicKeyInfo of that key (and a random
   nonce) into a document signed by the Nitro hypervisor or the local authority;
3. call the key service with ``Recipient(document)``; its key policy checks the
   document's measurements, and it returns ``CiphertextForRecipient`` — the
   result sealed to the ephemeral key — instead of a plaintext;
4. open the envelope with the ephemeral private key.

A response that carries a plaintext instead of the envelope is refused: it
means the key service ignored the Recipient, i.e. the release was not bound
to the attestation, and the key may have been visible on the way in.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from strongroom.attestation.base import Attestor
from strongroom.attestation.recipient import open_for_recipient
from strongroom.errors import AccessDeniedError, ServiceError, VerificationError
from strongroom.keys.base import DataKey, KeyService, Recipient

RECIPIENT_KEY_SIZE = 2048
RSA_PUBLIC_EXPONENT = 65537
NONCE_SIZE = 32


def decrypt_with_attestation(
    keys: KeyService,
    attestor: Attestor,
    ciphertext_blob: bytes,
    *,
    key_id: str | None = None,
    encryption_context: Mapping[str, str] | None = None,
    allowed_key_ids: Collection[str] | None = None,
) -> bytes:
    """Decrypt ``ciphertext_blob`` so that the plaintext exists only in this enclave.

    With ``allowed_key_ids``, a result from any other key (as the key service
    names it) is refused before it is opened.
    """
    private_key, recipient = _ephemeral_recipient(attestor)
    result = keys.decrypt(
        ciphertext_blob,
        key_id=key_id,
        encryption_context=encryption_context,
        recipient=recipient,
    )
    if allowed_key_ids is not None and result.key_id not in allowed_key_ids:
        raise AccessDeniedError(
            f"the data key came from {result.key_id}, which this enclave image does not pin"
        )
    return _open(result.plaintext, result.ciphertext_for_recipient, private_key)


def generate_data_key_with_attestation(
    keys: KeyService,
    attestor: Attestor,
    key_id: str,
    *,
    encryption_context: Mapping[str, str] | None = None,
    number_of_bytes: int = 32,
) -> DataKey:
    """GenerateDataKey whose plaintext copy is released only to this enclave.

    The returned :class:`DataKey` carries the opened plaintext and the
    ``ciphertext_blob`` to store next to the data.
    """
    private_key, recipient = _ephemeral_recipient(attestor)
    result = keys.generate_data_key(
        key_id,
        encryption_context=encryption_context,
        number_of_bytes=number_of_bytes,
        recipient=recipient,
    )
    plaintext = _open(result.plaintext, result.ciphertext_for_recipient, private_key)
    return DataKey(
        key_id=result.key_id, ciphertext_blob=result.ciphertext_blob, plaintext=plaintext
    )


def _generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(
        public_exponent=RSA_PUBLIC_EXPONENT, key_size=RECIPIENT_KEY_SIZE
    )


class _SpareKeys:
    """Single-use RSA keys, each generated in the background before it is needed.

    An RSA-2048 key costs ~40 ms, the largest part of a key release; making the
    next one while the enclave is idle takes it off every run's critical path.
    Every key is still used for exactly one release.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsa-keygen")
        self._next: Future[rsa.RSAPrivateKey] | None = None

    def take(self) -> rsa.RSAPrivateKey:
        with self._lock:
            current = self._next or self._executor.submit(_generate_key)
            self._next = self._executor.submit(_generate_key)
        return current.result()


_spare_keys = _SpareKeys()


def _ephemeral_recipient(attestor: Attestor) -> tuple[rsa.RSAPrivateKey, Recipient]:
    private_key = _spare_keys.take()
    public_key = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = attestor.attest(public_key=public_key, nonce=os.urandom(NONCE_SIZE))
    return private_key, Recipient(document)


def _open(
    plaintext: bytes | None, ciphertext_for_recipient: bytes | None, private_key: rsa.RSAPrivateKey
) -> bytes:
    if plaintext:
        raise VerificationError(
            "the key service returned a plaintext instead of CiphertextForRecipient: "
            "the release was not bound to this enclave's attestation",
            hint="use a key service that honours Recipient (AWS KMS, `strongroom keys serve`)",
        )
    if ciphertext_for_recipient is None:
        raise ServiceError(
            "the key service returned neither a plaintext nor CiphertextForRecipient"
        )
    return open_for_recipient(ciphertext_for_recipient, private_key)
