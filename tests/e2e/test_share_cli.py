"""Issue 13 through the console script, in the runbook's order, on the local backend.

1.1 the host admin creates the vendor's share → 2.3.1 / 2.3.2 the vendor seals
an app, builds an image and publishes both → 4.1 the host operator fetches
them, verified → someone with disk access tampers with a stored object, and
the fetch refuses it → 6.1 the host admin revokes the vendor's access, the
vendor's publish is refused, the files stay → restore → delete.

One workspace for the module; every command runs with no AWS setting of the
machine (:func:`clean_env`), so only what a test sets decides who acts.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import STRONGROOM
from tests.e2e.run_helpers import error_line


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "no-aws-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@dataclass
class Env:
    home: Path
    work: Path
    env: dict[str, str]
    vendor_account: str
    host_account: str

    def cli(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STRONGROOM, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.work,
            timeout=120,
        )
        if expect is not None:
            assert result.returncode == expect, (
                f"strongroom {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    @property
    def bucket(self) -> str:
        return f"acme-code-bucket-{self.host_account}-us-east-1"

    def stored(self, name: str) -> Path:
        return self.home / "storage" / self.bucket / "objects" / name


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("share")
    work = root / "work"
    work.mkdir()
    e = Env(root / "home", work, clean_env(root), "", "")
    created = e.json("init")
    e.vendor_account = created["identities"]["vendor"]["account_id"]
    e.host_account = created["identities"]["host"]["account_id"]
    e.cli("keys", "serve", "--detach")
    try:
        yield e
    finally:
        e.cli("keys", "stop", expect=None)


def test_the_runbook_through_a_share(env: Env) -> None:
    # 1.1 — the host admin creates the vendor's share
    created = env.cli("share", "create", "acme", "--vendor-account", env.vendor_account)
    assert "created the share for vendor acme (local backend)" in created.stdout
    assert env.bucket in created.stdout and "no server-side encryption" in created.stdout
    publish_line = f"strongroom publish --share {env.bucket} app.sealed app.eif"
    assert publish_line in created.stdout
    listed = env.cli("share", "list").stdout.splitlines()
    assert listed[0].split("\t") == ["vendor", "vendor account", "bucket", "access", "objects"]
    assert listed[1].split("\t") == ["acme", env.vendor_account, env.bucket, "open", "0"]

    # 2.3.1 / 2.3.2 — the vendor seals the app, builds the image, publishes both
    app = env.work / "app"
    app.mkdir()
    (app / "main.py").write_text("print('hello from the share')\n")
    env.cli("keys", "create", "--alias", "apps")
    env.cli("seal", str(app), "--key", "alias/apps", "-o", "app.sealed")
    built = env.json("image", "build", "--key", "alias/apps", "-o", "app.eif")
    pcr0 = built["Measurements"]["PCR0"]
    published = env.json("publish", "--share", "acme", "app.sealed", "app.eif")
    assert published["share"] == env.bucket
    assert published["index"].startswith("strongroom-index/")
    by_name = {o["object"]: o for o in published["objects"]}
    assert by_name["app.sealed"]["kind"] == "sealed"
    assert by_name["app.eif"]["kind"] == "image"
    assert by_name["app.eif"]["measurements"]["PCR0"] == pcr0
    assert by_name["app.eif"]["size"] == (env.work / "app.eif").stat().st_size

    # 4.1 — the host operator fetches them, verified, byte for byte
    fetched = env.cli("fetch", "--share", "acme", "-o", "vendor-files")
    assert "each matched its index entry" in fetched.stdout
    for name in ("app.sealed", "app.eif"):
        assert (env.work / "vendor-files" / name).read_bytes() == (env.work / name).read_bytes()
    assert sorted(os.listdir(env.work / "vendor-files")) == ["app.eif", "app.sealed"]
    again = env.cli("fetch", "--share", "acme", "-o", "vendor-files", expect=2)
    assert "already exists: fetch does not replace it" in error_line(again.stderr)
    env.cli("fetch", "--share", "acme", "-o", "vendor-files", "--force", "app.sealed")

    # someone with access to the disk changes the stored image: the fetch refuses it
    stored = env.stored("app.eif")
    original = stored.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    stored.write_bytes(bytes(changed))
    refused = env.cli("fetch", "--share", "acme", "-o", "tampered", expect=4)
    line = error_line(refused.stderr)
    assert line.startswith("error: app.eif: its SHA-256 is "), line
    assert "its index entry says" in line
    assert "nothing was written to tampered" in refused.stderr
    assert not (env.work / "tampered").exists() or os.listdir(env.work / "tampered") == []
    stored.write_bytes(original)

    # 6.1 — the host admin revokes the vendor's access; the files stay
    revoked = env.cli("share", "revoke", "acme")
    assert "removed the EnableThirdPartyAccess statement" in revoked.stdout
    assert "the 2 object(s) in the share are kept" in revoked.stdout
    denied = env.cli("publish", "--share", "acme", "app.sealed", expect=5)
    line = error_line(denied.stderr)
    assert line == (
        f"error: s3:PutObject on {env.bucket}/app.sealed denied: no statement allows "
        f"s3:PutObject to arn:aws:iam::{env.vendor_account}:user/strongroom-vendor"
    )
    assert "share restore acme" in denied.stderr
    shown = env.json("share", "show", "acme")
    assert shown["access"] == "revoked"
    assert [o["name"] for o in shown["objects"]] == ["app.eif", "app.sealed"]
    assert [s["Sid"] for s in shown["bucket_policy"]["Statement"]] == [
        "DenyIncorrectEncryption",
        "DenyUnencrypted",
        "DenyNonHTTPSReqs",
    ]
    vendor_put = next(g for g in shown["grants"] if g["request"].startswith("put an object (SSE"))
    assert vendor_put["allowed"] is False
    env.cli("fetch", "--share", "acme", "-o", "after-revoke")  # the host still reads them

    env.cli("share", "restore", "acme")
    republished = env.json("publish", "--share", env.bucket, "--prefix", "v2/", "app.sealed")
    assert republished["objects"][0]["object"] == "v2/app.sealed"

    # delete: refused while it holds objects; --purge --yes deletes it
    kept = env.cli("share", "delete", "acme", expect=2)
    assert "it is not deleted" in error_line(kept.stderr)
    assert "--purge" in kept.stderr
    no_terminal = env.cli("share", "delete", "acme", "--purge", expect=2)
    assert "add --yes" in no_terminal.stderr
    deleted = env.cli("share", "delete", "acme", "--purge", "--yes")
    assert f"deleted the share {env.bucket} and its" in deleted.stdout
    assert env.json("share", "list") == []


def test_show_says_what_the_policy_grants_in_words(env: Env) -> None:
    env.cli("share", "create", "words", "--vendor-account", env.vendor_account)
    try:
        shown = env.cli("share", "show", "words").stdout
        assert "EnableThirdPartyAccess" in shown and "DenyNonHTTPSReqs" in shown
        rows = [line.split("\t") for line in shown.splitlines()]
        grants = {(r[0].split()[0], r[1]): r[2] for r in rows if len(r) == 4}
        assert grants[("vendor", "read an object")] == "denied"
        assert grants[("vendor", "list the share")] == "denied"
        assert grants[("vendor", "put an object without encryption")] == "denied"
        assert grants[("host", "read an object")] == "allowed"
        put = "put an object (SSE aws:kms, ACL bucket-owner-full-control, HTTPS)"
        assert (grants[("vendor", put)], grants[("another", put)]) == ("allowed", "denied")
    finally:
        env.cli("share", "delete", "words")


# --- bad input: one line, a hint, the documented exit code -----------------------------------


S3_ONLY = "is for the s3 backend"
BAD_INPUT = [
    (("share", "create", "ACME", "--vendor-account", "123456789012"), 2, "not a vendor identifier"),
    (("share", "create", "acme", "--vendor-account", "1234"), 2, "is not an AWS account id"),
    (("share", "show", "nope"), 7, "no share for vendor 'nope'"),
    (("share", "revoke", "nope"), 7, "no share for vendor 'nope'"),
    (("fetch", "--share", "nope", "-o", "x"), 7, "no share 'nope' in this workspace"),
    (("publish", "--share", "nope", "app.sealed"), 7, "no share 'nope' in this workspace"),
    (("share", "list", "--endpoint-url", "http://127.0.0.1:9"), 2, f"--endpoint-url {S3_ONLY}"),
    (("publish", "--share", "x", "--kms-key", "arn:k", "app.sealed"), 2, f"--kms-key {S3_ONLY}"),
    (("share", "list", "--backend", "s3", "--as", "host"), 2, "--as host names a local"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_a_code(
    env: Env, args: tuple[str, ...], code: int, message: str
) -> None:
    (env.work / "app.sealed").write_bytes(b"x")
    refused = env.cli(*args, expect=code)
    line = error_line(refused.stderr)
    assert message in line, line
    assert refused.stdout == ""


def test_the_vendor_account_must_be_another_account(env: Env) -> None:
    refused = env.cli("share", "create", "self", "--vendor-account", env.host_account, expect=2)
    assert "is the host's own account" in error_line(refused.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ("share", "list", "--backend", "s3"),
        ("share", "create", "acme", "--vendor-account", "123456789012", "--backend", "s3"),
        ("publish", "--backend", "s3", "--share", "some-bucket", "app.sealed"),
        ("fetch", "--backend", "s3", "--share", "some-bucket", "-o", "x"),
    ],
)
def test_s3_without_credentials_or_endpoint_is_one_line(env: Env, args: tuple[str, ...]) -> None:
    (env.work / "app.sealed").write_bytes(b"x")
    refused = env.cli(*args, expect=None)
    assert refused.returncode not in (0, 2) or "--kms-key" in refused.stderr, refused.stderr
    error_line(refused.stderr)  # one error line, maybe a hint, never a traceback
    assert refused.stdout == ""


def test_an_unknown_storage_backend_in_the_config_names_the_file(tmp_path: Path, env: Env) -> None:
    other = Env(tmp_path / "home", env.work, env.env, "", "")
    other.cli("init")
    config = other.home / "config.toml"
    config.write_text(config.read_text() + '\n[storage]\nbackend = "ftp"\n')
    refused = other.cli("share", "list", expect=3)
    line = error_line(refused.stderr)
    assert str(config) in line and "backend must be one of local, s3, not 'ftp'" in line


def test_print_template_prints_the_filled_in_template_and_creates_nothing(env: Env) -> None:
    shown = env.cli(
        "share", "create", "tmpl", "--vendor-account", env.vendor_account, "--print-template"
    )
    from strongroom.storage.template import filled_in

    assert shown.stdout.rstrip("\n") == filled_in("tmpl", env.vendor_account).rstrip("\n")
    assert env.vendor_account in shown.stdout
    assert all(share["vendor"] != "tmpl" for share in env.json("share", "list"))
