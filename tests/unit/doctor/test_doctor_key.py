"""Who the key checks ask as "the host", and what they decide, over policies written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from strongroom.doctor.base import Status
from strongroom.doctor.host import ImageFacts
from strongroom.doctor.key import (
    KeyFacts,
    attestation_required,
    debug_not_approved,
    grant_denied,
    host_principals,
    image_approved,
    reencrypt_denied,
)
from strongroom.policy import PolicyDocument, approve, runbook_policy

VENDOR, HOST = "111122223333", "444455556666"
ARN = f"arn:aws:kms:eu-west-1:{VENDOR}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PCR0 = "ab" * 48


def facts(policy_text: str) -> KeyFacts:
    policy = PolicyDocument.parse(policy_text)
    return KeyFacts(
        "alias/k", ARN, VENDOR, policy, (), host_principals(policy, VENDOR), secure_transport=True
    )


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def test_the_host_is_the_gate_s_principals_or_any_other_account_allowed_decrypt() -> None:
    gated = facts(runbook_policy(VENDOR, [f"arn:aws:iam::{HOST}:root"], [PCR0]))
    assert [(h.named, h.arn, h.account) for h in gated.hosts] == [
        (f"arn:aws:iam::{HOST}:root", f"arn:aws:iam::{HOST}:root", HOST)
    ]
    role = f"arn:aws:iam::{HOST}:role/enclave-host"
    by_hand = facts(
        policy(
            {"Effect": "Allow", "Principal": {"AWS": VENDOR}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": role}, "Action": "kms:De*", "Resource": "*"},
        )
    )
    assert [h.arn for h in by_hand.hosts] == [role]


def test_the_runbook_policy_passes_every_key_check() -> None:
    text = approve(runbook_policy(VENDOR, [f"arn:aws:iam::{HOST}:root"], []), PCR0)
    checked = facts(text)
    assert attestation_required(checked).status is Status.OK
    assert debug_not_approved(checked).status is Status.OK
    assert reencrypt_denied(checked).status is Status.OK
    grant = grant_denied(checked)
    assert grant.status is Status.OK and "DenyHostCreateGrant" in grant.detail


def test_an_unconditional_host_allow_is_decrypt_without_attestation() -> None:
    checked = facts(
        policy(
            {
                "Effect": "Allow",
                "Principal": {"AWS": HOST},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        )
    )
    found = attestation_required(checked)
    assert found.status is Status.FAIL and "without any attestation" in found.detail
    assert debug_not_approved(checked).status is Status.FAIL


def test_a_policy_with_the_host_s_explicit_denies_passes_every_check() -> None:
    """The shape of issue 14's runbook key: the gate, then unconditional Denies for the host."""
    host = {"AWS": f"arn:aws:iam::{HOST}:root"}
    gate = {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": [PCR0]}}
    denies = [
        ("DenyHostReEncrypt", "Action", ["kms:ReEncrypt*"]),
        ("DenyHostCreateGrant", "Action", ["kms:CreateGrant"]),
        ("DenyHostGenerateDataKey", "Action", ["kms:GenerateDataKey*"]),
        ("DenyHostEncrypt", "Action", ["kms:Encrypt"]),
        ("DenyHostAllButDecrypt", "NotAction", ["kms:Decrypt", "kms:DescribeKey"]),
    ]
    checked = facts(
        policy(
            {
                "Sid": "EnableOwnerAccess",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{VENDOR}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "AllowEnclaveDecrypt",
                "Effect": "Allow",
                "Principal": host,
                "Action": "kms:Decrypt",
                "Resource": "*",
            },
            {
                "Sid": "DenyDecryptUnlessApprovedImage",
                "Effect": "Deny",
                "Principal": host,
                "Action": ["kms:Decrypt", "kms:ReEncrypt*"],
                "Resource": "*",
                "Condition": gate,
            },
            *(
                {"Sid": sid, "Effect": "Deny", "Principal": host, element: actions, "Resource": "*"}
                for sid, element, actions in denies
            ),
        )
    )
    for check in (attestation_required, debug_not_approved, reencrypt_denied, grant_denied):
        assert check(checked).status is Status.OK, check(checked)
    grant = grant_denied(checked)
    assert 'explicit deny by statement "DenyHostCreateGrant"' in grant.detail
    approved = image_approved(checked, _image(PCR0))
    assert approved.status is Status.OK
    assert image_approved(checked, _image("cd" * 48)).status is Status.FAIL


def _image(pcr0: str) -> ImageFacts:
    return ImageFacts(Path("app.eif"), 1024, {0: pcr0, 1: "01" * 48, 2: "02" * 48})
