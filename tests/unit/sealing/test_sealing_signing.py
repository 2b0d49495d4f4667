"""Header v2: the manifest and the vendor signature, sealed, read, verified and tampered with."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    TamperedError,
    UsageError,
    VerificationError,
)
from strongroom.sealing import (
    MANIFEST_NAME,
    AppManifest,
    LegacyHeader,
    SealedHeader,
    create_signing_key,
    inspect,
    load_signer_public_key,
    load_signing_key,
    read_header,
    seal,
    signer_fingerprint,
    unseal,
    verify_signature,
)
from strongroom.sealing.format import MAX_HEADER_SIZE, SIGNATURE_CONTEXT, build_header
from strongroom.sealing.manifest import MAX_MANIFEST_BYTES
from strongroom.sealing.signing import public_key_bytes

from .helpers import CHUNK, CONTEXT, leftovers, payload_of, snapshot

if TYPE_CHECKING:
    from .conftest import FakeKeyService, SealPayload

MANIFEST_TOML = """
entries = ["main.py", "bin/tool.py"]
env = ["DEMO_THREADS"]
egress = ["api.example.com:443"]
[resources]
memory_mib = 256
"""
SIGNATURE_SECTION = 2 + 32 + 64

BASE: dict[str, Any] = {
    "key_id": "arn:aws:kms:eu-west-1:111122223333:key/k",
    "encrypted_data_key": b"\x01" * 40,
    "encryption_context": {"vendor": "acme"},
    "chunk_size": 1 << 20,
    "salt": bytes(32),
    "nonce_prefix": bytes(7),
    "created": 0,
}


@pytest.fixture
def vendor_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture
def manifest_app(app_dir: Path) -> Path:
    (app_dir / "bin" / "tool.py").write_text("print('tool')\n")
    (app_dir / MANIFEST_NAME).write_text(MANIFEST_TOML)
    return app_dir


@pytest.fixture
def signed(
    tmp_path: Path,
    manifest_app: Path,
    kms: FakeKeyService,
    key_arn: str,
    vendor_key: Ed25519PrivateKey,
) -> Path:
    out = tmp_path / "signed.sealed"
    seal(manifest_app, out, kms, key_arn, context=CONTEXT, chunk_size=CHUNK, signing_key=vendor_key)
    return out


def header_of(path: Path) -> SealedHeader:
    with path.open("rb") as stream:
        header = read_header(stream)
    assert isinstance(header, SealedHeader)
    return header


def rewrite_header(path: Path, new_header: bytes, name: str = "edited.sealed") -> Path:
    data = path.read_bytes()
    old = inspect(path).header_size
    out = path.with_name(name)
    out.write_bytes(new_header + data[old:])
    return out


def refused_by_unseal(path: Path, kms: FakeKeyService, error: type[Exception], match: str) -> None:
    out = path.parent / "out"
    with pytest.raises(error, match=match):
        unseal(path, out, kms)
    assert not out.exists() and leftovers(path.parent) == []


# --- sealing with a manifest and a signature ------------------------------------------------


def test_seal_stores_the_manifest_and_the_signer(
    signed: Path, kms: FakeKeyService, vendor_key: Ed25519PrivateKey, manifest_app: Path
) -> None:
    info = inspect(signed)
    expected = AppManifest.parse_toml(MANIFEST_TOML, source="t")
    assert (info.format, info.version) == ("strongroom-v2", 2)
    assert info.manifest == expected
    assert info.signer == public_key_bytes(vendor_key)
    header = header_of(signed)
    assert verify_signature(header, [public_key_bytes(vendor_key)]) == header.signer
    # the manifest file travels in the tar too; the header's copy is the authoritative one
    out = signed.parent / "out"
    opened = unseal(signed, out, kms)
    assert opened.manifest == expected and opened.signer == info.signer
    assert snapshot(out) == snapshot(manifest_app)


def test_seal_without_a_manifest_or_a_key(sealed: Path) -> None:
    info = inspect(sealed)
    assert (info.manifest, info.signer, info.version) == (None, None, 2)
    with pytest.raises(VerificationError, match=r"^the package is unsigned$"):
        verify_signature(header_of(sealed), [bytes(32)])


def test_a_bad_manifest_is_refused_before_the_key_service_is_called(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    (app_dir / MANIFEST_NAME).write_text('entries = ["main.py"]\nenv = ["LD_PRELOAD"]\n')
    out = tmp_path / "p.sealed"
    with pytest.raises(InvalidInputError, match="'LD_PRELOAD' is reserved"):
        seal(app_dir, out, kms, key_arn)
    assert kms.calls == [] and not out.exists() and leftovers(tmp_path) == []
    (app_dir / MANIFEST_NAME).write_text('entries = ["missing.py"]\n')
    with pytest.raises(InvalidInputError, match=r"'missing\.py' does not exist"):
        seal(app_dir, out, kms, key_arn)
    assert kms.calls == [] and not out.exists()


def test_seal_is_deterministic_in_what_it_signs(
    tmp_path: Path, manifest_app: Path, kms: FakeKeyService, key_arn: str
) -> None:
    """Two seals differ (fresh data key, salt, prefix), and each signature covers its own header."""
    key = Ed25519PrivateKey.generate()
    a, b = tmp_path / "a.sealed", tmp_path / "b.sealed"
    seal(manifest_app, a, kms, key_arn, signing_key=key)
    seal(manifest_app, b, kms, key_arn, signing_key=key)
    ha, hb = header_of(a), header_of(b)
    assert ha.manifest == hb.manifest and ha.signer == hb.signer
    assert ha.signature != hb.signature


# --- verify_signature -------------------------------------------------------------------------


def test_verify_signature_decisions(signed: Path, vendor_key: Ed25519PrivateKey) -> None:
    header = header_of(signed)
    vendor = public_key_bytes(vendor_key)
    other = public_key_bytes(Ed25519PrivateKey.generate())
    assert verify_signature(header, {other, vendor}) == vendor
    assert verify_signature(header, (vendor,)) == vendor
    with pytest.raises(
        VerificationError,
        match=f"^the package is signed by {signer_fingerprint(vendor)}, not a pinned signer$",
    ) as caught:
        verify_signature(header, [other])
    assert caught.value.hint and caught.value.exit_code == 4
    with pytest.raises(VerificationError, match="not a pinned signer"):
        verify_signature(header, [])
    forged = dataclasses.replace(header, signature=bytes(64))
    with pytest.raises(VerificationError, match="signature is invalid"):
        verify_signature(forged, [vendor])
    with pytest.raises(InvalidInputError, match="32 raw bytes"):
        verify_signature(header, [vendor.hex().encode()])


def test_legacy_and_v1_packages_are_unsigned(
    tmp_path: Path, sealed: Path, kms: FakeKeyService, seal_payload: SealPayload
) -> None:
    legacy = LegacyHeader(encrypted_data_key=b"x", size=5)
    assert (legacy.manifest, legacy.signer, legacy.signature) == (None, None, None)
    with pytest.raises(VerificationError, match="unsigned"):
        verify_signature(legacy, [bytes(32)])
    v1 = seal_payload(payload_of(sealed, kms), tmp_path / "v1.sealed", version=1)
    header = header_of(v1)
    assert (header.version, header.format, header.manifest, header.signer) == (
        1,
        "strongroom-v1",
        None,
        None,
    )
    with pytest.raises(VerificationError, match="unsigned"):
        verify_signature(header, [bytes(32)])


def test_v1_packages_still_open(
    tmp_path: Path, sealed: Path, app_dir: Path, kms: FakeKeyService, seal_payload: SealPayload
) -> None:
    v1 = seal_payload(payload_of(sealed, kms), tmp_path / "v1.sealed", version=1)
    info = unseal(v1, tmp_path / "out", kms)
    assert (info.format, info.version, info.manifest, info.signer) == (
        "strongroom-v1",
        1,
        None,
        None,
    )
    assert snapshot(tmp_path / "out") == snapshot(app_dir)


def test_fingerprint() -> None:
    key = bytes(range(32))
    assert signer_fingerprint(key) == "ed25519:" + hashlib.sha256(key).hexdigest()[:32]
    with pytest.raises(InvalidInputError):
        signer_fingerprint(key[:31])


# --- tampering --------------------------------------------------------------------------------


def test_a_changed_manifest_byte_breaks_the_signature(signed: Path, kms: FakeKeyService) -> None:
    raw = bytearray(header_of(signed).raw)
    at = raw.index(b"main.py")
    raw[at] = ord("n")  # still a valid canonical manifest: "nain.py"
    edited = rewrite_header(signed, bytes(raw))
    with pytest.raises(VerificationError, match="the signature is invalid") as caught:
        inspect(edited)
    assert "\n" not in caught.value.message and caught.value.hint
    refused_by_unseal(edited, kms, VerificationError, "signature is invalid")


def test_a_changed_manifest_byte_fails_chunk_0_when_unsigned(
    tmp_path: Path, manifest_app: Path, kms: FakeKeyService, key_arn: str
) -> None:
    package = tmp_path / "unsigned.sealed"
    seal(manifest_app, package, kms, key_arn, context=CONTEXT, chunk_size=CHUNK)
    raw = bytearray(header_of(package).raw)
    at = raw.index(b"main.py")
    raw[at] = ord("n")
    edited = rewrite_header(package, bytes(raw))
    assert inspect(edited).manifest.entries[0] == "nain.py"  # type: ignore[union-attr]
    refused_by_unseal(
        edited, kms, TamperedError, "chunk 0 of the package failed authentication: the header"
    )


@pytest.mark.parametrize("where", ["public key", "signature"])
def test_a_changed_signature_byte_is_refused(signed: Path, kms: FakeKeyService, where: str) -> None:
    raw = bytearray(header_of(signed).raw)
    raw[-70 if where == "public key" else -5] ^= 0x01
    edited = rewrite_header(signed, bytes(raw))
    with pytest.raises(VerificationError, match="the signature is invalid"):
        inspect(edited)
    refused_by_unseal(edited, kms, VerificationError, "signature is invalid")


def test_a_replaced_signature_fails_chunk_0(
    signed: Path, kms: FakeKeyService, vendor_key: Ed25519PrivateKey
) -> None:
    """The host re-signs the vendor's header with its own key: the pin refuses it, chunk 0 too."""
    header = header_of(signed)
    prefix = header.raw[:-SIGNATURE_SECTION]
    attacker = Ed25519PrivateKey.generate()
    raw = (
        prefix
        + struct.pack(">H", 96)
        + public_key_bytes(attacker)
        + attacker.sign(SIGNATURE_CONTEXT + prefix)
    )
    edited = rewrite_header(signed, raw)
    forged = header_of(edited)
    assert forged.signer == public_key_bytes(attacker) and forged.manifest == header.manifest
    with pytest.raises(VerificationError, match="not a pinned signer"):
        verify_signature(forged, [public_key_bytes(vendor_key)])
    refused_by_unseal(edited, kms, TamperedError, "chunk 0 of the package failed authentication")


def test_a_stripped_signature_fails_chunk_0(
    signed: Path, kms: FakeKeyService, vendor_key: Ed25519PrivateKey
) -> None:
    raw = bytearray(header_of(signed).raw[:-SIGNATURE_SECTION] + b"\x00\x00")
    raw[9:13] = struct.pack(">I", len(raw))
    edited = rewrite_header(signed, bytes(raw))
    stripped = header_of(edited)
    assert stripped.signer is None and stripped.manifest is not None
    with pytest.raises(VerificationError, match="unsigned"):
        verify_signature(stripped, [public_key_bytes(vendor_key)])
    refused_by_unseal(edited, kms, TamperedError, "chunk 0 of the package failed authentication")


def test_a_stripped_manifest_fails_chunk_0(
    tmp_path: Path, manifest_app: Path, kms: FakeKeyService, key_arn: str
) -> None:
    package = tmp_path / "unsigned.sealed"
    seal(manifest_app, package, kms, key_arn, context=CONTEXT, chunk_size=CHUNK)
    header = header_of(package)
    assert header.manifest is not None
    canonical = header.manifest.canonical()
    start = header.raw.index(struct.pack(">I", len(canonical)) + canonical)
    raw = bytearray(header.raw[:start] + struct.pack(">I", 0) + b"\x00\x00")
    raw[9:13] = struct.pack(">I", len(raw))
    edited = rewrite_header(package, bytes(raw))
    assert inspect(edited).manifest is None
    refused_by_unseal(edited, kms, TamperedError, "chunk 0 of the package failed authentication")


# --- the v2 header: one encoding, bounded ------------------------------------------------------


def v2(**changes: Any) -> SealedHeader:
    return build_header(**{**BASE, **changes})


def parse(raw: bytes) -> SealedHeader:
    header = read_header(io.BytesIO(raw))
    assert isinstance(header, SealedHeader)
    return header


_MANIFESTS = st.builds(
    AppManifest,
    entries=st.lists(
        st.text("abcxyz_-", min_size=1, max_size=8).map(lambda n: n + ".py"),
        min_size=1,
        max_size=5,
        unique=True,
    ).map(tuple),
    env=st.lists(st.sampled_from(["A", "B_2", "THREADS"]), unique=True, max_size=3).map(tuple),
    memory_mib=st.none() | st.integers(16, 1 << 20),
)


@settings(max_examples=50)
@given(manifest=st.none() | _MANIFESTS, sign=st.booleans(), created=st.integers(0, 2**64 - 1))
def test_v2_header_roundtrip(manifest: AppManifest | None, sign: bool, created: int) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32)) if sign else None
    built = v2(manifest=manifest, signing_key=key, created=created)
    parsed = read_header(io.BytesIO(built.raw + b"body"))
    assert parsed == built
    assert (built.version, built.manifest, built.created) == (2, manifest, created)
    assert built.signer == (None if key is None else public_key_bytes(key))
    if key is not None:
        assert built.signed_message == SIGNATURE_CONTEXT + built.raw[:-SIGNATURE_SECTION]


def test_v2_layout() -> None:
    manifest = AppManifest(entries=("main.py",))
    raw = v2(manifest=manifest).raw
    canonical = manifest.canonical()
    assert raw[8] == 2 and struct.unpack(">I", raw[9:13])[0] == len(raw)
    assert raw.endswith(struct.pack(">I", len(canonical)) + canonical + b"\x00\x00")
    assert v2().raw.endswith(b"\x00\x00\x00\x00\x00\x00")


def test_every_truncation_of_a_signed_header_is_refused() -> None:
    raw = v2(
        manifest=AppManifest(entries=("main.py",)),
        signing_key=Ed25519PrivateKey.from_private_bytes(bytes(32)),
    ).raw
    for end in range(1, len(raw)):
        with pytest.raises(InvalidInputError):
            parse(raw[:end])


def _with_sections(manifest: bytes, signature: bytes) -> bytes:
    """A v2 header with raw manifest and signature sections, its length fixed up."""
    raw = bytearray(v2().raw[:-6] + struct.pack(">I", len(manifest)) + manifest)
    raw += struct.pack(">H", len(signature)) + signature
    raw[9:13] = struct.pack(">I", len(raw))
    return bytes(raw)


@pytest.mark.parametrize(
    ("manifest", "signature", "error", "match"),
    [
        (b"", bytes(50), InvalidInputError, "signature section is 50 bytes, not 0 or 96"),
        (b"", bytes(97), InvalidInputError, "the signature is longer than 96 bytes"),
        (b"", bytes(96), VerificationError, "the signature is invalid"),
        (
            b'{"entries":["a.py"]}',
            b"",
            InvalidInputError,
            "the manifest: the field 'env' is missing",
        ),
        (b"not json", b"", InvalidInputError, "the manifest is not valid JSON"),
        (
            AppManifest(entries=("a.py",)).canonical() + b" ",
            b"",
            InvalidInputError,
            "not in canonical form",
        ),
    ],
)
def test_malformed_v2_sections(
    manifest: bytes, signature: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse(_with_sections(manifest, signature))


def test_manifest_section_limit() -> None:
    raw = bytearray(v2().raw[:-6] + struct.pack(">I", MAX_MANIFEST_BYTES + 1))
    raw += bytes(MAX_MANIFEST_BYTES + 1) + b"\x00\x00"
    raw[9:13] = struct.pack(">I", len(raw))
    with pytest.raises(InvalidInputError, match="the manifest is longer than 65536 bytes"):
        parse(bytes(raw))


def test_header_length_limits_per_version() -> None:
    raw = bytearray(v2().raw)
    raw[9:13] = struct.pack(">I", MAX_HEADER_SIZE + 1)
    with pytest.raises(InvalidInputError, match="impossible header length"):
        parse(bytes(raw))
    v1 = bytearray(v2(version=1).raw)
    v1[9:13] = struct.pack(">I", 65537)
    with pytest.raises(InvalidInputError, match="impossible header length"):
        parse(bytes(v1) + bytes(65537))


def test_the_largest_manifest_fits() -> None:
    entries = tuple(f"{i:02d}" + "/".join(["x" * 239] * 4) + ".py" for i in range(64))
    manifest = AppManifest(entries=entries)
    assert len(manifest.canonical()) > 60000
    header = v2(manifest=manifest, signing_key=Ed25519PrivateKey.generate())
    assert header.size <= MAX_HEADER_SIZE and parse(header.raw) == header


def test_build_header_versions() -> None:
    with pytest.raises(InvalidInputError, match="holds no manifest and no signature"):
        v2(version=1, manifest=AppManifest(entries=("a.py",)))
    with pytest.raises(InvalidInputError, match="holds no manifest and no signature"):
        v2(version=1, signing_key=Ed25519PrivateKey.generate())
    with pytest.raises(InvalidInputError, match="cannot write sealed-package format version 3"):
        v2(version=3)
    assert v2(version=1).format == "strongroom-v1"


# --- key files --------------------------------------------------------------------------------


def test_create_signing_key(tmp_path: Path) -> None:
    path = tmp_path / "vendor.key"
    files = create_signing_key(path)
    assert files.private_key == path and files.public_key == tmp_path / "vendor.key.pub"
    assert path.stat().st_mode & 0o777 == 0o600
    assert files.public_key.stat().st_mode & 0o777 == 0o644
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert files.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = load_signing_key(path)
    public = load_signer_public_key(files.public_key)
    assert public == public_key_bytes(key)
    assert files.fingerprint == signer_fingerprint(public)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vendor.key", "vendor.key.pub"]


@pytest.mark.parametrize("existing", ["vendor.key", "vendor.key.pub"])
def test_create_signing_key_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(AlreadyExistsError, match="already exists") as caught:
        create_signing_key(tmp_path / "vendor.key")
    assert "--force" in caught.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "precious"


def test_create_signing_key_with_force(tmp_path: Path) -> None:
    first = create_signing_key(tmp_path / "k")
    second = create_signing_key(tmp_path / "k", force=True)
    assert first.fingerprint != second.fingerprint
    assert load_signer_public_key(tmp_path / "k.pub") == public_key_bytes(
        load_signing_key(tmp_path / "k")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]


def test_create_signing_key_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        create_signing_key(tmp_path / "nope" / "k")


def _pem_files(tmp_path: Path) -> dict[str, Path]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = Ed25519PrivateKey.generate()
    files = {
        "encrypted": ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "rsa": rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "rsa.pub": rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "garbage": b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
        "huge": b"x" * 20000,
        "ed.pub": ed.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "ed": ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("encrypted", InvalidInputError, "is an encrypted private key"),
        ("rsa", InvalidInputError, "is not an Ed25519 private key"),
        ("garbage", InvalidInputError, "is not a PEM private key"),
        ("huge", InvalidInputError, "larger than 16384 bytes"),
        ("ed.pub", UsageError, "holds a public key; signing needs the private key"),
        ("missing", NotFoundError, "does not exist"),
    ],
)
def test_load_signing_key_errors(
    tmp_path: Path, name: str, error: type[Exception], match: str
) -> None:
    paths = _pem_files(tmp_path)
    with pytest.raises(error, match=match):
        load_signing_key(paths.get(name, tmp_path / name))


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("ed", UsageError, "holds a private key"),
        ("rsa.pub", InvalidInputError, "is not an Ed25519 public key"),
        ("garbage", UsageError, "holds a private key"),
        ("huge", InvalidInputError, "larger than"),
        ("missing", NotFoundError, "does not exist"),
    ],
)
def test_load_signer_public_key_errors(
    tmp_path: Path, name: str, error: type[Exception], match: str
) -> None:
    paths = _pem_files(tmp_path)
    with pytest.raises(error, match=match):
        load_signer_public_key(paths.get(name, tmp_path / name))


def test_load_key_from_a_directory(tmp_path: Path) -> None:
    os.mkdir(tmp_path / "d")
    with pytest.raises(UsageError, match="is a directory"):
        load_signing_key(tmp_path / "d")
