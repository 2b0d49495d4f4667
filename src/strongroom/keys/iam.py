"""The enclave host's instance-role policy: the host side of the runbook key.

The key policy trusts the host *account* (``arn:aws:iam::HOST:root``); that
trust is worth nothing until the host's own IAM lets a role use it, so this
inline policy is what actually names who on the host may decrypt. Least
privilege: kms:Decrypt on the one key ARN (the key policy still demands an
approved attestation), and optionally sts:AssumeRole on the run role.
"""

from __future__ import annotations

import json
import re

from strongroom.errors import UsageError

POLICY_NAME = "strongroom-enclave-host"
_KEY_ARN = re.compile(
    r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-fA-F-]{36}|arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/mrk-[0-9a-f]{32}"
)
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


def host_policy(key_arn: str, run_role_arn: str | None = None) -> str:
    """The inline policy JSON for the enclave host's instance role."""
    if not _KEY_ARN.fullmatch(key_arn):
        raise UsageError(
            f"{key_arn!r} is not a KMS key ARN",
            hint="give arn:aws:kms:REGION:ACCOUNT:key/KEY_ID (an alias cannot be granted in IAM)",
        )
    statements: list[dict[str, object]] = [
        {"Sid": "DecryptWithTheRunbookKey", "Effect": "Allow", "Action": "kms:Decrypt",
         "Resource": key_arn},
    ]  # fmt: skip
    if run_role_arn is not None:
        if not _ROLE_ARN.fullmatch(run_role_arn):
            raise UsageError(f"{run_role_arn!r} is not an IAM role ARN")
        # `strongroom run` on aws assumes this role ([aws] run_role_arn) for the
        # scoped session credentials it hands a run; the instance role needs it.
        statements.append(
            {"Sid": "AssumeTheRunRole", "Effect": "Allow", "Action": "sts:AssumeRole",
             "Resource": run_role_arn}
        )  # fmt: skip
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=2)
