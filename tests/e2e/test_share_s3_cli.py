"""Issue 13 on the s3 backend, through the console script, against a real S3 API server (moto).

The same runbook order as ``test_share_cli.py``: the host admin creates the
share (``--profile host``), the vendor publishes with its own account's
credentials (``--profile vendor``, naming the bucket and the host key's ARN as
a vendor elsewhere would), the host fetches and verifies, revokes, restores,
deletes. moto enforces no cross-account policy (see ``tests/conftest.py``), so
after ``revoke`` the vendor's put is not refused by this server; what the
stored policy then allows is shown by ``share show``'s grants, which
Strongroom's evaluator decides (and the local backend enforces).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import AwsProfiles
from tests.e2e.conftest import STRONGROOM
from tests.e2e.run_helpers import error_line
from tests.storage_samples import tiny_image, tiny_sealed


class S3Cli:
    def __init__(self, profiles: AwsProfiles, home: Path, work: Path) -> None:
        self.profiles = profiles
        self.home = home
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(profiles.env)

    def run(
        self, profile: str, *args: str, expect: int | None = 0
    ) -> subprocess.CompletedProcess[str]:
        argv = [STRONGROOM, "--home", str(self.home), *args]
        argv += ["--backend", "s3", "--endpoint-url", self.profiles.endpoint, "--profile", profile]
        result = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, cwd=self.work, timeout=120
        )
        if expect is not None:
            assert result.returncode == expect, f"{args}: {result.stdout}{result.stderr}"
        return result

    def json(self, profile: str, *args: str) -> Any:
        return json.loads(self.run(profile, *args, "--json").stdout)


def test_the_runbook_through_an_s3_share(aws_profiles: AwsProfiles, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    host_home, vendor_home = tmp_path / "host", tmp_path / "vendor"
    for home in (host_home, vendor_home):
        subprocess.run([STRONGROOM, "--home", str(home), "init"], check=True, capture_output=True)
    host = S3Cli(aws_profiles, host_home, work)
    vendor = S3Cli(aws_profiles, vendor_home, work)  # a workspace of its own: knows no share

    # 1.1: the host admin, in its own account and the profile's region
    created = host.json("host", "share", "create", "acme", "--vendor-account", "210987654321")
    bucket = f"acme-code-bucket-{aws_profiles.host_account}-{aws_profiles.region}"
    assert (created["bucket"], created["backend"]) == (bucket, "s3")
    key_arn = created["key_arn"]
    assert key_arn and key_arn.startswith(f"arn:aws:kms:{aws_profiles.region}:")
    assert created["publish"] == (
        f"strongroom publish --backend s3 --region {aws_profiles.region} --share {bucket} "
        f"--kms-key {key_arn} app.sealed app.eif"
    )

    # 2.3.x: the vendor, from its own workspace: the bucket and key ARN it was handed
    tiny_sealed(work / "app.sealed")
    tiny_image(work / "app.eif")
    missing_key = vendor.run("vendor", "publish", "--share", bucket, "app.sealed", expect=2)
    assert "add --kms-key ARN" in missing_key.stderr
    error_line(missing_key.stderr)
    published = vendor.json(
        "vendor", "publish", "--share", bucket, "--kms-key", key_arn, "app.sealed", "app.eif"
    )
    assert [o["kind"] for o in published["objects"]] == ["sealed", "image"]

    # 4.1: the host operator fetches by vendor name (this workspace created the share)
    fetched = host.json("host", "fetch", "--share", "acme", "-o", "got")
    assert sorted(o["object"] for o in fetched["objects"]) == ["app.eif", "app.sealed"]
    for name in ("app.sealed", "app.eif"):
        assert (work / "got" / name).read_bytes() == (work / name).read_bytes()

    listed = host.run("host", "share", "list").stdout.splitlines()
    assert listed[1].split("\t") == ["acme", "210987654321", bucket, "open", "2"]

    # 6.1: revoke removes exactly the vendor's statement; the files stay
    revoked = host.run("host", "share", "revoke", "acme").stdout
    assert "removed the EnableThirdPartyAccess statement" in revoked
    assert "the 2 object(s) in the share are kept" in revoked
    shown = host.json("host", "share", "show", "acme")
    assert shown["access"] == "revoked" and shown["key_policy"] is not None
    put = next(g for g in shown["grants"] if g["who"].startswith("vendor"))
    assert put["allowed"] is False and "no statement allows s3:PutObject" in put["reason"]
    assert sorted(o["name"] for o in shown["objects"]) == ["app.eif", "app.sealed"]
    assert all(o["indexed"] for o in shown["objects"])
    assert host.run("host", "share", "restore", "acme").returncode == 0

    # delete: refused while it holds objects; --purge --yes deletes it
    kept = host.run("host", "share", "delete", "acme", expect=2)
    assert "it is not deleted" in error_line(kept.stderr)
    host.run("host", "share", "delete", "acme", "--purge", "--yes")
    assert host.json("host", "share", "list") == []
    assert not (host_home / "storage" / "s3" / f"{bucket}.json").exists()


def test_an_s3_option_names_nothing_local(aws_profiles: AwsProfiles, tmp_path: Path) -> None:
    home = tmp_path / "home"
    subprocess.run([STRONGROOM, "--home", str(home), "init"], check=True, capture_output=True)
    cli = S3Cli(aws_profiles, home, tmp_path)
    refused = cli.run("host", "share", "list", "--as", "host", expect=2)
    assert "--as host names a local workspace identity" in error_line(refused.stderr)
    unknown = cli.run("nope", "share", "list", expect=None)
    assert unknown.returncode != 0
    assert "nope" in error_line(unknown.stderr)
