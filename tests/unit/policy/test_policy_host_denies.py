"""The runbook key policy's explicit host Denies, checked with our evaluator."""

from __future__ import annotations

import json

import pytest

from strongroom.policy import PolicyDocument, RequestContext, approve, evaluate, revoke
from strongroom.policy.measurements import HOST_DENY_SIDS, runbook_policy

HOST_ACCOUNT = "111122223333"
VENDOR_ACCOUNT = "444455556666"
HOST_ROOT = f"arn:aws:iam::{HOST_ACCOUNT}:root"
HOST_ROLE = f"arn:aws:iam::{HOST_ACCOUNT}:role/enclave-host"
VENDOR_ADMIN = f"arn:aws:iam::{VENDOR_ACCOUNT}:user/admin"
KEY = f"arn:aws:kms:eu-west-1:{VENDOR_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
APPROVED = "a1" * 48
IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"


def decide(
    action: str, image: str | None = None, *, principal: str = HOST_ROLE
) -> tuple[bool, str]:
    policy = PolicyDocument.parse(runbook_policy(VENDOR_ACCOUNT, [HOST_ROOT], [APPROVED]))
    account = principal.split(":")[4]
    values = {IMAGE_KEY: image} if image else {}
    decision = evaluate(policy, RequestContext(action, KEY, principal, account, values))
    return decision.allowed, decision.statement_sid or ""


@pytest.mark.parametrize(
    ("action", "sid"),
    [
        ("kms:ReEncryptFrom", "DenyHostReEncrypt"),
        ("kms:ReEncryptTo", "DenyHostReEncrypt"),
        ("kms:CreateGrant", "DenyHostCreateGrant"),
        ("kms:Encrypt", "DenyHostEncrypt"),
        ("kms:ScheduleKeyDeletion", "DenyHostAllButDecrypt"),
    ],
)
def test_the_host_is_denied_even_with_an_approved_attestation(action: str, sid: str) -> None:
    assert decide(action, APPROVED) == (False, sid)


def test_the_host_gets_no_data_key_without_an_attestation() -> None:
    assert decide("kms:GenerateDataKey") == (False, "DenyHostGenerateDataKey")
    assert decide("kms:GenerateDataKeyPair") == (False, "DenyHostGenerateDataKey")
    # with one, the NotAction Deny still closes it: the host only decrypts
    assert decide("kms:GenerateDataKey", APPROVED) == (False, "DenyHostAllButDecrypt")


def test_the_host_decrypts_only_with_an_approved_image() -> None:
    assert decide("kms:Decrypt", APPROVED) == (True, "AllowEnclaveDecrypt")
    assert decide("kms:Decrypt") == (False, "DenyDecryptUnlessApprovedImage")
    assert decide("kms:Decrypt", "b2" * 48) == (False, "DenyDecryptUnlessApprovedImage")


def test_the_vendor_administers() -> None:
    for action in ("kms:PutKeyPolicy", "kms:Encrypt", "kms:CreateGrant", "kms:ReEncryptTo"):
        assert decide(action, principal=VENDOR_ADMIN) == (True, "EnableOwnerAccess")


def test_every_host_deny_has_its_sid_and_names_only_the_host() -> None:
    statements = json.loads(runbook_policy(VENDOR_ACCOUNT, [HOST_ROOT], []))["Statement"]
    denies = [s for s in statements if s["Sid"] in HOST_DENY_SIDS]
    assert [s["Sid"] for s in denies] == list(HOST_DENY_SIDS)
    assert all(s["Effect"] == "Deny" and s["Principal"] == {"AWS": [HOST_ROOT]} for s in denies)


def test_approve_and_revoke_leave_statements_they_did_not_write_byte_identical() -> None:
    policy = json.loads(runbook_policy(VENDOR_ACCOUNT, [HOST_ROOT], []))
    mine = {
        "Sid": "MyAuditRead",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{VENDOR_ACCOUNT}:role/auditor"},
        "Action": ["kms:DescribeKey", "kms:GetKeyPolicy"],
        "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "true"}},
    }
    policy["Statement"].insert(1, mine)
    before = json.loads(json.dumps(policy["Statement"]))
    after_approve = json.loads(approve(json.dumps(policy), APPROVED))
    after = json.loads(revoke(json.dumps(after_approve), APPROVED))["Statement"]
    untouched = [s for s in before if s["Sid"] not in {"DenyDecryptUnlessApprovedImage"}]
    assert [s for s in after if s["Sid"] != "DenyDecryptUnlessApprovedImage"] == untouched
    assert json.dumps(after[1], indent=2) == json.dumps(mine, indent=2)
    assert after == before
