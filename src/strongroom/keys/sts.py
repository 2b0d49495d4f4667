"""The local key service's STS: short-lived, scoped session credentials.

``strongroom run`` must never hand the host's long-term secret to an enclave
(anything that reads the enclave server's memory could use it for every KMS
operation the host may call). So, as on AWS, the host asks STS for session
credentials whose inline session policy allows only ``kms:Decrypt`` on the
package's key, for the shortest lifetime STS allows, and sends those.

The endpoint is the key service's own (``POST /``), in STS's query protocol:
a form-encoded body ``Action=AssumeRole&Version=2011-06-15&...`` signed with
SigV4 for service ``sts``, answered in STS's XML (errors as ``<ErrorResponse>``),
so an unmodified boto3 ``sts`` client or ``aws sts`` with ``endpoint_url``
works against it. Implemented: ``AssumeRole``, ``GetFederationToken`` and
``GetCallerIdentity``.

Local rules, and where they differ from AWS:

- The roles that exist are the workspace's role identities (the host's
  ``arn:aws:iam::ACCOUNT:role/strongroom-host``). A role trusts its own
  account: any principal of that account may assume it (AWS would read the
  role's trust policy). The host thus assumes its own role.
- A session is ``arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION``; key
  policies naming the role ARN or the account match it. Its effective
  permission is the key policy's decision AND its session policy's.
- ``GetFederationToken`` needs an IAM user's long-term credentials; the
  federated user has no permission beyond its session policy (none without one).
- A session calling STS is held to its session policy (``sts:AssumeRole`` on
  the role), so a session scoped to ``kms:Decrypt`` cannot mint a broader one.

Sessions are JSON files of mode 0600 under ``<workspace>/keys/sessions/``,
kept a day past their expiry so that a late request is told
``ExpiredTokenException`` rather than "unknown key", then removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape

from strongroom._internal.files import SECRET_MODE, atomic_write_json, locked
from strongroom.errors import ConfigError
from strongroom.policy import PolicyDocument, PolicyError, RequestContext, evaluate

API_VERSION = "2011-06-15"
XML_NAMESPACE = f"https://sts.amazonaws.com/doc/{API_VERSION}/"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
XML_CONTENT_TYPE = b"text/xml"

#: STS's bounds on DurationSeconds.
MIN_DURATION_S = 900
MAX_ROLE_DURATION_S = 3600  # a role's default MaxSessionDuration; also the cap for chaining
MAX_MODEL_DURATION_S = 43200
MAX_FEDERATION_DURATION_S = 129600
DEFAULT_FEDERATION_DURATION_S = 43200
#: Inline session policies are at most this many characters.
MAX_SESSION_POLICY_CHARS = 2048
#: Expired sessions are kept this long, to answer ExpiredToken, then removed.
EXPIRED_RETENTION = timedelta(days=1)
SESSION_ACCESS_KEY_PREFIX = "ASIA"

_NAME_CHARS = re.compile(r"[\w+=,.@-]+", re.ASCII)
_ROLE_ARN = re.compile(r"arn:aws:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)", re.ASCII)
_ACCESS_KEY = re.compile(r"ASIA[A-Z2-7]{16}", re.ASCII)
_KEY_ALPHABET = string.ascii_uppercase + "234567"
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"

SessionKind = Literal["assumed-role", "federated-user"]


class StsError(Exception):
    """An error to answer in STS's XML shape."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _validation(value: object, member: str, constraint: str) -> StsError:
    shown = str(value)[:64]
    return StsError(
        "ValidationError",
        f"1 validation error detected: Value '{shown}' at '{member}' failed to satisfy "
        f"constraint: {constraint}",
    )


# --- principals ----------------------------------------------------------------------


@dataclass(frozen=True)
class StsCaller:
    """Who calls STS: a workspace identity, or a session it was issued."""

    principal_arn: str
    account_id: str
    access_key_id: str
    #: The session record when the caller signed with session credentials.
    session: SessionRecord | None = None


@dataclass(frozen=True)
class SessionRecord:
    """One issued session. Secrets never appear in ``repr``."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    kind: SessionKind
    principal_arn: str
    account_id: str
    #: the long-term access key that asked for it
    parent_access_key_id: str
    #: the role ARN (assumed-role) or the user ARN (federated-user) it derives from
    source_arn: str
    name: str
    policy: str | None
    issued: datetime
    expires: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "kind": self.kind,
            "principal_arn": self.principal_arn,
            "account_id": self.account_id,
            "parent_access_key_id": self.parent_access_key_id,
            "source_arn": self.source_arn,
            "name": self.name,
            "policy": self.policy,
            "issued": self.issued.isoformat(),
            "expires": self.expires.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SessionRecord:
        kind = raw["kind"]
        if kind not in ("assumed-role", "federated-user"):
            raise ValueError(f"unknown session kind {kind!r}")
        return cls(
            access_key_id=str(raw["access_key_id"]),
            secret_access_key=str(raw["secret_access_key"]),
            session_token=str(raw["session_token"]),
            kind=kind,
            principal_arn=str(raw["principal_arn"]),
            account_id=str(raw["account_id"]),
            parent_access_key_id=str(raw["parent_access_key_id"]),
            source_arn=str(raw["source_arn"]),
            name=str(raw["name"]),
            policy=None if raw["policy"] is None else str(raw["policy"]),
            issued=datetime.fromisoformat(raw["issued"]),
            expires=datetime.fromisoformat(raw["expires"]),
        )

    @property
    def user_id(self) -> str:
        """GetCallerIdentity's ``UserId``: role id + session name, or account + name."""
        if self.kind == "assumed-role":
            return f"{principal_id(self.source_arn, 'AROA')}:{self.name}"
        return f"{self.account_id}:{self.name}"


def principal_id(arn: str, prefix: str) -> str:
    """A stable IAM unique id (``AROA…``/``AIDA…``) derived from an ARN."""
    digest = base64.b32encode(hashlib.sha256(arn.encode()).digest()).decode()
    return prefix + digest[:17]


# --- storage -------------------------------------------------------------------------


class SessionStore:
    """Issued sessions as 0600 JSON files, one per access key id.

    Only the key service writes here. Reads are cached by (inode, mtime,
    size), so the hot path costs one ``stat`` and a file edited by hand (or
    by a test fast-forwarding an expiry) is seen on the next request.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[tuple[int, int, int], SessionRecord]] = {}

    def _path(self, access_key_id: str) -> Path | None:
        # only our own key ids can name a file: nothing else reaches the filesystem
        return self.root / f"{access_key_id}.json" if _ACCESS_KEY.fullmatch(access_key_id) else None

    def get(self, access_key_id: str) -> SessionRecord | None:
        path = self._path(access_key_id)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(access_key_id, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(access_key_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            record = SessionRecord.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"session file {path} is unreadable: {e}") from e
        if record.access_key_id != access_key_id:
            raise ConfigError(f"session file {path} names another access key")
        self._cache[access_key_id] = (stamp, record)
        return record

    def put(self, record: SessionRecord, *, now: datetime) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(record.access_key_id)
        assert path is not None
        with locked(self.root / ".lock"):
            atomic_write_json(path, record.to_json(), mode=SECRET_MODE)
            self._prune(now)

    def _prune(self, now: datetime) -> None:
        for path in self.root.glob("ASIA*.json"):
            try:
                record = self.get(path.stem)
            except ConfigError:
                continue  # unreadable: left for whoever looks at the workspace
            if record is not None and record.expires + EXPIRED_RETENTION < now:
                path.unlink(missing_ok=True)
                self._cache.pop(path.stem, None)


# --- the operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """A role that exists in this workspace (its trust policy: its own account)."""

    arn: str
    account_id: str
    name: str


@dataclass
class StsResult:
    """An operation's ``<ActionResult>`` content plus what the audit log should say."""

    action: str
    result: str
    audit: dict[str, Any] = field(default_factory=dict)

    def body(self, request_id: str) -> bytes:
        return (
            f'<{self.action}Response xmlns="{XML_NAMESPACE}">'
            f"<{self.action}Result>{self.result}</{self.action}Result>"
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            f"</{self.action}Response>"
        ).encode()


class LocalSts:
    """STS semantics over a :class:`SessionStore`, for one authenticated caller."""

    def __init__(self, store: SessionStore, roles: Mapping[str, Role], *, now: datetime) -> None:
        self.store = store
        self.roles = roles
        self.now = now.replace(microsecond=0)

    def dispatch(self, caller: StsCaller, params: Mapping[str, str]) -> StsResult:
        action = params.get("Action")
        if not action:
            raise StsError("MissingAction", "the request names no Action")
        version = params.get("Version")
        handler = _OPERATIONS.get(action)
        if handler is None or version != API_VERSION:
            raise StsError(
                "InvalidAction", f"Could not find operation {action[:64]} for version {version}"
            )
        allowed = _ALLOWED_PARAMS[action]
        for name in params:
            if name not in allowed:
                raise StsError(
                    "ValidationError",
                    f"the local key service does not support the {action} parameter {name[:64]!r}",
                )
        return handler(self, caller, params)

    # --- AssumeRole ---------------------------------------------------------------

    def assume_role(self, caller: StsCaller, p: Mapping[str, str]) -> StsResult:
        role_arn = _required(p, "RoleArn")
        name = _session_name(_required(p, "RoleSessionName"), "roleSessionName", 2, 64)
        duration = _duration(p, MAX_MODEL_DURATION_S, default=MAX_ROLE_DURATION_S)
        policy_text, policy = _session_policy(p)
        role = self.roles.get(role_arn)
        if role is None or role.account_id != caller.account_id:
            raise _not_authorized(caller, "sts:AssumeRole", role_arn)
        self._session_may(caller, "sts:AssumeRole", role_arn)
        if duration > MAX_ROLE_DURATION_S:
            raise StsError(
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            )
        record = self._issue(
            caller,
            kind="assumed-role",
            principal_arn=f"arn:aws:sts::{role.account_id}:assumed-role/{role.name}/{name}",
            source_arn=role.arn,
            name=name,
            policy=policy_text,
            duration=duration,
        )
        body = (
            "<AssumedRoleUser>"
            f"<Arn>{escape(record.principal_arn)}</Arn>"
            f"<AssumedRoleId>{escape(record.user_id)}</AssumedRoleId>"
            "</AssumedRoleUser>"
            f"{_credentials_xml(record)}{_packed_size(policy)}"
        )
        return StsResult("AssumeRole", body, _session_audit(record))

    # --- GetFederationToken -----------------------------------------------------------

    def get_federation_token(self, caller: StsCaller, p: Mapping[str, str]) -> StsResult:
        name = _session_name(_required(p, "Name"), "name", 2, 32)
        duration = _duration(p, MAX_FEDERATION_DURATION_S, default=DEFAULT_FEDERATION_DURATION_S)
        policy_text, policy = _session_policy(p)
        if caller.session is not None:
            raise StsError(
                "AccessDenied", "Cannot call GetFederationToken with session credentials", 403
            )
        if ":user/" not in caller.principal_arn:
            raise StsError(
                "AccessDenied",
                f"User: {caller.principal_arn} is not authorized to perform: "
                "sts:GetFederationToken (it needs the long-term credentials of an IAM user)",
                403,
            )
        # Without a policy a federated user may do nothing: an empty policy says so.
        record = self._issue(
            caller,
            kind="federated-user",
            principal_arn=f"arn:aws:sts::{caller.account_id}:federated-user/{name}",
            source_arn=caller.principal_arn,
            name=name,
            policy=policy_text if policy_text is not None else _EMPTY_POLICY,
            duration=duration,
        )
        body = (
            f"{_credentials_xml(record)}"
            "<FederatedUser>"
            f"<Arn>{escape(record.principal_arn)}</Arn>"
            f"<FederatedUserId>{escape(record.user_id)}</FederatedUserId>"
            "</FederatedUser>"
            f"{_packed_size(policy)}"
        )
        return StsResult("GetFederationToken", body, _session_audit(record))

    # --- GetCallerIdentity ------------------------------------------------------------

    def get_caller_identity(self, caller: StsCaller, p: Mapping[str, str]) -> StsResult:
        # needs no permission, on AWS too
        if caller.session is not None:
            user_id = caller.session.user_id
        else:
            prefix = "AROA" if ":role/" in caller.principal_arn else "AIDA"
            user_id = principal_id(caller.principal_arn, prefix)
        body = (
            f"<Arn>{escape(caller.principal_arn)}</Arn>"
            f"<UserId>{escape(user_id)}</UserId>"
            f"<Account>{escape(caller.account_id)}</Account>"
        )
        return StsResult("GetCallerIdentity", body)

    # --- helpers ----------------------------------------------------------------------

    def _session_may(self, caller: StsCaller, action: str, resource: str) -> None:
        """A session is held to its own session policy when it calls STS."""
        session = caller.session
        if session is None or session.policy is None:
            return
        request = RequestContext(
            action=action,
            resource=resource,
            principal_arn=caller.principal_arn,
            account_id=caller.account_id,
        )
        if not evaluate(PolicyDocument.parse(session.policy, kind="session"), request).allowed:
            raise _not_authorized(caller, action, resource, "no session policy allows it")

    def _issue(
        self,
        caller: StsCaller,
        *,
        kind: SessionKind,
        principal_arn: str,
        source_arn: str,
        name: str,
        policy: str | None,
        duration: int,
    ) -> SessionRecord:
        parent = caller.session.parent_access_key_id if caller.session else caller.access_key_id
        record = SessionRecord(
            access_key_id=SESSION_ACCESS_KEY_PREFIX
            + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16)),
            secret_access_key="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)),
            session_token=secrets.token_urlsafe(96),
            kind=kind,
            principal_arn=principal_arn,
            account_id=caller.account_id,
            parent_access_key_id=parent,
            source_arn=source_arn,
            name=name,
            policy=policy,
            issued=self.now,
            expires=self.now + timedelta(seconds=duration),
        )
        self.store.put(record, now=self.now)
        return record


_EMPTY_POLICY = json.dumps({"Version": "2012-10-17", "Statement": []})

_ALLOWED_PARAMS: dict[str, frozenset[str]] = {
    "AssumeRole": frozenset(
        {"Action", "Version", "RoleArn", "RoleSessionName", "Policy", "DurationSeconds"}
    ),
    "GetFederationToken": frozenset({"Action", "Version", "Name", "Policy", "DurationSeconds"}),
    "GetCallerIdentity": frozenset({"Action", "Version"}),
}

_OPERATIONS = {
    "AssumeRole": LocalSts.assume_role,
    "GetFederationToken": LocalSts.get_federation_token,
    "GetCallerIdentity": LocalSts.get_caller_identity,
}


def parse_form(body: bytes, query: str) -> dict[str, str]:
    """The parameters of a query-protocol request: a UTF-8 form body, each name once."""
    if query:
        raise StsError("ValidationError", "STS parameters belong in the form body, not the URL")
    try:
        text = body.decode("utf-8")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError):
        raise StsError("MalformedQueryString", "the form body is not valid", 404) from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise StsError("ValidationError", f"parameter {name[:64]!r} is given twice")
        params[name] = value
    return params


def _required(p: Mapping[str, str], name: str) -> str:
    value = p.get(name)
    if not value:
        member = name[0].lower() + name[1:]
        raise _validation("null", member, "Member must not be null")
    return value


def _session_name(value: str, member: str, low: int, high: int) -> str:
    if not low <= len(value) <= high:
        raise _validation(
            value, member, f"Member must have length between {low} and {high} characters"
        )
    if not _NAME_CHARS.fullmatch(value):
        raise _validation(
            value, member, "Member must satisfy regular expression pattern: [\\w+=,.@-]*"
        )
    return value


def _duration(p: Mapping[str, str], maximum: int, *, default: int) -> int:
    raw = p.get("DurationSeconds")
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise _validation(raw, "durationSeconds", "Member must be an integer")
    value = int(raw)
    if value < MIN_DURATION_S:
        raise _validation(
            value,
            "durationSeconds",
            f"Member must have value greater than or equal to {MIN_DURATION_S}",
        )
    if value > maximum:
        raise _validation(
            value, "durationSeconds", f"Member must have value less than or equal to {maximum}"
        )
    return value


def _session_policy(p: Mapping[str, str]) -> tuple[str | None, PolicyDocument | None]:
    text = p.get("Policy")
    if text is None:
        return None, None
    if not 1 <= len(text) <= MAX_SESSION_POLICY_CHARS:
        raise _validation(
            "...",
            "policy",
            f"Member must have length less than or equal to {MAX_SESSION_POLICY_CHARS}",
        )
    try:
        return text, PolicyDocument.parse(text, kind="session")
    except PolicyError as e:
        raise StsError("MalformedPolicyDocument", e.message) from None


def _packed_size(policy: PolicyDocument | None) -> str:
    if policy is None:
        return ""
    size = len(json.dumps(policy.to_dict(), separators=(",", ":")))
    return (
        f"<PackedPolicySize>{min(100, size * 100 // MAX_SESSION_POLICY_CHARS)}</PackedPolicySize>"
    )


def _credentials_xml(record: SessionRecord) -> str:
    return (
        "<Credentials>"
        f"<AccessKeyId>{record.access_key_id}</AccessKeyId>"
        f"<SecretAccessKey>{escape(record.secret_access_key)}</SecretAccessKey>"
        f"<SessionToken>{escape(record.session_token)}</SessionToken>"
        f"<Expiration>{record.expires.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration>"
        "</Credentials>"
    )


def error_body(error: StsError, request_id: str) -> bytes:
    kind = "Receiver" if error.status >= 500 else "Sender"
    return (
        f'<ErrorResponse xmlns="{XML_NAMESPACE}">'
        f"<Error><Type>{kind}</Type><Code>{escape(error.code)}</Code>"
        f"<Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId>"
        "</ErrorResponse>"
    ).encode()


def _not_authorized(
    caller: StsCaller, action: str, resource: str, why: str | None = None
) -> StsError:
    tail = f" because {why}" if why else ""
    return StsError(
        "AccessDenied",
        f"User: {caller.principal_arn} is not authorized to perform: {action} "
        f"on resource: {resource[:256]}{tail}",
        403,
    )


def _session_audit(record: SessionRecord) -> dict[str, Any]:
    return {
        "issued_session": record.name,
        "issued_arn": record.principal_arn,
        "issued_access_key": record.access_key_id,
        "expires": record.expires.isoformat(),
        "session_policy": record.policy,
    }


def roles_from(principals: Mapping[str, str]) -> dict[str, Role]:
    """The workspace's roles, from principal ARN → account id."""
    roles = {}
    for arn, account in principals.items():
        match = _ROLE_ARN.fullmatch(arn)
        if match and match.group(1) == account:
            roles[arn] = Role(arn=arn, account_id=account, name=match.group(2))
    return roles


#: STS's names for the signature failures the verifier reports in KMS's terms.
STS_SIGNATURE_CODES: Mapping[str, tuple[str, int]] = {
    "IncompleteSignatureException": ("IncompleteSignature", 400),
    "InvalidSignatureException": ("SignatureDoesNotMatch", 403),
    "UnrecognizedClientException": ("InvalidClientTokenId", 403),
    "ExpiredTokenException": ("ExpiredToken", 403),
    "MissingAuthenticationTokenException": ("MissingAuthenticationToken", 403),
}
