"""An aws workspace's config.toml as it is checked on load, and the local-only commands on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Cli


def _config(home: Path, old: str, new: str) -> None:
    config = home / "config.toml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def _refused(cli: Cli, *args: str) -> list[str]:
    result = cli(*args, check=False)
    assert result.returncode != 0
    assert "internal error" not in result.stderr
    return result.stderr.strip().splitlines()


@pytest.mark.parametrize(
    ("target", "table", "key", "says"),
    [
        ("AWS", "", "target", 'target must be "local" or "aws", not \'AWS\''),
        ("aws", '[aws]\nhost_account = "12345"\nvendor_account = "123456789012"\n',
         "host_account", "[aws] host_account must be a 12-digit AWS account id, not '12345'"),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_with_its_file_and_line(
    cli: Cli, home: Path, target: str, table: str, key: str, says: str
) -> None:
    cli("init")
    _config(home, 'target = "local"', f'target = "{target}"')
    config = home / "config.toml"
    config.write_text(config.read_text() + table)
    lines = _refused(cli, "keys", "list")
    text = config.read_text().splitlines()
    line = next(n for n, entry in enumerate(text, start=1) if entry.startswith(f"{key} ="))
    assert line > 1 or key == "target"
    assert lines[0] == f"error: cannot read {home / 'config.toml'}:{line}: {says}"
    assert lines[1].startswith("  hint: fix the file")


@pytest.mark.parametrize(
    ("command", "instead"),
    [
        (("env", "--as", "host"), "AWS_PROFILE=NAME"),
        (("keys", "serve"), "the key service is AWS KMS itself"),
        (("keys", "status"), "strongroom doctor --key KEY"),
        (("keys", "stop"), "the key service is AWS KMS itself"),
    ],
)
def test_local_only_commands_say_what_to_use_on_aws(
    cli: Cli, home: Path, command: tuple[str, ...], instead: str
) -> None:
    cli("init")
    _config(home, 'target = "local"', 'target = "aws"')
    lines = _refused(cli, *command)
    name = " ".join(command[:2]) if command[0] == "keys" else command[0]
    assert lines[0] == (
        f"error: `strongroom {name}` does not apply to the aws target: it is for the local "
        "key service"
    )
    assert instead in lines[1]
    # and the same commands still work on the local target
    _config(home, 'target = "aws"', 'target = "local"')
    if command[:2] != ("keys", "serve"):
        assert cli(*command, check=False).returncode in (0, 6)  # status: 6 when not running
