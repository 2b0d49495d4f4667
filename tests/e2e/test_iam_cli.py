"""`strongroom iam host-policy` against the moto IAM server, then our evaluator."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import boto3

from strongroom.policy import PolicyDocument, RequestContext, evaluate
from tests.conftest import AwsProfiles
from tests.e2e.test_share_s3_cli import STRONGROOM

KEY = "arn:aws:kms:eu-west-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY = "arn:aws:kms:eu-west-1:210987654321:key/99999999-12ab-34cd-56ef-1234567890ab"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def strongroom(
    profiles: AwsProfiles, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | profiles.env
    argv = [STRONGROOM, "--home", str(tmp_path / "home"), "iam", "host-policy", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_apply_puts_exactly_the_printed_policy(aws_profiles: AwsProfiles, tmp_path: Path) -> None:
    iam = boto3.Session(profile_name="host").client("iam", endpoint_url=aws_profiles.endpoint)
    iam.create_role(RoleName="enclave-host", AssumeRolePolicyDocument=json.dumps(TRUST))
    printed = strongroom(aws_profiles, tmp_path, "--key", KEY)
    assert printed.returncode == 0, printed.stderr
    applied = strongroom(
        aws_profiles, tmp_path, "--key", KEY, "--apply", "enclave-host",
        "--profile", "host", "--endpoint-url", aws_profiles.endpoint,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    stored = iam.get_role_policy(RoleName="enclave-host", PolicyName="strongroom-enclave-host")
    document = stored["PolicyDocument"]
    assert (json.loads(document) if isinstance(document, str) else document) == json.loads(
        printed.stdout
    )
    policy = PolicyDocument.parse(printed.stdout, kind="session")  # an identity policy
    role = f"arn:aws:iam::{aws_profiles.host_account}:role/enclave-host"

    def allowed(action: str, key: str) -> bool:
        return evaluate(
            policy, RequestContext(action, key, role, aws_profiles.host_account)
        ).allowed

    assert allowed("kms:Decrypt", KEY)
    assert not allowed("kms:Decrypt", OTHER_KEY)
    assert not allowed("kms:Encrypt", KEY)


def test_a_bad_key_arn_or_missing_role_is_one_line(
    aws_profiles: AwsProfiles, tmp_path: Path
) -> None:
    bad = strongroom(aws_profiles, tmp_path, "--key", "alias/enclavekey")
    assert bad.returncode != 0 and "is not a KMS key ARN" in bad.stderr
    assert bad.stderr.count("\n") <= 2
    missing = strongroom(
        aws_profiles, tmp_path, "--key", KEY, "--apply", "no-such-role",
        "--profile", "host", "--endpoint-url", aws_profiles.endpoint,
    )  # fmt: skip
    assert missing.returncode != 0 and "no-such-role" in missing.stderr
