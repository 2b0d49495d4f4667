"""The one identity rule (``keys/signer.py``), against botocore's real credential chain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strongroom.errors import ConfigError, CredentialError, UsageError
from strongroom.keys import aws
from strongroom.keys.audit import key_id_of
from strongroom.keys.signer import choose
from strongroom.workspace import Workspace


@pytest.fixture(autouse=True)
def clean_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setattr(aws, "_shared_session", None)  # a session reads the env once


def use(monkeypatch: pytest.MonkeyPatch, key: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


def test_nothing_in_the_environment_is_the_default_silently(workspace: Workspace) -> None:
    signer = choose(workspace, None, default="vendor")
    assert signer.identity is not None and signer.identity.name == "vendor"
    assert (signer.reason, signer.note) == ("default", None)


def test_a_workspace_key_pair_in_the_environment_signs(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = workspace.identity("host")
    use(monkeypatch, host.access_key_id, host.secret_access_key)
    signer = choose(workspace, None, default="vendor")
    assert signer.identity == host and signer.reason == "environment" and signer.note is None
    explicit = choose(workspace, "vendor", default="vendor")
    assert explicit.identity == workspace.identity("vendor")
    assert explicit.note is not None and explicit.note.startswith(
        "note: signing as vendor (--as vendor), not as host,"
    )
    assert host.secret_access_key not in explicit.note


def test_foreign_credentials_are_named_and_the_default_signs(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, "AKIAIOSFODNN7EXAMPLE", "s" * 40)
    signer = choose(workspace, None, default="vendor")
    assert signer.identity == workspace.identity("vendor") and signer.reason == "default"
    assert signer.note == (
        "note: signing as vendor (the default of this command): the environment's AWS "
        "credentials (AWS_ACCESS_KEY_ID=AKIA…MPLE) belong to no identity of this workspace"
    )


def test_an_identity_s_key_id_with_another_secret_is_refused_unless_as_decides(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, workspace.identity("vendor").access_key_id, "not the secret")
    with pytest.raises(CredentialError, match="is the vendor's, but its secret key is not"):
        choose(workspace, None, default="host")
    explicit = choose(workspace, "host", default="vendor")
    assert explicit.identity == workspace.identity("host")
    assert explicit.note is not None and "belong to no identity" in explicit.note


def test_a_stale_profile_is_a_config_error(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(ConfigError) as e:
        choose(workspace, "vendor", default="vendor")
    assert e.value.exit_code == 3 and "'nope'" in e.value.message
    assert e.value.hint.startswith("unset AWS_PROFILE")


def test_as_on_the_aws_target_is_refused(workspace: Workspace) -> None:
    config = workspace.root / "config.toml"
    config.write_text(config.read_text().replace('target = "local"', 'target = "aws"'))
    with pytest.raises(UsageError, match="names a local workspace identity"):
        choose(workspace, "host", default="vendor")
    chained = choose(workspace, None, default="vendor")
    assert chained.identity is None and chained.note is None


@pytest.mark.parametrize(
    ("name", "key_id"),
    [
        ("1234abcd-12ab-34cd-56ef-1234567890ab", "1234abcd-12ab-34cd-56ef-1234567890ab"),
        ("1234ABCD-12AB-34CD-56EF-1234567890AB", "1234abcd-12ab-34cd-56ef-1234567890ab"),
        (
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "1234abcd-12ab-34cd-56ef-1234567890ab",
        ),
        ("alias/app", None),
        ("arn:aws:kms:us-east-1:111122223333:alias/app", None),
        ("1234abcd", None),
    ],
)
def test_key_ids_are_read_from_ids_and_key_arns_only(name: str, key_id: str | None) -> None:
    assert key_id_of(name) == key_id
