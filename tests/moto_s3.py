"""Run moto's server (``python -m moto.server``) with one of its S3 mistakes corrected.

moto checks a bucket's policy on every object request (GET, PUT, DELETE of a
key), but it evaluates only the ``StringEquals`` condition operator and takes
a statement with any other operator as matching. Under the runbook's bucket
policy that turns ``DenyIncorrectEncryption`` (``StringNotEquals``) and
``DenyNonHTTPSReqs`` (``Bool``) into unconditional denials: unpatched moto
refuses every object request to a share, the host's correctly encrypted ones
included, which real S3 does not.

The one change here: a bucket-policy statement with a condition operator moto
cannot evaluate is left out of that check (it does not apply), instead of
applying without its condition. This removes a wrong refusal and adds no
enforcement: moto still decides nothing by the runbook's Deny statements or by
who the principal is (see ``tests/conftest.py``), and what the policies allow
is Strongroom's evaluator's to check.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from moto import server
from moto.iam.access_control import IAMPolicy, PermissionResult
from moto.s3.models import FakeBucket

#: The condition operators moto's policy conditions implement (moto/iam/policy_conditions.py).
MOTO_CONDITION_OPERATORS = frozenset({"StringEquals"})


def _evaluable(statement: dict[str, Any]) -> bool:
    return set(statement.get("Condition", {})) <= MOTO_CONDITION_OPERATORS


def get_permission(self: FakeBucket, action: str, resource: str) -> PermissionResult:
    if self.policy is None:
        return PermissionResult.NEUTRAL
    policy = json.loads(self.policy)
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    policy["Statement"] = [s for s in statements if _evaluable(s)]
    result: PermissionResult = IAMPolicy(json.dumps(policy)).is_action_permitted(action, resource)
    return result


if __name__ == "__main__":
    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]
    server.main(sys.argv[1:])
