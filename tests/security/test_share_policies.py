"""What a share's policies allow, decided by Strongroom's own IAM evaluator.

The bucket policy is asked as S3 would ask it (:func:`strongroom.storage.access.decide`,
the bucket owned by the host's account); the key policy and the log bucket's
policy with :func:`strongroom.policy.evaluate`. The policies are the ones
``share create`` writes and ``infra/share-bucket.yaml`` holds
(:mod:`strongroom.storage.policies`). Each decision is checked with the
statement that made it, so a request refused for the wrong reason fails too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from strongroom.policy import Decision, PolicyDocument, RequestContext, evaluate
from strongroom.storage import policies
from strongroom.storage.access import Caller, decide, s3_request
from strongroom.storage.base import ShareNames

HOST_ACCOUNT = "111122223333"
VENDOR_ACCOUNT = "444455556666"
THIRD_ACCOUNT = "777788889999"
NAMES = ShareNames("acme", HOST_ACCOUNT, "eu-west-1")
HOST = Caller(HOST_ACCOUNT, f"arn:aws:iam::{HOST_ACCOUNT}:role/strongroom-host-admin")
VENDOR = Caller(VENDOR_ACCOUNT, f"arn:aws:iam::{VENDOR_ACCOUNT}:role/vendor-builder")
THIRD = Caller(THIRD_ACCOUNT, f"arn:aws:iam::{THIRD_ACCOUNT}:user/mallory")
OBJECT = "apps/app.sealed"
KMS = policies.SSE_ALGORITHM
ACL = policies.VENDOR_ACL
BUCKET_POLICY = policies.bucket_policy(NAMES, VENDOR_ACCOUNT)
VENDOR_KEY_SID = f"Enable Access From acme Account {VENDOR_ACCOUNT}"
HOST_KEY_SID = "Enable default permissions"
#: The bucket owner's own account: allowed by its IAM, not by a statement.
OWNER = "owner"
#: Bucket-level actions address the bucket; the others an object in it.
BUCKET_ACTIONS = {"s3:ListBucket", "s3:PutBucketPolicy", "s3:GetBucketPolicy"}


def s3(
    action: str,
    caller: Caller,
    *,
    encryption: str | None = None,
    acl: str | None = None,
    https: bool = True,
    policy: dict[str, Any] = BUCKET_POLICY,
) -> Decision:
    key = None if action in BUCKET_ACTIONS else OBJECT
    request = s3_request(
        action,
        NAMES.bucket,
        caller,
        key=key,
        encryption=encryption,
        acl=acl,
        secure_transport=https,
    )
    return decide(policy, HOST_ACCOUNT, request)


def decided(decision: Decision) -> tuple[str, str | None]:
    """(effect, deciding statement): ``OWNER`` for the owner's implicit allow."""
    if decision.allowed and decision.statement_sid is None:
        assert "bucket owner" in decision.reason
        return ("Allow", OWNER)
    return (decision.effect, decision.statement_sid)


ALLOWED_BY_VENDOR_ACCESS = ("Allow", policies.VENDOR_ACCESS_SID)
NOTHING_ALLOWS = ("ImplicitDeny", None)
DENIED_PLAIN_HTTP = ("Deny", policies.DENY_PLAIN_HTTP_SID)
DENIED_ENCRYPTION = ("Deny", policies.DENY_INCORRECT_ENCRYPTION_SID)


# --- the vendor -------------------------------------------------------------------


def test_vendor_may_put_an_encrypted_object_the_host_owns() -> None:
    assert decided(s3("s3:PutObject", VENDOR, encryption=KMS, acl=ACL)) == ALLOWED_BY_VENDOR_ACCESS


@pytest.mark.parametrize(
    ("encryption", "acl", "https", "expected"),
    [
        pytest.param(KMS, None, True, NOTHING_ALLOWS, id="without-acl"),
        pytest.param(KMS, "public-read", True, NOTHING_ALLOWS, id="other-acl"),
        pytest.param(None, ACL, True, DENIED_ENCRYPTION, id="without-encryption"),
        pytest.param("AES256", ACL, True, DENIED_ENCRYPTION, id="aes256"),
        pytest.param("aws:kms:dsse", ACL, True, DENIED_ENCRYPTION, id="dsse"),
        pytest.param(KMS, ACL, False, DENIED_PLAIN_HTTP, id="plain-http"),
    ],
)
def test_vendor_may_not_put_otherwise(
    encryption: str | None, acl: str | None, https: bool, expected: tuple[str, str | None]
) -> None:
    decision = s3("s3:PutObject", VENDOR, encryption=encryption, acl=acl, https=https)
    assert not decision.allowed
    assert decided(decision) == expected


def test_unencrypted_puts_are_denied_by_either_statement_alone() -> None:
    """DenyUnencrypted still refuses a put without the header if DenyIncorrectEncryption went."""
    only_null = {
        **BUCKET_POLICY,
        "Statement": [
            s
            for s in BUCKET_POLICY["Statement"]
            if s["Sid"] != policies.DENY_INCORRECT_ENCRYPTION_SID
        ],
    }
    decision = s3("s3:PutObject", VENDOR, acl=ACL, policy=only_null)
    assert decided(decision) == ("Deny", policies.DENY_UNENCRYPTED_SID)
    # ...and lets an AES256 put through to EnableThirdPartyAccess: it checks presence only.
    aes = s3("s3:PutObject", VENDOR, encryption="AES256", acl=ACL, policy=only_null)
    assert decided(aes) == ALLOWED_BY_VENDOR_ACCESS


@pytest.mark.parametrize(
    "action",
    [
        "s3:GetObject",
        "s3:ListBucket",
        "s3:DeleteObject",
        "s3:PutBucketPolicy",
        "s3:GetBucketPolicy",
    ],
)
def test_vendor_may_not_read_list_delete_or_touch_the_policy(action: str) -> None:
    assert decided(s3(action, VENDOR)) == NOTHING_ALLOWS
    # Nor with the headers that open PutObject (a caller may send any header).
    assert decided(s3(action, VENDOR, encryption=KMS, acl=ACL)) == NOTHING_ALLOWS
    assert decided(s3(action, VENDOR, https=False)) == DENIED_PLAIN_HTTP


# --- the host -----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["s3:GetObject", "s3:ListBucket", "s3:PutBucketPolicy"])
def test_host_may_read_list_and_set_the_policy_over_https_only(action: str) -> None:
    assert decided(s3(action, HOST)) == ("Allow", OWNER)
    assert decided(s3(action, HOST, https=False)) == DENIED_PLAIN_HTTP


def test_the_encryption_rules_bind_the_host_too() -> None:
    assert decided(s3("s3:PutObject", HOST, encryption=KMS)) == ("Allow", OWNER)
    assert decided(s3("s3:PutObject", HOST)) == DENIED_ENCRYPTION


# --- anyone else ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        "s3:PutObject",
        "s3:PutObjectAcl",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:DeleteObject",
        "s3:PutBucketPolicy",
        "s3:GetBucketPolicy",
    ],
)
def test_a_third_account_may_do_nothing(action: str) -> None:
    # With every header the vendor's uploads carry: the Allow names the vendor's account only.
    assert decided(s3(action, THIRD, encryption=KMS, acl=ACL)) == NOTHING_ALLOWS


# --- revoke and restore (runbook 6.1) ---------------------------------------------------


def test_revoke_removes_exactly_the_vendor_statement() -> None:
    revoked = policies.without_vendor_access(BUCKET_POLICY)
    kept = [s for s in BUCKET_POLICY["Statement"] if s["Sid"] != policies.VENDOR_ACCESS_SID]
    assert len(revoked["Statement"]) == len(BUCKET_POLICY["Statement"]) - 1
    assert revoked == {**BUCKET_POLICY, "Statement": kept}
    assert not policies.has_vendor_access(revoked)
    assert policies.has_vendor_access(BUCKET_POLICY)
    assert policies.without_vendor_access(revoked) == revoked
    # The original is not edited in place.
    assert policies.bucket_policy(NAMES, VENDOR_ACCOUNT) == BUCKET_POLICY


def test_after_revoke_the_vendor_may_not_put_and_the_rest_holds() -> None:
    revoked = policies.without_vendor_access(BUCKET_POLICY)
    put = s3("s3:PutObject", VENDOR, encryption=KMS, acl=ACL, policy=revoked)
    assert decided(put) == NOTHING_ALLOWS
    assert decided(s3("s3:GetObject", HOST, policy=revoked)) == ("Allow", OWNER)
    assert decided(s3("s3:GetObject", HOST, https=False, policy=revoked)) == DENIED_PLAIN_HTTP
    aes = s3("s3:PutObject", VENDOR, encryption="AES256", acl=ACL, policy=revoked)
    assert decided(aes) == DENIED_ENCRYPTION


def test_restore_gives_the_vendor_its_access_back() -> None:
    restored = policies.with_vendor_access(
        policies.without_vendor_access(BUCKET_POLICY), NAMES, VENDOR_ACCOUNT
    )
    assert restored == BUCKET_POLICY
    put = s3("s3:PutObject", VENDOR, encryption=KMS, acl=ACL, policy=restored)
    assert decided(put) == ALLOWED_BY_VENDOR_ACCESS


def test_restore_replaces_an_edited_vendor_statement() -> None:
    widened = json.loads(json.dumps(BUCKET_POLICY))
    widened["Statement"][-1]["Action"] = ["s3:*"]
    del widened["Statement"][-1]["Condition"]
    assert decided(s3("s3:GetObject", VENDOR, policy=widened)) == ALLOWED_BY_VENDOR_ACCESS
    restored = policies.with_vendor_access(widened, NAMES, VENDOR_ACCOUNT)
    assert decided(s3("s3:GetObject", VENDOR, policy=restored)) == NOTHING_ALLOWS


# --- the host key ------------------------------------------------------------------------

KEY_POLICY = PolicyDocument.parse(json.dumps(policies.key_policy(NAMES, VENDOR_ACCOUNT)))
KEY_ARN = f"arn:aws:kms:{NAMES.region}:{HOST_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


#: How S3 calls KMS for an SSE-KMS upload in the share's region.
VIA_S3 = f"s3.{NAMES.region}.amazonaws.com"


def kms(action: str, caller: Caller, *, via: str | None = VIA_S3) -> tuple[str, str | None]:
    values: dict[str, str | bool] = {
        "kms:CallerAccount": caller.account_id,
        "aws:SecureTransport": True,
    }
    if via is not None:
        values["kms:ViaService"] = via
    request = RequestContext(action, KEY_ARN, caller.principal_arn, caller.account_id, values)
    decision = evaluate(KEY_POLICY, request)
    return (decision.effect, decision.statement_sid)


@pytest.mark.parametrize("action", ["kms:GenerateDataKey", "kms:Decrypt"])
def test_vendor_may_use_the_key_for_uploads(action: str) -> None:
    assert kms(action, VENDOR) == ("Allow", VENDOR_KEY_SID)


@pytest.mark.parametrize("via", [None, "s3.us-east-1.amazonaws.com", "ec2.eu-west-1.amazonaws.com"])
@pytest.mark.parametrize("action", ["kms:GenerateDataKey", "kms:Decrypt"])
def test_vendor_may_use_the_key_only_through_s3_in_the_shares_region(
    action: str, via: str | None
) -> None:
    # called directly (no ViaService), or through another service or region
    assert kms(action, VENDOR, via=via) == NOTHING_ALLOWS


@pytest.mark.parametrize(
    "action",
    [
        "kms:Encrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPair",
        "kms:CreateGrant",
        "kms:PutKeyPolicy",
        "kms:GetKeyPolicy",
        "kms:ScheduleKeyDeletion",
        "kms:DisableKey",
        "kms:DescribeKey",
    ],
)
def test_vendor_may_do_nothing_else_with_the_key(action: str) -> None:
    assert kms(action, VENDOR) == NOTHING_ALLOWS


@pytest.mark.parametrize(
    "action",
    [
        "kms:PutKeyPolicy",
        "kms:ScheduleKeyDeletion",
        "kms:CreateGrant",
        "kms:EnableKeyRotation",
        "kms:Decrypt",
    ],
)
def test_host_account_administers_the_key(action: str) -> None:
    # The policy names the account (arn:aws:iam::HOST:root); in this evaluator an
    # account grant reaches every principal of the account (no IAM to delegate through).
    assert kms(action, HOST) == ("Allow", HOST_KEY_SID)


@pytest.mark.parametrize("action", ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"])
def test_a_third_account_may_not_use_the_key(action: str) -> None:
    assert kms(action, THIRD) == NOTHING_ALLOWS


# --- the access-log bucket --------------------------------------------------------------

LOG_POLICY = PolicyDocument.parse(json.dumps(policies.log_bucket_policy(NAMES)), kind="bucket")
LOG_OBJECT = f"{NAMES.log_prefix}2025-01-01-00-00-00-0123456789ABCDEF"
DELIVERY_VALUES = {"aws:SourceArn": NAMES.bucket_arn, "aws:SourceAccount": HOST_ACCOUNT}


def log_put(caller: Caller, values: dict[str, Any] | None = None) -> RequestContext:
    return RequestContext(
        "s3:PutObject",
        f"arn:aws:s3:::{NAMES.log_bucket}/{LOG_OBJECT}",
        caller.principal_arn,
        caller.account_id,
        DELIVERY_VALUES if values is None else values,
    )


@pytest.mark.parametrize("caller", [HOST, VENDOR, THIRD], ids=["host", "vendor", "third"])
def test_the_log_policy_allows_no_iam_caller(caller: Caller) -> None:
    """The only Allow names the Service principal logging.s3.amazonaws.com.

    In this evaluator a ``Service`` principal matches no caller (every local
    request comes from an IAM identity), so no IAM caller is allowed by the
    policy, even with the log delivery's own SourceArn and SourceAccount. As S3
    decides: the host's account still writes to its own bucket (its IAM), no
    other account does.
    """
    assert evaluate(LOG_POLICY, log_put(caller)).effect == "ImplicitDeny"
    decision = decide(policies.log_bucket_policy(NAMES), HOST_ACCOUNT, log_put(caller))
    assert decided(decision) == (("Allow", OWNER) if caller is HOST else NOTHING_ALLOWS)


def test_the_log_statement_admits_only_this_shares_delivery() -> None:
    """What S3's log delivery would need, asked of the statement's parts one by one."""
    (statement,) = LOG_POLICY.statements
    assert statement.sid == policies.LOG_DELIVERY_SID
    assert (statement.effect, statement.principals.service, statement.principals.aws) == (
        "Allow",
        ("logging.s3.amazonaws.com",),
        (),
    )
    assert not any(
        statement.matches_principal(c.principal_arn, c.account_id) for c in (HOST, VENDOR, THIRD)
    )
    assert statement.matches_action("s3:PutObject")
    assert not statement.matches_action("s3:GetObject")
    assert statement.matches_resource(log_put(HOST).resource)
    assert not statement.matches_resource(f"arn:aws:s3:::{NAMES.log_bucket}/other/{LOG_OBJECT}")
    assert not statement.matches_resource(f"arn:aws:s3:::{NAMES.bucket}/{LOG_OBJECT}")

    def holds(values: dict[str, Any]) -> bool:
        return statement.conditions_hold(log_put(HOST, values).condition_values)

    assert holds(DELIVERY_VALUES)
    other_bucket = ShareNames("other", HOST_ACCOUNT, NAMES.region).bucket_arn
    assert not holds({**DELIVERY_VALUES, "aws:SourceArn": other_bucket})
    assert not holds({**DELIVERY_VALUES, "aws:SourceArn": NAMES.bucket_arn + "-x"})
    assert not holds({**DELIVERY_VALUES, "aws:SourceAccount": THIRD_ACCOUNT})
    assert not holds({"aws:SourceAccount": HOST_ACCOUNT})
    assert not holds({"aws:SourceArn": NAMES.bucket_arn})
