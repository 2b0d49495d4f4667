"""The policies a share is made with: the one place their statements are written.

They are the runbook's (its CloudFormation template for step 1.1): the bucket
policy denies uploads that are not SSE-KMS encrypted and any request over plain
HTTP, and ``EnableThirdPartyAccess`` lets the vendor's account put objects with
the ``bucket-owner-full-control`` ACL and nothing else (no read, no list); the
host key lets the host account do everything and the vendor's account only
``GenerateDataKey`` and ``Decrypt`` (what an SSE-KMS upload needs).

``share create`` (both backends) and ``infra/share-bucket.yaml`` hold these
statements; ``tests/security`` checks that the template and this module agree
and what the policies allow with :mod:`strongroom.policy`'s evaluator.

A multipart upload is authorised as ``s3:PutObject`` for each of its requests;
the encryption and ACL headers are sent with CreateMultipartUpload, and S3
applies the upload's encryption and ACL to its parts.
"""

from __future__ import annotations

import copy
from typing import Any

from strongroom.storage.base import ShareNames

VERSION = "2012-10-17"
VENDOR_ACCESS_SID = "EnableThirdPartyAccess"
DENY_INCORRECT_ENCRYPTION_SID = "DenyIncorrectEncryption"
DENY_UNENCRYPTED_SID = "DenyUnencrypted"
DENY_PLAIN_HTTP_SID = "DenyNonHTTPSReqs"
LOG_DELIVERY_SID = "S3ServerAccessLogsPolicy-ThirdPartyBucket"
#: The canned ACL the vendor's uploads must carry (the host owns every object).
VENDOR_ACL = "bucket-owner-full-control"
SSE_ALGORITHM = "aws:kms"
#: Unfinished multipart uploads are removed after this many days (the vendor
#: cannot abort its own: the policy grants it PutObject only).
ABORT_INCOMPLETE_UPLOAD_DAYS = 7


def account_root(account: str) -> str:
    return f"arn:aws:iam::{account}:root"


def vendor_access_statement(names: ShareNames, vendor_account: str) -> dict[str, Any]:
    return {
        "Sid": VENDOR_ACCESS_SID,
        "Effect": "Allow",
        "Principal": {"AWS": [account_root(vendor_account)]},
        "Action": ["s3:PutObject", "s3:PutObjectAcl"],
        "Resource": [f"{names.bucket_arn}/*"],
        "Condition": {"StringEquals": {"s3:x-amz-acl": VENDOR_ACL}},
    }


def bucket_policy(names: ShareNames, vendor_account: str) -> dict[str, Any]:
    """The share bucket's policy, with the vendor's access open."""
    objects = f"{names.bucket_arn}/*"
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": DENY_INCORRECT_ENCRYPTION_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["s3:PutObject"],
                "Resource": objects,
                "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": SSE_ALGORITHM}},
            },
            {
                "Sid": DENY_UNENCRYPTED_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["s3:PutObject"],
                "Resource": objects,
                "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}},
            },
            {
                "Sid": DENY_PLAIN_HTTP_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["s3:*"],
                "Resource": [names.bucket_arn, objects],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            vendor_access_statement(names, vendor_account),
        ],
    }


def without_vendor_access(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` minus the ``EnableThirdPartyAccess`` statement (runbook 6.1), else as is."""
    revoked = copy.deepcopy(policy)
    revoked["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != VENDOR_ACCESS_SID]
    return revoked


def with_vendor_access(
    policy: dict[str, Any], names: ShareNames, vendor_account: str
) -> dict[str, Any]:
    """``policy`` with the vendor's access statement back in (replacing any edited one)."""
    restored = without_vendor_access(policy)
    restored["Statement"].append(vendor_access_statement(names, vendor_account))
    return restored


def has_vendor_access(policy: dict[str, Any]) -> bool:
    return any(s.get("Sid") == VENDOR_ACCESS_SID for s in policy.get("Statement", ()))


def key_policy(names: ShareNames, vendor_account: str) -> dict[str, Any]:
    """The host key's policy: the host account administers it; the vendor may encrypt uploads."""
    return {
        "Version": VERSION,
        "Id": "KeyDefault",
        "Statement": [
            {
                "Sid": "Enable default permissions",
                "Effect": "Allow",
                "Principal": {"AWS": account_root(names.host_account)},
                "Action": ["kms:*"],
                "Resource": "*",
            },
            {
                "Sid": f"Enable Access From {names.vendor} Account {vendor_account}",
                "Effect": "Allow",
                "Principal": {"AWS": [account_root(vendor_account)]},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": "*",
            },
        ],
    }


def log_bucket_policy(names: ShareNames) -> dict[str, Any]:
    """Lets S3's log delivery write the share bucket's access logs, and nothing else."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": LOG_DELIVERY_SID,
                "Effect": "Allow",
                "Principal": {"Service": "logging.s3.amazonaws.com"},
                "Action": ["s3:PutObject"],
                "Resource": f"arn:aws:s3:::{names.log_bucket}/{names.log_prefix}*",
                "Condition": {
                    "ArnLike": {"aws:SourceArn": [names.bucket_arn]},
                    "StringEquals": {"aws:SourceAccount": [names.host_account]},
                },
            }
        ],
    }
