"""key_policy_accounts: the only source of the accounts a key policy names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from strongroom.errors import ConfigError
from strongroom.keys.key_policy import key_policy_accounts


class FakeWorkspace:
    def __init__(self, target: str, **config: Any) -> None:
        self.config = SimpleNamespace(target=target, **config)

    def identity(self, name: str) -> SimpleNamespace:
        account = {"vendor": "444455556666", "host": "111122223333"}[name]
        return SimpleNamespace(account_id=account, principal_arn=f"arn:aws:iam::{account}:user/x")


def test_local_reads_the_identities() -> None:
    assert key_policy_accounts(FakeWorkspace("local")) == (  # type: ignore[arg-type]
        "444455556666",
        ["arn:aws:iam::111122223333:root"],
    )


def test_aws_reads_the_configured_accounts() -> None:
    accounts = SimpleNamespace(host="210987654321", vendor="123456789012")
    ws = FakeWorkspace("aws", accounts=accounts)
    assert key_policy_accounts(ws) == (  # type: ignore[arg-type]
        "123456789012",
        ["arn:aws:iam::210987654321:root"],
    )


def test_aws_refuses_an_account_that_is_not_twelve_digits() -> None:
    ws = FakeWorkspace("aws", accounts=SimpleNamespace(host="", vendor="123456789012"))
    with pytest.raises(ConfigError, match="host account"):
        key_policy_accounts(ws)  # type: ignore[arg-type]


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
