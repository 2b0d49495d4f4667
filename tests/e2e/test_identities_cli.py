"""Issue 11, "identities and credentials", through the console script and the aws CLI.

Every command runs in a clean AWS environment (:func:`shell`): no AWS_* variable
but those a test sets, and config and credentials files of the test's own, so
the machine's own AWS setup never decides a result.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import AWS, STRONGROOM

#: Every command that takes --as, as typed with --help.
AS_COMMANDS = [
    ("keys", "create"),
    ("keys", "list"),
    ("keys", "describe"),
    ("keys", "policy", "get"),
    ("keys", "policy", "put"),
    ("keys", "audit"),
    ("seal",),
    ("unseal",),
    ("image", "build"),
    ("image", "approve"),
    ("image", "revoke"),
    ("image", "approved"),
]


@dataclass
class Shell:
    """A workspace, and a shell environment with no AWS settings but the test's own."""

    home: Path
    base: dict[str, str]

    def env(self, **aws: str) -> dict[str, str]:
        return {**self.base, **aws}

    def run(
        self, *args: str, env: dict[str, str] | None = None, expect: int | None = 0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STRONGROOM, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            env=self.base if env is None else env,
        )
        if expect is not None:
            assert result.returncode == expect, f"{args}: {result.stdout}{result.stderr}"
        return result

    def exports(self, identity: str) -> dict[str, str]:
        """The environment after ``eval "$(strongroom env --as IDENTITY)"``, by bash itself."""
        script = f'eval "$({shlex.quote(STRONGROOM)} --home {shlex.quote(str(self.home))} '
        script += f'env --as {identity})" && env -0'
        return _bash_env(script, self.base)

    def audit(self, key: str) -> list[dict[str, object]]:
        events: list[dict[str, object]] = json.loads(
            self.run("--json", "keys", "audit", "--key", key).stdout
        )
        return events


def _bash_env(script: str, env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(["bash", "-c", script], capture_output=True, env=env, check=True)
    pairs = (item.partition("=") for item in done.stdout.decode().split("\0") if item)
    return {name: value for name, _, value in pairs}


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "aws" / "config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "aws" / "credentials")
    return env


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(tmp_path / "home", clean_env(tmp_path))
    sh.run("init")
    sh.run("keys", "serve", "--detach")
    try:
        yield sh
    finally:
        sh.run("keys", "stop", expect=None)


def caller_of(events: list[dict[str, object]], operation: str) -> list[str]:
    return [str(e["caller"]).rsplit("/", 1)[-1] for e in events if e["operation"] == operation]


def sealed_app(shell: Shell, tmp_path: Path, alias: str = "app") -> Path:
    """A vendor key under the runbook's policy (the host may not decrypt), and a package."""
    shell.run("keys", "create", "--alias", alias, "--as", "vendor")
    policy = tmp_path / "policy.json"
    policy.write_text(shell.run("keys", "policy", "template").stdout)
    shell.run("keys", "policy", "put", f"alias/{alias}", str(policy), "--as", "vendor")
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("print('hi')\n")
    package = tmp_path / "app.sealed"
    shell.run("seal", str(app), "--key", f"alias/{alias}", "-o", str(package), "--as", "vendor")
    return package


# --- 1. one identity rule ---------------------------------------------------------------


def test_the_environment_decides_as_it_does_for_the_aws_cli(shell: Shell, tmp_path: Path) -> None:
    """After `env --as host`, strongroom acts as the host, as the aws CLI in that shell does."""
    package = sealed_app(shell, tmp_path)
    host = shell.exports("host")
    role = json.loads(shell.run("--json", "env", "--as", "host").stdout)["principal_arn"]
    who = subprocess.run(
        [AWS, "sts", "get-caller-identity", "--output", "json"],
        env=host,
        capture_output=True,
        text=True,
    )
    assert who.returncode == 0 and json.loads(who.stdout)["Arn"] == role

    denied = shell.run("unseal", str(package), "-o", str(tmp_path / "out"), env=host, expect=5)
    assert denied.stderr.startswith("error: ") and f"User: {role} is not authorized" in (
        denied.stderr
    )
    assert "note:" not in denied.stderr  # the environment's identity signed: nothing to say
    assert not (tmp_path / "out").exists()
    # the host's own account has none of the vendor's keys; the vendor's has one
    assert json.loads(shell.run("--json", "keys", "list", env=host).stdout) == []
    assert _key_count(shell) == 1
    key_id = json.loads(shell.run("--json", "keys", "describe", "alias/app").stdout)["KeyId"]
    assert caller_of(shell.audit(key_id), "Decrypt") == ["strongroom-host"]


def test_an_explicit_as_wins_and_says_so(shell: Shell, tmp_path: Path) -> None:
    package = sealed_app(shell, tmp_path)
    host = shell.exports("host")
    opened = shell.run(
        "unseal", str(package), "-o", str(tmp_path / "out"), "--as", "vendor", env=host
    )
    assert (tmp_path / "out" / "main.py").read_text() == "print('hi')\n"
    notes = opened.stderr.splitlines()
    assert len(notes) == 1, opened.stderr
    assert notes[0].startswith("note: signing as vendor (--as vendor), not as host")
    assert host["AWS_SECRET_ACCESS_KEY"] not in opened.stderr + opened.stdout
    # the same --as as the environment's identity: nothing to say
    same = shell.run("keys", "list", "--as", "host", env=host)
    assert same.stderr == ""
    key_id = json.loads(shell.run("--json", "keys", "describe", "alias/app").stdout)["KeyId"]
    assert caller_of(shell.audit(key_id), "Decrypt") == ["strongroom-vendor"]


def test_no_credentials_means_the_documented_default(shell: Shell, tmp_path: Path) -> None:
    made = shell.run("keys", "create", "--alias", "mine")
    assert made.stderr == ""  # the environment names nobody: the default, silently
    vendor_account = json.loads(shell.run("--json", "env", "--as", "vendor").stdout)["account_id"]
    assert f":{vendor_account}:key/" in made.stdout


def test_credentials_of_nobody_in_the_workspace_are_named(shell: Shell, tmp_path: Path) -> None:
    foreign = shell.env(AWS_ACCESS_KEY_ID="AKIAEXAMPLEFOREIGN01", AWS_SECRET_ACCESS_KEY="x" * 40)
    listed = shell.run("--json", "keys", "list", env=foreign)
    assert json.loads(listed.stdout) == []
    (note,) = listed.stderr.splitlines()
    assert note == (
        "note: signing as vendor (the default of this command): the environment's AWS "
        "credentials (AWS_ACCESS_KEY_ID=AKIA…GN01) belong to no identity of this workspace"
    )
    assert "x" * 40 not in listed.stderr


def test_a_profile_in_the_credentials_file_is_followed(shell: Shell, tmp_path: Path) -> None:
    """AWS_PROFILE and the shared credentials file, as botocore resolves them."""
    host = json.loads(shell.run("--json", "env", "--as", "host").stdout)
    credentials = Path(shell.base["AWS_SHARED_CREDENTIALS_FILE"])
    credentials.parent.mkdir(parents=True)
    credentials.write_text(
        "[strongroom-host]\n"
        f"aws_access_key_id = {host['env']['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {host['env']['AWS_SECRET_ACCESS_KEY']}\n"
    )
    made = shell.run("keys", "create", env=shell.env(AWS_PROFILE="strongroom-host"))
    assert made.stderr == ""
    assert f":{host['account_id']}:key/" in made.stdout
    explicit = shell.run(
        "keys", "list", "--as", "vendor", env=shell.env(AWS_PROFILE="strongroom-host")
    )
    assert explicit.stderr.startswith("note: signing as vendor (--as vendor), not as host")
    assert "profile strongroom-host" in explicit.stderr


def test_help_shows_the_rule_as_the_default(shell: Shell) -> None:
    for words in AS_COMMANDS:
        shown = " ".join(shell.run(*words, "--help").stdout.split())
        assert "[default: the identity whose keys the AWS credential chain holds" in shown, words
        assert "else vendor]" in shown, words


# --- 2. env --unset ----------------------------------------------------------------------


def test_env_unset_undoes_env(shell: Shell) -> None:
    before = _bash_env("env -0", shell.base)
    exported = shell.exports("vendor")
    added = set(exported) - set(before)
    assert added == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL_KMS",
        "AWS_ENDPOINT_URL_STS",
    }
    strongroom = f"{shlex.quote(STRONGROOM)} --home {shlex.quote(str(shell.home))}"
    undone = _bash_env(
        f'eval "$({strongroom} env --as host)" && eval "$({strongroom} env --unset)" && env -0',
        shell.base,
    )
    assert _aws(undone) == _aws(before)
    unset = shell.run("env", "--unset")
    assert unset.stdout.startswith("unset ") and unset.stdout.endswith("\n")
    assert set(unset.stdout.split()[1:]) == added
    assert json.loads(shell.run("--json", "env", "--unset").stdout) == {
        "unset": unset.stdout.split()[1:]
    }
    assert "strongroom env --unset" in shell.run("env", "--help").stdout
    for args in (["env"], ["env", "--unset", "--as", "host"]):
        usage = shell.run(*args, expect=2)
        assert usage.stderr.startswith("error: give either --as host|vendor or --unset")


def _aws(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith("AWS_")}


def test_env_unset_needs_no_workspace(tmp_path: Path) -> None:
    result = subprocess.run(
        [STRONGROOM, "--home", str(tmp_path / "none"), "env", "--unset"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
    )
    assert result.returncode == 0 and result.stdout.startswith("unset AWS_ACCESS_KEY_ID ")


# --- 3. a stale AWS_PROFILE ----------------------------------------------------------------


def test_a_stale_aws_profile_is_one_line_with_what_to_do(shell: Shell, tmp_path: Path) -> None:
    package = sealed_app(shell, tmp_path)
    stale = shell.env(AWS_PROFILE="nope")
    commands = [
        ("keys", "list"),
        ("keys", "create", "--as", "vendor"),
        ("keys", "audit", "--key", "alias/app"),
        ("unseal", str(package), "-o", str(tmp_path / "out")),
        ("image", "approved", "--key", "alias/app"),
    ]
    for args in commands:
        failed = shell.run(*args, env=stale, expect=3)
        assert failed.stderr.splitlines() == [
            "error: AWS_PROFILE names the AWS profile 'nope', which no AWS config or "
            "credentials file defines",
            "  hint: unset AWS_PROFILE, or create the profile (`aws configure --profile nope`)",
        ], args
    other = shell.run("keys", "list", env=shell.env(AWS_DEFAULT_PROFILE="gone"), expect=3)
    assert "AWS_DEFAULT_PROFILE names the AWS profile 'gone'" in other.stderr
    # `env` builds no botocore session, and its exports clear AWS_PROFILE
    assert (
        "unset AWS_SESSION_TOKEN AWS_PROFILE" in shell.run("env", "--as", "host", env=stale).stdout
    )


# --- 4. the key service where it really runs (no enclave; see test_run_key_service_address) --


def test_env_and_proxy_use_where_the_service_runs(shell: Shell, tmp_path: Path) -> None:
    configured = re.search(r'listen = "([^"]+)"', (shell.home / "config.toml").read_text())
    assert configured is not None
    shell.run("keys", "stop")
    port = _free_port()
    shell.run("keys", "serve", "--detach", "--listen", f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" != configured.group(1)
    exports = json.loads(shell.run("--json", "env", "--as", "vendor").stdout)["env"]
    assert exports["AWS_ENDPOINT_URL_KMS"] == f"http://127.0.0.1:{port}"
    assert exports["AWS_ENDPOINT_URL_STS"] == f"http://127.0.0.1:{port}"
    try:
        started = json.loads(shell.run("--json", "proxy", "start").stdout)
        assert started["allowlist"] == [f"127.0.0.1:{port}"]
    finally:
        shell.run("proxy", "stop", expect=None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- 5. keys create --alias, keys audit --key alias/X ---------------------------------------


def _key_count(shell: Shell, identity: str = "vendor") -> int:
    return len(json.loads(shell.run("--json", "keys", "list", "--as", identity).stdout))


def test_a_taken_alias_leaves_no_orphan_key(shell: Shell) -> None:
    arn = shell.run("keys", "create", "--alias", "app").stdout.strip()
    taken = shell.run("keys", "create", "--alias", "alias/app", expect=2)
    assert taken.stderr.splitlines() == [
        f"error: alias alias/app already exists (it names key {arn.rsplit('/', 1)[-1]})",
        "  hint: choose another --alias; no key was created",
    ]
    bad = shell.run("keys", "create", "--alias", "alias/not ok", expect=3)
    assert bad.stderr.startswith("error: invalid alias name 'alias/not ok'")
    reserved = shell.run("keys", "create", "--alias", "alias/aws/kms", expect=3)
    assert "not starting with 'alias/aws/'" in reserved.stderr
    assert _key_count(shell) == 1


def test_an_alias_that_still_fails_schedules_the_new_key_for_deletion(
    shell: Shell, tmp_path: Path
) -> None:
    """A key policy that denies kms:CreateAlias: the alias fails after the key exists."""
    vendor = json.loads(shell.run("--json", "env", "--as", "vendor").stdout)["account_id"]
    root = f"arn:aws:iam::{vendor}:root"
    policy = tmp_path / "no-alias.json"
    policy.write_text(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*",
                     "Resource": "*"},
                    {"Sid": "NoAliases", "Effect": "Deny", "Principal": {"AWS": root},
                     "Action": "kms:CreateAlias", "Resource": "*"},
                ],
            }
        )
    )  # fmt: skip
    failed = shell.run("keys", "create", "--alias", "app", "--policy", str(policy), expect=5)
    (line, *_rest) = failed.stderr.splitlines()
    match = re.fullmatch(
        r"error: cannot create alias/app: .*; the new key (\S+) is scheduled for deletion "
        r"in 7 days",
        line,
    )
    assert match, failed.stderr
    (key,) = json.loads(shell.run("--json", "keys", "list").stdout)
    assert key["KeyId"] == match.group(1) and key["KeyState"] == "PendingDeletion"
    assert key["Aliases"] == []


def test_audit_finds_a_key_s_events_by_alias_and_arn(shell: Shell) -> None:
    arn = shell.run("keys", "create", "--alias", "app").stdout.strip()
    key_id = arn.rsplit("/", 1)[-1]
    shell.run("keys", "describe", "alias/app")
    shell.run("keys", "policy", "get", "alias/app")
    by_id = shell.audit(key_id)
    assert len(by_id) >= 3 and {e["operation"] for e in by_id} >= {"CreateKey", "DescribeKey"}
    shell.run("keys", "create", "--alias", "other")  # its events must not be found
    alias_arn = arn.replace(f"key/{key_id}", "alias/app")
    for name in ("alias/app", arn, alias_arn, key_id.upper()):
        found = shell.audit(name)
        # (resolving an alias is itself a DescribeKey of the key, logged as such)
        assert found[: len(by_id)] == by_id, name
        assert {str(e["key"]).rsplit("/", 1)[-1] for e in found} == {key_id}, name
    unknown = shell.run("keys", "audit", "--key", "alias/nope", expect=7)
    assert unknown.stderr.splitlines()[0] == (
        "error: no key is named alias/nope in this identity's account"
    )
    # the host's account has no alias/app
    shell.run("keys", "audit", "--key", "alias/app", "--as", "host", expect=7)


# --- 6. keys status --------------------------------------------------------------------------


def test_keys_status_exits_6_when_the_service_is_down(shell: Shell) -> None:
    up = shell.run("keys", "status")
    assert up.stdout.startswith("key service: running at http://127.0.0.1:")
    shell.run("keys", "stop")
    down = shell.run("keys", "status", expect=6)
    assert down.stdout == (
        "key service: not running (start it with `strongroom keys serve --detach`)\n"
    )
    assert json.loads(shell.run("--json", "keys", "status", expect=6).stdout) == {"running": False}
