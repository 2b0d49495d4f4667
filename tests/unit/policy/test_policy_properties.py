"""Properties over generated policies: evaluation is total, serialisation is stable."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.policy import (
    ContextValue,
    PolicyDocument,
    PolicyError,
    RequestContext,
    approve,
    approved_measurements,
    evaluate,
    revoke,
    runbook_policy,
)

ACCOUNT = "111122223333"
HOST = f"arn:aws:iam::{ACCOUNT}:role/strongroom-host"
CALLERS = [
    (HOST, ACCOUNT),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/strongroom-host/s", ACCOUNT),
    ("arn:aws:iam::444455556666:user/vendor", "444455556666"),
]
KEY_ARN = "arn:aws:kms:eu-west-1:444455556666:key/k1"
CONDITION_KEYS = [
    "kms:CallerAccount",
    "kms:RecipientAttestation:ImageSha384",
    "kms:EncryptionContext:app",
    "aws:CurrentTime",
    "aws:SecureTransport",
    "k:n",
]

principals = st.sampled_from(
    [
        "*",
        {"AWS": "*"},
        {"AWS": HOST},
        {"AWS": [ACCOUNT, "arn:aws:iam::444455556666:root"]},
        {"Service": "ec2.amazonaws.com"},
    ]
)
actions = st.lists(
    st.sampled_from(["*", "kms:*", "kms:Decrypt", "kms:ReEncrypt*", "kms:Gen?rate*"]),
    min_size=1,
    max_size=3,
)
resources = st.sampled_from(["*", KEY_ARN, "arn:aws:kms:*:*:key/*", ["arn:aws:kms:*:1:key/?"]])
booleans = st.sampled_from(["true", "false", True, False])
numbers = st.integers(-1000, 1000).map(str)
dates = st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)
texts = st.text(st.characters(codec="utf-8"), max_size=6)
VALUES_BY_FAMILY = {
    "StringEquals": texts,
    "StringNotEquals": texts,
    "StringEqualsIgnoreCase": texts,
    "StringNotEqualsIgnoreCase": texts,
    "StringLike": texts,
    "StringNotLike": texts,
    "Bool": booleans,
    "NumericLessThan": numbers,
    "NumericNotEquals": numbers,
    "DateGreaterThanEquals": dates,
    "DateEquals": dates,
}


@st.composite
def condition_blocks(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    block: dict[str, dict[str, Any]] = {}
    if draw(st.booleans()):
        block["Null"] = {draw(st.sampled_from(CONDITION_KEYS)): draw(booleans)}
    for base in draw(st.lists(st.sampled_from(sorted(VALUES_BY_FAMILY)), max_size=2, unique=True)):
        prefix = draw(st.sampled_from(["", "ForAnyValue:", "ForAllValues:"]))
        suffix = draw(st.sampled_from(["", "IfExists"]))
        keys = draw(st.lists(st.sampled_from(CONDITION_KEYS), min_size=1, max_size=2, unique=True))
        values = VALUES_BY_FAMILY[base]
        block[prefix + base + suffix] = {
            key: draw(st.one_of(values, st.lists(values, min_size=1, max_size=2))) for key in keys
        }
    return block


@st.composite
def policies(draw: st.DrawFn) -> str:
    statements = []
    for _ in range(draw(st.integers(0, 3))):
        statement: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"]))}
        if draw(st.booleans()):
            statement["Sid"] = draw(st.text(max_size=8))
        for element, values in (
            ("Principal", principals),
            ("Action", actions),
            ("Resource", resources),
        ):
            name = f"Not{element}" if draw(st.integers(0, 4)) == 0 else element
            statement[name] = draw(values)
        condition = draw(condition_blocks())
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
    # 2008-10-17: generated text may contain "${", which 2012-10-17 refuses as a variable.
    return json.dumps({"Version": "2008-10-17", "Statement": statements})


context_values = st.dictionaries(
    st.sampled_from(CONDITION_KEYS).flatmap(lambda key: st.sampled_from([key, key.upper()])),
    st.one_of(texts, st.booleans(), st.lists(texts, max_size=3), dates, numbers),
    max_size=5,
)
requests = st.builds(
    RequestContext,
    action=st.sampled_from(
        ["kms:Decrypt", "kms:ReEncryptFrom", "kms:GenerateDataKey", "kms:PutKeyPolicy"]
    ),
    resource=st.just(KEY_ARN),
    principal_arn=st.sampled_from([arn for arn, _ in CALLERS]),
    account_id=st.sampled_from(sorted({account for _, account in CALLERS})),
    values=context_values,
)


@settings(max_examples=300)
@given(policies(), requests)
def test_evaluate_is_total_and_names_a_matching_statement(
    text: str, request: RequestContext
) -> None:
    policy = PolicyDocument.parse(text)
    decision = evaluate(policy, request)
    assert decision.allowed is (decision.effect == "Allow")
    if decision.statement_index is None:
        assert decision.effect == "ImplicitDeny"
    else:
        statement = policy.statements[decision.statement_index]
        assert statement.effect == decision.effect
        assert statement.sid == decision.statement_sid
    assert decision.describe()


@given(policies())
def test_to_json_round_trips(text: str) -> None:
    policy = PolicyDocument.parse(text)
    again = PolicyDocument.parse(policy.to_json())
    assert again == policy
    assert again.to_json() == policy.to_json()


ELEMENT_NAMES = [
    "Version", "Statement", "Sid", "Effect", "Principal", "NotPrincipal", "AWS", "Service",
    "Action", "NotAction", "Resource", "NotResource", "Condition", "StringEquals",
    "ForAllValues:StringLike", "NullIfExists", "DateLessThan", "k:a", "Allow", "Deny",
]  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from(ELEMENT_NAMES)
    | texts,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(ELEMENT_NAMES), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(ELEMENT_NAMES), json_values, max_size=3))
def test_parse_raises_only_policy_error(data: dict[str, Any]) -> None:
    try:
        PolicyDocument.parse(json.dumps(data))
    except PolicyError as error:
        assert "\n" not in error.message


measurements = st.binary(min_size=48, max_size=48).map(bytes.hex)


@given(st.lists(measurements, max_size=5), measurements, st.booleans())
def test_approve_then_revoke_restores_the_approved_set(
    approved: list[str], pcr0: str, upper: bool
) -> None:
    policy = runbook_policy("444455556666", [HOST], approved)
    before = approved_measurements(policy)
    after = approve(policy, pcr0.upper() if upper else pcr0)
    expected = before if pcr0 in before else [*before, pcr0]
    assert approved_measurements(after) == expected
    values: dict[str, ContextValue] = {"kms:RecipientAttestation:ImageSha384": pcr0}
    assert evaluate(
        PolicyDocument.parse(after), RequestContext("kms:Decrypt", KEY_ARN, HOST, ACCOUNT, values)
    ).allowed
    if pcr0 not in before:
        assert revoke(after, pcr0) == policy
