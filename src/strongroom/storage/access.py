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


@dataclass(frozen=True)
class Grant:
    """One question asked of a share's bucket policy, and its answer (``share show``)."""

    who: str
    request: str
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        return {
            "who": self.who,
            "request": self.request,
            "allowed": self.decision.allowed,
            "statement": self.decision.statement_sid,
            "reason": self.decision.reason,
        }


def grants(
    policy: dict[str, Any], owner_account: str, bucket: str, vendor_account: str
) -> list[Grant]:
    """What ``policy`` lets the vendor, the host and anyone else do, in words.

    Not read off the statements but decided, request by request, by
    :func:`decide`: what it says is what the local backend enforces, and what
    S3 decides for the same requests (the host's IAM aside).
    """
    from strongroom.storage.policies import SSE_ALGORITHM, VENDOR_ACL, VERSION

    if not policy.get("Statement"):  # a bucket with no policy at all: no statement grants
        policy = {"Version": VERSION, "Statement": []}

    other_account = next(
        a for a in ("111111111111", "222222222222", "333333333333")
        if a not in (owner_account, vendor_account)
    )  # fmt: skip
    vendor = Caller(vendor_account, f"arn:aws:iam::{vendor_account}:root")
    host = Caller(owner_account, f"arn:aws:iam::{owner_account}:root")
    other = Caller(other_account, f"arn:aws:iam::{other_account}:root")
    key = "app.sealed"
    asked: list[tuple[str, str, RequestContext]] = [
        (
            f"vendor {vendor_account}",
            f"put an object (SSE {SSE_ALGORITHM}, ACL {VENDOR_ACL}, HTTPS)",
            s3_request(
                "s3:PutObject", bucket, vendor, key=key, encryption=SSE_ALGORITHM, acl=VENDOR_ACL
            ),
        ),
        (
            f"vendor {vendor_account}",
            "put an object without encryption",
            s3_request("s3:PutObject", bucket, vendor, key=key, acl=VENDOR_ACL),
        ),
        (
            f"vendor {vendor_account}",
            "put an object encrypted with AES256 (not KMS)",
            s3_request(
                "s3:PutObject", bucket, vendor, key=key, encryption="AES256", acl=VENDOR_ACL
            ),
        ),
        (
            f"vendor {vendor_account}",
            f"put an object without the {VENDOR_ACL} ACL",
            s3_request("s3:PutObject", bucket, vendor, key=key, encryption=SSE_ALGORITHM),
        ),
        (
            f"vendor {vendor_account}",
            "read an object",
            s3_request("s3:GetObject", bucket, vendor, key=key),
        ),
        (f"vendor {vendor_account}", "list the share", s3_request("s3:ListBucket", bucket, vendor)),
        (
            f"vendor {vendor_account}",
            "change the bucket policy",
            s3_request("s3:PutBucketPolicy", bucket, vendor),
        ),
        (
            f"host {owner_account}",
            "read an object",
            s3_request("s3:GetObject", bucket, host, key=key),
        ),
        (f"host {owner_account}", "list the share", s3_request("s3:ListBucket", bucket, host)),
        (
            f"host {owner_account}",
            "read an object over plain HTTP",
            s3_request("s3:GetObject", bucket, host, key=key, secure_transport=False),
        ),
        (
            f"another account ({other_account})",
            f"put an object (SSE {SSE_ALGORITHM}, ACL {VENDOR_ACL}, HTTPS)",
            s3_request(
                "s3:PutObject", bucket, other, key=key, encryption=SSE_ALGORITHM, acl=VENDOR_ACL
            ),
        ),
    ]
    return [Grant(who, request, decide(policy, owner_account, ctx)) for who, request, ctx in asked]
