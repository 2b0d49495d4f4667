"""The embedded key service: KMS semantics over the workspace key store.

One :class:`LocalKeyService` is made per authenticated request, for one
:class:`Caller`. Every operation on a key evaluates the key's policy for that
caller and records the decision in :attr:`LocalKeyService.audit` for the audit
log; an operation that is denied raises :class:`AccessDeniedError` naming the
deciding statement.

Rules that mirror AWS KMS:

- a bare key id or alias name resolves in the caller's account; another
  account's key must be named by its ARN (or found from the ciphertext blob);
- CreateKey/ListKeys/ListAliases/GenerateRandom are account operations that
  any authenticated principal may call (there are no IAM identity policies
  locally — the key policy is the only policy);
- a caller with session credentials carries the session policy it was issued
  with: every operation, account operations included, must be allowed by the
  key policy **and** by the session policy (which can therefore only narrow;
  AWS lets a key policy that names the session ARN itself bypass the session
  policy, which we never do, so a local session is never broader than on AWS);
- with a ``Recipient``, the attestation document is verified first and its
  measurements become ``kms:RecipientAttestation:*`` condition keys; the
  result is returned only as ``CiphertextForRecipient`` (never ``Plaintext``);
- a policy that would lock the caller out of PutKeyPolicy is refused unless
  the caller bypasses the lockout safety check.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from strongroom.attestation.recipient import seal_for_recipient
from strongroom.attestation.service import RecipientAttestation
from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    VerificationError,
)
from strongroom.keys import ciphertext
from strongroom.keys.base import (
    RECIPIENT_ALGORITHM,
    Alias,
    AliasNameError,
    DataKey,
    Decrypted,
    EncryptionContext,
    IncorrectKeyError,
    InvalidCiphertextError,
    KeyMetadata,
    KeyStateError,
    RandomBytes,
    Recipient,
    check_alias_name,
)
from strongroom.keys.store import KeyRecord, KeyStore
from strongroom.policy import Decision, PolicyDocument, RequestContext, evaluate

MAX_PLAINTEXT = 4096
MAX_DATA_KEY_BYTES = 1024
MIN_PENDING_DAYS, MAX_PENDING_DAYS = 7, 30

#: Verifies a Recipient attestation document (see :mod:`strongroom.attestation.service`).
RecipientVerifier = Callable[[bytes], RecipientAttestation]


@dataclass(frozen=True)
class Caller:
    """Who is calling, as established by the request signature."""

    principal_arn: str
    account_id: str
    access_key_id: str = ""
    #: For session credentials: the session's name and its inline session policy
    #: (None: long-term credentials, or a session issued without a policy).
    session_name: str | None = None
    session_policy: PolicyDocument | None = None


@dataclass
class AuditInfo:
    """What the audit log needs to know about one request; filled as it runs."""

    key_arn: str | None = None
    decision: Decision | None = None
    #: Which policy made :attr:`decision`: "key" or "session".
    decided_by: str = "key"
    attestation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def default_policy(account_id: str) -> str:
    """The policy AWS KMS gives a key created without one: the owner account may do anything."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


class LocalKeyService:
    """KeyService over a :class:`KeyStore`, acting for one caller."""

    def __init__(
        self,
        store: KeyStore,
        caller: Caller,
        *,
        region: str,
        verify_recipient: RecipientVerifier | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.caller = caller
        self.region = region
        self._verify_recipient = verify_recipient
        self._now = now
        self.audit = AuditInfo()

    # --- resolution and authorisation ----------------------------------------

    def _resolve(self, key_ref: str) -> KeyRecord:
        key_ref = key_ref.strip()
        if not key_ref:
            raise InvalidInputError("KeyId must not be empty")
        if key_ref.startswith("arn:"):
            parts = key_ref.split(":", 5)
            if len(parts) != 6 or parts[2] != "kms":
                raise NotFoundError(f"invalid key ARN '{key_ref}'")
            account, resource = parts[4], parts[5]
            if resource.startswith("key/"):
                record = self._get(resource[4:])
                if record.account_id != account:
                    raise NotFoundError(f"key '{key_ref}' does not exist")
                return record
            if resource.startswith("alias/"):
                return self._by_alias(account, resource)
            raise NotFoundError(f"invalid key ARN '{key_ref}'")
        if key_ref.startswith("alias/"):
            return self._by_alias(self.caller.account_id, key_ref)
        record = self._get(key_ref)
        if record.account_id != self.caller.account_id:
            # KMS only resolves bare ids in the caller's own account.
            raise NotFoundError(
                f"key '{key_ref}' does not exist in account {self.caller.account_id}",
                hint="name another account's key by its ARN",
            )
        return record

    def _get(self, key_id: str) -> KeyRecord:
        record = self.store.get(key_id)
        expired = record.deletion_date is not None and record.deletion_date <= self._now()
        if record.state == "PendingDeletion" and expired:
            self.store.delete(record.key_id)
            raise NotFoundError(f"key '{key_id}' does not exist")
        return record

    def _by_alias(self, account: str, name: str) -> KeyRecord:
        key_id = self.store.aliases().get(account, {}).get(name)
        if key_id is None:
            raise NotFoundError(f"alias '{name}' does not exist in account {account}")
        return self._get(key_id)

    def _policy(self, record: KeyRecord) -> PolicyDocument:
        return _parsed_policy(record.policy)

    def _context_values(
        self, context: EncryptionContext | None, attestation: RecipientAttestation | None
    ) -> dict[str, str | bool | list[str]]:
        values: dict[str, str | bool | list[str]] = {
            "aws:PrincipalArn": self.caller.principal_arn,
            "aws:PrincipalAccount": self.caller.account_id,
            "kms:CallerAccount": self.caller.account_id,
            "aws:CurrentTime": self._now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "aws:SecureTransport": False,
        }
        if context:
            for k, v in context.items():
                values[f"kms:EncryptionContext:{k}"] = v
            values["kms:EncryptionContextKeys"] = sorted(context)
        if attestation is not None:
            values.update(attestation.condition_values())
        return values

    def _authorize(
        self,
        action: str,
        record: KeyRecord,
        *,
        context: EncryptionContext | None = None,
        attestation: RecipientAttestation | None = None,
    ) -> None:
        self.audit.key_arn = record.arn
        request = RequestContext(
            action=f"kms:{action}",
            resource=record.arn,
            principal_arn=self.caller.principal_arn,
            account_id=self.caller.account_id,
            values=self._context_values(context, attestation),
        )
        decision = evaluate(self._policy(record), request)
        self.audit.decision = decision
        if decision.allowed:
            self._authorize_session(request)
        else:
            why = (
                "with an explicit deny in a resource-based policy"
                if decision.effect == "Deny"
                else "because no resource-based policy allows the action"
            )
            hint = (
                f"denied by statement {decision.statement_sid!r}" if decision.statement_sid else ""
            )
            if attestation is not None:
                hint = (
                    f"the enclave image measurement {attestation.image_sha384} is not approved "
                    f"for this key ({hint or 'no statement allows it'})"
                )
            raise AccessDeniedError(
                f"User: {self.caller.principal_arn} is not authorized to perform: "
                f"kms:{action} on resource: {record.arn} {why}",
                hint=hint or None,
            )

    def _authorize_session(self, request: RequestContext) -> None:
        """Deny what the caller's session policy does not allow (nothing, without one)."""
        policy = self.caller.session_policy
        if policy is None:
            return
        decision = evaluate(policy, request)
        if decision.allowed:
            return
        self.audit.decision, self.audit.decided_by = decision, "session"
        why = (
            "with an explicit deny in a session policy"
            if decision.effect == "Deny"
            else f"because no session policy allows the {request.action} action"
        )
        raise AccessDeniedError(
            f"User: {self.caller.principal_arn} is not authorized to perform: "
            f"{request.action} on resource: {request.resource} {why}",
            hint=f"session {self.caller.session_name!r} was issued for less than this; "
            "ask for session credentials whose policy allows it",
        )

    def _authorize_account(self, action: str) -> None:
        """An account operation (no key): only a session policy can deny it."""
        if self.caller.session_policy is None:
            return
        self._authorize_session(
            RequestContext(
                action=f"kms:{action}",
                resource="*",
                principal_arn=self.caller.principal_arn,
                account_id=self.caller.account_id,
                values=self._context_values(None, None),
            )
        )

    def _usable(self, record: KeyRecord) -> None:
        if record.state != "Enabled":
            raise KeyStateError(f"{record.arn} is {record.state.lower()}")

    def _attest(self, recipient: Recipient | None) -> RecipientAttestation | None:
        if recipient is None:
            return None
        if recipient.key_encryption_algorithm != RECIPIENT_ALGORITHM:
            raise InvalidInputError(
                f"Recipient.KeyEncryptionAlgorithm must be {RECIPIENT_ALGORITHM}"
            )
        if self._verify_recipient is None:
            raise InvalidInputError("this key service does not accept attestation documents")
        try:
            attestation = self._verify_recipient(recipient.attestation_document)
        except (VerificationError, InvalidInputError) as e:
            # bad evidence is a denial: the caller proved nothing about its enclave
            raise AccessDeniedError(
                f"attestation document rejected: {e.message}", hint=e.hint or None
            ) from e
        self.audit.attestation = {
            "module_id": attestation.module_id,
            "image_sha384": attestation.image_sha384,
            "pcrs": {str(i): v.hex() for i, v in sorted(attestation.pcrs.items())},
        }
        return attestation

    # --- keys -----------------------------------------------------------------

    def _metadata(self, record: KeyRecord) -> KeyMetadata:
        return KeyMetadata(
            key_id=record.key_id,
            arn=record.arn,
            account_id=record.account_id,
            description=record.description,
            state=record.state,
            creation_date=record.created,
            deletion_date=record.deletion_date,
            rotation_enabled=record.rotation_enabled,
        )

    def _check_lockout(self, policy: str, record: KeyRecord, bypass: bool) -> None:
        document = PolicyDocument.parse(policy)
        if bypass:
            return
        probe = RequestContext(
            action="kms:PutKeyPolicy",
            resource=record.arn,
            principal_arn=self.caller.principal_arn,
            account_id=self.caller.account_id,
            values=self._context_values(None, None),
        )
        if not evaluate(document, probe).allowed:
            raise PolicyLockoutError(
                "the new key policy will not allow you to update the key policy in the future",
                hint="add a statement that lets you call kms:PutKeyPolicy, "
                "or pass BypassPolicyLockoutSafetyCheck",
            )

    def create_key(
        self, *, description: str = "", policy: str | None = None, bypass_lockout: bool = False
    ) -> KeyMetadata:
        self._authorize_account("CreateKey")
        now = self._now()
        text = policy if policy is not None else default_policy(self.caller.account_id)
        probe = KeyRecord(
            key_id="00000000-0000-0000-0000-000000000000",
            account_id=self.caller.account_id,
            region=self.region,
            description=description,
            created=now,
            policy=text,
            versions=(),
        )
        self._check_lockout(text, probe, bypass_lockout)
        record = self.store.create(
            account_id=self.caller.account_id,
            region=self.region,
            description=description,
            policy=text,
            now=now,
        )
        self.audit.key_arn = record.arn
        return self._metadata(record)

    def describe_key(self, key_id: str) -> KeyMetadata:
        record = self._resolve(key_id)
        self._authorize("DescribeKey", record)
        return self._metadata(record)

    def list_keys(self) -> list[KeyMetadata]:
        self._authorize_account("ListKeys")
        return [self._metadata(r) for r in self.store.list(self.caller.account_id)]

    def create_alias(self, alias_name: str, key_id: str) -> None:
        check_alias_name(alias_name)
        record = self._resolve(key_id)
        if record.account_id != self.caller.account_id:
            raise AccessDeniedError("an alias must be created in the key's own account")
        self._authorize("CreateAlias", record)
        if alias_name in self.store.aliases().get(self.caller.account_id, {}):
            raise AlreadyExistsError(f"alias {alias_name} already exists")
        self.store.set_alias(self.caller.account_id, alias_name, record.key_id)

    def delete_alias(self, alias_name: str) -> None:
        check_alias_name(alias_name)
        record = self._by_alias(self.caller.account_id, alias_name)
        self._authorize("DeleteAlias", record)
        self.store.set_alias(self.caller.account_id, alias_name, None)

    def list_aliases(self, key_id: str | None = None) -> list[Alias]:
        self._authorize_account("ListAliases")
        target = self._resolve(key_id).key_id if key_id else None
        names = self.store.aliases().get(self.caller.account_id, {})
        return [
            Alias(
                name=name,
                arn=f"arn:aws:kms:{self.region}:{self.caller.account_id}:{name}",
                target_key_id=kid,
            )
            for name, kid in sorted(names.items())
            if target is None or kid == target
        ]

    # --- cryptography ---------------------------------------------------------

    def _wrap(
        self, record: KeyRecord, plaintext: bytes, context: EncryptionContext | None
    ) -> bytes:
        version = record.current
        return ciphertext.seal(version.material, record.key_id, version.version, plaintext, context)

    def generate_data_key(
        self,
        key_id: str,
        *,
        encryption_context: EncryptionContext | None = None,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> DataKey:
        _check_size("NumberOfBytes", number_of_bytes, MAX_DATA_KEY_BYTES)
        record = self._resolve(key_id)
        attestation = self._attest(recipient)
        self._authorize(
            "GenerateDataKey", record, context=encryption_context, attestation=attestation
        )
        self._usable(record)
        plaintext = secrets.token_bytes(number_of_bytes)
        blob = self._wrap(record, plaintext, encryption_context)
        if attestation is not None:
            return DataKey(
                key_id=record.arn,
                ciphertext_blob=blob,
                ciphertext_for_recipient=seal_for_recipient(plaintext, attestation.public_key),
            )
        return DataKey(key_id=record.arn, ciphertext_blob=blob, plaintext=plaintext)

    def generate_data_key_without_plaintext(
        self,
        key_id: str,
        *,
        encryption_context: EncryptionContext | None = None,
        number_of_bytes: int = 32,
    ) -> DataKey:
        _check_size("NumberOfBytes", number_of_bytes, MAX_DATA_KEY_BYTES)
        record = self._resolve(key_id)
        self._authorize("GenerateDataKeyWithoutPlaintext", record, context=encryption_context)
        self._usable(record)
        blob = self._wrap(record, secrets.token_bytes(number_of_bytes), encryption_context)
        return DataKey(key_id=record.arn, ciphertext_blob=blob)

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        *,
        encryption_context: EncryptionContext | None = None,
    ) -> bytes:
        _check_size("Plaintext", len(plaintext), MAX_PLAINTEXT)
        record = self._resolve(key_id)
        self._authorize("Encrypt", record, context=encryption_context)
        self._usable(record)
        return self._wrap(record, plaintext, encryption_context)

    def _unwrap(
        self,
        action: str,
        blob: bytes,
        key_id: str | None,
        context: EncryptionContext | None,
        attestation: RecipientAttestation | None = None,
    ) -> tuple[KeyRecord, bytes]:
        header = ciphertext.parse_header(blob)
        if key_id is not None:
            named = self._resolve(key_id)
            if named.key_id != header.key_id:
                raise IncorrectKeyError(
                    f"the ciphertext was encrypted under another key than {named.arn}"
                )
        record = self._get(header.key_id)
        self._authorize(action, record, context=context, attestation=attestation)
        self._usable(record)
        version = record.version(header.version)
        if version is None:
            raise InvalidCiphertextError("the ciphertext names an unknown key version")
        return record, ciphertext.open_blob(version.material, blob, context)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: EncryptionContext | None = None,
        recipient: Recipient | None = None,
    ) -> Decrypted:
        attestation = self._attest(recipient)
        record, plaintext = self._unwrap(
            "Decrypt", ciphertext_blob, key_id, encryption_context, attestation
        )
        if attestation is not None:
            return Decrypted(
                key_id=record.arn,
                ciphertext_for_recipient=seal_for_recipient(plaintext, attestation.public_key),
            )
        return Decrypted(key_id=record.arn, plaintext=plaintext)

    def re_encrypt(
        self,
        ciphertext_blob: bytes,
        destination_key_id: str,
        *,
        source_key_id: str | None = None,
        source_encryption_context: EncryptionContext | None = None,
        destination_encryption_context: EncryptionContext | None = None,
    ) -> tuple[str, str, bytes]:
        """Return (source key ARN, destination key ARN, new blob)."""
        source, plaintext = self._unwrap(
            "ReEncryptFrom", ciphertext_blob, source_key_id, source_encryption_context
        )
        destination = self._resolve(destination_key_id)
        self._authorize("ReEncryptTo", destination, context=destination_encryption_context)
        self._usable(destination)
        return (
            source.arn,
            destination.arn,
            self._wrap(destination, plaintext, destination_encryption_context),
        )

    def generate_random(
        self, number_of_bytes: int, *, recipient: Recipient | None = None
    ) -> RandomBytes:
        _check_size("NumberOfBytes", number_of_bytes, MAX_DATA_KEY_BYTES)
        self._authorize_account("GenerateRandom")
        attestation = self._attest(recipient)
        data = secrets.token_bytes(number_of_bytes)
        if attestation is not None:
            return RandomBytes(
                ciphertext_for_recipient=seal_for_recipient(data, attestation.public_key)
            )
        return RandomBytes(plaintext=data)

    # --- policy and lifecycle -------------------------------------------------

    def get_key_policy(self, key_id: str) -> str:
        record = self._resolve(key_id)
        self._authorize("GetKeyPolicy", record)
        return record.policy

    def put_key_policy(self, key_id: str, policy: str, *, bypass_lockout: bool = False) -> None:
        record = self._resolve(key_id)
        self._authorize("PutKeyPolicy", record)
        self._check_lockout(policy, record, bypass_lockout)
        self.store.update(record.key_id, lambda r: replace(r, policy=policy))

    def list_key_policies(self, key_id: str) -> list[str]:
        record = self._resolve(key_id)
        self._authorize("ListKeyPolicies", record)
        return ["default"]

    def enable_key_rotation(self, key_id: str) -> None:
        self._set_rotation(key_id, "EnableKeyRotation", True)

    def disable_key_rotation(self, key_id: str) -> None:
        self._set_rotation(key_id, "DisableKeyRotation", False)

    def _set_rotation(self, key_id: str, action: str, enabled: bool) -> None:
        record = self._resolve(key_id)
        self._authorize(action, record)
        self._usable(record)
        self.store.update(record.key_id, lambda r: replace(r, rotation_enabled=enabled))

    def get_key_rotation_status(self, key_id: str) -> bool:
        record = self._resolve(key_id)
        self._authorize("GetKeyRotationStatus", record)
        return record.rotation_enabled

    def rotate_key_on_demand(self, key_id: str) -> str:
        record = self._resolve(key_id)
        self._authorize("RotateKeyOnDemand", record)
        self._usable(record)
        return self.store.rotate(record.key_id, self._now()).arn

    def set_key_enabled(self, key_id: str, enabled: bool) -> None:
        record = self._resolve(key_id)
        self._authorize("EnableKey" if enabled else "DisableKey", record)
        if record.state == "PendingDeletion":
            raise KeyStateError(f"{record.arn} is pending deletion")
        state = "Enabled" if enabled else "Disabled"
        self.store.update(record.key_id, lambda r: replace(r, state=state))

    def schedule_key_deletion(self, key_id: str, *, pending_window_days: int = 30) -> datetime:
        if not MIN_PENDING_DAYS <= pending_window_days <= MAX_PENDING_DAYS:
            raise InvalidInputError(
                f"PendingWindowInDays must be between {MIN_PENDING_DAYS} and {MAX_PENDING_DAYS}"
            )
        record = self._resolve(key_id)
        self._authorize("ScheduleKeyDeletion", record)
        if record.state == "PendingDeletion":
            raise KeyStateError(f"{record.arn} is already pending deletion")
        when = self._now() + timedelta(days=pending_window_days)
        self.store.update(
            record.key_id, lambda r: replace(r, state="PendingDeletion", deletion_date=when)
        )
        return when

    def cancel_key_deletion(self, key_id: str) -> None:
        record = self._resolve(key_id)
        self._authorize("CancelKeyDeletion", record)
        if record.state != "PendingDeletion":
            raise KeyStateError(f"{record.arn} is not pending deletion")
        # As on KMS, a key whose deletion is cancelled comes back disabled.
        self.store.update(record.key_id, lambda r: replace(r, state="Disabled", deletion_date=None))


@functools.lru_cache(maxsize=256)
def _parsed_policy(text: str) -> PolicyDocument:
    """Key policies, parsed once per text (documents are immutable): parsing is most of
    a request's policy cost, and a key's policy rarely changes."""
    return PolicyDocument.parse(text)


class PolicyLockoutError(InvalidInputError):
    """A policy would lock its author out of the key."""


def _check_size(name: str, value: int, maximum: int) -> None:
    if not 1 <= value <= maximum:
        raise InvalidInputError(f"{name} must be between 1 and {maximum}, got {value}")


__all__ = ["AliasNameError", "AuditInfo", "Caller", "LocalKeyService", "default_policy"]
