"""Key-policy evaluation: one table per element, then the runbook policy end to end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from strongroom.policy import (
    ALLOW_SID,
    DENY_SID,
    OWNER_SID,
    ContextValue,
    Decision,
    PolicyDocument,
    RequestContext,
    evaluate,
    runbook_policy,
)

HOST_ACCOUNT = "111122223333"
OWNER_ACCOUNT = "444455556666"
HOST = f"arn:aws:iam::{HOST_ACCOUNT}:role/strongroom-host"
HOST_SESSION = f"arn:aws:sts::{HOST_ACCOUNT}:assumed-role/strongroom-host/i-0123456789abcdef0"
OWNER_USER = f"arn:aws:iam::{OWNER_ACCOUNT}:user/vendor-admin"
KEY_ARN = f"arn:aws:kms:eu-west-1:{OWNER_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
APPROVED = "a1" * 48
OTHER_IMAGE = "b2" * 48
IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"


def policy_of(*statements: dict[str, Any]) -> PolicyDocument:
    return PolicyDocument.parse(json.dumps({"Version": "2012-10-17", "Statement": statements}))


def allow(**elements: Any) -> dict[str, Any]:
    statement = {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}
    return statement | elements


def request(
    values: dict[str, ContextValue] | None = None,
    *,
    action: str = "kms:Decrypt",
    resource: str = KEY_ARN,
    principal: str = HOST,
    account: str = HOST_ACCOUNT,
) -> RequestContext:
    return RequestContext(action, resource, principal, account, values or {})


# --- conditions ---------------------------------------------------------------

NOW = "2024-05-01T12:00:00Z"
CONDITION_CASES: list[tuple[str, dict[str, Any], dict[str, ContextValue], bool]] = [
    # StringEquals: values ORed, keys ANDed, operators ANDed, keys case-insensitive
    (
        "eq",
        {"StringEquals": {"kms:CallerAccount": HOST_ACCOUNT}},
        {"kms:CallerAccount": HOST_ACCOUNT},
        True,
    ),
    (
        "eq-other",
        {"StringEquals": {"kms:CallerAccount": HOST_ACCOUNT}},
        {"kms:CallerAccount": "999999999999"},
        False,
    ),
    ("eq-missing", {"StringEquals": {"kms:CallerAccount": HOST_ACCOUNT}}, {}, False),
    (
        "eq-key-case",
        {"StringEquals": {"KMS:calleraccount": HOST_ACCOUNT}},
        {"kms:CallerAccount": HOST_ACCOUNT},
        True,
    ),
    (
        "eq-context-key-case",
        {"StringEquals": {"kms:CallerAccount": HOST_ACCOUNT}},
        {"KMS:CALLERACCOUNT": HOST_ACCOUNT},
        True,
    ),
    (
        "eq-value-case",
        {"StringEquals": {"kms:EncryptionContext:app": "Demo"}},
        {"kms:EncryptionContext:app": "demo"},
        False,
    ),
    ("eq-values-or", {"StringEquals": {"k:a": ["x", "y"]}}, {"k:a": "y"}, True),
    ("eq-keys-and", {"StringEquals": {"k:a": "1", "k:b": "2"}}, {"k:a": "1", "k:b": "2"}, True),
    ("eq-keys-and-one-missing", {"StringEquals": {"k:a": "1", "k:b": "2"}}, {"k:a": "1"}, False),
    (
        "ops-and",
        {"StringEquals": {"k:a": "1"}, "Bool": {"aws:SecureTransport": "true"}},
        {"k:a": "1", "aws:SecureTransport": False},
        False,
    ),
    (
        "ops-and-both",
        {"StringEquals": {"k:a": "1"}, "Bool": {"aws:SecureTransport": "true"}},
        {"k:a": "1", "aws:SecureTransport": True},
        True,
    ),
    (
        "eq-bool-context",
        {"StringEquals": {"aws:SecureTransport": "true"}},
        {"aws:SecureTransport": True},
        True,
    ),
    ("eq-multi-context", {"StringEquals": {"k:a": "x"}}, {"k:a": ["q", "x"]}, True),
    ("eq-empty-context-is-missing", {"StringEquals": {"k:a": "x"}}, {"k:a": []}, False),
    # StringNotEquals: must match none; missing key → true
    ("ne", {"StringNotEquals": {"k:a": ["x", "y"]}}, {"k:a": "z"}, True),
    ("ne-match", {"StringNotEquals": {"k:a": ["x", "y"]}}, {"k:a": "y"}, False),
    ("ne-missing", {"StringNotEquals": {"k:a": ["x", "y"]}}, {}, True),
    ("ne-value-case", {"StringNotEquals": {"k:a": "X"}}, {"k:a": "x"}, True),
    ("ne-multi-context", {"StringNotEquals": {"k:a": "x"}}, {"k:a": ["q", "x"]}, False),
    # IgnoreCase
    ("eq-ic", {"StringEqualsIgnoreCase": {"k:a": "ABC"}}, {"k:a": "abc"}, True),
    ("eq-ic-other", {"StringEqualsIgnoreCase": {"k:a": "ABC"}}, {"k:a": "abd"}, False),
    ("eq-ic-missing", {"StringEqualsIgnoreCase": {"k:a": "ABC"}}, {}, False),
    ("ne-ic", {"StringNotEqualsIgnoreCase": {"k:a": "ABC"}}, {"k:a": "abc"}, False),
    ("ne-ic-other", {"StringNotEqualsIgnoreCase": {"k:a": "ABC"}}, {"k:a": "abd"}, True),
    ("ne-ic-missing", {"StringNotEqualsIgnoreCase": {"k:a": "ABC"}}, {}, True),
    # StringLike / StringNotLike: * and ?, case-sensitive
    ("like-star", {"StringLike": {"k:a": "app-*"}}, {"k:a": "app-web"}, True),
    ("like-star-empty", {"StringLike": {"k:a": "app-*"}}, {"k:a": "app-"}, True),
    ("like-question", {"StringLike": {"k:a": "ap?"}}, {"k:a": "app"}, True),
    ("like-question-one-char", {"StringLike": {"k:a": "ap?"}}, {"k:a": "apps"}, False),
    ("like-case", {"StringLike": {"k:a": "app-*"}}, {"k:a": "App-web"}, False),
    ("like-literal-dot", {"StringLike": {"k:a": "a.c"}}, {"k:a": "abc"}, False),
    ("like-missing", {"StringLike": {"k:a": "*"}}, {}, False),
    ("not-like", {"StringNotLike": {"k:a": ["app-*", "db-*"]}}, {"k:a": "web"}, True),
    ("not-like-match", {"StringNotLike": {"k:a": ["app-*", "db-*"]}}, {"k:a": "db-1"}, False),
    ("not-like-missing", {"StringNotLike": {"k:a": "app-*"}}, {}, True),
    # Bool
    ("bool", {"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": True}, True),
    (
        "bool-json-value",
        {"Bool": {"aws:SecureTransport": True}},
        {"aws:SecureTransport": True},
        True,
    ),
    (
        "bool-string-context",
        {"Bool": {"aws:SecureTransport": "true"}},
        {"aws:SecureTransport": "TRUE"},
        True,
    ),
    (
        "bool-false",
        {"Bool": {"aws:SecureTransport": "true"}},
        {"aws:SecureTransport": False},
        False,
    ),
    (
        "bool-not-a-bool",
        {"Bool": {"aws:SecureTransport": "true"}},
        {"aws:SecureTransport": "yes"},
        False,
    ),
    ("bool-missing", {"Bool": {"aws:SecureTransport": "false"}}, {}, False),
    # Null
    ("null-true-missing", {"Null": {IMAGE_KEY: "true"}}, {}, True),
    ("null-true-present", {"Null": {IMAGE_KEY: "true"}}, {IMAGE_KEY: APPROVED}, False),
    ("null-false-present", {"Null": {IMAGE_KEY: "false"}}, {IMAGE_KEY: APPROVED}, True),
    ("null-false-missing", {"Null": {IMAGE_KEY: "false"}}, {}, False),
    ("null-empty-is-missing", {"Null": {"k:a": "true"}}, {"k:a": []}, True),
    # ...IfExists: true when missing, the base operator otherwise
    ("ifexists-missing", {"StringEqualsIfExists": {"k:a": "x"}}, {}, True),
    ("ifexists-match", {"StringEqualsIfExists": {"k:a": "x"}}, {"k:a": "x"}, True),
    ("ifexists-other", {"StringEqualsIfExists": {"k:a": "x"}}, {"k:a": "y"}, False),
    ("ne-ifexists-missing", {"StringNotEqualsIfExists": {"k:a": "x"}}, {}, True),
    ("ne-ifexists-match", {"StringNotEqualsIfExists": {"k:a": "x"}}, {"k:a": "x"}, False),
    ("bool-ifexists-missing", {"BoolIfExists": {"aws:SecureTransport": "true"}}, {}, True),
    ("date-ifexists-missing", {"DateLessThanIfExists": {"aws:CurrentTime": NOW}}, {}, True),
    # Dates
    (
        "date-lt",
        {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}},
        {"aws:CurrentTime": NOW},
        True,
    ),
    (
        "date-lt-after",
        {"DateLessThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}},
        {"aws:CurrentTime": NOW},
        False,
    ),
    ("date-lt-equal", {"DateLessThan": {"aws:CurrentTime": NOW}}, {"aws:CurrentTime": NOW}, False),
    (
        "date-le-equal",
        {"DateLessThanEquals": {"aws:CurrentTime": NOW}},
        {"aws:CurrentTime": NOW},
        True,
    ),
    (
        "date-gt",
        {"DateGreaterThan": {"aws:CurrentTime": "2024-05-01"}},
        {"aws:CurrentTime": NOW},
        True,
    ),
    (
        "date-gt-equal",
        {"DateGreaterThan": {"aws:CurrentTime": NOW}},
        {"aws:CurrentTime": NOW},
        False,
    ),
    (
        "date-ge-equal",
        {"DateGreaterThanEquals": {"aws:CurrentTime": NOW}},
        {"aws:CurrentTime": NOW},
        True,
    ),
    (
        "date-offset",
        {"DateEquals": {"aws:CurrentTime": NOW}},
        {"aws:CurrentTime": "2024-05-01T14:00:00+02:00"},
        True,
    ),
    (
        "date-epoch",
        {"DateGreaterThanEquals": {"aws:CurrentTime": "1714564800"}},
        {"aws:CurrentTime": NOW},
        True,
    ),
    (
        "date-naive-is-utc",
        {"DateEquals": {"aws:CurrentTime": NOW}},
        {"aws:CurrentTime": "2024-05-01T12:00:00"},
        True,
    ),
    (
        "date-not-equals",
        {"DateNotEquals": {"aws:CurrentTime": NOW}},
        {"aws:CurrentTime": "2024-05-02"},
        True,
    ),
    (
        "date-unparsable-context",
        {"DateLessThan": {"aws:CurrentTime": NOW}},
        {"aws:CurrentTime": "yesterday"},
        False,
    ),
    ("date-missing", {"DateLessThan": {"aws:CurrentTime": NOW}}, {}, False),
    # Numbers
    ("num-eq", {"NumericEquals": {"k:n": "1.5"}}, {"k:n": "1.50"}, True),
    ("num-ne", {"NumericNotEquals": {"k:n": "3"}}, {"k:n": "4"}, True),
    ("num-ne-match", {"NumericNotEquals": {"k:n": "3"}}, {"k:n": "3"}, False),
    ("num-lt", {"NumericLessThan": {"k:n": "10"}}, {"k:n": "9"}, True),
    ("num-lt-equal", {"NumericLessThan": {"k:n": "10"}}, {"k:n": "10"}, False),
    ("num-le", {"NumericLessThanEquals": {"k:n": 10}}, {"k:n": "10"}, True),
    ("num-gt", {"NumericGreaterThan": {"k:n": "-1"}}, {"k:n": "0"}, True),
    ("num-ge", {"NumericGreaterThanEquals": {"k:n": "2"}}, {"k:n": "1"}, False),
    ("num-not-a-number", {"NumericLessThan": {"k:n": "10"}}, {"k:n": "ten"}, False),
    ("num-missing", {"NumericLessThan": {"k:n": "10"}}, {}, False),
    # ForAnyValue: some request value matches; false when missing or empty
    ("any", {"ForAnyValue:StringEquals": {"k:s": ["a", "b"]}}, {"k:s": ["z", "a"]}, True),
    ("any-none", {"ForAnyValue:StringEquals": {"k:s": ["a", "b"]}}, {"k:s": ["y", "z"]}, False),
    ("any-missing", {"ForAnyValue:StringEquals": {"k:s": ["a", "b"]}}, {}, False),
    ("any-empty", {"ForAnyValue:StringEquals": {"k:s": ["a", "b"]}}, {"k:s": []}, False),
    ("any-ifexists-missing", {"ForAnyValue:StringEqualsIfExists": {"k:s": "a"}}, {}, True),
    ("any-negated", {"ForAnyValue:StringNotEquals": {"k:s": "a"}}, {"k:s": ["a", "z"]}, True),
    (
        "any-negated-all-excluded",
        {"ForAnyValue:StringNotEquals": {"k:s": "a"}},
        {"k:s": ["a"]},
        False,
    ),
    ("any-negated-missing", {"ForAnyValue:StringNotEquals": {"k:s": "a"}}, {}, False),
    ("any-like-single-string", {"ForAnyValue:StringLike": {"k:s": "a*"}}, {"k:s": "abc"}, True),
    # ForAllValues: every request value matches; true when missing or empty
    ("all", {"ForAllValues:StringEquals": {"k:s": ["a", "b"]}}, {"k:s": ["b", "a"]}, True),
    (
        "all-one-outside",
        {"ForAllValues:StringEquals": {"k:s": ["a", "b"]}},
        {"k:s": ["a", "z"]},
        False,
    ),
    ("all-missing", {"ForAllValues:StringEquals": {"k:s": ["a", "b"]}}, {}, True),
    ("all-empty", {"ForAllValues:StringEquals": {"k:s": ["a", "b"]}}, {"k:s": []}, True),
    ("all-negated", {"ForAllValues:StringNotLike": {"k:s": "a*"}}, {"k:s": ["x", "y"]}, True),
    (
        "all-negated-one-match",
        {"ForAllValues:StringNotLike": {"k:s": "a*"}},
        {"k:s": ["x", "ab"]},
        False,
    ),
    (
        "all-ignore-case",
        {"ForAllValues:StringEqualsIgnoreCase": {"k:s": ["A", "B"]}},
        {"k:s": ["a", "b"]},
        True,
    ),
]


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [case[1:] for case in CONDITION_CASES],
    ids=[case[0] for case in CONDITION_CASES],
)
def test_condition(
    condition: dict[str, Any], values: dict[str, ContextValue], expected: bool
) -> None:
    decision = evaluate(policy_of(allow(Condition=condition)), request(values))
    assert decision.allowed is expected


# --- principals ---------------------------------------------------------------

PRINCIPAL_CASES: list[tuple[str, object, str, str, bool]] = [
    ("star", "*", OWNER_USER, OWNER_ACCOUNT, True),
    ("aws-star", {"AWS": "*"}, HOST, HOST_ACCOUNT, True),
    ("account-id", {"AWS": HOST_ACCOUNT}, HOST, HOST_ACCOUNT, True),
    ("account-id-other", {"AWS": HOST_ACCOUNT}, OWNER_USER, OWNER_ACCOUNT, False),
    (
        "account-root",
        {"AWS": f"arn:aws:iam::{HOST_ACCOUNT}:root"},
        HOST_SESSION,
        HOST_ACCOUNT,
        True,
    ),
    (
        "account-root-other",
        {"AWS": f"arn:aws:iam::{HOST_ACCOUNT}:root"},
        OWNER_USER,
        OWNER_ACCOUNT,
        False,
    ),
    ("role", {"AWS": HOST}, HOST, HOST_ACCOUNT, True),
    ("role-other", {"AWS": HOST}, f"arn:aws:iam::{HOST_ACCOUNT}:role/other", HOST_ACCOUNT, False),
    (
        "role-case-sensitive",
        {"AWS": HOST},
        HOST.replace("strongroom", "Strongroom"),
        HOST_ACCOUNT,
        False,
    ),
    ("role-session", {"AWS": HOST}, HOST_SESSION, HOST_ACCOUNT, True),
    (
        "role-with-path-session",
        {"AWS": f"arn:aws:iam::{HOST_ACCOUNT}:role/enclaves/strongroom-host"},
        HOST_SESSION,
        HOST_ACCOUNT,
        True,
    ),
    (
        "role-session-of-other-role",
        {"AWS": HOST},
        f"arn:aws:sts::{HOST_ACCOUNT}:assumed-role/other/s",
        HOST_ACCOUNT,
        False,
    ),
    (
        "role-session-other-account",
        {"AWS": HOST},
        f"arn:aws:sts::{OWNER_ACCOUNT}:assumed-role/strongroom-host/s",
        OWNER_ACCOUNT,
        False,
    ),
    ("session-exact", {"AWS": HOST_SESSION}, HOST_SESSION, HOST_ACCOUNT, True),
    ("session-other-session", {"AWS": HOST_SESSION}, HOST_SESSION + "x", HOST_ACCOUNT, False),
    ("session-does-not-match-role", {"AWS": HOST_SESSION}, HOST, HOST_ACCOUNT, False),
    ("user", {"AWS": OWNER_USER}, OWNER_USER, OWNER_ACCOUNT, True),
    ("list", {"AWS": [OWNER_USER, HOST]}, HOST, HOST_ACCOUNT, True),
    ("service-never", {"Service": "ec2.amazonaws.com"}, HOST, HOST_ACCOUNT, False),
]


@pytest.mark.parametrize(
    ("principal", "caller", "account", "expected"),
    [case[1:] for case in PRINCIPAL_CASES],
    ids=[case[0] for case in PRINCIPAL_CASES],
)
def test_principal(principal: object, caller: str, account: str, expected: bool) -> None:
    policy = policy_of(allow(Principal=principal))
    assert evaluate(policy, request(principal=caller, account=account)).allowed is expected


def test_not_principal_denies_everyone_else() -> None:
    policy = policy_of(
        allow(Sid="All"),
        {
            "Sid": "OnlyHost",
            "Effect": "Deny",
            "NotPrincipal": {"AWS": HOST},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    assert evaluate(policy, request()).effect == "Allow"
    other = evaluate(policy, request(principal=OWNER_USER, account=OWNER_ACCOUNT))
    assert (other.effect, other.statement_sid) == ("Deny", "OnlyHost")


# --- actions and resources ------------------------------------------------------

ACTION_CASES = [
    ("kms:*", "kms:Decrypt", True),
    ("*", "kms:Decrypt", True),
    ("kms:Decrypt", "kms:decrypt", True),
    ("KMS:DECRYPT", "kms:Decrypt", True),
    ("kms:ReEncrypt*", "kms:ReEncryptFrom", True),
    ("kms:ReEncrypt*", "kms:Encrypt", False),
    ("kms:Get?eyPolicy", "kms:GetKeyPolicy", True),
    ("kms:Describe*", "kms:Decrypt", False),
    (["kms:Encrypt", "kms:Decrypt"], "kms:Decrypt", True),
    ("kms:Decrypt", "kms:DecryptX", False),
    ("s3:*", "kms:Decrypt", False),
]


@pytest.mark.parametrize(("pattern", "action", "expected"), ACTION_CASES)
def test_action(pattern: str | list[str], action: str, expected: bool) -> None:
    policy = policy_of(allow(Action=pattern))
    assert evaluate(policy, request(action=action)).allowed is expected


RESOURCE_CASES = [
    ("*", True),
    (KEY_ARN, True),
    (f"arn:aws:kms:*:{OWNER_ACCOUNT}:key/*", True),
    (f"arn:aws:kms:eu-west-?:{OWNER_ACCOUNT}:key/*", True),
    (KEY_ARN.replace("1234abcd", "1234ABCD"), False),
    (f"arn:aws:kms:eu-west-1:{OWNER_ACCOUNT}:key/other", False),
    (f"arn:aws:kms:eu-west-1:{OWNER_ACCOUNT}:alias/*", False),
]


@pytest.mark.parametrize(("pattern", "expected"), RESOURCE_CASES)
def test_resource(pattern: str, expected: bool) -> None:
    assert evaluate(policy_of(allow(Resource=pattern)), request()).allowed is expected


def test_not_action() -> None:
    policy = policy_of(
        {
            "Effect": "Allow",
            "Principal": "*",
            "NotAction": "kms:ScheduleKeyDeletion",
            "Resource": "*",
        }
    )
    assert evaluate(policy, request(action="kms:Decrypt")).allowed
    assert evaluate(policy, request(action="kms:ScheduleKeyDeletion")).effect == "ImplicitDeny"


def test_not_resource() -> None:
    other_key = KEY_ARN.replace("1234abcd", "ffffffff")
    elsewhere = policy_of(
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "NotResource": other_key}
    )
    here = policy_of(
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "NotResource": KEY_ARN}
    )
    assert evaluate(elsewhere, request()).allowed
    assert evaluate(here, request()).effect == "ImplicitDeny"


# --- combining statements -------------------------------------------------------


def test_explicit_deny_wins_over_earlier_allows() -> None:
    policy = policy_of(
        allow(Sid="First"),
        allow(Sid="Second"),
        {
            "Sid": "NoDecrypt",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    decision = evaluate(policy, request())
    assert decision == Decision(
        allowed=False,
        effect="Deny",
        statement_sid="NoDecrypt",
        statement_index=2,
        reason='explicit deny by statement "NoDecrypt"',
    )
    assert evaluate(policy, request(action="kms:Encrypt")).statement_sid == "First"


def test_first_matching_deny_is_named_and_sidless_statements_by_index() -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*"}
    decision = evaluate(policy_of(allow(Sid="A"), deny, deny | {"Sid": "Later"}), request())
    assert (decision.statement_sid, decision.statement_index) == (None, 1)
    assert decision.describe() == "denied: explicit deny by Statement[1]"


def test_implicit_deny() -> None:
    policy = policy_of(allow(Action="kms:Encrypt"))
    decision = evaluate(policy, request())
    assert decision == Decision(
        allowed=False,
        effect="ImplicitDeny",
        statement_sid=None,
        statement_index=None,
        reason=f"no statement allows kms:Decrypt to {HOST}",
    )
    assert evaluate(policy_of(), request()).effect == "ImplicitDeny"


def test_allow_describe() -> None:
    decision = evaluate(policy_of(allow(Sid="Everyone")), request())
    assert decision.describe() == 'allowed: allowed by statement "Everyone"'


# --- the runbook policy ---------------------------------------------------------

RUNBOOK = PolicyDocument.parse(runbook_policy(OWNER_ACCOUNT, [HOST], [APPROVED]))

RUNBOOK_CASES: list[tuple[str, RequestContext, str, str | None]] = [
    ("host-without-attestation", request(), "Deny", DENY_SID),
    ("host-approved", request({IMAGE_KEY: APPROVED}), "Allow", ALLOW_SID),
    ("host-approved-upper-case", request({IMAGE_KEY: APPROVED.upper()}), "Allow", ALLOW_SID),
    ("host-approved-key-case", request({IMAGE_KEY.lower(): APPROVED}), "Allow", ALLOW_SID),
    (
        "host-session-approved",
        request({IMAGE_KEY: APPROVED}, principal=HOST_SESSION),
        "Allow",
        ALLOW_SID,
    ),
    ("host-other-image", request({IMAGE_KEY: OTHER_IMAGE}), "Deny", DENY_SID),
    ("host-empty-measurement", request({IMAGE_KEY: ""}), "Deny", DENY_SID),
    (
        "host-pcr0-key-is-not-image-key",
        request({"kms:RecipientAttestation:PCR0": APPROVED}),
        "Deny",
        DENY_SID,
    ),
    ("host-reencrypt-without-attestation", request(action="kms:ReEncryptFrom"), "Deny", DENY_SID),
    (
        "host-reencrypt-approved-not-granted",
        request({IMAGE_KEY: APPROVED}, action="kms:ReEncryptTo"),
        "Deny",
        "DenyHostReEncrypt",
    ),
    (
        "host-generate-data-key-without-attestation",
        request(action="kms:GenerateDataKey"),
        "Deny",
        "DenyHostGenerateDataKey",
    ),
    (
        "host-generate-data-key-approved",
        request({IMAGE_KEY: APPROVED}, action="kms:GenerateDataKeyWithoutPlaintext"),
        "Deny",
        "DenyHostAllButDecrypt",
    ),
    ("host-create-grant", request(action="kms:CreateGrant"), "Deny", "DenyHostCreateGrant"),
    (
        "host-encrypt",
        request({IMAGE_KEY: APPROVED}, action="kms:Encrypt"),
        "Deny",
        "DenyHostEncrypt",
    ),
    ("host-put-key-policy", request(action="kms:PutKeyPolicy"), "Deny", "DenyHostAllButDecrypt"),
    ("owner", request(principal=OWNER_USER, account=OWNER_ACCOUNT), "Allow", OWNER_SID),
    (
        "owner-admin",
        request(action="kms:PutKeyPolicy", principal=OWNER_USER, account=OWNER_ACCOUNT),
        "Allow",
        OWNER_SID,
    ),
    (
        "stranger",
        request(principal="arn:aws:iam::999999999999:user/x", account="999999999999"),
        "ImplicitDeny",
        None,
    ),
]


@pytest.mark.parametrize(
    ("context", "effect", "sid"),
    [case[1:] for case in RUNBOOK_CASES],
    ids=[case[0] for case in RUNBOOK_CASES],
)
def test_runbook_policy(context: RequestContext, effect: str, sid: str | None) -> None:
    decision = evaluate(RUNBOOK, context)
    assert (decision.effect, decision.statement_sid) == (effect, sid)
    assert decision.allowed is (effect == "Allow")


def test_runbook_policy_without_approved_images_denies_every_host_decrypt() -> None:
    policy = PolicyDocument.parse(runbook_policy(OWNER_ACCOUNT, [HOST], []))
    decision = evaluate(policy, request({IMAGE_KEY: APPROVED}))
    assert (decision.effect, decision.statement_sid) == ("Deny", DENY_SID)


# --- ARN operators --------------------------------------------------------------

SOURCE = "arn:aws:s3:::acme-code-bucket-111122223333-eu-west-1"
OTHER_SOURCE = "arn:aws:s3:::other-code-bucket-111122223333-eu-west-1"
ARN_CASES: list[tuple[str, dict[str, Any], dict[str, ContextValue], bool]] = [
    ("like", {"ArnLike": {"aws:SourceArn": SOURCE}}, {"aws:SourceArn": SOURCE}, True),
    ("equals", {"ArnEquals": {"aws:SourceArn": SOURCE}}, {"aws:SourceArn": SOURCE}, True),
    ("like-other", {"ArnLike": {"aws:SourceArn": SOURCE}}, {"aws:SourceArn": OTHER_SOURCE}, False),
    (
        "case-sensitive",
        {"ArnLike": {"aws:SourceArn": SOURCE}},
        {"aws:SourceArn": SOURCE.upper()},
        False,
    ),
    ("values-ored", {"ArnLike": {"k:a": [OTHER_SOURCE, SOURCE]}}, {"k:a": SOURCE}, True),
    ("star-in-resource", {"ArnLike": {"k:a": "arn:aws:s3:::acme-*"}}, {"k:a": SOURCE}, True),
    ("star-empty-components", {"ArnLike": {"k:a": "arn:*:s3:*:*:acme-*"}}, {"k:a": SOURCE}, True),
    ("question-one-char", {"ArnLike": {"k:a": "arn:aws:s?:::acm?-*"}}, {"k:a": SOURCE}, True),
    ("question-not-none", {"ArnLike": {"k:a": "arn:aws:s3?:::acme-*"}}, {"k:a": SOURCE}, False),
    # IAM gives ArnEquals the wildcards of ArnLike.
    ("equals-wildcards", {"ArnEquals": {"k:a": "arn:aws:s3:::acme-*"}}, {"k:a": SOURCE}, True),
    # Component by component: a wildcard does not reach into the next component,
    # where matching the ARN as one string would.
    (
        "star-stays-in-component",
        {"ArnLike": {"k:a": "arn:aws:*:::b"}},
        {"k:a": "arn:aws:s3:eu-west-1:::b"},
        False,
    ),
    (
        "question-stays-in-component",
        {"ArnLike": {"k:a": "arn:aws:s3?:::b"}},
        {"k:a": "arn:aws:s3::::b"},
        False,
    ),
    # ...but the resource, the last component, may hold ':' and its wildcards span them.
    (
        "resource-with-colons",
        {"ArnLike": {"k:a": "arn:aws:logs:eu-west-1:111122223333:log-group:*"}},
        {"k:a": "arn:aws:logs:eu-west-1:111122223333:log-group:app:log-stream:x"},
        True,
    ),
    (
        "account-component",
        {"ArnLike": {"k:a": "arn:aws:iam::111122223333:*"}},
        {"k:a": "arn:aws:iam::444455556666:role/x"},
        False,
    ),
    ("not-an-arn", {"ArnLike": {"k:a": "arn:aws:s3:::*"}}, {"k:a": "acme-code-bucket"}, False),
    ("not-like-not-an-arn", {"ArnNotLike": {"k:a": "arn:aws:s3:::*"}}, {"k:a": "bucket"}, True),
    ("not-like-other", {"ArnNotLike": {"k:a": SOURCE}}, {"k:a": OTHER_SOURCE}, True),
    ("not-like-same", {"ArnNotLike": {"k:a": SOURCE}}, {"k:a": SOURCE}, False),
    ("not-equals-same", {"ArnNotEquals": {"k:a": SOURCE}}, {"k:a": SOURCE}, False),
    ("not-equals-other", {"ArnNotEquals": {"k:a": SOURCE}}, {"k:a": OTHER_SOURCE}, True),
    # A missing key: positive false, negated true, IfExists true.
    ("like-missing", {"ArnLike": {"k:a": SOURCE}}, {}, False),
    ("equals-missing", {"ArnEquals": {"k:a": SOURCE}}, {}, False),
    ("not-like-missing", {"ArnNotLike": {"k:a": SOURCE}}, {}, True),
    ("like-if-exists-missing", {"ArnLikeIfExists": {"k:a": SOURCE}}, {}, True),
    ("like-if-exists-other", {"ArnLikeIfExists": {"k:a": SOURCE}}, {"k:a": OTHER_SOURCE}, False),
    ("not-like-if-exists-same", {"ArnNotLikeIfExists": {"k:a": SOURCE}}, {"k:a": SOURCE}, False),
    (
        "any-value",
        {"ForAnyValue:ArnLike": {"k:a": "arn:aws:s3:::acme-*"}},
        {"k:a": [OTHER_SOURCE, SOURCE]},
        True,
    ),
    ("any-value-missing", {"ForAnyValue:ArnLike": {"k:a": SOURCE}}, {}, False),
    (
        "all-values-one-other",
        {"ForAllValues:ArnLike": {"k:a": "arn:aws:s3:::acme-*"}},
        {"k:a": [SOURCE, OTHER_SOURCE]},
        False,
    ),
    (
        "all-values",
        {"ForAllValues:ArnEquals": {"k:a": [SOURCE, OTHER_SOURCE]}},
        {"k:a": [SOURCE, OTHER_SOURCE]},
        True,
    ),
    ("all-values-missing", {"ForAllValues:ArnLike": {"k:a": SOURCE}}, {}, True),
    (
        "all-values-not-like",
        {"ForAllValues:ArnNotLike": {"k:a": "arn:aws:s3:::acme-*"}},
        {"k:a": [OTHER_SOURCE, "arn:aws:s3:::x"]},
        True,
    ),
]


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [case[1:] for case in ARN_CASES],
    ids=[case[0] for case in ARN_CASES],
)
def test_arn_condition(
    condition: dict[str, Any], values: dict[str, ContextValue], expected: bool
) -> None:
    decision = evaluate(policy_of(allow(Condition=condition)), request(values))
    assert decision.allowed is expected


def test_arn_condition_guards_a_deny() -> None:
    """The log-delivery pattern: deny a source that is not this bucket, allow the rest."""
    policy = policy_of(
        allow(),
        {
            "Sid": "OnlyFromTheShare",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:*",
            "Resource": "*",
            "Condition": {"ArnNotLike": {"aws:SourceArn": SOURCE}},
        },
    )
    assert evaluate(policy, request({"aws:SourceArn": SOURCE})).allowed
    denied = evaluate(policy, request({"aws:SourceArn": OTHER_SOURCE}))
    assert (denied.effect, denied.statement_sid) == ("Deny", "OnlyFromTheShare")
    assert evaluate(policy, request()).statement_sid == "OnlyFromTheShare"
