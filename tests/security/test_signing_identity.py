"""Which identity signs a command's requests: attacks on the one identity rule.

The rule (``strongroom.keys.signer``): an explicit ``--as`` wins, else the AWS
credential chain's credentials decide, else the command's default. What must
hold, through the console script against a real `keys serve` process, checked
in the key service's own audit log (who it saw sign):

- the host's credentials in the shell never make a command act as the vendor
  without a line saying so; without ``--as``, the host signs and is denied what
  the host is denied;
- an explicit ``--as`` is honoured whatever the environment holds;
- an identity's access key id without its secret is not taken for that
  identity (the secret is never borrowed from the workspace for it);
- no output carries a secret access key or session token.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import STRONGROOM


class Workspace:
    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.base["AWS_CONFIG_FILE"] = str(root / "no-aws-config")
        self.base["AWS_SHARED_CREDENTIALS_FILE"] = str(root / "no-aws-credentials")

    def run(
        self, *args: str, env: dict[str, str] | None = None, expect: int = 0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STRONGROOM, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            env={**self.base, **(env or {})},
        )
        assert result.returncode == expect, f"{args}: {result.stdout}{result.stderr}"
        return result

    def exports(self, identity: str) -> dict[str, str]:
        env: dict[str, str] = json.loads(self.run("--json", "env", "--as", identity).stdout)["env"]
        return env

    def callers(self, key: str, operation: str) -> list[str]:
        events: list[dict[str, Any]] = json.loads(
            self.run("--json", "keys", "audit", "--key", key, "--as", "vendor").stdout
        )
        return [e["caller"].rsplit("/", 1)[-1] for e in events if e["operation"] == operation]


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    w = Workspace(tmp_path)
    w.run("init")
    w.run("keys", "serve", "--detach")
    try:
        yield w
    finally:
        subprocess.run([STRONGROOM, "--home", str(w.home), "keys", "stop"], capture_output=True)


@pytest.fixture
def package(ws: Workspace, tmp_path: Path) -> tuple[str, Path]:
    """A vendor key under the runbook's policy (the host may not decrypt) and a package."""
    key = ws.run("keys", "create", "--as", "vendor").stdout.strip().rsplit("/", 1)[-1]
    policy = tmp_path / "policy.json"
    policy.write_text(ws.run("keys", "policy", "template").stdout)
    ws.run("keys", "policy", "put", key, str(policy), "--as", "vendor")
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("SECRET_WEIGHTS = 42\n")
    sealed = tmp_path / "app.sealed"
    ws.run("seal", str(app), "--key", key, "-o", str(sealed), "--as", "vendor")
    return key, sealed


def test_the_host_s_credentials_never_silently_act_as_the_vendor(
    ws: Workspace, package: tuple[str, Path], tmp_path: Path
) -> None:
    key, sealed = package
    host = ws.exports("host")
    out = tmp_path / "out"
    # unseal's documented default is the vendor; the shell is the host's: the host signs
    denied = ws.run("unseal", str(sealed), "-o", str(out), env=host, expect=5)
    assert not out.exists() and "SECRET_WEIGHTS" not in denied.stdout + denied.stderr
    assert ws.callers(key, "Decrypt") == ["strongroom-host"]
    # acting as the vendor from the host's shell takes --as, and is said on stderr
    opened = ws.run("unseal", str(sealed), "-o", str(out), "--as", "vendor", env=host)
    assert opened.stderr.splitlines() == [
        "note: signing as vendor (--as vendor), not as host, whose credentials the "
        f"environment holds (AWS_ACCESS_KEY_ID={host['AWS_ACCESS_KEY_ID'][:4]}…"
        f"{host['AWS_ACCESS_KEY_ID'][-4:]})"
    ]
    assert ws.callers(key, "Decrypt") == ["strongroom-host", "strongroom-vendor"]


def test_an_explicit_as_is_honoured_whatever_the_environment_holds(
    ws: Workspace, package: tuple[str, Path], tmp_path: Path
) -> None:
    key, sealed = package
    vendor = ws.exports("vendor")
    ws.run("unseal", str(sealed), "-o", str(tmp_path / "a"), "--as", "host", env=vendor, expect=5)
    assert ws.callers(key, "Decrypt") == ["strongroom-host"]
    assert not (tmp_path / "a").exists()


def test_an_access_key_id_without_its_secret_is_nobody(
    ws: Workspace, package: tuple[str, Path], tmp_path: Path
) -> None:
    """Knowing the vendor's access key id (it is no secret) must not make a command the
    vendor: the workspace's copy of the vendor's secret is not lent to such a shell."""
    key, sealed = package
    vendor = ws.exports("vendor")
    forged = {
        "AWS_ACCESS_KEY_ID": vendor["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    }
    refused = ws.run("unseal", str(sealed), "-o", str(tmp_path / "out"), env=forged, expect=5)
    assert refused.stderr.splitlines()[0] == (
        "error: the environment's AWS access key (AWS_ACCESS_KEY_ID="
        f"{vendor['AWS_ACCESS_KEY_ID'][:4]}…{vendor['AWS_ACCESS_KEY_ID'][-4:]}) is the "
        "vendor's, but its secret key is not"
    )
    assert forged["AWS_SECRET_ACCESS_KEY"] not in refused.stderr
    assert vendor["AWS_SECRET_ACCESS_KEY"] not in refused.stderr
    assert not (tmp_path / "out").exists()
    # nothing reached the key service in the vendor's name
    assert ws.callers(key, "Decrypt") == []
    # an explicit --as still wins, and says the environment's pair is nobody's
    listed = ws.run("keys", "list", "--as", "host", env=forged)
    assert listed.stderr.startswith("note: signing as host (--as host): the environment's")
    assert listed.stderr.rstrip().endswith("belong to no identity of this workspace")


def test_no_output_carries_a_secret_or_a_session_token(
    ws: Workspace, package: tuple[str, Path], tmp_path: Path
) -> None:
    key, sealed = package
    host, vendor = ws.exports("host"), ws.exports("vendor")
    token = "FQoGZXIvYXdzEXAMPLETOKEN" * 4
    shells = [
        host,
        {**host, "AWS_SESSION_TOKEN": token},
        {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLE000000001", "AWS_SECRET_ACCESS_KEY": "s" * 40,
         "AWS_SESSION_TOKEN": token},
    ]  # fmt: skip
    secrets = [host["AWS_SECRET_ACCESS_KEY"], vendor["AWS_SECRET_ACCESS_KEY"], token, "s" * 40]
    for env in shells:
        for args in (
            ("keys", "list", "--as", "vendor"),
            ("keys", "describe", key),
            ("unseal", str(sealed), "-o", str(tmp_path / "x"), "--as", "host"),
        ):
            result = subprocess.run(
                [STRONGROOM, "--home", str(ws.home), *args],
                capture_output=True,
                text=True,
                env={**ws.base, **env},
            )
            for secret in secrets:
                assert secret not in result.stdout + result.stderr, (args, env.keys())
