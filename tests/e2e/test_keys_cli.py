"""Issue 2's "done when", through the console script and the aws CLI."""

from __future__ import annotations

import base64
import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

from tests.e2e.conftest import AWS, STRONGROOM, Cli


def exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0]
    return env


def aws(
    env: dict[str, str], *args: str, check: bool = True, service: str = "kms"
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env
    result = subprocess.run(
        [AWS, service, *args, "--output", "json"], env=full, capture_output=True, text=True
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_runbook_key_flow(cli: Cli, home: Path, tmp_path: Path) -> None:
    created = cli("init")
    assert "created workspace" in created.stdout
    again = cli("init")
    assert "nothing changed" in again.stdout
    for secret in (home / "identities").iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600

    cli("keys", "serve", "--detach")
    assert "running at" in cli("keys", "status").stdout

    vendor = exports(cli("env", "--as", "vendor").stdout)
    host = exports(cli("env", "--as", "host").stdout)
    assert vendor["AWS_ENDPOINT_URL_KMS"].startswith("http://127.0.0.1:")
    env_json = json.loads(cli("--json", "env", "--as", "host").stdout)
    assert env_json["principal_arn"].endswith(":role/strongroom-host")
    assert env_json["env"]["AWS_ACCESS_KEY_ID"] == host["AWS_ACCESS_KEY_ID"]

    key_id = json.loads(aws(vendor, "create-key").stdout)["KeyMetadata"]["KeyId"]
    dk = json.loads(
        aws(vendor, "generate-data-key", "--key-id", key_id, "--key-spec", "AES_256").stdout
    )
    blob = tmp_path / "data-key.bin"
    blob.write_bytes(base64.b64decode(dk["CiphertextBlob"]))
    plain = json.loads(aws(vendor, "decrypt", "--ciphertext-blob", f"fileb://{blob}").stdout)
    assert plain["Plaintext"] == dk["Plaintext"]

    policy = tmp_path / "policy.json"
    policy.write_text(cli("keys", "policy", "template").stdout)
    cli("keys", "policy", "put", key_id, str(policy))
    denied = aws(host, "decrypt", "--ciphertext-blob", f"fileb://{blob}", check=False)
    assert denied.returncode != 0 and "AccessDeniedException" in denied.stderr

    audit = json.loads(cli("--json", "keys", "audit", "--key", key_id).stdout)
    decrypts = [
        (e["caller"].rsplit("/", 1)[-1], e["outcome"], e.get("statement"))
        for e in audit
        if e["operation"] == "Decrypt"
    ]
    assert decrypts == [
        ("strongroom-vendor", "allowed", "Enable IAM User Permissions"),
        ("strongroom-host", "denied", "DenyDecryptUnlessApprovedImage"),
    ]
    table = cli("keys", "audit").stdout
    assert "denied" in table and "allowed" in table

    cli("keys", "stop")
    stopped = cli("keys", "status", check=False)
    assert stopped.returncode == 6 and "not running" in stopped.stdout


def test_session_credentials_with_the_aws_cli(cli: Cli, tmp_path: Path) -> None:
    """`aws sts assume-role` against `keys serve`, then `aws kms` with the session's env."""
    cli("init")
    cli("keys", "serve", "--detach")
    host = exports(cli("env", "--as", "host").stdout)
    assert host["AWS_ENDPOINT_URL_STS"] == host["AWS_ENDPOINT_URL_KMS"]
    role = json.loads(cli("--json", "env", "--as", "host").stdout)["principal_arn"]
    key = json.loads(aws(host, "create-key").stdout)["KeyMetadata"]
    dk = json.loads(
        aws(host, "generate-data-key", "--key-id", key["KeyId"], "--key-spec", "AES_256").stdout
    )
    blob = tmp_path / "data-key.bin"
    blob.write_bytes(base64.b64decode(dk["CiphertextBlob"]))
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key["Arn"]}],
        }
    )
    assumed = json.loads(
        aws(
            host,
            "assume-role",
            "--role-arn",
            role,
            "--role-session-name",
            "cli-session",
            "--policy",
            policy,
            "--duration-seconds",
            "900",
            service="sts",
        ).stdout
    )
    creds = assumed["Credentials"]
    session = host | {
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_SESSION_TOKEN": creds["SessionToken"],
    }
    who = json.loads(aws(session, "get-caller-identity", service="sts").stdout)
    assert who["Arn"] == assumed["AssumedRoleUser"]["Arn"]
    assert who["Arn"].endswith(":assumed-role/strongroom-host/cli-session")
    plain = json.loads(aws(session, "decrypt", "--ciphertext-blob", f"fileb://{blob}").stdout)
    assert plain["Plaintext"] == dk["Plaintext"]
    other = aws(session, "encrypt", "--key-id", key["KeyId"], "--plaintext", "eA==", check=False)
    assert other.returncode != 0 and "AccessDeniedException" in other.stderr
    # the host's own credentials still do what the session may not
    assert aws(host, "encrypt", "--key-id", key["KeyId"], "--plaintext", "eA==").returncode == 0
    audit = json.loads(cli("--json", "keys", "audit", "--key", key["KeyId"]).stdout)
    by_session = [
        (e["operation"], e["outcome"]) for e in audit if e.get("session") == "cli-session"
    ]
    assert by_session == [("Decrypt", "allowed"), ("Encrypt", "denied")]


def test_strongroom_keys_commands(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    cli("keys", "serve", "--detach")
    arn = cli("keys", "create", "--alias", "app", "--description", "model key").stdout.strip()
    assert arn.startswith("arn:aws:kms:")
    listed = json.loads(cli("--json", "keys", "list").stdout)
    assert listed[0]["Aliases"] == ["alias/app"]
    described = json.loads(cli("--json", "keys", "describe", "alias/app").stdout)
    assert described["Description"] == "model key"
    # host sees none of the vendor's keys in its own account
    assert json.loads(cli("--json", "keys", "list", "--as", "host").stdout) == []
    bad = tmp_path / "bad.json"
    bad.write_text('{"Statement": [{"Effect": "Perhaps"}]}')
    result = cli("keys", "policy", "put", "alias/app", str(bad), check=False)
    assert result.returncode == 3
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_errors_are_one_line_with_hint_and_exit_code(cli: Cli, home: Path) -> None:
    missing = cli("keys", "list", check=False)
    assert missing.returncode == 3
    assert "no Strongroom workspace" in missing.stderr and "strongroom init" in missing.stderr
    cli("init")
    down = cli("keys", "list", check=False)
    assert down.returncode == 6
    assert down.stderr.splitlines()[0] == "error: the local key service is not running"
    assert "strongroom keys serve" in down.stderr
    usage = cli("keys", "serve", "--listen", "nonsense", check=False)
    assert usage.returncode == 2 and "HOST:PORT" in usage.stderr
    since = cli("keys", "audit", "--since", "yesterday", check=False)
    assert since.returncode == 2
    assert "Traceback" not in since.stderr
    verbose = subprocess.run(
        [STRONGROOM, "--home", str(home), "-v", "keys", "list"], capture_output=True, text=True
    )
    assert "Traceback" in verbose.stderr


def test_version_and_help() -> None:
    version = subprocess.run([STRONGROOM, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("strongroom, version ")
    for args in ([], ["keys"], ["keys", "serve"], ["init"], ["env"], ["demo"]):
        result = subprocess.run([STRONGROOM, *args, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "Usage:" in result.stdout, args


def test_keys_create_runbook_writes_the_template_s_policy(cli: Cli) -> None:
    cli("init")
    cli("keys", "serve", "--detach")
    cli("keys", "create", "--runbook", "--alias", "gated")
    stored = json.loads(cli("keys", "policy", "get", "alias/gated").stdout)
    assert stored == json.loads(cli("keys", "policy", "template").stdout)
    sids = [s["Sid"] for s in stored["Statement"]]
    assert "DenyHostCreateGrant" in sids and "DenyHostAllButDecrypt" in sids
