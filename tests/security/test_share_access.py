"""A share's boundaries, against the real local backend through the CLI.

- After ``share revoke`` the vendor cannot publish, and nothing it tries lands.
- The vendor can never read an object or list the share, whichever CLI path
  it takes (``fetch --as vendor``, or a shell holding the vendor's keys).
- An index the vendor (or anyone who can write to the share) publishes is not
  believed over the files: an index that lies about a file's SHA-256, an
  image's measurements, a file's kind or where it goes makes ``fetch`` fail,
  and leaves nothing behind; a corrupted newest index is not skipped for an
  older one (that would roll a file back).

The lying index documents are put into the share as the vendor, with the
storage library, as the vendor could with any S3 client: the policy lets it
put any object, and ``strongroom publish`` only ever writes true ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from strongroom.storage.access import Caller
from strongroom.storage.index import IndexDocument, IndexEntry, checksum, document_name
from strongroom.storage.local import LocalStorage
from strongroom.workspace import Workspace
from tests.e2e.conftest import STRONGROOM
from tests.e2e.run_helpers import error_line
from tests.storage_samples import tiny_image, tiny_sealed


@dataclass
class Share:
    home: Path
    work: Path
    env: dict[str, str]
    bucket: str
    vendor_account: str

    def cli(
        self, *args: str, expect: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STRONGROOM, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            env=env or self.env,
            cwd=self.work,
            timeout=60,
        )
        if expect is not None:
            assert result.returncode == expect, f"{args}: {result.stdout}{result.stderr}"
        return result

    def objects(self) -> list[str]:
        shown = json.loads(self.cli("share", "show", "acme", "--json").stdout)
        return [o["name"] for o in shown["objects"]] + shown["index_documents"]

    def as_vendor(self) -> LocalStorage:
        ws = Workspace.locate(self.home)
        vendor = ws.identity("vendor")
        caller = Caller(vendor.account_id, vendor.principal_arn)
        return LocalStorage(ws.storage_dir, caller, region=ws.config.region)

    def put_index(self, raw: dict[str, Any], *, seconds_later: int = 60) -> None:
        """Put an index document as the vendor, newer than what `publish` wrote."""
        published = datetime.now(UTC) + timedelta(seconds=seconds_later)
        raw = {**raw, "published": published.isoformat().replace("+00:00", "Z")}
        content = {k: v for k, v in raw.items() if k != "checksum"}
        path = self.work / "lying-index.json"
        path.write_text(json.dumps({**content, "checksum": checksum(content)}))
        self.as_vendor().put_object(self.bucket, document_name(published), path, kms_key=None)

    def published(self) -> dict[str, Any]:
        """The index `publish` wrote, as a dict (the host's view)."""
        index_dir = self.home / "storage" / self.bucket / "objects" / "strongroom-index"
        (newest,) = sorted(index_dir.iterdir())[-1:]
        raw: dict[str, Any] = json.loads(newest.read_text())
        return raw


@pytest.fixture
def share(tmp_path: Path) -> Share:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-credentials")
    work = tmp_path / "work"
    work.mkdir()
    s = Share(tmp_path / "home", work, env, "", "")
    created = json.loads(s.cli("--json", "init").stdout)
    s.vendor_account = created["identities"]["vendor"]["account_id"]
    made = json.loads(
        s.cli("share", "create", "acme", "--vendor-account", s.vendor_account, "--json").stdout
    )
    s.bucket = made["bucket"]
    tiny_sealed(work / "app.sealed")
    tiny_image(work / "app.eif")
    s.cli("publish", "--share", "acme", "app.sealed", "app.eif")
    return s


def vendor_shell(share: Share) -> dict[str, str]:
    """The environment after ``eval "$(strongroom env --as vendor)"``."""
    exported = json.loads(share.cli("env", "--as", "vendor", "--json").stdout)["env"]
    return {**share.env, **exported}


# --- revoke ---------------------------------------------------------------------------------


def test_after_revoke_the_vendor_cannot_publish_and_nothing_lands(share: Share) -> None:
    before = share.objects()
    share.cli("share", "revoke", "acme")
    (share.work / "new.sealed").write_bytes(b"new")
    for args in (
        ("publish", "--share", "acme", "new.sealed"),
        ("publish", "--share", share.bucket, "--prefix", "x/", "new.sealed"),
        ("publish", "--share", "acme", "--as", "vendor", "app.sealed"),
    ):
        refused = share.cli(*args, expect=5)
        assert "no statement allows s3:PutObject" in error_line(refused.stderr)
    shell = vendor_shell(share)
    refused = share.cli("publish", "--share", "acme", "new.sealed", expect=5, env=shell)
    assert "EnableThirdPartyAccess" in refused.stderr
    assert share.objects() == before
    # nor can it hand itself the access back: the share is not in its account
    share.cli("share", "restore", "acme", "--as", "vendor", expect=7)
    share.cli("share", "restore", "acme", expect=7, env=vendor_shell(share))
    assert json.loads(share.cli("share", "show", "acme", "--json").stdout)["access"] == "revoked"


# --- the vendor never reads or lists -----------------------------------------------------------


@pytest.mark.parametrize("how", ["--as vendor", "the vendor's shell"])
def test_the_vendor_can_never_fetch_or_list(share: Share, how: str) -> None:
    env = vendor_shell(share) if how == "the vendor's shell" else None
    extra = ("--as", "vendor") if how == "--as vendor" else ()
    for args in (
        ("fetch", "--share", "acme", "-o", "stolen"),
        ("fetch", "--share", share.bucket, "-o", "stolen", "app.sealed"),
    ):
        refused = share.cli(*args, *extra, expect=5, env=env)
        line = error_line(refused.stderr)
        assert "denied: no statement allows s3:ListBucket" in line, line
        assert "may not read or list" in refused.stderr
    assert not (share.work / "stolen").exists()
    # the host's administration is not the vendor's either: its own account has no share
    assert json.loads(share.cli("share", "list", "--json", *extra, env=env).stdout) == []
    share.cli("share", "show", "acme", *extra, expect=7, env=env)


def test_the_vendor_cannot_read_an_object_it_knows_the_name_of(share: Share) -> None:
    import io

    from strongroom.errors import AccessDeniedError

    with pytest.raises(AccessDeniedError, match="no statement allows s3:GetObject"):
        share.as_vendor().get_object(share.bucket, "app.sealed", io.BytesIO())


# --- an index is not believed over the files -----------------------------------------------------


def lie(share: Share, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
    raw = share.published()
    entries = {o["object"]: o for o in raw["objects"]}
    change(entries)
    raw["objects"] = list(entries.values())
    share.put_index(raw)


def fetch_fails(share: Share, code: int = 4) -> str:
    refused = share.cli("fetch", "--share", "acme", "-o", "got", expect=code)
    out = share.work / "got"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], list(out.rglob("*"))
    return error_line(refused.stderr)


def test_an_index_that_lies_about_a_sha256_makes_fetch_fail(share: Share) -> None:
    def wrong(entries: dict[str, dict[str, Any]]) -> None:
        entries["app.eif"]["sha256"] = hashlib.sha256(b"another image").hexdigest()

    lie(share, wrong)
    line = fetch_fails(share)
    assert line.startswith("error: app.eif: its SHA-256 is "), line


def test_an_index_that_lies_about_an_image_s_measurements_makes_fetch_fail(share: Share) -> None:
    """Right size, right SHA-256, a PCR0 the vendor's key policy may approve: refused."""

    def wrong(entries: dict[str, dict[str, Any]]) -> None:
        entries["app.eif"]["measurements"]["PCR0"] = "ab" * 48

    lie(share, wrong)
    line = fetch_fails(share)
    assert line.startswith("error: app.eif: the image's PCR0 is "), line
    assert f"its index entry says {'ab' * 48}" in line


def test_an_index_that_calls_a_file_an_image_or_a_package_makes_fetch_fail(share: Share) -> None:
    (share.work / "notes.txt").write_text("plain text\n")
    share.cli("publish", "--share", "acme", "notes.txt")

    def wrong(entries: dict[str, dict[str, Any]]) -> None:
        entries["notes.txt"]["kind"] = "sealed"

    lie(share, wrong)
    refused = share.cli("fetch", "--share", "acme", "-o", "got", "notes.txt", expect=4)
    assert "its index entry says it is a sealed package, but" in error_line(refused.stderr)
    assert not (share.work / "got" / "notes.txt").exists()


def test_an_index_that_points_outside_the_directory_is_refused(share: Share) -> None:
    def escape(entries: dict[str, dict[str, Any]]) -> None:
        entries["app.sealed"]["object"] = "../../escaped"

    lie(share, escape)
    line = fetch_fails(share)
    assert "not a valid index document" in line and "not a valid object name" in line
    assert not (share.work.parent / "escaped").exists()


def test_a_corrupted_newest_index_is_not_skipped_for_an_older_one(share: Share) -> None:
    raw = share.published()
    raw["objects"] = [o for o in raw["objects"] if o["object"] == "app.sealed"]
    share.put_index(raw)
    index_dir = share.home / "storage" / share.bucket / "objects" / "strongroom-index"
    newest = sorted(index_dir.iterdir())[-1]
    document = json.loads(newest.read_text())
    document["objects"][0]["size"] += 1  # the checksum no longer matches
    newest.write_text(json.dumps(document))
    line = fetch_fails(share)
    assert "is corrupted: its checksum does not match its content" in line


def test_a_valid_lying_document_still_parses_as_a_document(share: Share) -> None:
    """The lies above are well-formed documents: the fetch, not the parser, catches them."""
    raw = share.published()
    raw["objects"][0]["sha256"] = "0" * 64
    content = {k: v for k, v in raw.items() if k != "checksum"}
    parsed = IndexDocument.parse(json.dumps({**content, "checksum": checksum(content)}).encode())
    assert isinstance(parsed.objects[0], IndexEntry)
