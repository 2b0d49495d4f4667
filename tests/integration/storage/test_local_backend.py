"""The local storage backend with real files: every request decided by the share's policy.

Three callers of one workspace's storage: the host (owns the shares), the
vendor (may only put), and a third account (may do nothing). Publish and
fetch run on top of it, through :mod:`strongroom.storage.transfer`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from tests.storage_samples import tiny_image, tiny_sealed

from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PathEscapeError,
    TamperedError,
    UsageError,
)
from strongroom.storage import local, policies
from strongroom.storage.access import Caller
from strongroom.storage.base import INDEX_PREFIX
from strongroom.storage.local import LocalStorage
from strongroom.storage.transfer import fetch, plan_fetch, plan_publish, publish, read_index
from strongroom.workspace import Workspace

OTHER = Caller("333333333333", "arn:aws:iam::333333333333:user/someone")


class Parties:
    def __init__(self, ws: Workspace) -> None:
        host, vendor = ws.identity("host"), ws.identity("vendor")
        region = ws.config.region
        self.ws = ws
        self.host = LocalStorage(
            ws.storage_dir, Caller(host.account_id, host.principal_arn), region=region
        )
        self.vendor = LocalStorage(
            ws.storage_dir, Caller(vendor.account_id, vendor.principal_arn), region=region
        )
        self.other = LocalStorage(ws.storage_dir, OTHER, region=region)
        self.vendor_account = vendor.account_id
        self.names = self.host.names("acme")

    @property
    def bucket(self) -> str:
        return self.names.bucket

    @property
    def objects_dir(self) -> Path:
        return self.ws.storage_dir / self.bucket / local.OBJECTS_DIR

    def create(self) -> None:
        self.host.create_share(self.names, self.vendor_account)

    def get(self, storage: LocalStorage, name: str) -> bytes:
        sink = io.BytesIO()
        storage.get_object(self.bucket, name, sink)
        return sink.getvalue()


@pytest.fixture
def parties(workspace: Workspace) -> Parties:
    return Parties(workspace)


@pytest.fixture
def share(parties: Parties) -> Parties:
    parties.create()
    return parties


def a_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the host admin ---------------------------------------------------------------------


def test_create_list_show_revoke_restore_delete(parties: Parties, tmp_path: Path) -> None:
    assert parties.host.list_shares() == []
    created = parties.host.create_share(parties.names, parties.vendor_account)
    assert created.bucket == f"acme-code-bucket-{parties.host.caller_account()}-us-east-1"
    assert (created.access, created.key_arn, created.backend) == ("open", None, "local")
    assert Path(created.location) == parties.ws.storage_dir / created.bucket
    record = (parties.ws.storage_dir / created.bucket / "share.json").stat()
    assert record.st_mode & 0o777 == 0o600
    assert parties.host.list_shares() == [created]

    details = parties.host.show_share("acme")
    assert details.bucket_policy == policies.bucket_policy(parties.names, parties.vendor_account)
    assert details.key_policy is None and details.objects == ()
    assert "server-side encryption" in details.settings

    parties.vendor.put_object(
        parties.bucket, "app.sealed", a_file(tmp_path, "a", b"sealed"), kms_key=None
    )
    revoked = parties.host.revoke_share("acme")
    assert revoked.access == "revoked"
    after = parties.host.show_share("acme")
    # exactly the vendor's statement is gone; nothing else changed, no object was touched
    assert after.bucket_policy == policies.without_vendor_access(details.bucket_policy)
    assert [s["Sid"] for s in after.bucket_policy["Statement"]] == [
        policies.DENY_INCORRECT_ENCRYPTION_SID,
        policies.DENY_UNENCRYPTED_SID,
        policies.DENY_PLAIN_HTTP_SID,
    ]
    assert [o.name for o in after.objects] == ["app.sealed"]
    assert parties.get(parties.host, "app.sealed") == b"sealed"

    assert parties.host.restore_share("acme").access == "open"
    assert parties.host.show_share("acme").bucket_policy == details.bucket_policy

    with pytest.raises(UsageError, match="holds 1 object"):
        parties.host.delete_share("acme", purge=False)
    assert parties.host.list_shares() != []
    parties.host.delete_share("acme", purge=True)
    assert parties.host.list_shares() == []
    assert not (parties.ws.storage_dir / parties.bucket).exists()
    assert list(parties.ws.storage_dir.iterdir()) == []  # no half-deleted share left


def test_an_empty_share_deletes_without_purge(share: Parties) -> None:
    share.host.delete_share("acme", purge=False)
    with pytest.raises(NotFoundError, match="no share for vendor 'acme'"):
        share.host.show_share("acme")


def test_a_share_is_created_once(share: Parties) -> None:
    with pytest.raises(AlreadyExistsError, match="already exists"):
        share.create()


def test_nobody_creates_a_share_in_another_account(parties: Parties) -> None:
    with pytest.raises(AccessDeniedError, match="would belong to account"):
        parties.vendor.create_share(parties.names, parties.vendor_account)


def test_the_vendor_cannot_see_or_administer_the_host_s_shares(share: Parties) -> None:
    assert share.vendor.list_shares() == []  # ListBuckets: one's own buckets
    for admin in (share.vendor.show_share, share.vendor.revoke_share, share.vendor.restore_share):
        with pytest.raises(NotFoundError, match=f"in account {share.vendor_account}"):
            admin("acme")
    with pytest.raises(NotFoundError):
        share.vendor.delete_share("acme", purge=True)
    assert share.host.show_share("acme").share.access == "open"


# --- objects: who may do what -------------------------------------------------------------


def test_the_vendor_puts_then_is_refused_after_revoke(share: Parties, tmp_path: Path) -> None:
    source = a_file(tmp_path, "app.sealed", b"v1")
    share.vendor.put_object(share.bucket, "app.sealed", source, kms_key=None)
    assert share.get(share.host, "app.sealed") == b"v1"
    share.host.revoke_share("acme")
    with pytest.raises(AccessDeniedError) as refused:
        share.vendor.put_object(
            share.bucket, "app.sealed", a_file(tmp_path, "b", b"v2"), kms_key=None
        )
    assert refused.value.message == (
        f"s3:PutObject on {share.bucket}/app.sealed denied: no statement allows s3:PutObject "
        f"to {share.vendor.caller.principal_arn}"
    )
    assert policies.VENDOR_ACCESS_SID in refused.value.hint
    assert "share restore acme" in refused.value.hint
    assert refused.value.exit_code == 5
    assert share.get(share.host, "app.sealed") == b"v1"  # kept, unchanged
    share.host.restore_share("acme")
    share.vendor.put_object(share.bucket, "app.sealed", a_file(tmp_path, "c", b"v3"), kms_key=None)
    assert share.get(share.host, "app.sealed") == b"v3"


def test_the_vendor_never_reads_or_lists(share: Parties, tmp_path: Path) -> None:
    share.vendor.put_object(share.bucket, "app.sealed", a_file(tmp_path, "a", b"x"), kms_key=None)
    with pytest.raises(AccessDeniedError, match="no statement allows s3:GetObject") as read:
        share.get(share.vendor, "app.sealed")
    assert "may not read or list" in read.value.hint
    with pytest.raises(AccessDeniedError, match="no statement allows s3:ListBucket"):
        share.vendor.list_objects(share.bucket)
    with pytest.raises(AccessDeniedError, match="no statement allows s3:ListBucket"):
        read_index(share.vendor, share.bucket)


def test_a_third_account_may_do_nothing(share: Parties, tmp_path: Path) -> None:
    source = a_file(tmp_path, "a", b"x")
    with pytest.raises(AccessDeniedError, match="no statement allows s3:PutObject"):
        share.other.put_object(share.bucket, "evil.sealed", source, kms_key=None)
    share.vendor.put_object(share.bucket, "app.sealed", source, kms_key=None)
    with pytest.raises(AccessDeniedError, match="no statement allows s3:GetObject"):
        share.get(share.other, "app.sealed")
    with pytest.raises(AccessDeniedError, match="no statement allows s3:ListBucket"):
        share.other.list_objects(share.bucket)
    assert share.other.list_shares() == []


def test_the_policy_as_stored_decides(share: Parties, tmp_path: Path) -> None:
    """share.json edited by hand to deny reads to everyone: the host is refused too."""
    import json

    path = share.ws.storage_dir / share.bucket / "share.json"
    record = json.loads(path.read_text())
    record["bucket_policy"]["Statement"].append(
        {
            "Sid": "NobodyReads",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{share.bucket}/*",
        }
    )
    path.write_text(json.dumps(record))
    share.vendor.put_object(share.bucket, "app.sealed", a_file(tmp_path, "a", b"x"), kms_key=None)
    with pytest.raises(AccessDeniedError, match='explicit deny by statement "NobodyReads"'):
        share.get(share.host, "app.sealed")


def test_no_kms_key_locally(share: Parties, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no server-side encryption"):
        share.vendor.put_object(
            share.bucket, "a", a_file(tmp_path, "a", b"x"), kms_key="arn:aws:kms:x"
        )


# --- atomic puts ----------------------------------------------------------------------------


def test_an_interrupted_put_leaves_no_object(
    share: Parties, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "COPY_CHUNK", 1024)
    source = a_file(tmp_path, "big.eif", os.urandom(10 * 1024))
    seen: list[int] = []

    def interrupt(done: int) -> None:
        seen.append(done)
        # mid-put, nothing of it is an object yet
        assert share.host.list_objects(share.bucket) == []
        with pytest.raises(NotFoundError):
            share.get(share.host, "v2/big.eif")
        if done >= 3 * 1024:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        share.vendor.put_object(
            share.bucket, "v2/big.eif", source, kms_key=None, progress=interrupt
        )
    assert seen == [1024, 2048, 3072]
    assert share.host.list_objects(share.bucket) == []
    assert os.listdir(share.objects_dir / "v2") == []  # the temporary is gone too


def test_a_put_replaces_an_object_whole(share: Parties, tmp_path: Path) -> None:
    share.vendor.put_object(share.bucket, "a.txt", a_file(tmp_path, "1", b"old"), kms_key=None)
    share.vendor.put_object(share.bucket, "a.txt", a_file(tmp_path, "2", b"new!"), kms_key=None)
    (listed,) = share.host.list_objects(share.bucket)
    assert (listed.name, listed.size) == ("a.txt", 4)
    assert share.get(share.host, "a.txt") == b"new!"
    assert (share.objects_dir / "a.txt").stat().st_mode & 0o777 == 0o600


def test_a_leftover_temporary_is_never_an_object(share: Parties, tmp_path: Path) -> None:
    (share.objects_dir / "~app.sealed.0123456789ab.part").write_bytes(b"half")
    assert share.host.list_objects(share.bucket) == []
    with pytest.raises(InvalidInputError, match="not a valid object name"):
        share.get(share.host, "~app.sealed.0123456789ab.part")
    with pytest.raises(UsageError, match="holds"):  # it is no object, but purge removes it
        share.vendor.put_object(share.bucket, "x", a_file(tmp_path, "x", b"x"), kms_key=None)
        share.host.delete_share("acme", purge=False)
    share.host.delete_share("acme", purge=True)
    assert not (share.ws.storage_dir / share.bucket).exists()


# --- names that try to leave the share --------------------------------------------------------


@pytest.mark.parametrize("name", ["../share.json", "../../../config.toml", "/etc/passwd", "a/../b"])
def test_names_that_escape_are_refused(share: Parties, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInputError, match="not a valid object name"):
        share.vendor.put_object(share.bucket, name, a_file(tmp_path, "a", b"x"), kms_key=None)
    with pytest.raises(InvalidInputError, match="not a valid object name"):
        share.get(share.host, name)


def test_symlinks_in_a_share_are_never_followed(share: Parties, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"the host's secret")
    (share.objects_dir / "dir").symlink_to(outside)
    (share.objects_dir / "file").symlink_to(outside / "secret")
    source = a_file(tmp_path, "a", b"planted")
    with pytest.raises(PathEscapeError, match="not a directory of the share"):
        share.vendor.put_object(share.bucket, "dir/planted", source, kms_key=None)
    assert sorted(os.listdir(outside)) == ["secret"]
    with pytest.raises(PathEscapeError):
        share.get(share.host, "dir/secret")
    with pytest.raises(PathEscapeError, match="is a symlink"):
        share.get(share.host, "file")
    assert share.host.list_objects(share.bucket) == []  # links are not objects


def test_an_object_cannot_go_through_another(share: Parties, tmp_path: Path) -> None:
    share.vendor.put_object(share.bucket, "a", a_file(tmp_path, "a", b"x"), kms_key=None)
    with pytest.raises(PathEscapeError):
        share.vendor.put_object(share.bucket, "a/b", a_file(tmp_path, "b", b"y"), kms_key=None)
    share.vendor.put_object(share.bucket, "d/e", a_file(tmp_path, "c", b"z"), kms_key=None)
    with pytest.raises(InvalidInputError, match="objects' names go below it"):
        share.vendor.put_object(share.bucket, "d", a_file(tmp_path, "d", b"w"), kms_key=None)
    assert [o.name for o in share.host.list_objects(share.bucket)] == ["a", "d/e"]


def test_a_share_directory_that_is_a_symlink_is_no_share(parties: Parties, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    Parties(parties.ws).create()
    os.rename(parties.ws.storage_dir / parties.bucket, elsewhere)
    (parties.ws.storage_dir / parties.bucket).symlink_to(elsewhere)
    assert parties.host.list_shares() == []
    with pytest.raises(NotFoundError):
        parties.host.show_share("acme")


# --- publish and fetch on top -------------------------------------------------------------------


def test_publish_then_fetch_verified(share: Parties, tmp_path: Path) -> None:
    files = [tiny_sealed(tmp_path / "app.sealed"), tiny_image(tmp_path / "app.eif")]
    items = plan_publish(files, prefix="v1/")
    published = publish(
        share.vendor, share.bucket, items, kms_key=None, publisher=share.vendor_account
    )
    assert published.document_name.startswith(INDEX_PREFIX)
    names = [o.name for o in share.host.list_objects(share.bucket)]
    assert names == sorted(["v1/app.eif", "v1/app.sealed", published.document_name])
    out = tmp_path / "out"
    plan = plan_fetch(share.host, share.bucket, [], out, force=False)
    assert [p.indexed.entry.kind for p in plan] == ["image", "sealed"]
    fetch(share.host, share.bucket, plan, out, force=False)
    for source in files:
        assert (out / "v1" / source.name).read_bytes() == source.read_bytes()


def test_fetch_refuses_a_tampered_object_and_leaves_nothing(share: Parties, tmp_path: Path) -> None:
    image = tiny_image(tmp_path / "app.eif")
    sealed = tiny_sealed(tmp_path / "app.sealed")
    publish(
        share.vendor,
        share.bucket,
        plan_publish([image, sealed]),
        kms_key=None,
        publisher=share.vendor_account,
    )
    stored = share.objects_dir / "app.sealed"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1
    stored.write_bytes(bytes(data))
    out = tmp_path / "out"
    plan = plan_fetch(share.host, share.bucket, [], out, force=False)
    with pytest.raises(TamperedError, match=r"app\.sealed: its SHA-256 is") as refused:
        fetch(share.host, share.bucket, plan, out, force=False)
    assert f"verified and kept in {out} before the failure: app.eif" in refused.value.hint
    assert sorted(os.listdir(out)) == ["app.eif"]  # no temporary of app.sealed


def test_a_longer_object_is_cut_off_at_the_indexed_size(share: Parties, tmp_path: Path) -> None:
    publish(
        share.vendor,
        share.bucket,
        plan_publish([a_file(tmp_path, "notes.txt", b"short")]),
        kms_key=None,
        publisher=share.vendor_account,
    )
    (share.objects_dir / "notes.txt").write_bytes(b"short" + b"!" * 10_000)
    out = tmp_path / "out"
    plan = plan_fetch(share.host, share.bucket, ["notes.txt"], out, force=False)
    with pytest.raises(TamperedError, match="larger than the 5 bytes its index entry says"):
        fetch(share.host, share.bucket, plan, out, force=False)
    assert os.listdir(out) == []
