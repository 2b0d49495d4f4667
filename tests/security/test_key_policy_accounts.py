"""Attack: a real KMS key policy that trusts an account nobody checked.

On the aws target the workspace's identities are invented numbers (made by
``init`` for the local key service). If ``keys create`` or ``image approve``
wrote one of them into a real key policy, whoever owns that AWS account
could be granted Decrypt on the vendor's key. Against a real KMS API server
(moto, a separate process), with the vendor's credentials:

- an aws workspace that names no real accounts gets no policy written: both
  commands refuse, the key's policy stays as it was, no key is made;
- once ``[aws] host_account`` / ``vendor_account`` name the real accounts,
  every account number in the stored policy is one of those two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import boto3

from tests.conftest import AwsProfiles
from tests.e2e.conftest import STRONGROOM

PCR0 = "ab" * 48


class AwsWorkspace:
    def __init__(self, profiles: AwsProfiles, tmp_path: Path) -> None:
        self.profiles = profiles
        self.home = tmp_path / "home"
        subprocess.run(
            [STRONGROOM, "--home", str(self.home), "init"], check=True, capture_output=True
        )
        config = self.home / "config.toml"
        config.write_text(
            config.read_text()
            .replace('target = "local"', 'target = "aws"')
            .replace('region = "us-east-1"', f'region = "{profiles.region}"')
        )
        self.invented = set(re.findall(r'account_id = "(\d{12})"', config.read_text()))
        self.kms = boto3.Session(profile_name="vendor").client(
            "kms", endpoint_url=profiles.endpoint
        )

    def name_accounts(self) -> None:
        config = self.home / "config.toml"
        config.write_text(
            config.read_text() + f'\n[aws]\nhost_account = "{self.profiles.host_account}"\n'
            f'vendor_account = "{self.profiles.vendor_account}"\n'
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STRONGROOM"))}
        env |= self.profiles.env | {
            "AWS_PROFILE": "vendor",
            "AWS_ENDPOINT_URL": self.profiles.endpoint,
        }
        return subprocess.run(
            [STRONGROOM, "--home", str(self.home), *args],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    def key_ids(self) -> set[str]:
        return {k["KeyId"] for k in self.kms.list_keys()["Keys"]}


def test_no_policy_names_an_invented_account(aws_profiles: AwsProfiles, tmp_path: Path) -> None:
    ws = AwsWorkspace(aws_profiles, tmp_path)
    before = ws.key_ids()

    made = ws.cli("keys", "create", "--description", "vendor key")
    assert made.returncode != 0
    assert "names no host and vendor accounts" in made.stderr
    assert len(made.stderr.strip().splitlines()) == 2  # error + hint
    assert ws.key_ids() == before  # nothing half-made

    key = ws.kms.create_key(Description="made by the vendor by hand")["KeyMetadata"]["KeyId"]
    original = ws.kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    approved = ws.cli("image", "approve", "--pcr0", PCR0, "--key", key)
    assert approved.returncode != 0
    assert "names no host and vendor accounts" in approved.stderr
    assert ws.kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == original

    # the legitimate use: the real accounts named, the runbook's key and its approval
    ws.name_accounts()
    made = ws.cli("--json", "keys", "create", "--description", "vendor key")
    assert made.returncode == 0, made.stderr
    new_key = json.loads(made.stdout)["KeyId"]
    assert ws.cli("image", "approve", "--pcr0", PCR0, "--key", new_key).returncode == 0
    policy = ws.kms.get_key_policy(KeyId=new_key, PolicyName="default")["Policy"]
    named = set(re.findall(r"arn:aws:iam::(\d{12}):", policy))
    assert named == {aws_profiles.host_account, aws_profiles.vendor_account}
    assert not named & ws.invented
    sids = {s.get("Sid") for s in json.loads(policy)["Statement"]}
    assert {"DenyHostReEncrypt", "DenyHostCreateGrant", "DenyHostEncrypt"} <= sids
    assert PCR0 in policy
