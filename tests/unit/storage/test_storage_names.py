"""A share's names (storage/base.py) and how a command picks its backend (storage/backends.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strongroom.errors import ConfigError, InvalidInputError, StrongroomError, UsageError
from strongroom.keys import aws
from strongroom.storage.backends import choose_backend, open_storage
from strongroom.storage.base import (
    BUCKET_PATTERN,
    MAX_OBJECT_NAME,
    ShareNames,
    check_account,
    check_object_name,
    check_vendor,
)
from strongroom.storage.local import LocalStorage
from strongroom.workspace import Workspace


@pytest.fixture(autouse=True)
def clean_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS setting of the machine decides who the caller is."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setattr(aws, "_shared_session", None)


@pytest.mark.parametrize("vendor", ["acme", "a", "acme-labs", "v2", "a" * 20])
def test_vendor_identifiers_that_make_bucket_names(vendor: str) -> None:
    assert check_vendor(vendor) == vendor
    names = ShareNames(vendor, "123456789012", "eu-west-3")
    assert BUCKET_PATTERN.fullmatch(names.bucket)
    assert BUCKET_PATTERN.fullmatch(names.log_bucket)
    assert names.bucket == f"{vendor}-code-bucket-123456789012-eu-west-3"


@pytest.mark.parametrize(
    "vendor", ["", "Acme", "acme_labs", "-acme", "acme-", "a" * 21, "acme.labs", "ac me", "é"]
)
def test_vendor_identifiers_that_do_not(vendor: str) -> None:
    with pytest.raises(UsageError, match="is not a vendor identifier"):
        check_vendor(vendor)


@pytest.mark.parametrize(
    "account", ["12345678901", "1234567890123", "12345678901a", "", "١٢٣٤٥٦٧٨٩٠١٢"]
)
def test_account_ids_are_twelve_ascii_digits(account: str) -> None:
    with pytest.raises(UsageError, match="is not an AWS account id"):
        check_account(account, what="--vendor-account")
    assert check_account("123456789012") == "123456789012"


@pytest.mark.parametrize("name", ["app.sealed", "v2/app.eif", "a/b/c.txt", ".hidden", "x=1@y+z"])
def test_object_names_that_are_plain_relative_paths(name: str) -> None:
    assert check_object_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../up",
        "a/../../up",
        "a/./b",
        "a//b",
        "a/",
        "~app.sealed.0123.part",  # a local put's temporary: never an object
        "app sealed",
        "a\\b",
        "nul\x00",
        "x" * (MAX_OBJECT_NAME + 1),
    ],
)
def test_object_names_that_could_escape_or_collide_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match="is not a valid object name"):
        check_object_name(name)


# --- which backend ---------------------------------------------------------------------------


def set_storage(ws: Workspace, table: str) -> None:
    config = ws.root / "config.toml"
    config.write_text(config.read_text() + f"\n[storage]\n{table}\n")


def test_the_backend_is_the_option_then_the_config_then_the_target(workspace: Workspace) -> None:
    assert choose_backend(workspace, None) == "local"
    set_storage(workspace, 'backend = "s3"')
    assert choose_backend(workspace, None) == "s3"
    assert choose_backend(workspace, "local") == "local"
    with pytest.raises(UsageError, match="unknown storage backend 'ftp'"):
        choose_backend(workspace, "ftp")


def test_the_aws_target_defaults_to_s3(workspace: Workspace) -> None:
    config = workspace.root / "config.toml"
    config.write_text(config.read_text().replace('target = "local"', 'target = "aws"'))
    assert choose_backend(workspace, None) == "s3"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('backend = "ftp"', "backend must be one of local, s3, not 'ftp'"),
        ('backend = "local"\nbucket = "x"', "unknown key"),
        ("backend = 3", "backend must be one of local, s3"),
    ],
)
def test_a_bad_storage_table_is_refused_naming_the_file(
    workspace: Workspace, table: str, message: str
) -> None:
    set_storage(workspace, table)
    with pytest.raises(ConfigError, match=message) as refused:
        choose_backend(workspace, None)
    assert str(workspace.root / "config.toml") in refused.value.message


# --- who the caller is ------------------------------------------------------------------------


def test_local_callers_follow_the_identity_rule(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, vendor = workspace.identity("host"), workspace.identity("vendor")
    notes: list[str] = []

    def opened(default: str, identity: str | None = None) -> LocalStorage:
        storage = open_storage(
            workspace,
            backend=None,
            caller_identity="host" if default == "host" else "vendor",
            identity=identity,
            on_note=notes.append,
        )
        assert isinstance(storage, LocalStorage)
        return storage

    assert opened("host").caller.principal_arn == host.principal_arn
    assert opened("vendor").caller.principal_arn == vendor.principal_arn
    assert opened("vendor", "host").caller.account_id == host.account_id
    assert notes == []  # the environment names nobody: nothing to say
    # after `eval "$(strongroom env --as vendor)"`, the environment's identity acts
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", vendor.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", vendor.secret_access_key)
    monkeypatch.setattr(aws, "_shared_session", None)
    assert opened("host").caller.account_id == vendor.account_id
    assert notes == []
    assert opened("host", "host").caller.account_id == host.account_id
    assert notes == [
        f"note: acting as host (--as host), not as vendor, whose credentials the environment "
        f"holds (AWS_ACCESS_KEY_ID={vendor.access_key_id[:4]}…{vendor.access_key_id[-4:]})"
    ]


@pytest.mark.parametrize(
    ("option", "value"),
    [("profile", "dev"), ("region", "eu-west-1"), ("endpoint_url", "http://127.0.0.1:1")],
)
def test_s3_options_are_refused_on_local(workspace: Workspace, option: str, value: str) -> None:
    flag = "--" + option.replace("_", "-")
    with pytest.raises(UsageError, match=f"{flag} is for the s3 backend") as refused:
        open_storage(workspace, backend="local", caller_identity="host", **{option: value})
    assert "--backend s3" in refused.value.hint


def test_as_is_refused_on_s3(workspace: Workspace) -> None:
    with pytest.raises(UsageError, match="--as host names a local workspace identity"):
        open_storage(workspace, backend="s3", caller_identity="host", identity="host")


def test_s3_without_its_module_is_one_clear_error(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from strongroom.storage import backends

    real = importlib.import_module

    def missing(name: str, *args: object) -> object:
        if name == backends.S3_MODULE:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name)

    monkeypatch.setattr(backends.importlib, "import_module", missing)
    with pytest.raises(StrongroomError, match="the s3 storage backend is not part of this"):
        open_storage(workspace, backend="s3", caller_identity="vendor")
