"""Editing the approved image measurements in a key policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from strongroom.errors import NotFoundError, UsageError
from strongroom.policy import (
    ALLOW_SID,
    DENY_SID,
    OWNER_SID,
    PolicyDocument,
    PolicyError,
    RequestContext,
    approve,
    approved_measurements,
    evaluate,
    revoke,
    runbook_policy,
)
from strongroom.policy.measurements import HOST_DENY_SIDS

OWNER = "444455556666"
HOST = "arn:aws:iam::111122223333:role/strongroom-host"
IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"
PCR_A = "a1" * 48
PCR_B = "b2" * 48
PCR_C = "c3" * 48

# Unrelated statements in shapes Strongroom would never write itself: they must
# come back exactly as they were.
AUDITOR = {
    "Condition": {"Bool": {"aws:SecureTransport": True}, "StringLike": {"kms:ViaService": "s3.*"}},
    "Resource": ["*"],
    "Effect": "Allow",
    "Principal": "*",
    "NotAction": ["kms:ScheduleKeyDeletion", "kms:Disable*"],
    "Sid": "Auditors",
}
NO_SID = {
    "Effect": "Deny",
    "Principal": {"AWS": ["999999999999"]},
    "Action": "kms:*",
    "Resource": "*",
}


def statements(policy_text: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(policy_text)["Statement"]
    return result


def by_sid(policy_text: str, sid: str) -> dict[str, Any]:
    return next(s for s in statements(policy_text) if s.get("Sid") == sid)


def host_decrypts(policy_text: str, measurement: str | None) -> bool:
    values = {} if measurement is None else {IMAGE_KEY: measurement}
    context = RequestContext(
        "kms:Decrypt", "arn:aws:kms:eu-west-1:1:key/k", HOST, "111122223333", values
    )
    return evaluate(PolicyDocument.parse(policy_text), context).allowed


def unrelated_policy() -> str:
    return json.dumps({"Id": "custom", "Version": "2012-10-17", "Statement": [AUDITOR, NO_SID]})


def test_runbook_policy_shape() -> None:
    text = runbook_policy(OWNER, [HOST], [PCR_A.upper(), PCR_B, PCR_A])
    assert [s["Sid"] for s in statements(text)] == [OWNER_SID, ALLOW_SID, DENY_SID, *HOST_DENY_SIDS]
    assert by_sid(text, OWNER_SID)["Principal"] == {"AWS": f"arn:aws:iam::{OWNER}:root"}
    assert by_sid(text, ALLOW_SID)["Action"] == "kms:Decrypt"
    deny = by_sid(text, DENY_SID)
    assert deny["Action"] == ["kms:Decrypt", "kms:ReEncrypt*"]
    assert deny["Condition"] == {"StringNotEqualsIgnoreCase": {IMAGE_KEY: [PCR_A, PCR_B]}}
    assert approved_measurements(text) == [PCR_A, PCR_B]
    assert PolicyDocument.parse(text).to_json() == PolicyDocument.parse(text).to_json()


def test_runbook_policy_without_measurements_has_an_unconditional_deny() -> None:
    text = runbook_policy(OWNER, [HOST], [])
    assert "Condition" not in by_sid(text, DENY_SID)
    assert approved_measurements(text) == []
    assert not host_decrypts(text, PCR_A)


def test_runbook_policy_needs_a_host() -> None:
    with pytest.raises(PolicyError, match="no host principal"):
        runbook_policy(OWNER, [], [PCR_A])


def test_runbook_policy_refuses_a_bad_owner() -> None:
    with pytest.raises(PolicyError, match="is not an account"):
        runbook_policy("owner", [HOST], [PCR_A])


def test_too_many_measurements_exceed_the_policy_size_limit() -> None:
    many = [f"{i:096x}" for i in range(400)]
    with pytest.raises(PolicyError, match="more than KMS's limit"):
        runbook_policy(OWNER, [HOST], many)


def test_approve_adds_and_keeps_order() -> None:
    text = approve(runbook_policy(OWNER, [HOST], [PCR_A]), PCR_B)
    assert approved_measurements(text) == [PCR_A, PCR_B]
    assert host_decrypts(text, PCR_A) and host_decrypts(text, PCR_B.upper())
    assert not host_decrypts(text, PCR_C)
    assert not host_decrypts(text, None)


def test_approve_twice_is_idempotent_whatever_the_case() -> None:
    once = approve(runbook_policy(OWNER, [HOST], []), PCR_A)
    assert approve(once, PCR_A) == once
    assert approve(once, PCR_A.upper()) == once


def test_approve_with_replace_drops_the_others() -> None:
    text = approve(runbook_policy(OWNER, [HOST], [PCR_A, PCR_B]), PCR_C, replace=True)
    assert approved_measurements(text) == [PCR_C]
    assert not host_decrypts(text, PCR_A)


def test_approve_creates_the_statements_after_unrelated_ones() -> None:
    original = unrelated_policy()
    text = approve(original, PCR_A, host_principals=[HOST])
    assert statements(text)[:2] == statements(original)
    assert [s.get("Sid") for s in statements(text)[2:]] == [ALLOW_SID, DENY_SID]
    assert json.loads(text)["Id"] == "custom"
    assert host_decrypts(text, PCR_A)
    assert not host_decrypts(text, None)


def test_approve_creates_only_the_missing_statement() -> None:
    full = statements(runbook_policy(OWNER, [HOST], [PCR_A]))
    without_allow = json.dumps({"Statement": [s for s in full if s["Sid"] != ALLOW_SID]})
    text = approve(without_allow, PCR_B, host_principals=[HOST])
    assert [s["Sid"] for s in statements(text)] == [
        OWNER_SID,
        DENY_SID,
        *HOST_DENY_SIDS,
        ALLOW_SID,
    ]
    assert approved_measurements(text) == [PCR_A, PCR_B]


def test_approve_without_statements_needs_host_principals() -> None:
    with pytest.raises(PolicyError) as raised:
        approve(unrelated_policy(), PCR_A)
    assert ALLOW_SID in raised.value.message
    assert "host principals" in raised.value.hint


def test_approve_refuses_other_hosts_than_the_policy_names() -> None:
    text = runbook_policy(OWNER, [HOST], [PCR_A])
    assert approve(text, PCR_B, host_principals=[HOST]) == approve(text, PCR_B)
    with pytest.raises(PolicyError, match="names other hosts"):
        approve(text, PCR_B, host_principals=["arn:aws:iam::111122223333:role/other"])


def test_edits_preserve_unrelated_statements_exactly() -> None:
    runbook = statements(runbook_policy(OWNER, [HOST], [PCR_A]))
    deny = runbook[2] | {
        "Condition": {**runbook[2]["Condition"], "Bool": {"aws:SecureTransport": "true"}}
    }
    original = json.dumps(
        {"Version": "2012-10-17", "Statement": [AUDITOR, runbook[1], NO_SID, deny, runbook[0]]}
    )
    text = revoke(approve(approve(original, PCR_B), PCR_C), PCR_A)
    after = statements(text)
    assert (after[0], after[1], after[2], after[4]) == (AUDITOR, runbook[1], NO_SID, runbook[0])
    assert after[3]["Condition"] == {
        "StringNotEqualsIgnoreCase": {IMAGE_KEY: [PCR_B, PCR_C]},
        "Bool": {"aws:SecureTransport": "true"},
    }


def test_edits_read_a_single_value_and_any_key_case() -> None:
    deny = by_sid(runbook_policy(OWNER, [HOST], [PCR_A]), DENY_SID)
    deny["Condition"] = {"StringNotEqualsIgnoreCase": {IMAGE_KEY.lower(): PCR_A.upper()}}
    original = json.dumps({"Statement": deny})
    assert approved_measurements(original) == [PCR_A]
    text = approve(original, PCR_B, host_principals=[HOST])
    assert by_sid(text, DENY_SID)["Condition"] == {
        "StringNotEqualsIgnoreCase": {IMAGE_KEY.lower(): [PCR_A, PCR_B]}
    }


def test_revoke_removes_one() -> None:
    text = revoke(runbook_policy(OWNER, [HOST], [PCR_A, PCR_B]), PCR_A.upper())
    assert approved_measurements(text) == [PCR_B]
    assert not host_decrypts(text, PCR_A)
    assert host_decrypts(text, PCR_B)


def test_revoking_the_last_denies_every_host_decrypt() -> None:
    text = revoke(runbook_policy(OWNER, [HOST], [PCR_A]), PCR_A)
    assert "Condition" not in by_sid(text, DENY_SID)
    assert text == runbook_policy(OWNER, [HOST], [])
    assert not host_decrypts(text, PCR_A)


@pytest.mark.parametrize(
    "policy_text",
    [runbook_policy(OWNER, [HOST], [PCR_A]), runbook_policy(OWNER, [HOST], []), unrelated_policy()],
    ids=["other-approved", "none-approved", "no-statements"],
)
def test_revoking_an_unapproved_measurement_is_not_found(policy_text: str) -> None:
    with pytest.raises(NotFoundError) as raised:
        revoke(policy_text, PCR_B)
    assert "strongroom image approved" in raised.value.hint


def test_approved_measurements_of_a_policy_without_the_gate() -> None:
    assert approved_measurements(unrelated_policy()) == []


@pytest.mark.parametrize(
    "pcr0",
    ["a1" * 47, "a1" * 49, "g1" * 48, "ab" * 32, f" {'a1' * 48}", ""],
    ids=["short", "long", "not-hex", "sha256", "space", "empty"],
)
def test_measurement_must_be_sha384_hex(pcr0: str) -> None:
    policy = runbook_policy(OWNER, [HOST], [PCR_A])
    for edit in (approve, revoke):
        with pytest.raises(UsageError) as raised:
            edit(policy, pcr0)
        assert "96 hex" in raised.value.hint
    with pytest.raises(UsageError):
        runbook_policy(OWNER, [HOST], [pcr0])


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(PolicyError, match="not valid JSON"):
        approve("{", PCR_A, host_principals=[HOST])
    twice = json.dumps({"Statement": statements(runbook_policy(OWNER, [HOST], [])) * 2})
    with pytest.raises(PolicyError, match=f"2 statements with Sid '{ALLOW_SID}'"):
        approve(twice, PCR_A)
