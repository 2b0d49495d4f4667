"""Legacy packages, built the way the AWS sample builds them, open with the same checks."""

from __future__ import annotations

import base64
import io
import os
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.fernet import Fernet

from strongroom.errors import InvalidInputError, TamperedError
from strongroom.keys.base import KeyService
from strongroom.sealing import (
    ExtractLimits,
    LegacyHeader,
    inspect,
    legacy_fernet_key,
    open_package,
    read_header,
    unseal,
)

from .helpers import leftovers, snapshot

if TYPE_CHECKING:
    from .conftest import FakeKeyService


def zip_directory(app_dir: Path) -> bytes:
    """The sample's zip: every file and directory, relative names, deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(app_dir.rglob("*")):
            archive.write(path, path.relative_to(app_dir))
    return buffer.getvalue()


def seal_legacy(
    app_dir: Path,
    out: Path,
    keys: KeyService,
    key_id: str,
    *,
    encode: Callable[[bytes], bytes] = base64.b64encode,
    archive: bytes | None = None,
) -> Path:
    """The AWS sample's envelope: length-prefixed KMS blob, then Fernet(zip).

    The sample turns the plaintext data key into a Fernet key with base64.
    """
    data_key = keys.generate_data_key(key_id)
    assert data_key.plaintext is not None
    token = Fernet(encode(data_key.plaintext)).encrypt(archive or zip_directory(app_dir))
    blob = data_key.ciphertext_blob
    out.write_bytes(len(blob).to_bytes(4, "big") + blob + token)
    return out


def without_links(app_dir: Path) -> Path:
    """The fixture app minus its symlink: the sample's zip follows links into copies."""
    (app_dir / "models" / "latest").unlink()
    return app_dir


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_legacy_package_opens(
    tmp_path: Path,
    app_dir: Path,
    kms: FakeKeyService,
    key_arn: str,
    encode: Callable[[bytes], bytes],
) -> None:
    app = without_links(app_dir)
    package = seal_legacy(app, tmp_path / "app.enc", kms, key_arn, encode=encode)
    info = unseal(package, tmp_path / "out", kms)
    assert snapshot(tmp_path / "out") == snapshot(app)
    assert kms.calls[-1] == ("Decrypt", None, {})
    assert info == inspect(package)
    assert info.format == "legacy-fernet-zip"
    assert (info.key_id, info.chunk_size, info.chunk_count, info.payload_size) == (None,) * 4
    assert info.payload_type == "zip" and info.version == 0
    assert info.encryption_context == {}
    assert info.file_size == package.stat().st_size
    assert info.header_size == 4 + len(info.encrypted_data_key)
    assert leftovers(tmp_path) == []


def test_legacy_fernet_key_is_base64url_of_the_data_key() -> None:
    data_key = bytes(range(32))
    assert legacy_fernet_key(data_key) == base64.urlsafe_b64encode(data_key)
    Fernet(legacy_fernet_key(data_key))  # a valid Fernet key


def test_open_package_after_read_header(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    app = without_links(app_dir)
    package = seal_legacy(app, tmp_path / "app.enc", kms, key_arn)
    dest = tmp_path / "dest"
    dest.mkdir()
    progress: list[int] = []
    with package.open("rb") as stream:
        header = read_header(stream)
        assert isinstance(header, LegacyHeader)
        data_key = kms.decrypt(header.encrypted_data_key).plaintext
        assert data_key is not None
        open_package(stream, data_key, dest, header=header, progress=progress.append)
    assert snapshot(dest) == snapshot(app)
    assert sum(progress) == sum(p.stat().st_size for p in app.rglob("*") if p.is_file())


def test_zip_without_directory_entries(tmp_path: Path, kms: FakeKeyService, key_arn: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("./deep/er/file.txt", b"x")
        info = zipfile.ZipInfo("deep/run.sh")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        archive.writestr(info, b"#!/bin/sh\n")
        archive.writestr("deep/", b"")
    package = seal_legacy(tmp_path, tmp_path / "app.enc", kms, key_arn, archive=buffer.getvalue())
    unseal(package, tmp_path / "out", kms)
    assert snapshot(tmp_path / "out") == {
        "deep": ("dir", b"", False),
        "deep/er": ("dir", b"", False),
        "deep/er/file.txt": ("file", b"x", False),
        "deep/run.sh": ("file", b"#!/bin/sh\n", True),
    }


def test_tampered_token(tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str) -> None:
    package = seal_legacy(without_links(app_dir), tmp_path / "app.enc", kms, key_arn)
    data = bytearray(package.read_bytes())
    data[-30] = ord("A") if data[-30] != ord("A") else ord("B")
    package.write_bytes(bytes(data))
    with pytest.raises(TamperedError, match="legacy package failed authentication"):
        unseal(package, tmp_path / "out", kms)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_truncated_token(tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str) -> None:
    package = seal_legacy(without_links(app_dir), tmp_path / "app.enc", kms, key_arn)
    package.write_bytes(package.read_bytes()[:-100])
    with pytest.raises(TamperedError, match="legacy package failed authentication"):
        unseal(package, tmp_path / "out", kms)


def test_wrong_data_key(tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str) -> None:
    package = seal_legacy(without_links(app_dir), tmp_path / "app.enc", kms, key_arn)
    dest = tmp_path / "dest"
    dest.mkdir()
    with package.open("rb") as stream, pytest.raises(TamperedError, match="data key"):
        open_package(stream, os.urandom(32), dest)
    with package.open("rb") as stream, pytest.raises(InvalidInputError, match="32-byte keys"):
        open_package(stream, os.urandom(20), dest)
    assert list(dest.iterdir()) == []  # nothing is extracted before authentication


def test_size_limit(tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str) -> None:
    package = seal_legacy(without_links(app_dir), tmp_path / "app.enc", kms, key_arn)
    limits = ExtractLimits(max_legacy_package_bytes=package.stat().st_size - 1)
    with pytest.raises(InvalidInputError, match="legacy package is larger than"):
        unseal(package, tmp_path / "out", kms, limits=limits)
    limits = ExtractLimits(max_legacy_package_bytes=package.stat().st_size)
    unseal(package, tmp_path / "out", kms, limits=limits)


def hostile_zip(*entries: tuple[str, bytes, int]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we want
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


REG = stat.S_IFREG | 0o644


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([("../evil", b"x", REG)], "goes outside the tree"),
        ([("a/../../evil", b"x", REG)], "goes outside the tree"),
        ([("/tmp/strongroom-evil", b"x", REG)], "is an absolute path"),
        ([("f", b"1", REG), ("f", b"2", REG)], "appears twice"),
        ([("l", b"../../etc/passwd", stat.S_IFLNK | 0o777)], "is a symlink"),
        ([("p", b"", stat.S_IFIFO | 0o644)], "device file or a FIFO"),
        ([("f", b"x", REG), ("f/g", b"y", REG)], "goes through 'f'"),
    ],
)
def test_zip_slip_and_friends(
    tmp_path: Path,
    kms: FakeKeyService,
    key_arn: str,
    entries: list[tuple[str, bytes, int]],
    match: str,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    package = seal_legacy(
        tmp_path, tmp_path / "app.enc", kms, key_arn, archive=hostile_zip(*entries)
    )
    with pytest.raises(InvalidInputError, match=match):
        unseal(package, work / "out", kms)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_damaged_zip(tmp_path: Path, kms: FakeKeyService, key_arn: str) -> None:
    package = seal_legacy(tmp_path, tmp_path / "app.enc", kms, key_arn, archive=b"PK not a zip")
    with pytest.raises(InvalidInputError, match="zip archive is damaged"):
        unseal(package, tmp_path / "out", kms)


def test_encrypted_zip_entry_is_unsupported(
    tmp_path: Path, kms: FakeKeyService, key_arn: str
) -> None:
    archive = bytearray(hostile_zip(("f", b"x", REG)))
    # Set the "encrypted" flag in the local and central headers.
    for signature in (b"PK\x03\x04", b"PK\x01\x02"):
        at = archive.index(signature) + (6 if signature == b"PK\x03\x04" else 8)
        archive[at] |= 0x01
    package = seal_legacy(tmp_path, tmp_path / "app.enc", kms, key_arn, archive=bytes(archive))
    with pytest.raises(InvalidInputError, match="zip archive is unsupported"):
        unseal(package, tmp_path / "out", kms)
