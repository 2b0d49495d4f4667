"""key_policy_accounts: the only source of the accounts a key policy names."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.errors import ConfigError
from strongroom.keys.key_policy import key_policy_accounts
from strongroom.workspace import Workspace


def _workspace(tmp_path: Path, aws: str | None) -> Workspace:
    """A real workspace; ``aws``: switch it to the aws target with this ``[aws]`` table."""
    ws = Workspace.create(tmp_path / "ws")
    if aws is not None:
        config = ws.root / "config.toml"
        text = config.read_text().replace('target = "local"', 'target = "aws"')
        config.write_text(text + f"\n[aws]\n{aws}\n")
    return ws


def test_local_reads_the_identities(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, None)
    host = ws.identity("host").account_id
    assert key_policy_accounts(ws) == (
        ws.identity("vendor").account_id,
        [f"arn:aws:iam::{host}:root"],
    )


def test_aws_reads_the_configured_accounts(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, 'host_account = "210987654321"\nvendor_account = "123456789012"')
    assert key_policy_accounts(ws) == ("123456789012", ["arn:aws:iam::210987654321:root"])


def test_aws_without_accounts_writes_no_policy(tmp_path: Path) -> None:
    """On aws the workspace's identities are invented: they must never reach a key policy."""
    ws = _workspace(tmp_path, 'run_role_arn = "arn:aws:iam::210987654321:role/run"')
    with pytest.raises(ConfigError, match="names no host and vendor accounts"):
        key_policy_accounts(ws)


@pytest.mark.parametrize(
    "table",
    ['host_account = "12345"\nvendor_account = "123456789012"', 'host_account = "210987654321"'],
)
def test_aws_refuses_an_account_that_is_not_twelve_digits(tmp_path: Path, table: str) -> None:
    ws = _workspace(tmp_path, table)
    with pytest.raises(ConfigError, match="12-digit AWS account id"):
        key_policy_accounts(ws)


def test_the_host_policy_names_the_run_role_only_when_asked() -> None:
    import json

    from strongroom.errors import UsageError
    from strongroom.keys.iam import host_policy

    key = "arn:aws:kms:eu-west-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert [s["Action"] for s in json.loads(host_policy(key))["Statement"]] == ["kms:Decrypt"]
    role = "arn:aws:iam::123456789012:role/strongroom-run"
    with_role = json.loads(host_policy(key, role))["Statement"]
    assert with_role[1] == {
        "Sid": "AssumeTheRunRole",
        "Effect": "Allow",
        "Action": "sts:AssumeRole",
        "Resource": role,
    }
    with pytest.raises(UsageError, match="not a KMS key ARN"):
        host_policy("arn:aws:kms:eu-west-1:210987654321:alias/enclavekey")
