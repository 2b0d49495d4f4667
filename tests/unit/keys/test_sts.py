"""The local STS without a server: parameters, sessions, storage, session policies."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom.keys import sts
from strongroom.policy import PolicyDocument, PolicyError, RequestContext, evaluate

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
ACCOUNT, OTHER = "111122223333", "444455556666"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/strongroom-host"
USER = f"arn:aws:iam::{OTHER}:user/strongroom-vendor"
HOST = sts.StsCaller(ROLE, ACCOUNT, "AKIAHOSTHOSTHOSTHOST")
VENDOR = sts.StsCaller(USER, OTHER, "AKIAVENDORVENDORVEND")
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DECRYPT_ONLY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY}],
    }
)


@pytest.fixture
def store(tmp_path: Path) -> sts.SessionStore:
    return sts.SessionStore(tmp_path / "sessions")


def local(store: sts.SessionStore, now: datetime = NOW) -> sts.LocalSts:
    return sts.LocalSts(store, sts.roles_from({ROLE: ACCOUNT, USER: OTHER}), now=now)


def assume(store: sts.SessionStore, caller: sts.StsCaller = HOST, **params: str) -> sts.StsResult:
    base = {
        "Action": "AssumeRole",
        "Version": sts.API_VERSION,
        "RoleArn": ROLE,
        "RoleSessionName": "run-1",
    }
    return local(store).dispatch(caller, {**base, **params})


def error(call: object, code: str) -> str:
    with pytest.raises(sts.StsError) as e:
        call()  # type: ignore[operator]
    assert e.value.code == code
    return e.value.message


def test_roles_are_the_workspace_roles_only() -> None:
    roles = sts.roles_from({ROLE: ACCOUNT, USER: OTHER, ROLE.replace(ACCOUNT, OTHER): ACCOUNT})
    assert list(roles) == [ROLE] and roles[ROLE].name == "strongroom-host"


def test_assume_role_issues_a_stored_session(store: sts.SessionStore) -> None:
    result = assume(store, Policy=DECRYPT_ONLY, DurationSeconds="900")
    access_key = result.audit["issued_access_key"]
    record = store.get(access_key)
    assert record is not None
    assert record.principal_arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/strongroom-host/run-1"
    assert record.expires - record.issued == timedelta(seconds=900)
    assert record.parent_access_key_id == HOST.access_key_id and record.policy == DECRYPT_ONLY
    body = result.body("req-1").decode()
    assert f"<AccessKeyId>{access_key}</AccessKeyId>" in body
    assert "<Expiration>2026-11-29T12:15:00Z</Expiration>" in body
    assert "<RequestId>req-1</RequestId>" in body and body.startswith("<AssumeRoleResponse")
    assert record.secret_access_key not in repr(record) and record.session_token not in repr(record)
    path = store.root / f"{access_key}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # default duration is the role's maximum, one hour
    other = store.get(assume(store).audit["issued_access_key"])
    assert other is not None and other.expires - other.issued == timedelta(hours=1)


@pytest.mark.parametrize(
    ("params", "code", "says"),
    [
        ({"DurationSeconds": "899"}, "ValidationError", "greater than or equal to 900"),
        ({"DurationSeconds": "3601"}, "ValidationError", "MaxSessionDuration"),
        ({"DurationSeconds": "43201"}, "ValidationError", "less than or equal to 43200"),
        ({"DurationSeconds": "15m"}, "ValidationError", "integer"),
        ({"RoleSessionName": "x"}, "ValidationError", "between 2 and 64"),
        ({"RoleSessionName": "no spaces"}, "ValidationError", "pattern"),
        ({"RoleSessionName": ""}, "ValidationError", "not be null"),
        ({"Policy": "x" * 2049}, "ValidationError", "2048"),
        ({"Policy": "{nope"}, "MalformedPolicyDocument", "not valid JSON"),
        (
            {
                "Policy": json.dumps(
                    {
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": "*",
                                "Action": "kms:*",
                                "Resource": "*",
                            }
                        ]
                    }
                )
            },
            "MalformedPolicyDocument",
            "Principal",
        ),
        (
            {"PolicyArns.member.1.arn": "arn:aws:iam::aws:policy/x"},
            "ValidationError",
            "does not support",
        ),
        ({"RoleArn": ROLE.replace("strongroom-host", "admin")}, "AccessDenied", "not authorized"),
        ({"Version": "2010-01-01"}, "InvalidAction", "Could not find operation"),
        ({"Action": "GetSessionToken"}, "InvalidAction", "Could not find operation"),
    ],
)
def test_assume_role_refusals(
    store: sts.SessionStore, params: dict[str, str], code: str, says: str
) -> None:
    assert says in error(lambda: assume(store, **params), code)
    assert not list(store.root.glob("ASIA*.json")) if store.root.exists() else True


def test_only_the_role_s_own_account_may_assume_it(store: sts.SessionStore) -> None:
    message = error(lambda: assume(store, VENDOR), "AccessDenied")
    assert message.startswith(f"User: {USER} is not authorized to perform: sts:AssumeRole")


def test_a_session_is_held_to_its_policy_when_calling_sts(store: sts.SessionStore) -> None:
    scoped = store.get(assume(store, Policy=DECRYPT_ONLY).audit["issued_access_key"])
    assert scoped is not None
    as_session = sts.StsCaller(scoped.principal_arn, ACCOUNT, scoped.access_key_id, scoped)
    error(lambda: assume(store, as_session, RoleSessionName="wider"), "AccessDenied")
    # a session without a policy may chain (as on AWS), for at most an hour
    full = store.get(assume(store).audit["issued_access_key"])
    assert full is not None
    chained = assume(store, sts.StsCaller(full.principal_arn, ACCOUNT, full.access_key_id, full))
    record = store.get(chained.audit["issued_access_key"])
    assert record is not None and record.parent_access_key_id == HOST.access_key_id


def test_federation_token(store: sts.SessionStore) -> None:
    params = {"Action": "GetFederationToken", "Version": sts.API_VERSION, "Name": "fed"}
    result = local(store).dispatch(
        VENDOR, {**params, "Policy": DECRYPT_ONLY, "DurationSeconds": "900"}
    )
    record = store.get(result.audit["issued_access_key"])
    assert record is not None and record.kind == "federated-user"
    assert record.principal_arn == f"arn:aws:sts::{OTHER}:federated-user/fed"
    assert record.user_id == f"{OTHER}:fed"
    # without a policy, a federated user gets an empty one: nothing is allowed
    bare = store.get(local(store).dispatch(VENDOR, params).audit["issued_access_key"])
    assert bare is not None and bare.policy is not None
    document = PolicyDocument.parse(bare.policy, kind="session")
    request = RequestContext("kms:Decrypt", KEY, bare.principal_arn, OTHER)
    assert not evaluate(document, request).allowed
    error(lambda: local(store).dispatch(HOST, params), "AccessDenied")  # a role's key
    as_session = sts.StsCaller(record.principal_arn, OTHER, record.access_key_id, record)
    assert "session credentials" in error(
        lambda: local(store).dispatch(as_session, params), "AccessDenied"
    )
    error(lambda: local(store).dispatch(VENDOR, {**params, "Name": "n" * 33}), "ValidationError")


def test_get_caller_identity(store: sts.SessionStore) -> None:
    params = {"Action": "GetCallerIdentity", "Version": sts.API_VERSION}
    body = local(store).dispatch(VENDOR, params).body("r").decode()
    assert f"<Arn>{USER}</Arn>" in body and f"<Account>{OTHER}</Account>" in body
    assert "<UserId>AIDA" in body
    record = store.get(assume(store).audit["issued_access_key"])
    assert record is not None
    session = sts.StsCaller(record.principal_arn, ACCOUNT, record.access_key_id, record)
    body = local(store).dispatch(session, params).body("r").decode()
    assert f"<UserId>{sts.principal_id(ROLE, 'AROA')}:run-1</UserId>" in body


def test_expired_sessions_are_kept_a_day_then_pruned(store: sts.SessionStore) -> None:
    old = store.get(assume(store).audit["issued_access_key"])
    assert old is not None
    later = NOW + timedelta(hours=1) + sts.EXPIRED_RETENTION + timedelta(seconds=1)
    local(store, later).dispatch(
        HOST,
        {
            "Action": "AssumeRole",
            "Version": sts.API_VERSION,
            "RoleArn": ROLE,
            "RoleSessionName": "new",
        },
    )
    assert store.get(old.access_key_id) is None
    assert len(list(store.root.glob("ASIA*.json"))) == 1


def test_store_reads_only_its_own_key_ids(store: sts.SessionStore, tmp_path: Path) -> None:
    (tmp_path / "secret.json").write_text("{}")
    for name in ("../secret", "ASIA/../../x", "AKIAHOSTHOSTHOSTHOST", ""):
        assert store.get(name) is None
    record = store.get(assume(store).audit["issued_access_key"])
    assert record is not None
    # an edited file is seen on the next read (the server picks up an expiry change)
    path = store.root / f"{record.access_key_id}.json"
    raw = json.loads(path.read_text())
    raw["expires"] = (NOW - timedelta(seconds=1)).isoformat()
    path.write_text(json.dumps(raw))
    again = store.get(record.access_key_id)
    assert again is not None and again.expires < NOW


def test_parse_form() -> None:
    assert sts.parse_form(b"Action=AssumeRole&Version=2011-06-15&Policy=%7B%7D", "") == {
        "Action": "AssumeRole",
        "Version": "2011-06-15",
        "Policy": "{}",
    }
    assert sts.parse_form(b"", "") == {}
    error(lambda: sts.parse_form(b"Action=A&Action=B", ""), "ValidationError")
    error(lambda: sts.parse_form(b"Action=A", "Action=B"), "ValidationError")
    error(lambda: sts.parse_form(b"\xff", ""), "MalformedQueryString")


def test_error_body_is_sts_xml() -> None:
    body = sts.error_body(sts.StsError("AccessDenied", "no <way> & never", 403), "rid").decode()
    assert body.startswith(f'<ErrorResponse xmlns="{sts.XML_NAMESPACE}">')
    assert "<Type>Sender</Type><Code>AccessDenied</Code>" in body
    assert "<Message>no &lt;way&gt; &amp; never</Message>" in body
    assert "<RequestId>rid</RequestId>" in body


def test_session_policies_have_no_principal() -> None:
    document = PolicyDocument.parse(DECRYPT_ONLY, kind="session")
    assert "Principal" not in document.to_json()
    allowed = RequestContext("kms:Decrypt", KEY, "arn:aws:sts::1:assumed-role/r/s", "1")
    assert evaluate(document, allowed).allowed
    assert not evaluate(document, RequestContext("kms:Encrypt", KEY, "x", "1")).allowed
    with pytest.raises(PolicyError):
        PolicyDocument.parse(DECRYPT_ONLY, kind="key")  # a key policy names its principals
