"""The KeyService interface: what every component may ask of a key service.

Two implementations exist:

- :class:`strongroom.keys.local.LocalKeyService` — the embedded key service,
  backed by the workspace key store. It evaluates key policies for a given
  caller; the KMS-compatible HTTP server (:mod:`strongroom.keys.server`) wraps
  it, one instance per authenticated request.
- :class:`strongroom.keys.aws.KmsKeyService` — boto3's ``kms`` client. It talks
  to AWS KMS, or to ``strongroom keys serve`` on the local target, which is how
  the CLI reaches the local service: one code path for both targets.

Callers never see backend exceptions: every method raises
:class:`strongroom.errors.StrongroomError` subclasses (``AccessDeniedError``
for policy denials, ``NotFoundError`` for unknown keys, ``TamperedError`` for
invalid ciphertext, ``UnavailableError`` when the service cannot be reached).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from strongroom.errors import InvalidInputError, StrongroomError, TamperedError

#: The only key-encryption algorithm KMS supports for a Recipient.
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"

EncryptionContext = Mapping[str, str]


class KeyStateError(StrongroomError):
    """The key exists but its state forbids the operation (disabled, pending deletion)."""

    exit_code = 3


class InvalidCiphertextError(TamperedError):
    """The ciphertext blob was not produced by this key service, was altered,
    or the encryption context differs from the one it was encrypted with."""


class IncorrectKeyError(TamperedError):
    """The ciphertext was encrypted under another key than the one named."""


@dataclass(frozen=True)
class Recipient:
    """KMS's ``Recipient`` parameter: release the result to the key in an attestation."""

    attestation_document: bytes
    key_encryption_algorithm: str = RECIPIENT_ALGORITHM


@dataclass(frozen=True)
class KeyMetadata:
    key_id: str
    arn: str
    account_id: str
    description: str
    state: str  # Enabled | Disabled | PendingDeletion
    creation_date: datetime
    deletion_date: datetime | None = None
    rotation_enabled: bool = False
    key_spec: str = "SYMMETRIC_DEFAULT"
    key_usage: str = "ENCRYPT_DECRYPT"


MAX_ALIAS_NAME = 256
#: KMS's alias names: ASCII letters, digits, '/', '_' and '-' after "alias/".
_ALIAS_NAME = re.compile(r"alias/[a-zA-Z0-9/_-]+", re.ASCII)
_RESERVED_ALIAS_PREFIX = "alias/aws/"


class AliasNameError(InvalidInputError):
    pass


def check_alias_name(name: str) -> None:
    """KMS's rule, to the letter: lookalike Unicode letters would make aliases that
    read the same and name different keys. The key service applies it; a client may
    too, before it creates anything that the alias was meant to name."""
    shown = ascii(name[:64])
    if len(name) > MAX_ALIAS_NAME or name.startswith(_RESERVED_ALIAS_PREFIX):
        raise AliasNameError(
            f"invalid alias name {shown}",
            hint=f"at most {MAX_ALIAS_NAME} characters, not starting with "
            f"'{_RESERVED_ALIAS_PREFIX}'",
        )
    if not _ALIAS_NAME.fullmatch(name):
        raise AliasNameError(
            f"invalid alias name {shown}",
            hint="alias names are 'alias/' followed by ASCII letters, digits, '/', '_' and '-'",
        )


@dataclass(frozen=True)
class Alias:
    name: str  # "alias/..."
    arn: str
    target_key_id: str | None


@dataclass(frozen=True)
class DataKey:
    """The result of GenerateDataKey(WithoutPlaintext).

    Exactly one of ``plaintext`` and ``ciphertext_for_recipient`` is set for
    GenerateDataKey; neither for GenerateDataKeyWithoutPlaintext.
    """

    key_id: str  # the key ARN, as KMS returns it
    ciphertext_blob: bytes
    plaintext: bytes | None = field(default=None, repr=False)
    ciphertext_for_recipient: bytes | None = None


@dataclass(frozen=True)
class Decrypted:
    key_id: str
    plaintext: bytes | None = field(default=None, repr=False)
    ciphertext_for_recipient: bytes | None = None


@dataclass(frozen=True)
class RandomBytes:
    plaintext: bytes | None = field(default=None, repr=False)
    ciphertext_for_recipient: bytes | None = None


@runtime_checkable
class KeyService(Protocol):
    """The subset of the AWS KMS API Strongroom relies on.

    ``key_id`` arguments accept a key id, a key ARN, an alias name
    (``alias/...``) or an alias ARN, as KMS does.
    """

    def create_key(self, *, description: str = "", policy: str | None = None) -> KeyMetadata: ...

    def describe_key(self, key_id: str) -> KeyMetadata: ...

    def list_keys(self) -> list[KeyMetadata]: ...

    def create_alias(self, alias_name: str, key_id: str) -> None: ...

    def delete_alias(self, alias_name: str) -> None: ...

    def list_aliases(self, key_id: str | None = None) -> list[Alias]: ...

    def generate_data_key(
        self,
        key_id: str,
        *,
        encryption_context: EncryptionContext | None = None,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> DataKey: ...

    def generate_data_key_without_plaintext(
        self,
        key_id: str,
        *,
        encryption_context: EncryptionContext | None = None,
        number_of_bytes: int = 32,
    ) -> DataKey: ...

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        *,
        encryption_context: EncryptionContext | None = None,
    ) -> bytes: ...

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: EncryptionContext | None = None,
        recipient: Recipient | None = None,
    ) -> Decrypted: ...

    def generate_random(
        self, number_of_bytes: int, *, recipient: Recipient | None = None
    ) -> RandomBytes: ...

    def get_key_policy(self, key_id: str) -> str: ...

    def put_key_policy(self, key_id: str, policy: str) -> None: ...

    def list_key_policies(self, key_id: str) -> list[str]: ...

    def enable_key_rotation(self, key_id: str) -> None: ...

    def schedule_key_deletion(self, key_id: str, *, pending_window_days: int = 30) -> datetime: ...

    def cancel_key_deletion(self, key_id: str) -> None: ...
