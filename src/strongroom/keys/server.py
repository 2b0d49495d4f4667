"""The local key service as an HTTP server speaking AWS KMS's JSON 1.1 protocol (and STS).

Wire: ``POST /`` with ``Content-Type: application/x-amz-json-1.1``,
``X-Amz-Target: TrentService.<Operation>`` and a JSON body (blobs base64),
signed with SigV4 for ``kms`` in the workspace region; answers JSON, errors as
HTTP 400 with ``{"__type": "<Code>", "message": "..."}``. A form-encoded
``POST /`` signed for ``sts`` is STS's query protocol (:mod:`.sts`), answered
in XML. So unmodified boto3 clients and the ``aws kms``/``aws sts`` CLI work
against it, with ``endpoint_url`` pointing here.

The server is a bare ASGI application (no framework: one route, and this is the
hot path of every seal and every run). Each request is authenticated
(:mod:`.sigv4`: long-term workspace identities, or sessions STS issued),
handed to a :class:`LocalKeyService` acting for the signer, and recorded in
the audit log whatever the outcome. Bad input is answered in KMS's shape, never
with a traceback: bodies are capped (:data:`MAX_BODY`, :data:`BODY_TIMEOUT_S`)
and JSON nesting is bounded (:data:`MAX_JSON_DEPTH`) before it is decoded; the
connection-level bounds are in :mod:`._protocol`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    StrongroomError,
    TamperedError,
    UnavailableError,
)
from strongroom.keys import sigv4
from strongroom.keys.audit import AuditLog
from strongroom.keys.base import (
    IncorrectKeyError,
    InvalidCiphertextError,
    KeyStateError,
    Recipient,
)
from strongroom.keys.local import (
    AliasNameError,
    Caller,
    LocalKeyService,
    PolicyLockoutError,
    RecipientVerifier,
)
from strongroom.keys.store import KeyStore
from strongroom.keys.sts import (
    FORM_CONTENT_TYPE,
    SESSION_ACCESS_KEY_PREFIX,
    STS_SIGNATURE_CODES,
    XML_CONTENT_TYPE,
    LocalSts,
    SessionRecord,
    SessionStore,
    StsCaller,
    StsError,
    StsResult,
    error_body,
    parse_form,
    roles_from,
)
from strongroom.policy import PolicyDocument, PolicyError

log = logging.getLogger("strongroom.keys")

#: Largest request body accepted. The biggest legitimate one is a Decrypt with a
#: 256 KiB attestation document, base64-encoded.
MAX_BODY = 512 * 1024
CONTENT_TYPE = b"application/x-amz-json-1.1"
TARGET_PREFIX = "TrentService."
#: Deepest JSON nesting accepted (KMS's own requests nest three levels at most).
MAX_JSON_DEPTH = 32
#: A request body must have arrived this long after its headers.
BODY_TIMEOUT_S = 10.0
#: Longest client-chosen name (operation, content type) copied into logs and errors.
MAX_LOGGED_NAME = 128

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Params = dict[str, Any]


class KmsError(Exception):
    """An error to answer in KMS's shape."""

    def __init__(self, kms_type: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kms_type = kms_type
        self.message = message
        self.status = status


# Most specific first: the first matching class decides the KMS error code.
_ERROR_TYPES: tuple[tuple[type[StrongroomError], str], ...] = (
    (sigv4.SignatureError, ""),  # carries its own code
    (PolicyLockoutError, "MalformedPolicyDocumentException"),
    (PolicyError, "MalformedPolicyDocumentException"),
    (AliasNameError, "ValidationException"),
    (AccessDeniedError, "AccessDeniedException"),
    (NotFoundError, "NotFoundException"),
    (AlreadyExistsError, "AlreadyExistsException"),
    (IncorrectKeyError, "IncorrectKeyException"),
    (InvalidCiphertextError, "InvalidCiphertextException"),
    (TamperedError, "InvalidCiphertextException"),
    (KeyStateError, "KMSInvalidStateException"),
    (InvalidInputError, "ValidationException"),
    (UnavailableError, "DependencyTimeoutException"),
)


def kms_error_for(error: StrongroomError) -> KmsError:
    for cls, code in _ERROR_TYPES:
        if isinstance(error, cls):
            if isinstance(error, sigv4.SignatureError):
                code = error.kms_type
            return KmsError(code, error.message)
    return KmsError("KMSInternalException", error.message, status=500)


# --- parameter decoding -------------------------------------------------------------


def _str(p: Params, name: str, *, required: bool = False) -> str | None:
    value = p.get(name)
    if value is None:
        if required:
            raise KmsError("ValidationException", f"{name} is required")
        return None
    if not isinstance(value, str):
        raise KmsError("ValidationException", f"{name} must be a string")
    return value


def _req_str(p: Params, name: str) -> str:
    value = _str(p, name, required=True)
    assert value is not None
    return value


def _blob(p: Params, name: str) -> bytes:
    value = _req_str(p, name)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsError("ValidationException", f"{name} is not valid base64") from None


def _int(p: Params, name: str, default: int | None = None) -> int | None:
    value = p.get(name, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise KmsError("ValidationException", f"{name} must be an integer")
    return value


def _bool(p: Params, name: str) -> bool:
    value = p.get(name, False)
    if not isinstance(value, bool):
        raise KmsError("ValidationException", f"{name} must be a boolean")
    return value


def _context(p: Params, name: str = "EncryptionContext") -> dict[str, str] | None:
    value = p.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise KmsError("ValidationException", f"{name} must map strings to strings")
    return value


def _recipient(p: Params) -> Recipient | None:
    value = p.get("Recipient")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise KmsError("ValidationException", "Recipient must be an object")
    algorithm = value.get("KeyEncryptionAlgorithm", "RSAES_OAEP_SHA_256")
    document = _blob(value, "AttestationDocument")
    if not isinstance(algorithm, str):
        raise KmsError("ValidationException", "KeyEncryptionAlgorithm must be a string")
    return Recipient(attestation_document=document, key_encryption_algorithm=algorithm)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _number_of_bytes(p: Params) -> int:
    spec = _str(p, "KeySpec")
    count = _int(p, "NumberOfBytes")
    if spec is not None and count is not None:
        raise KmsError("ValidationException", "specify either KeySpec or NumberOfBytes, not both")
    if spec is not None:
        sizes = {"AES_256": 32, "AES_128": 16}
        if spec not in sizes:
            raise KmsError("ValidationException", f"KeySpec must be AES_256 or AES_128, not {spec}")
        return sizes[spec]
    if count is None:
        raise KmsError("ValidationException", "KeySpec or NumberOfBytes is required")
    return count


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


# --- operations -----------------------------------------------------------------------


def _op_create_key(s: LocalKeyService, p: Params) -> Params:
    spec = _str(p, "KeySpec") or _str(p, "CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    usage = _str(p, "KeyUsage") or "ENCRYPT_DECRYPT"
    if spec != "SYMMETRIC_DEFAULT" or usage != "ENCRYPT_DECRYPT":
        raise KmsError(
            "UnsupportedOperationException",
            "the local key service supports only SYMMETRIC_DEFAULT ENCRYPT_DECRYPT keys",
        )
    meta = s.create_key(
        description=_str(p, "Description") or "",
        policy=_str(p, "Policy"),
        bypass_lockout=_bool(p, "BypassPolicyLockoutSafetyCheck"),
    )
    return {"KeyMetadata": _metadata_json(meta)}


def _metadata_json(meta: Any) -> Params:
    out: Params = {
        "AWSAccountId": meta.account_id,
        "KeyId": meta.key_id,
        "Arn": meta.arn,
        "CreationDate": _timestamp(meta.creation_date),
        "Enabled": meta.state == "Enabled",
        "Description": meta.description,
        "KeyUsage": meta.key_usage,
        "KeyState": meta.state,
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": meta.key_spec,
        "KeySpec": meta.key_spec,
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": False,
    }
    if meta.deletion_date:
        out["DeletionDate"] = _timestamp(meta.deletion_date)
    return out


def _op_describe_key(s: LocalKeyService, p: Params) -> Params:
    return {"KeyMetadata": _metadata_json(s.describe_key(_req_str(p, "KeyId")))}


def _op_list_keys(s: LocalKeyService, p: Params) -> Params:
    keys = s.list_keys()
    return {"Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for k in keys], "Truncated": False}


def _op_create_alias(s: LocalKeyService, p: Params) -> Params:
    s.create_alias(_req_str(p, "AliasName"), _req_str(p, "TargetKeyId"))
    return {}


def _op_delete_alias(s: LocalKeyService, p: Params) -> Params:
    s.delete_alias(_req_str(p, "AliasName"))
    return {}


def _op_list_aliases(s: LocalKeyService, p: Params) -> Params:
    aliases = s.list_aliases(_str(p, "KeyId"))
    return {
        "Aliases": [
            {"AliasName": a.name, "AliasArn": a.arn, "TargetKeyId": a.target_key_id}
            for a in aliases
        ],
        "Truncated": False,
    }


def _op_generate_data_key(s: LocalKeyService, p: Params) -> Params:
    key = s.generate_data_key(
        _req_str(p, "KeyId"),
        encryption_context=_context(p),
        number_of_bytes=_number_of_bytes(p),
        recipient=_recipient(p),
    )
    out: Params = {"KeyId": key.key_id, "CiphertextBlob": _b64(key.ciphertext_blob)}
    if key.ciphertext_for_recipient is not None:
        out["CiphertextForRecipient"] = _b64(key.ciphertext_for_recipient)
    elif key.plaintext is not None:
        out["Plaintext"] = _b64(key.plaintext)
    return out


def _op_generate_data_key_without_plaintext(s: LocalKeyService, p: Params) -> Params:
    key = s.generate_data_key_without_plaintext(
        _req_str(p, "KeyId"), encryption_context=_context(p), number_of_bytes=_number_of_bytes(p)
    )
    return {"KeyId": key.key_id, "CiphertextBlob": _b64(key.ciphertext_blob)}


def _op_encrypt(s: LocalKeyService, p: Params) -> Params:
    key_id = _req_str(p, "KeyId")
    blob = s.encrypt(key_id, _blob(p, "Plaintext"), encryption_context=_context(p))
    return {
        "KeyId": s.audit.key_arn,
        "CiphertextBlob": _b64(blob),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }


def _op_decrypt(s: LocalKeyService, p: Params) -> Params:
    algorithm = _str(p, "EncryptionAlgorithm") or "SYMMETRIC_DEFAULT"
    if algorithm != "SYMMETRIC_DEFAULT":
        raise KmsError("InvalidCiphertextException", f"unsupported EncryptionAlgorithm {algorithm}")
    result = s.decrypt(
        _blob(p, "CiphertextBlob"),
        key_id=_str(p, "KeyId"),
        encryption_context=_context(p),
        recipient=_recipient(p),
    )
    out: Params = {"KeyId": result.key_id, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    if result.ciphertext_for_recipient is not None:
        out["CiphertextForRecipient"] = _b64(result.ciphertext_for_recipient)
    elif result.plaintext is not None:
        out["Plaintext"] = _b64(result.plaintext)
    return out


def _op_re_encrypt(s: LocalKeyService, p: Params) -> Params:
    source, destination, blob = s.re_encrypt(
        _blob(p, "CiphertextBlob"),
        _req_str(p, "DestinationKeyId"),
        source_key_id=_str(p, "SourceKeyId"),
        source_encryption_context=_context(p, "SourceEncryptionContext"),
        destination_encryption_context=_context(p, "DestinationEncryptionContext"),
    )
    return {
        "CiphertextBlob": _b64(blob),
        "SourceKeyId": source,
        "KeyId": destination,
        "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }


def _op_generate_random(s: LocalKeyService, p: Params) -> Params:
    count = _int(p, "NumberOfBytes")
    if count is None:
        raise KmsError("ValidationException", "NumberOfBytes is required")
    result = s.generate_random(count, recipient=_recipient(p))
    if result.ciphertext_for_recipient is not None:
        return {"CiphertextForRecipient": _b64(result.ciphertext_for_recipient)}
    assert result.plaintext is not None
    return {"Plaintext": _b64(result.plaintext)}


def _policy_name(p: Params) -> None:
    name = _str(p, "PolicyName") or "default"
    if name != "default":
        raise KmsError("NotFoundException", f"key policy {name!r} does not exist; use 'default'")


def _op_get_key_policy(s: LocalKeyService, p: Params) -> Params:
    _policy_name(p)
    return {"Policy": s.get_key_policy(_req_str(p, "KeyId")), "PolicyName": "default"}


def _op_put_key_policy(s: LocalKeyService, p: Params) -> Params:
    _policy_name(p)
    s.put_key_policy(
        _req_str(p, "KeyId"),
        _req_str(p, "Policy"),
        bypass_lockout=_bool(p, "BypassPolicyLockoutSafetyCheck"),
    )
    return {}


def _op_list_key_policies(s: LocalKeyService, p: Params) -> Params:
    return {"PolicyNames": s.list_key_policies(_req_str(p, "KeyId")), "Truncated": False}


def _op_enable_key_rotation(s: LocalKeyService, p: Params) -> Params:
    s.enable_key_rotation(_req_str(p, "KeyId"))
    return {}


def _op_disable_key_rotation(s: LocalKeyService, p: Params) -> Params:
    s.disable_key_rotation(_req_str(p, "KeyId"))
    return {}


def _op_get_key_rotation_status(s: LocalKeyService, p: Params) -> Params:
    return {"KeyRotationEnabled": s.get_key_rotation_status(_req_str(p, "KeyId"))}


def _op_rotate_key_on_demand(s: LocalKeyService, p: Params) -> Params:
    return {"KeyId": s.rotate_key_on_demand(_req_str(p, "KeyId"))}


def _op_enable_key(s: LocalKeyService, p: Params) -> Params:
    s.set_key_enabled(_req_str(p, "KeyId"), True)
    return {}


def _op_disable_key(s: LocalKeyService, p: Params) -> Params:
    s.set_key_enabled(_req_str(p, "KeyId"), False)
    return {}


def _op_schedule_key_deletion(s: LocalKeyService, p: Params) -> Params:
    days = _int(p, "PendingWindowInDays", 30)
    assert days is not None
    when = s.schedule_key_deletion(_req_str(p, "KeyId"), pending_window_days=days)
    return {
        "KeyId": s.audit.key_arn,
        "DeletionDate": when.timestamp(),
        "KeyState": "PendingDeletion",
        "PendingWindowInDays": days,
    }


def _op_cancel_key_deletion(s: LocalKeyService, p: Params) -> Params:
    s.cancel_key_deletion(_req_str(p, "KeyId"))
    return {"KeyId": s.audit.key_arn}


OPERATIONS: Mapping[str, Callable[[LocalKeyService, Params], Params]] = {
    "CreateKey": _op_create_key,
    "DescribeKey": _op_describe_key,
    "ListKeys": _op_list_keys,
    "CreateAlias": _op_create_alias,
    "DeleteAlias": _op_delete_alias,
    "ListAliases": _op_list_aliases,
    "GenerateDataKey": _op_generate_data_key,
    "GenerateDataKeyWithoutPlaintext": _op_generate_data_key_without_plaintext,
    "Encrypt": _op_encrypt,
    "Decrypt": _op_decrypt,
    "ReEncrypt": _op_re_encrypt,
    "GenerateRandom": _op_generate_random,
    "GetKeyPolicy": _op_get_key_policy,
    "PutKeyPolicy": _op_put_key_policy,
    "ListKeyPolicies": _op_list_key_policies,
    "EnableKeyRotation": _op_enable_key_rotation,
    "DisableKeyRotation": _op_disable_key_rotation,
    "GetKeyRotationStatus": _op_get_key_rotation_status,
    "RotateKeyOnDemand": _op_rotate_key_on_demand,
    "EnableKey": _op_enable_key,
    "DisableKey": _op_disable_key,
    "ScheduleKeyDeletion": _op_schedule_key_deletion,
    "CancelKeyDeletion": _op_cancel_key_deletion,
}


class KmsApplication:
    """The ASGI application: KMS (JSON 1.1) and STS (query) on one endpoint.

    ``callers`` maps long-term access key ids to (secret, Caller); sessions
    issued by STS are looked up in ``sessions``. The protocol is chosen by the
    signed ``Content-Type``: a form body is STS, anything else must be KMS's
    ``application/x-amz-json-1.1``.
    """

    def __init__(
        self,
        store: KeyStore,
        callers: Mapping[str, tuple[str, Caller]],
        audit: AuditLog,
        *,
        region: str,
        verify_recipient: RecipientVerifier | None = None,
        sessions: SessionStore | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.callers = dict(callers)
        self.audit = audit
        self.region = region
        self.verify_recipient = verify_recipient
        self.sessions = sessions
        self.roles = roles_from({c.principal_arn: c.account_id for _, c in self.callers.values()})
        self._now = now
        self._session_policies: dict[str, PolicyDocument] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        headers = _headers(scope)
        request_id = str(uuid.uuid4())
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media == FORM_CONTENT_TYPE:
            status, body, content_type = await self._serve_sts(scope, receive, headers, request_id)
        else:
            status, body, content_type = await self._serve_kms(scope, receive, headers)
        response_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"x-amzn-requestid", request_id.encode()),
        ]
        if status in (408, 413):
            response_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        log.debug("%s %.1f ms", headers.get("x-amz-target"), (time.perf_counter() - started) * 1e3)

    # --- KMS ------------------------------------------------------------------------

    async def _serve_kms(
        self, scope: Scope, receive: Receive, headers: dict[str, str]
    ) -> tuple[int, bytes, bytes]:
        try:
            raw = await _read_body(receive, headers)
            status, payload = self.handle(scope, headers, raw)
            return status, json.dumps(payload).encode(), CONTENT_TYPE
        except KmsError as e:
            error = {"__type": e.kms_type, "message": e.message}
            return e.status, json.dumps(error).encode(), CONTENT_TYPE

    def handle(self, scope: Scope, headers: dict[str, str], raw: bytes) -> tuple[int, Params]:
        """Authenticate, dispatch and audit one KMS request. Raises KmsError for the reply."""
        if scope["method"] != "POST" or scope["path"] != "/":
            raise KmsError("UnknownOperationException", "only POST / is served", status=404)
        target = headers.get("x-amz-target", "")
        operation = target.removeprefix(TARGET_PREFIX)
        event: dict[str, Any] = {
            "time": self._now().isoformat(),
            "operation": operation[:MAX_LOGGED_NAME] or None,
            "source": _client(scope),
        }
        service: LocalKeyService | None = None
        failure: KmsError | None = None
        result: Params = {}
        try:
            caller = self._authenticate_kms(scope, headers, raw)
            event["caller"] = caller.principal_arn
            event["account"] = caller.account_id
            if caller.session_name is not None:
                event["session"] = caller.session_name
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != CONTENT_TYPE.decode():
                raise KmsError(
                    "UnknownOperationException",
                    f"KMS requests must have Content-Type {CONTENT_TYPE.decode()}, "
                    f"not {headers.get('content-type', '(none)')[:MAX_LOGGED_NAME]!r}",
                )
            if not target.startswith(TARGET_PREFIX) or operation not in OPERATIONS:
                raise KmsError(
                    "UnknownOperationException", f"unknown operation {target[:MAX_LOGGED_NAME]!r}"
                )
            params = _parse_json(raw)
            service = LocalKeyService(
                self.store, caller, region=self.region, verify_recipient=self.verify_recipient
            )
            result = OPERATIONS[operation](service, params)
        except KmsError as e:
            failure = e
        except StrongroomError as e:
            failure = kms_error_for(e)
        except Exception:
            log.exception("internal error in %s", operation[:MAX_LOGGED_NAME])
            failure = KmsError("KMSInternalException", "internal error", status=500)
        if service is not None:
            _describe_audit(event, service)
        if failure is None:
            event["outcome"] = "allowed"
        else:
            denied = failure.kms_type == "AccessDeniedException"
            event.update(outcome="denied" if denied else "error", error=failure.kms_type)
            event["message"] = failure.message
        self.audit.append(event)
        if failure is not None:
            raise failure
        return 200, result

    def _authenticate_kms(self, scope: Scope, headers: dict[str, str], raw: bytes) -> Caller:
        signed = sigv4.verify(
            _signed_request(scope, headers, raw),
            self._signing_key,
            service=sigv4.KMS,
            region=self.region,
            now=self._now(),
        )
        entry = self.callers.get(signed.access_key_id)
        if entry is not None:
            return entry[1]
        session = self._session(signed.access_key_id)
        assert session is not None  # the verifier found it a moment ago
        return Caller(
            session.principal_arn,
            session.account_id,
            session.access_key_id,
            session_name=session.name,
            session_policy=self._session_policy(session.policy),
        )

    def _session_policy(self, text: str | None) -> PolicyDocument | None:
        if text is None:
            return None
        cached = self._session_policies.get(text)
        if cached is None:
            cached = PolicyDocument.parse(text, kind="session")  # validated when issued
            self._session_policies[text] = cached
        return cached

    # --- credentials ----------------------------------------------------------------

    def _session(self, access_key_id: str) -> SessionRecord | None:
        if self.sessions is None or not access_key_id.startswith(SESSION_ACCESS_KEY_PREFIX):
            return None
        try:
            session = self.sessions.get(access_key_id)
        except ConfigError as e:
            log.warning("%s", e.message)
            return None
        # a session lives only as long as the identity that asked for it
        if session is None or session.parent_access_key_id not in self.callers:
            return None
        return session

    def _signing_key(self, access_key_id: str) -> sigv4.SigningKey | None:
        entry = self.callers.get(access_key_id)
        if entry is not None:
            return sigv4.SigningKey(entry[0])
        session = self._session(access_key_id)
        if session is None:
            return None
        return sigv4.SigningKey(
            session.secret_access_key, session.session_token, expires=session.expires
        )

    # --- STS ------------------------------------------------------------------------

    async def _serve_sts(
        self, scope: Scope, receive: Receive, headers: dict[str, str], request_id: str
    ) -> tuple[int, bytes, bytes]:
        event: dict[str, Any] = {
            "time": self._now().isoformat(),
            "operation": None,
            "source": _client(scope),
        }
        try:
            try:
                raw = await _read_body(receive, headers)
            except KmsError as e:
                raise StsError(
                    "ValidationError" if e.status != 408 else "RequestTimeout", e.message, e.status
                ) from None
            result = self.handle_sts(scope, headers, raw, event)
            event["outcome"] = "allowed"
            status, body = 200, result.body(request_id)
        except StsError as e:
            denied = e.code == "AccessDenied"
            event.update(outcome="denied" if denied else "error", error=e.code, message=e.message)
            status, body = e.status, error_body(e, request_id)
        except StrongroomError as e:  # the workspace itself is broken (an unreadable file)
            log.warning("STS %s: %s", event.get("operation"), e.message)
            event.update(outcome="error", error="InternalFailure", message=e.message)
            status = 500
            body = error_body(StsError("InternalFailure", "internal error", 500), request_id)
        except Exception:
            log.exception("internal error in STS %s", event.get("operation"))
            event.update(outcome="error", error="InternalFailure")
            status = 500
            body = error_body(StsError("InternalFailure", "internal error", 500), request_id)
        if event.get("operation") is not None or event.get("caller") is not None:
            self.audit.append(event)
        return status, body, XML_CONTENT_TYPE

    def handle_sts(
        self, scope: Scope, headers: dict[str, str], raw: bytes, event: dict[str, Any]
    ) -> StsResult:
        """Authenticate and run one STS request; fills ``event`` for the audit log."""
        if scope["method"] != "POST" or scope["path"] != "/":
            raise StsError("InvalidAction", "only POST / is served", 404)
        params = parse_form(raw, scope.get("query_string", b"").decode("latin-1"))
        event["operation"] = f"sts:{params.get('Action', '')[:MAX_LOGGED_NAME]}"
        try:
            signed = sigv4.verify(
                _signed_request(scope, headers, raw),
                self._signing_key,
                service=sigv4.STS,
                region=self.region,
                now=self._now(),
            )
        except sigv4.SignatureError as e:
            code, status = STS_SIGNATURE_CODES.get(e.kms_type, ("SignatureDoesNotMatch", 403))
            raise StsError(code, e.message, status) from None
        caller = self._sts_caller(signed.access_key_id)
        event["caller"] = caller.principal_arn
        event["account"] = caller.account_id
        if caller.session is not None:
            event["session"] = caller.session.name
        assert self.sessions is not None  # _sts_caller found the identity
        sts = LocalSts(self.sessions, self.roles, now=self._now())
        result = sts.dispatch(caller, params)
        event.update(result.audit)
        return result

    def _sts_caller(self, access_key_id: str) -> StsCaller:
        if self.sessions is None:
            raise StsError("InvalidAction", "this key service issues no sessions", 400)
        entry = self.callers.get(access_key_id)
        if entry is not None:
            caller = entry[1]
            return StsCaller(caller.principal_arn, caller.account_id, access_key_id)
        session = self._session(access_key_id)
        assert session is not None  # the verifier found it a moment ago
        return StsCaller(session.principal_arn, session.account_id, access_key_id, session)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _signed_request(scope: Scope, headers: dict[str, str], raw: bytes) -> sigv4.SignedRequest:
    return sigv4.SignedRequest(
        method=scope["method"],
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=raw,
    )


def _describe_audit(event: dict[str, Any], service: LocalKeyService) -> None:
    info = service.audit
    event["key"] = info.key_arn
    if info.decision is not None:
        event["decision"] = info.decision.effect
        event["statement"] = info.decision.statement_sid
        if info.decided_by != "key":
            event["decided_by"] = f"{info.decided_by} policy"
    if info.attestation is not None:
        event["attestation"] = info.attestation


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects deeper than ``limit``.

    Run before decoding: Python's decoder recurses once per level and a body of
    a few hundred KB of ``[`` exhausts the stack. Legitimate KMS bodies nest two
    or three levels and their blobs are base64 (no brackets), so the counting
    pass below is skipped unless the body holds more brackets than ``limit``.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for token in _JSON_NESTING.finditer(raw):
        char = token.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


# A string (with escapes) is skipped whole; brackets outside strings are counted.
_JSON_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _parse_json(raw: bytes) -> Params:
    if json_depth_exceeds(raw, MAX_JSON_DEPTH):
        raise KmsError(
            "SerializationException",
            f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
        )
    try:
        # standard JSON only, as KMS: NaN and Infinity are no JSON values
        params = json.loads(raw or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise KmsError("SerializationException", "the request body is not valid JSON") from None
    if not isinstance(params, dict):
        raise KmsError("SerializationException", "the request body must be a JSON object")
    return params


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes:
    """The whole body, at most :data:`MAX_BODY` bytes, within :data:`BODY_TIMEOUT_S`."""
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise KmsError("ValidationException", f"request body larger than {MAX_BODY} bytes", 413)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise KmsError("ValidationException", "client disconnected")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    raise KmsError(
                        "ValidationException", f"request body larger than {MAX_BODY} bytes", 413
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise KmsError(
            "RequestTimeoutException", f"the body did not arrive within {BODY_TIMEOUT_S:g} s", 408
        ) from None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
