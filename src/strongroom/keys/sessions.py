"""Scoped, short-lived credentials for one run: what the host hands the enclave.

The enclave server needs to call ``kms:Decrypt`` once, for one package. It is
given exactly that: session credentials from STS whose inline session policy
allows ``kms:Decrypt`` on the package's key and nothing else, valid for the
shortest time STS allows (:data:`RUN_SESSION_DURATION_S`, 15 minutes). The
host's long-term secret never leaves the host; a copy of the session
credentials taken from the enclave's memory opens only what the run itself may
open, and only for minutes (the key policy still requires an approved
attestation on top).

One function, :func:`issue`, asks for them on both targets, through an STS
client:

- **local** — against the workspace key service (which serves STS on the
  KMS endpoint), signed by the host identity, ``AssumeRole`` on the host's own
  role ``arn:aws:iam::ACCOUNT:role/strongroom-host``. The client is
  :class:`QuerySts`, two Query-protocol calls signed with botocore's signer:
  a boto3 client would load botocore's service models, ~300 ms of every
  ``strongroom run``;
- **aws** — against AWS STS with boto3's default credential chain:
  ``AssumeRole`` on ``[aws] run_role_arn`` when configured, otherwise
  ``GetFederationToken`` (which needs an IAM user's long-term credentials).

The IAM permissions the aws target needs are in ``docs/SECURITY.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from strongroom.errors import (
    AccessDeniedError,
    CredentialError,
    InvalidInputError,
    ServiceError,
    ServiceNotRunningError,
    UsageError,
)
from strongroom.workspace import Workspace

#: The shortest session STS issues; a run needs its key within seconds of starting.
RUN_SESSION_DURATION_S = 900
#: A cached session serves further runs while at least this much of it is left.
REUSE_MARGIN = timedelta(minutes=10)
#: Where, in the workspace's run directory, sessions are cached (0700; files 0600).
SESSION_CACHE = "sessions"
#: Session names are ``strongroom-run-<8 hex>``, which the key-service audit log shows.
SESSION_NAME_PREFIX = "strongroom-run-"
#: The only action a run's credentials allow.
RUN_ACTION = "kms:Decrypt"
POLICY_SID = "ThisRunMayDecryptItsPackageOnly"

_KEY_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+", re.ASCII)
STS_API_VERSION = "2011-06-15"
FORM_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
_STS_CONFIG: dict[str, Any] = {
    "retries": {"max_attempts": 2, "mode": "standard"},
    "connect_timeout": 5,
    "read_timeout": 30,
}


@dataclass(frozen=True)
class RunCredentials:
    """Session credentials for one run. The secret and token never appear in ``repr``."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    #: the session principal the key service sees (assumed-role or federated-user ARN)
    principal_arn: str
    session_name: str
    #: the key ARN (or ARN pattern) the session policy allows kms:Decrypt on
    resource: str

    def to_wire(self) -> dict[str, str]:
        """The ``credentials`` object of the enclave's run request."""
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
        }


def decrypt_only_policy(resource: str) -> str:
    """The session policy of a run: ``kms:Decrypt`` on ``resource``, nothing else."""
    statement = {"Sid": POLICY_SID, "Effect": "Allow", "Action": RUN_ACTION, "Resource": resource}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]}, separators=(",", ":"))


def decrypt_resource(key_id: str | None, encrypted_data_key: bytes, *, region: str) -> str:
    """The key a package's data key is wrapped under, as the session policy's Resource.

    A v1 header names the key ARN. A legacy package (the AWS sample's format)
    names none: a local key-service blob names its key id, so the resource is
    that key in any account; an AWS KMS blob is opaque, so it is any key of the
    region (the key policy still decides, with the attestation).
    """
    if key_id and _KEY_ARN.fullmatch(key_id):
        return key_id
    if key_id and _is_uuid(key_id):
        return f"arn:aws:kms:{region}:*:key/{key_id}"
    from strongroom.keys import ciphertext  # legacy packages only
    from strongroom.keys.base import InvalidCiphertextError

    try:
        named = ciphertext.parse_header(encrypted_data_key).key_id
    except InvalidCiphertextError:
        return f"arn:aws:kms:{region}:*:key/*"
    return f"arn:aws:kms:{region}:*:key/{named}"


def new_session_name() -> str:
    return SESSION_NAME_PREFIX + secrets.token_hex(4)


def issue(
    sts: Any,
    *,
    resource: str,
    role_arn: str | None,
    session_name: str | None = None,
    duration_s: int = RUN_SESSION_DURATION_S,
) -> RunCredentials:
    """Ask STS for a run's credentials: ``AssumeRole`` on ``role_arn``, or
    ``GetFederationToken`` when there is no role, with :func:`decrypt_only_policy`.

    ``sts`` is a boto3 STS client (AWS STS), or a :class:`QuerySts` (the local
    key service's).
    """
    import botocore.exceptions  # loaded with the client already; here to keep imports cheap

    name = session_name or new_session_name()
    policy = decrypt_only_policy(resource)
    try:
        if role_arn is not None:
            answer = sts.assume_role(
                RoleArn=role_arn, RoleSessionName=name, Policy=policy, DurationSeconds=duration_s
            )
            principal = answer["AssumedRoleUser"]["Arn"]
        else:
            answer = sts.get_federation_token(Name=name, Policy=policy, DurationSeconds=duration_s)
            principal = answer["FederatedUser"]["Arn"]
        creds = answer["Credentials"]
        return RunCredentials(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expiration=creds["Expiration"],
            principal_arn=principal,
            session_name=name,
            resource=resource,
        )
    except botocore.exceptions.ClientError as e:
        raise _sts_error(e, "AssumeRole" if role_arn else "GetFederationToken") from e
    except botocore.exceptions.BotoCoreError as e:
        from strongroom.keys.aws import botocore_failure

        hint = "on the local target, start the key service: `strongroom keys serve --detach`"
        raise botocore_failure(e, "STS", not_running_hint=hint) from e
    except (KeyError, TypeError) as e:
        raise ServiceError(f"STS answered without session credentials ({e})") from e


class QuerySts:
    """``assume_role`` and ``get_federation_token`` as a boto3 STS client has them (same
    parameters, same answer shape, ``ClientError`` on refusal), over STS's Query
    protocol: a form-encoded POST signed with botocore's SigV4 signer, an XML answer."""

    def __init__(self, endpoint: str, *, region: str, access_key_id: str, secret_key: str) -> None:
        self.endpoint = endpoint.rstrip("/") + "/"
        self.region = region
        self._credentials = (access_key_id, secret_key)

    def assume_role(self, **params: Any) -> dict[str, Any]:
        return self._call("AssumeRole", params, "AssumedRoleUser")

    def get_federation_token(self, **params: Any) -> dict[str, Any]:
        return self._call("GetFederationToken", params, "FederatedUser")

    def _call(self, action: str, params: dict[str, Any], principal: str) -> dict[str, Any]:
        import urllib.parse
        import xml.etree.ElementTree as ElementTree

        import botocore.exceptions
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        from strongroom.transport.base import parse_address
        from strongroom.transport.http import ChannelError, HttpClient

        form = {"Action": action, "Version": STS_API_VERSION, **params}
        body = urllib.parse.urlencode({k: str(v) for k, v in form.items()})
        request = AWSRequest(
            method="POST", url=self.endpoint, data=body, headers={"Content-Type": FORM_TYPE}
        )
        SigV4Auth(Credentials(*self._credentials), "sts", self.region).add_auth(request)
        # the workspace's key service speaks plain HTTP on a local socket: the socket
        # transport saves building a TLS context (~80 ms) for nothing
        url = urllib.parse.urlsplit(self.endpoint)
        try:
            with (
                HttpClient(
                    parse_address(url.netloc), timeout=_STS_CONFIG["read_timeout"], host=url.netloc
                ) as client,
                client.request(
                    "POST", url.path or "/", body=body.encode(), headers=dict(request.headers)
                ) as response,
            ):
                status, content = response.status, response.read()
        except ChannelError as e:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=self.endpoint) from e
        try:
            # only the workspace's own key service is called this way (AWS gets boto3)
            root = ElementTree.fromstring(content)  # noqa: S314
        except ElementTree.ParseError as e:
            raise ServiceError(f"STS answered {action} with something that is not XML") from e
        found = {element.tag.rpartition("}")[2]: element for element in root.iter()}
        if status != 200:
            code, message = (found[n].text or "" if n in found else "" for n in ("Code", "Message"))
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": code, "Message": message}}, action
            )
        credentials = {
            name: found[name].text or ""
            for name in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
            if name in found
        }
        arn = found.get("Arn")
        return {
            "Credentials": {
                **credentials,
                "Expiration": datetime.fromisoformat(credentials.get("Expiration", "")),
            },
            principal: {"Arn": arn.text if arn is not None else ""},
        }


def run_credentials(ws: Workspace, resource: str) -> RunCredentials:
    """The scoped credentials of one run: a cached session for ``resource`` with at
    least :data:`REUSE_MARGIN` left, else a new one from the workspace's STS.

    A session serves the runs of its key for its first few minutes: reusing it
    widens nothing (its scope is the run's own, and it was valid for 15 minutes
    anyway) and spares every run an STS round trip and botocore's start-up.
    """
    cache = ws.run_dir / SESSION_CACHE / (hashlib.sha256(resource.encode()).hexdigest() + ".json")
    cached = _load_cached(cache, resource)
    if cached is not None:
        return cached
    fresh = _issue_for(ws, resource)
    _store_cached(cache, fresh)
    return fresh


def _load_cached(path: Path, resource: str) -> RunCredentials | None:
    try:
        raw = json.loads(path.read_text())
        creds = RunCredentials(
            access_key_id=raw["access_key_id"],
            secret_access_key=raw["secret_access_key"],
            session_token=raw["session_token"],
            expiration=datetime.fromisoformat(raw["expiration"]),
            principal_arn=raw["principal_arn"],
            session_name=raw["session_name"],
            resource=raw["resource"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if creds.resource != resource or creds.expiration - datetime.now(UTC) < REUSE_MARGIN:
        return None
    return creds


def _store_cached(path: Path, creds: RunCredentials) -> None:
    from strongroom._internal.files import write_secret

    record = {
        "access_key_id": creds.access_key_id,
        "secret_access_key": creds.secret_access_key,
        "session_token": creds.session_token,
        "expiration": creds.expiration.astimezone(UTC).isoformat(),
        "principal_arn": creds.principal_arn,
        "session_name": creds.session_name,
        "resource": creds.resource,
    }
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_secret(path, json.dumps(record).encode())


def _issue_for(ws: Workspace, resource: str) -> RunCredentials:
    """A new session from the workspace's STS. The choice of target is made here, once;
    :func:`issue` is the same call on both."""
    config = ws.config
    if config.target == "local":
        from strongroom.keys.service import local_endpoint

        try:
            endpoint = local_endpoint(ws)
        except ServiceNotRunningError as e:
            raise ServiceNotRunningError(
                "cannot reach the key service for the run's credentials: it is not running",
                hint=e.hint,
            ) from e
        host = ws.identity("host")
        local = QuerySts(
            endpoint,
            region=config.region,
            access_key_id=host.access_key_id,
            secret_key=host.secret_access_key,
        )
        return issue(local, resource=resource, role_arn=host.principal_arn)
    from strongroom.keys.aws import boto_client, default_credentials

    role = config.aws_run_role_arn
    if role is None:
        found = default_credentials()
        if found is None:
            raise UsageError(
                "no AWS credentials found",
                hint="configure the standard AWS credential chain (env, profile, role)",
            )
        if found.token:
            raise UsageError(
                "the host's AWS credentials are temporary, and GetFederationToken needs "
                "an IAM user's long-term credentials",
                hint="set [aws] run_role_arn in the workspace config.toml to a role the host "
                "may assume (see docs/SECURITY.md)",
            )
    import botocore.config

    sts = boto_client(
        "sts", region_name=config.region, config=botocore.config.Config(**_STS_CONFIG)
    )
    return issue(sts, resource=resource, role_arn=role)


def _sts_error(error: Any, operation: str) -> Exception:
    """Our error for a botocore ``ClientError`` from STS."""
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "") or str(error)
    text = f"STS refused the run's session credentials: {message} ({code})"
    if code in ("AccessDenied", "AccessDeniedException"):
        return AccessDeniedError(
            text,
            hint=f"the host identity needs sts:{operation} (see the IAM policy in "
            "docs/SECURITY.md)",
        )
    from strongroom.keys.aws import CREDENTIAL_ERROR_CODES

    if code in CREDENTIAL_ERROR_CODES:
        return CredentialError(text)
    if code in ("ValidationError", "MalformedPolicyDocument", "PackedPolicyTooLarge"):
        return InvalidInputError(text)
    return ServiceError(text)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
