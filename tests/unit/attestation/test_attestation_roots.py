"""Trust anchors: the shipped AWS root, the workspace root, pinned files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from strongroom.attestation import roots
from strongroom.attestation.authority import LocalAuthority
from strongroom.attestation.roots import AWS_ROOT_SHA256, TrustAnchor, aws_root, load_anchor
from strongroom.errors import ConfigError, InvalidInputError, NotFoundError, VerificationError

from .helpers import ASSETS


def test_aws_root_is_the_published_g1() -> None:
    root = aws_root()
    der = root.public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_ROOT_SHA256
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert root.not_valid_before_utc == datetime(2019, 10, 28, 13, 28, 5, tzinfo=UTC)
    assert root.not_valid_after_utc == datetime(2049, 10, 28, 14, 28, 5, tzinfo=UTC)


def test_shipped_root_matches_the_recorded_asset() -> None:
    shipped = Path(roots.__file__).parent / roots.AWS_ROOT_RESOURCE
    assert shipped.read_bytes() == (ASSETS / "aws-nitro-enclaves-root-g1.pem").read_bytes()


@pytest.fixture
def uncached_aws_root() -> Iterator[None]:
    aws_root.cache_clear()
    yield
    aws_root.cache_clear()


@pytest.mark.usefixtures("uncached_aws_root")
def test_a_modified_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roots, "AWS_ROOT_SHA256", "00" * 32)
    with pytest.raises(VerificationError, match="fingerprint 641a0321"):
        aws_root()


def test_load_anchor_aws() -> None:
    anchor = load_anchor("aws", None)
    assert anchor == TrustAnchor(aws_root(), "aws")


def test_load_anchor_local(tmp_path: Path) -> None:
    authority = LocalAuthority.open_or_create(tmp_path / "ca")
    anchor = load_anchor("local", tmp_path / "ca")
    assert anchor.name == "local"
    assert anchor.certificate == authority.root_certificate()


def test_load_anchor_local_needs_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_anchor("local", None)
    with pytest.raises(NotFoundError, match="no local attestation root"):
        load_anchor("local", tmp_path)


def test_load_anchor_from_pem_and_der(tmp_path: Path) -> None:
    pem = ASSETS / "aws-nitro-enclaves-root-g1.pem"
    assert load_anchor(str(pem), None).certificate == aws_root()
    der = tmp_path / "root.der"
    der.write_bytes(aws_root().public_bytes(serialization.Encoding.DER))
    anchor = load_anchor(str(der), None)
    assert anchor.certificate == aws_root()
    assert anchor.name == str(der)


def test_load_anchor_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="neither 'aws', 'local' nor an existing file"):
        load_anchor(str(tmp_path / "missing.pem"), None)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidInputError, match="is not a certificate"):
        load_anchor(str(garbage), None)
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_anchor(str(tmp_path), None)


def test_trust_anchor_of_a_bare_certificate() -> None:
    anchor = TrustAnchor.of(aws_root())
    assert anchor.name == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert TrustAnchor.of(anchor) is anchor
    assert hashlib.sha256(anchor.der).hexdigest() == AWS_ROOT_SHA256
