"""Run credentials on the host side, and session policies in the local key service.

No server: STS is botocore's Stubber (answers shaped as AWS STS sends them),
the key service is :class:`LocalKeyService` over a temporary key store.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from strongroom.errors import AccessDeniedError, CredentialError, UsageError
from strongroom.keys import ciphertext, sessions
from strongroom.keys.local import AliasNameError, Caller, LocalKeyService
from strongroom.keys.server import MAX_JSON_DEPTH, json_depth_exceeds
from strongroom.keys.store import KeyStore
from strongroom.policy import PolicyDocument
from strongroom.workspace import Workspace

ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:eu-central-1:{ACCOUNT}:key/{uuid.uuid4()}"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/strongroom-run"
EXPIRES = datetime(2026, 11, 29, 12, 15, tzinfo=UTC)
CREDS = {
    "AccessKeyId": "ASIAEXAMPLEEXAMPLE00",
    "SecretAccessKey": "s" * 40,
    "SessionToken": "token",
    "Expiration": EXPIRES,
}


def sts_client() -> Any:
    return boto3.session.Session().client(
        "sts",
        region_name="eu-central-1",
        aws_access_key_id="AKIAEXAMPLEEXAMPLE00",
        aws_secret_access_key="x" * 40,
    )


def test_decrypt_only_policy() -> None:
    policy = json.loads(sessions.decrypt_only_policy(KEY))
    assert policy["Statement"] == [
        {"Sid": sessions.POLICY_SID, "Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY}
    ]
    assert len(sessions.decrypt_only_policy(KEY)) < 2048  # STS's limit
    PolicyDocument.parse(sessions.decrypt_only_policy(KEY), kind="session")


def test_decrypt_resource() -> None:
    region = "eu-central-1"
    assert sessions.decrypt_resource(KEY, b"", region=region) == KEY
    key_id = str(uuid.uuid4())
    assert sessions.decrypt_resource(key_id, b"", region=region).endswith(f":*:key/{key_id}")
    # a legacy package names no key: a local blob does
    blob = ciphertext.seal(b"k" * 32, key_id, 1, b"data key", None)
    assert sessions.decrypt_resource(None, blob, region=region) == (
        f"arn:aws:kms:{region}:*:key/{key_id}"
    )
    # an AWS KMS blob is opaque: any key of the region, Decrypt only
    assert sessions.decrypt_resource(None, b"\x01" * 200, region=region) == (
        f"arn:aws:kms:{region}:*:key/*"
    )
    assert sessions.decrypt_resource("alias/app", b"\x01" * 200, region=region).endswith("key/*")


def test_issue_assumes_the_role_with_the_scoped_policy() -> None:
    sts = sts_client()
    expected = {
        "RoleArn": ROLE,
        "RoleSessionName": "strongroom-run-0123abcd",
        "Policy": sessions.decrypt_only_policy(KEY),
        "DurationSeconds": 900,
    }
    answer = {
        "Credentials": CREDS,
        "AssumedRoleUser": {
            "Arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/strongroom-run/strongroom-run-0123abcd",
            "AssumedRoleId": "AROAEXAMPLE:strongroom-run-0123abcd",
        },
    }
    with Stubber(sts) as stub:
        stub.add_response("assume_role", answer, expected)
        creds = sessions.issue(
            sts, resource=KEY, role_arn=ROLE, session_name="strongroom-run-0123abcd"
        )
    assert creds.to_wire() == {
        "access_key_id": CREDS["AccessKeyId"],
        "secret_access_key": CREDS["SecretAccessKey"],
        "session_token": "token",
    }
    assert creds.expiration == EXPIRES and creds.resource == KEY
    assert CREDS["SecretAccessKey"] not in repr(creds) and "token" not in repr(creds)


def test_issue_falls_back_to_a_federation_token() -> None:
    sts = sts_client()
    expected = {
        "Name": "strongroom-run-0123abcd",
        "Policy": sessions.decrypt_only_policy(KEY),
        "DurationSeconds": 900,
    }
    answer = {
        "Credentials": CREDS,
        "FederatedUser": {
            "Arn": f"arn:aws:sts::{ACCOUNT}:federated-user/strongroom-run-0123abcd",
            "FederatedUserId": f"{ACCOUNT}:strongroom-run-0123abcd",
        },
    }
    with Stubber(sts) as stub:
        stub.add_response("get_federation_token", answer, expected)
        creds = sessions.issue(sts, resource=KEY, role_arn=None, session_name=expected["Name"])
    assert creds.principal_arn.endswith(":federated-user/strongroom-run-0123abcd")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("AccessDenied", AccessDeniedError),
        ("ExpiredToken", CredentialError),
        ("InvalidClientTokenId", CredentialError),
    ],
)
def test_issue_errors(code: str, error: type[Exception]) -> None:
    sts = sts_client()
    with Stubber(sts) as stub:
        stub.add_client_error("assume_role", service_error_code=code, service_message="no")
        with pytest.raises(error) as e:
            sessions.issue(sts, resource=KEY, role_arn=ROLE)
    assert "STS refused the run's session credentials" in str(e.value)


def _aws_workspace(tmp_path: Path, role: str | None) -> Workspace:
    ws = Workspace.create(tmp_path / "ws", region="eu-central-1")
    config = (ws.root / "config.toml").read_text().replace('target = "local"', 'target = "aws"')
    if role is not None:
        config += f'\n[aws]\nrun_role_arn = "{role}"\n'
    (ws.root / "config.toml").write_text(config)
    return ws


def test_aws_target_assumes_the_configured_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _aws_workspace(tmp_path, ROLE)
    assert ws.config.aws_run_role_arn == ROLE
    seen: dict[str, Any] = {}

    def fake_issue(sts: Any, *, resource: str, role_arn: str | None) -> str:
        seen.update(region=sts.meta.region_name, resource=resource, role=role_arn)
        return "issued"

    monkeypatch.setattr(sessions, "issue", fake_issue)
    assert sessions._issue_for(ws, KEY) == "issued"  # type: ignore[comparison-overlap]
    assert seen == {"region": "eu-central-1", "resource": KEY, "role": ROLE}


def test_aws_target_without_a_role_needs_iam_user_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strongroom.keys import aws

    ws = _aws_workspace(tmp_path, None)
    monkeypatch.setattr(aws, "default_credentials", lambda: SimpleNamespace(token="temporary"))
    with pytest.raises(UsageError) as e:
        sessions.run_credentials(ws, KEY)
    assert "run_role_arn" in (e.value.hint or "")
    monkeypatch.setattr(aws, "default_credentials", lambda: None)
    with pytest.raises(UsageError):
        sessions.run_credentials(ws, KEY)
    monkeypatch.setattr(aws, "default_credentials", lambda: SimpleNamespace(token=None))
    monkeypatch.setattr(sessions, "issue", lambda sts, *, resource, role_arn: role_arn or "fed")
    assert sessions._issue_for(ws, KEY) == "fed"  # type: ignore[comparison-overlap]


def _creds(expires_in: timedelta, resource: str = KEY) -> sessions.RunCredentials:
    return sessions.RunCredentials(
        access_key_id="ASIATESTTESTTESTTEST",
        secret_access_key="s" * 40,
        session_token="t" * 64,
        expiration=datetime.now(UTC) + expires_in,
        principal_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/strongroom-host/strongroom-run-1",
        session_name="strongroom-run-1",
        resource=resource,
    )


def test_a_session_serves_its_key_s_runs_while_it_has_time_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _aws_workspace(tmp_path, ROLE)
    issued: list[sessions.RunCredentials] = []

    def fresh(_ws: Any, resource: str) -> sessions.RunCredentials:
        issued.append(_creds(timedelta(minutes=15), resource))
        return issued[-1]

    monkeypatch.setattr(sessions, "_issue_for", fresh)
    first = sessions.run_credentials(ws, KEY)
    assert sessions.run_credentials(ws, KEY) == first and len(issued) == 1  # reused
    other = KEY.replace("key/", "key/0")
    assert sessions.run_credentials(ws, other).resource == other and len(issued) == 2
    cached = sorted((ws.run_dir / sessions.SESSION_CACHE).iterdir())
    assert len(cached) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in cached)
    assert (ws.run_dir / sessions.SESSION_CACHE).stat().st_mode & 0o777 == 0o700
    # less than the margin left: a new session, never one about to expire
    monkeypatch.setattr(sessions, "REUSE_MARGIN", timedelta(minutes=16))
    assert sessions.run_credentials(ws, KEY) != first and len(issued) == 3
    # a damaged cache file is a miss, not an error
    for path in cached:
        path.write_text("{not json")
    monkeypatch.setattr(sessions, "REUSE_MARGIN", timedelta(minutes=10))
    sessions.run_credentials(ws, KEY)
    assert len(issued) == 4


def test_config_refuses_a_bad_run_role(tmp_path: Path) -> None:
    from strongroom.errors import ConfigError

    ws = _aws_workspace(tmp_path, "not-an-arn")
    with pytest.raises(ConfigError):
        _ = ws.config


# --- the key service's side: a session policy only narrows --------------------------------


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys")


def _service(store: KeyStore, caller: Caller) -> LocalKeyService:
    return LocalKeyService(store, caller, region="eu-central-1")


def test_session_policy_and_key_policy_both_decide(store: KeyStore) -> None:
    owner = Caller(f"arn:aws:iam::{ACCOUNT}:role/strongroom-host", ACCOUNT)
    key = _service(store, owner).create_key()
    dk = _service(store, owner).generate_data_key(key.key_id)
    scoped = Caller(
        f"arn:aws:sts::{ACCOUNT}:assumed-role/strongroom-host/run",
        ACCOUNT,
        "ASIAEXAMPLEEXAMPLE00",
        session_name="run",
        session_policy=PolicyDocument.parse(sessions.decrypt_only_policy(key.arn), kind="session"),
    )
    service = _service(store, scoped)
    assert service.decrypt(dk.ciphertext_blob).plaintext == dk.plaintext
    for call in (
        lambda s: s.encrypt(key.key_id, b"x"),
        lambda s: s.describe_key(key.key_id),
        lambda s: s.create_key(),
        lambda s: s.list_keys(),
        lambda s: s.list_aliases(),
        lambda s: s.generate_random(8),
    ):
        denied = _service(store, scoped)
        with pytest.raises(AccessDeniedError) as e:
            call(denied)
        assert "session policy" in e.value.message
        assert denied.audit.decided_by == "session"
    # a session policy cannot widen: the vendor's key denies the host account anyway
    vendor = Caller("arn:aws:iam::444455556666:user/strongroom-vendor", "444455556666")
    foreign = _service(store, vendor).create_key()
    blob = _service(store, vendor).generate_data_key(foreign.key_id).ciphertext_blob
    wide = Caller(
        scoped.principal_arn,
        ACCOUNT,
        session_name="run",
        session_policy=PolicyDocument.parse(
            json.dumps({"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}),
            kind="session",
        ),
    )
    with pytest.raises(AccessDeniedError) as e:
        _service(store, wide).decrypt(blob)
    assert "resource-based policy" in e.value.message


@pytest.mark.parametrize(
    "name",
    ["alias/ключ", "alias/café", "alias/ａｐｐ", "alias/x٣", "alias/a b", "alias/", "alias/aws/x"],
)
def test_alias_charset(store: KeyStore, name: str) -> None:
    owner = Caller(f"arn:aws:iam::{ACCOUNT}:user/u", ACCOUNT)
    key = _service(store, owner).create_key()
    with pytest.raises(AliasNameError) as e:
        _service(store, owner).create_alias(name, key.key_id)
    assert name not in e.value.message or name.isascii()  # shown escaped, never as lookalikes
    _service(store, owner).create_alias("alias/Ok_1-2/x", key.key_id)


def test_json_depth() -> None:
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    assert json_depth_exceeds(deep, MAX_JSON_DEPTH)
    assert not json_depth_exceeds(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, MAX_JSON_DEPTH)
    in_string = json.dumps({"a": "[" * 1000, "b": '\\"[[[' * 100}).encode()
    assert not json_depth_exceeds(in_string, MAX_JSON_DEPTH)
    unterminated = b'"' + b"[" * 10_000
    assert json_depth_exceeds(unterminated, MAX_JSON_DEPTH)  # not JSON anyway: refused


def test_connection_cap_fits_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from strongroom.keys import _protocol

    monkeypatch.setattr(_protocol.resource, "getrlimit", lambda _r: (256, 4096))
    assert _protocol.connection_cap(512) == 256 - _protocol.RESERVED_FDS
    monkeypatch.setattr(_protocol.resource, "getrlimit", lambda _r: (65536, 65536))
    assert _protocol.connection_cap(512) == 512
