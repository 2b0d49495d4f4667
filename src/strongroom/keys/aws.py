"""KeyService over boto3's ``kms`` client: AWS KMS, or ``strongroom keys serve``.

On the local target the CLI reaches the embedded key service through this same
client, pointed at the workspace endpoint with a workspace identity, so both
targets share one code path. botocore errors are translated here into
Strongroom errors, with hints that say what to do. A refused signature or
credential (bad signature, unknown access key, expired session token, wrong
region) becomes :class:`~strongroom.errors.CredentialError`, never a policy
denial: inside a run that is the difference between "the run's credentials
were refused" and "the image is not approved".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import boto3
import botocore.config
import botocore.exceptions

from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    CredentialError,
    InvalidInputError,
    NotFoundError,
    ServiceError,
    ServiceNotRunningError,
    StrongroomError,
    UnavailableError,
)
from strongroom.keys.base import (
    Alias,
    DataKey,
    Decrypted,
    EncryptionContext,
    IncorrectKeyError,
    InvalidCiphertextError,
    KeyMetadata,
    KeyStateError,
    RandomBytes,
    Recipient,
)

_CLIENT_ERRORS: dict[str, type[StrongroomError]] = {
    "AccessDeniedException": AccessDeniedError,
    "NotFoundException": NotFoundError,
    "AlreadyExistsException": AlreadyExistsError,
    "InvalidCiphertextException": InvalidCiphertextError,
    "IncorrectKeyException": IncorrectKeyError,
    "KMSInvalidStateException": KeyStateError,
    "DisabledException": KeyStateError,
    "ValidationException": InvalidInputError,
    "MalformedPolicyDocumentException": InvalidInputError,
    "DependencyTimeoutException": UnavailableError,
    "KMSInternalException": ServiceError,
}

#: Error codes (KMS's JSON names and STS's query names) that refuse the credentials.
CREDENTIAL_ERROR_CODES = frozenset(
    {
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "IncompleteSignature",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "MissingAuthenticationTokenException",
        "MissingAuthenticationToken",
    }
)


class KmsKeyService:
    """KeyService backed by a boto3 KMS client."""

    def __init__(
        self,
        client: Any,
        *,
        not_running_hint: str | None = None,
        credentials_label: str = "the credentials",
    ) -> None:
        self._client = client
        self._not_running_hint = not_running_hint
        self._credentials_label = credentials_label

    @classmethod
    def connect(
        cls,
        *,
        region: str,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        not_running_hint: str | None = None,
        credentials_label: str = "the credentials",
    ) -> KmsKeyService:
        """A client for ``endpoint_url`` (None: AWS), with explicit or chained credentials.

        ``credentials_label`` names the credentials in a :class:`CredentialError`
        ("the run's credentials" inside an enclave).
        """
        config = botocore.config.Config(
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        client = _client(
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            config=config,
        )
        return cls(client, not_running_hint=not_running_hint, credentials_label=credentials_label)

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = getattr(self._client, operation)(
                **{k: v for k, v in params.items() if v is not None}
            )
            return result
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            message = e.response.get("Error", {}).get("Message", "") or str(e)
            if code in CREDENTIAL_ERROR_CODES:
                raise CredentialError(
                    f"{self._credentials_label} were refused by the key service: {message} ({code})"
                ) from e
            error_class = _CLIENT_ERRORS.get(code, ServiceError)
            raise error_class(f"{message} ({code})") from e
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(
                e, "the key service", not_running_hint=self._not_running_hint
            ) from e

    @staticmethod
    def _metadata(raw: dict[str, Any]) -> KeyMetadata:
        return KeyMetadata(
            key_id=raw["KeyId"],
            arn=raw["Arn"],
            account_id=raw["AWSAccountId"],
            description=raw.get("Description", ""),
            state=raw.get("KeyState", "Enabled"),
            creation_date=raw["CreationDate"],
            deletion_date=raw.get("DeletionDate"),
        )

    @staticmethod
    def _recipient(recipient: Recipient | None) -> dict[str, Any] | None:
        if recipient is None:
            return None
        return {
            "KeyEncryptionAlgorithm": recipient.key_encryption_algorithm,
            "AttestationDocument": recipient.attestation_document,
        }

    def create_key(self, *, description: str = "", policy: str | None = None) -> KeyMetadata:
        raw = self._call("create_key", Description=description, Policy=policy)
        return self._metadata(raw["KeyMetadata"])

    def describe_key(self, key_id: str) -> KeyMetadata:
        return self._metadata(self._call("describe_key", KeyId=key_id)["KeyMetadata"])

    def list_keys(self) -> list[KeyMetadata]:
        keys = _paginate(lambda marker: self._call("list_keys", Marker=marker), "Keys")
        return [self.describe_key(k["KeyArn"]) for k in keys]

    def create_alias(self, alias_name: str, key_id: str) -> None:
        self._call("create_alias", AliasName=alias_name, TargetKeyId=key_id)

    def delete_alias(self, alias_name: str) -> None:
        self._call("delete_alias", AliasName=alias_name)

    def list_aliases(self, key_id: str | None = None) -> list[Alias]:
        aliases = _paginate(
            lambda marker: self._call("list_aliases", KeyId=key_id, Marker=marker), "Aliases"
        )
        return [Alias(a["AliasName"], a["AliasArn"], a.get("TargetKeyId")) for a in aliases]

    def generate_data_key(
        self,
        key_id: str,
        *,
        encryption_context: EncryptionContext | None = None,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> DataKey:
        raw = self._call(
            "generate_data_key",
            KeyId=key_id,
            NumberOfBytes=number_of_bytes,
            EncryptionContext=dict(encryption_context) if encryption_context else None,
            Recipient=self._recipient(recipient),
        )
        return DataKey(
            key_id=raw["KeyId"],
            ciphertext_blob=raw["CiphertextBlob"],
            plaintext=raw.get("Plaintext") or None,
            ciphertext_for_recipient=raw.get("CiphertextForRecipient"),
        )

    def generate_data_key_without_plaintext(
        self,
        key_id: str,
        *,
        encryption_context: EncryptionContext | None = None,
        number_of_bytes: int = 32,
    ) -> DataKey:
        raw = self._call(
            "generate_data_key_without_plaintext",
            KeyId=key_id,
            NumberOfBytes=number_of_bytes,
            EncryptionContext=dict(encryption_context) if encryption_context else None,
        )
        return DataKey(key_id=raw["KeyId"], ciphertext_blob=raw["CiphertextBlob"])

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        *,
        encryption_context: EncryptionContext | None = None,
    ) -> bytes:
        raw = self._call(
            "encrypt",
            KeyId=key_id,
            Plaintext=plaintext,
            EncryptionContext=dict(encryption_context) if encryption_context else None,
        )
        blob: bytes = raw["CiphertextBlob"]
        return blob

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: EncryptionContext | None = None,
        recipient: Recipient | None = None,
    ) -> Decrypted:
        raw = self._call(
            "decrypt",
            CiphertextBlob=ciphertext_blob,
            KeyId=key_id,
            EncryptionContext=dict(encryption_context) if encryption_context else None,
            Recipient=self._recipient(recipient),
        )
        return Decrypted(
            key_id=raw["KeyId"],
            plaintext=raw.get("Plaintext") or None,
            ciphertext_for_recipient=raw.get("CiphertextForRecipient"),
        )

    def generate_random(
        self, number_of_bytes: int, *, recipient: Recipient | None = None
    ) -> RandomBytes:
        raw = self._call(
            "generate_random", NumberOfBytes=number_of_bytes, Recipient=self._recipient(recipient)
        )
        return RandomBytes(
            plaintext=raw.get("Plaintext") or None,
            ciphertext_for_recipient=raw.get("CiphertextForRecipient"),
        )

    def get_key_policy(self, key_id: str) -> str:
        policy: str = self._call("get_key_policy", KeyId=key_id, PolicyName="default")["Policy"]
        return policy

    def put_key_policy(self, key_id: str, policy: str) -> None:
        self._call("put_key_policy", KeyId=key_id, PolicyName="default", Policy=policy)

    def list_key_policies(self, key_id: str) -> list[str]:
        names: list[str] = self._call("list_key_policies", KeyId=key_id)["PolicyNames"]
        return names

    def enable_key_rotation(self, key_id: str) -> None:
        self._call("enable_key_rotation", KeyId=key_id)

    def schedule_key_deletion(self, key_id: str, *, pending_window_days: int = 30) -> datetime:
        raw = self._call(
            "schedule_key_deletion", KeyId=key_id, PendingWindowInDays=pending_window_days
        )
        when: datetime = raw["DeletionDate"]
        return when

    def cancel_key_deletion(self, key_id: str) -> None:
        self._call("cancel_key_deletion", KeyId=key_id)


_session_lock = threading.Lock()
_shared_session: boto3.session.Session | None = None


def botocore_failure(
    error: botocore.exceptions.BotoCoreError, service: str, *, not_running_hint: str | None
) -> StrongroomError:
    """Our error for a botocore failure that is not an answer from ``service``."""
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return ServiceNotRunningError(
            f"cannot reach {service} at {error.kwargs.get('endpoint_url')}", hint=not_running_hint
        )
    if isinstance(
        error, botocore.exceptions.NoCredentialsError | botocore.exceptions.NoRegionError
    ):
        return InvalidInputError(
            str(error), hint="configure AWS credentials and region (e.g. AWS_PROFILE, AWS_REGION)"
        )
    return UnavailableError(f"{service} request failed: {error}")


def boto_client(service_name: Literal["kms", "sts"], **kwargs: Any) -> Any:
    """A boto3 client from one per-process boto3 session.

    Making a session loads botocore's models (~50 ms), too slow for every run;
    sessions are not thread-safe, so clients are made under a lock. Each
    client still carries its own credentials and endpoint.
    """
    global _shared_session
    with _session_lock:
        if _shared_session is None:
            _shared_session = boto3.session.Session()
        return _shared_session.client(service_name, **kwargs)


def default_credentials() -> Any:
    """What boto3's default credential chain finds (None if nothing), frozen."""
    global _shared_session
    with _session_lock:
        if _shared_session is None:
            _shared_session = boto3.session.Session()
        found = _shared_session.get_credentials()
    return None if found is None else found.get_frozen_credentials()


def _client(**kwargs: Any) -> Any:
    return boto_client("kms", **kwargs)


def _paginate(fetch: Callable[[str | None], dict[str, Any]], field: str) -> list[Any]:
    items: list[Any] = []
    marker: str | None = None
    while True:
        page = fetch(marker)
        items.extend(page.get(field, []))
        if not page.get("Truncated"):
            return items
        marker = page.get("NextMarker")
