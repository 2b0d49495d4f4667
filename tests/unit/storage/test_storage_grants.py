"""``share show``'s grants: the share's policy asked, request by request (storage/access.py)."""

from __future__ import annotations

from typing import Any

from strongroom.storage import policies
from strongroom.storage.access import grants
from strongroom.storage.base import ShareNames

NAMES = ShareNames("acme", "123456789012", "us-east-1")
VENDOR = "210987654321"


def answers(policy: dict[str, Any]) -> dict[tuple[str, str], tuple[bool, str | None]]:
    found = grants(policy, NAMES.host_account, NAMES.bucket, VENDOR)
    return {
        (g.who.split()[0], g.request): (g.decision.allowed, g.decision.statement_sid) for g in found
    }


PUT = "put an object (SSE aws:kms, ACL bucket-owner-full-control, HTTPS)"


def test_the_runbook_policy_lets_the_vendor_put_and_nothing_else() -> None:
    got = answers(policies.bucket_policy(NAMES, VENDOR))
    assert got[("vendor", PUT)] == (True, policies.VENDOR_ACCESS_SID)
    assert got[("vendor", "put an object without encryption")] == (
        False,
        policies.DENY_INCORRECT_ENCRYPTION_SID,
    )
    assert got[("vendor", "put an object without the bucket-owner-full-control ACL")][0] is False
    assert got[("vendor", "read an object")] == (False, None)
    assert got[("vendor", "list the share")] == (False, None)
    assert got[("vendor", "change the bucket policy")] == (False, None)
    assert got[("host", "read an object")] == (True, None)
    assert got[("host", "read an object over plain HTTP")] == (
        False,
        policies.DENY_PLAIN_HTTP_SID,
    )
    assert got[("another", PUT)] == (False, None)


def test_after_revoke_the_vendor_may_not_put_and_the_host_still_reads() -> None:
    revoked = policies.without_vendor_access(policies.bucket_policy(NAMES, VENDOR))
    got = answers(revoked)
    assert got[("vendor", PUT)] == (False, None)
    assert got[("host", "read an object")] == (True, None)
    restored = policies.with_vendor_access(revoked, NAMES, VENDOR)
    assert answers(restored)[("vendor", PUT)] == (True, policies.VENDOR_ACCESS_SID)


def test_the_third_account_is_neither_party() -> None:
    for owner, vendor in (("111111111111", "222222222222"), ("222222222222", "111111111111")):
        names = ShareNames("acme", owner, "us-east-1")
        found = grants(policies.bucket_policy(names, vendor), owner, names.bucket, vendor)
        other = next(g for g in found if g.who.startswith("another"))
        assert owner not in other.who and vendor not in other.who


def test_no_policy_at_all_grants_the_owner_only() -> None:
    got = answers({})
    assert got[("vendor", PUT)] == (False, None)
    assert got[("host", "read an object")] == (True, None)
    assert got[("host", "read an object over plain HTTP")] == (True, None)
