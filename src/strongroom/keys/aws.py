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

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import boto3
import botocore.config
import botocore.exceptions

from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ConfigError,
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

#: botocore's failures that say the local AWS configuration is wrong, not a service.
_CONFIG_FAILURES = (
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.ConfigParseError,
    botocore.exceptions.ConfigNotFound,
    botocore.exceptions.InvalidConfigError,
)


def botocore_failure(
    error: botocore.exceptions.BotoCoreError, service: str, *, not_running_hint: str | None
) -> StrongroomError:
    """Our error for a botocore failure that is not an answer from ``service``.

    The one mapping of botocore's own failures, for every path that makes a
    session, a client or a request: what is wrong with the local AWS
    configuration (a profile that does not exist, partial credentials) is bad
    input (exit 3) with what to change; an unreachable service is unavailable.
    """
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return ServiceNotRunningError(
            f"cannot reach {service} at {error.kwargs.get('endpoint_url')}", hint=not_running_hint
        )
    if isinstance(error, botocore.exceptions.ProfileNotFound):
        return profile_not_found(str(error.kwargs.get("profile", "")))
    if isinstance(
        error, botocore.exceptions.NoCredentialsError | botocore.exceptions.NoRegionError
    ):
        return InvalidInputError(
            str(error), hint="configure AWS credentials and region (e.g. AWS_PROFILE, AWS_REGION)"
        )
    if isinstance(error, _CONFIG_FAILURES):
        return ConfigError(
            f"the AWS configuration is not usable: {error}",
            hint="fix the AWS_* variables or the AWS config and credentials files",
        )
    return UnavailableError(f"{service} request failed: {error}")


def profile_not_found(profile: str) -> ConfigError:
    """A stale ``AWS_PROFILE`` (or ``AWS_DEFAULT_PROFILE``): name it, and the two ways out."""
    variables = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")
    variable = next((name for name in variables if os.environ.get(name) == profile), None)
    create = f"create the profile (`aws configure --profile {profile}`)"
    return ConfigError(
        f"{variable or 'the AWS configuration'} names the AWS profile {profile!r}, which no "
        "AWS config or credentials file defines",
        hint=f"unset {variable}, or {create}" if variable else create,
    )


def _session() -> boto3.session.Session:
    """The per-process boto3 session (call under ``_session_lock``).

    Making a session loads botocore's models (~50 ms), too slow for every run.
    botocore reads the profile while making it, so a stale ``AWS_PROFILE``
    fails here, for every command that talks to a key service or STS.
    """
    global _shared_session
    if _shared_session is None:
        try:
            _shared_session = boto3.session.Session()
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(e, "AWS", not_running_hint=None) from e
    return _shared_session


def boto_client(service_name: Literal["kms", "sts"], **kwargs: Any) -> Any:
    """A boto3 client from the one per-process boto3 session.

    Sessions are not thread-safe, so clients are made under a lock. Each
    client still carries its own credentials and endpoint.
    """
    with _session_lock:
        session = _session()
        try:
            return session.client(service_name, **kwargs)
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(e, service_name.upper(), not_running_hint=None) from e


@dataclass(frozen=True)
class ChainCredentials:
    """What the AWS credential chain found: the key pair, and where it came from."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    token: str | None = field(repr=False)
    #: botocore's name of the provider that found them ("env", "shared-credentials-file", ...)
    method: str


#: The chain's providers that ask a metadata service (EC2 IMDS, ECS/EKS): slow to time
#: out off AWS, and never holding a local workspace identity's keys.
METADATA_PROVIDERS = ("container-role", "iam-role")


def chain_credentials(*, metadata_services: bool = True) -> ChainCredentials | None:
    """What botocore's default credential chain finds (None: nothing), as botocore
    resolves it: the AWS_* variables, AWS_PROFILE and the config and credentials
    files, credential_process, SSO; without ``metadata_services``, not EC2's or a
    container's metadata service."""
    import botocore.credentials

    with _session_lock:
        session = _session()
        try:
            resolver = botocore.credentials.create_credential_resolver(session._session)
            if not metadata_services:
                for name in METADATA_PROVIDERS:
                    resolver.remove(name)
            found = resolver.load_credentials()
            frozen = None if found is None else found.get_frozen_credentials()
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(e, "the AWS credential chain", not_running_hint=None) from e
    if frozen is None or not frozen.access_key:
        return None
    return ChainCredentials(
        access_key_id=frozen.access_key,
        secret_access_key=frozen.secret_key or "",
        token=frozen.token,
        method=str(getattr(found, "method", "") or "unknown"),
    )


def default_credentials() -> Any:
    """What boto3's default credential chain finds (None if nothing), frozen."""
    with _session_lock:
        session = _session()
        try:
            found = session.get_credentials()
            return None if found is None else found.get_frozen_credentials()
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(e, "the AWS credential chain", not_running_hint=None) from e


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
