"""Decide an S3 request against a share's bucket policy, as S3 would.

S3 combines the bucket policy with the caller's IAM identity policies. There
are no identity policies here, so the bucket owner's own account stands for a
host whose IAM lets it do anything: a request from the owner's account is
allowed unless a bucket-policy statement denies it explicitly. Any other
account needs an explicit Allow and no Deny (cross-account access needs both
sides, and the vendor's own IAM is the vendor's business).

The local backend decides every request here; the tests ask the same question
of the policies Strongroom writes to S3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from strongroom.policy import Decision, PolicyDocument, RequestContext, evaluate


@dataclass(frozen=True)
class Caller:
    """Who makes a request: an IAM principal of an account."""

    account_id: str
    principal_arn: str


def s3_request(
    action: str,
    bucket: str,
    caller: Caller,
    *,
    key: str | None = None,
    encryption: str | None = None,
    acl: str | None = None,
    secure_transport: bool = True,
) -> RequestContext:
    """The request context of one S3 call (``action`` like ``s3:PutObject``).

    ``encryption`` and ``acl`` are the ``x-amz-server-side-encryption`` and
    ``x-amz-acl`` headers; left out when the request does not send them.
    """
    resource = f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")
    values: dict[str, str | bool] = {
        "aws:SecureTransport": secure_transport,
        "aws:PrincipalArn": caller.principal_arn,
        "aws:PrincipalAccount": caller.account_id,
    }
    if encryption is not None:
        values["s3:x-amz-server-side-encryption"] = encryption
    if acl is not None:
        values["s3:x-amz-acl"] = acl
    return RequestContext(
        action=action,
        resource=resource,
        principal_arn=caller.principal_arn,
        account_id=caller.account_id,
        values=values,
    )


def decide(policy: dict[str, Any], owner_account: str, request: RequestContext) -> Decision:
    """Whether ``request`` is allowed on a bucket owned by ``owner_account``."""
    decision = evaluate(PolicyDocument.parse(json.dumps(policy), kind="bucket"), request)
    if decision.allowed or decision.effect == "Deny" or request.account_id != owner_account:
        return decision
    return Decision(
        True,
        "Allow",
        None,
        None,
        "the bucket owner's own account, and no statement denies it",
    )
