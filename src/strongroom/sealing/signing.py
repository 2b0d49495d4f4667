"""Vendor package signatures: who sealed a package, checked against pinned keys.

A v2 header may end with an Ed25519 public key and a signature over
:data:`SIGNATURE_CONTEXT` followed by every header byte before the signature
section (magic, version, header length, key id, wrapped data key, context,
salt, nonce prefix, creation time, manifest). An enclave image can pin the
vendor's public keys; the server then calls :func:`verify_signature` before
any key release, so a package the host sealed itself (under its own KMS key)
never runs in the vendor's image, and neither does a vendor package whose
manifest someone edited.

Why this is enough without signing the body: the body is authenticated
under the data key with the SHA-256 of the whole header (signature included)
as associated data, and the signed bytes include the wrapped data key. Only
someone who can unwrap that key (the vendor, or an approved enclave) can
produce chunks that authenticate under a signed header.

Invariants:

- The header parser refuses a signature that does not verify under the key
  beside it, so ``header.signer`` always names a key that signed the header;
  :func:`verify_signature` checks again and decides whether that key is trusted.
- Pins are compared on the raw 32-byte keys, never on fingerprints, which are
  for people (:func:`signer_fingerprint`).
- Private keys are written 0600, atomically, and never over an existing file
  unless asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from strongroom.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    StrongroomError,
    UsageError,
    VerificationError,
)
from strongroom.sealing.format import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
)

if TYPE_CHECKING:
    from strongroom.sealing.format import SealedHeader
    from strongroom.sealing.legacy import LegacyHeader

FINGERPRINT_PREFIX = "ed25519:"
#: Hex digits of SHA-256 shown in a fingerprint (128 bits).
FINGERPRINT_HEX_DIGITS = 32
PUBLIC_KEY_SUFFIX = ".pub"
#: PEM files of one key are small; this bounds what a loader reads.
MAX_KEY_FILE_BYTES = 16 * 1024

_SIGNED_HINT = (
    "ask the vendor for a package sealed with `strongroom seal --sign-key` by a key this image pins"
)
_KEY_FILE_HINT = "create one with `strongroom signing-key create FILE`"


def signer_fingerprint(public_key: bytes) -> str:
    """``ed25519:`` and the first 32 hex digits of SHA-256 of the raw 32-byte key."""
    _check_public_key(public_key)
    digest = hashlib.sha256(public_key).hexdigest()
    return FINGERPRINT_PREFIX + digest[:FINGERPRINT_HEX_DIGITS]


def verify_signature(
    header: SealedHeader | LegacyHeader, trusted_signers: Collection[bytes]
) -> bytes:
    """Return the header's signer if it is in ``trusted_signers`` and its signature verifies.

    Raises :class:`VerificationError` (one line): the package is unsigned, its
    signature is invalid, or it is signed by a key that is not pinned.
    """
    from strongroom.sealing.format import SealedHeader  # format imports this module

    for key in trusted_signers:
        _check_public_key(key)
    if not isinstance(header, SealedHeader) or header.signer is None or header.signature is None:
        raise VerificationError("the package is unsigned", hint=_SIGNED_HINT)
    signer = header.signer
    if not signature_valid(signer, header.signature, header.signed_message):
        raise VerificationError(
            "the package's signature is invalid: its header was changed after signing",
            hint="obtain a fresh copy of the package from the vendor",
        )
    if signer not in trusted_signers:
        raise VerificationError(
            f"the package is signed by {signer_fingerprint(signer)}, not a pinned signer",
            hint=_SIGNED_HINT,
        )
    return signer


def signature_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is an Ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key (what headers carry and images pin)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- key files ---------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKeyFiles:
    """What :func:`create_signing_key` wrote."""

    private_key: Path
    public_key: Path
    fingerprint: str


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from an unencrypted PKCS#8 PEM file."""
    data = _read_key_file(path, "signing key")
    if b"-----BEGIN PUBLIC KEY-----" in data:
        raise UsageError(
            f"{path} holds a public key; signing needs the private key",
            hint=f"pass the private key file (the one without {PUBLIC_KEY_SUFFIX})",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted with a password
        raise InvalidInputError(
            f"{path} is an encrypted private key",
            hint="use an unencrypted PKCS#8 PEM key, as `strongroom signing-key create` writes",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInputError(f"{path} is not a PEM private key", hint=_KEY_FILE_HINT) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInputError(f"{path} is not an Ed25519 private key", hint=_KEY_FILE_HINT)
    return key


def load_signer_public_key(path: Path) -> bytes:
    """Read an Ed25519 public key PEM (``FILE.pub``) and return its raw 32 bytes (for pins)."""
    data = _read_key_file(path, "signer public key")
    if b"PRIVATE KEY" in data:
        raise UsageError(
            f"{path} holds a private key",
            hint=f"pin the public key, the {PUBLIC_KEY_SUFFIX} file beside it",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInputError(f"{path} is not a PEM public key", hint=_KEY_FILE_HINT) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInputError(f"{path} is not an Ed25519 public key", hint=_KEY_FILE_HINT)
    return public_key_bytes(key)


def create_signing_key(path: Path, *, force: bool = False) -> SigningKeyFiles:
    """Write a new private key PEM to ``path`` (0600) and its public key to ``path.pub``.

    Both files are complete or absent: each is written to a temporary file,
    synced, then put in place; without ``force`` an existing file is never
    replaced (the check and the creation are one atomic ``link``).
    """
    public_path = path.with_name(path.name + PUBLIC_KEY_SUFFIX)
    if not path.parent.is_dir():
        raise UsageError(
            f"cannot write {path}: {path.parent} is not a directory",
            hint="create the directory first",
        )
    if not force:
        for target in (path, public_path):
            if target.exists() or target.is_symlink():
                raise AlreadyExistsError(
                    f"{target} already exists",
                    hint="choose another file name, or pass --force to replace the key",
                )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    temporaries: list[Path] = []
    placed: list[Path] = []
    try:
        private_tmp = _write_temporary(path, private_pem, 0o600, temporaries)
        public_tmp = _write_temporary(public_path, public_pem, 0o644, temporaries)
        for tmp, target in ((private_tmp, path), (public_tmp, public_path)):
            _place(tmp, target, force=force)
            placed.append(target)
    except BaseException:
        if not force:  # what this call created; a replaced file cannot be restored
            for target in placed:
                with contextlib.suppress(OSError):
                    target.unlink()
        raise
    finally:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return SigningKeyFiles(path, public_path, signer_fingerprint(public_key_bytes(key)))


def _write_temporary(target: Path, data: bytes, mode: int, made: list[Path]) -> Path:
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise StrongroomError(
            f"cannot write {target}: {exc.strerror}", hint="check the directory's permissions"
        ) from exc
    tmp = Path(name)
    made.append(tmp)
    try:
        os.fchmod(fd, mode)  # mkstemp made it 0600: the private key is never readable by others
        with open(fd, "wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
    except OSError as exc:
        raise StrongroomError(
            f"cannot write {target}: {exc.strerror}", hint="check the free space"
        ) from exc
    return tmp


def _place(tmp: Path, target: Path, *, force: bool) -> None:
    try:
        if force:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # fails if target exists, unlike rename
    except FileExistsError:
        raise AlreadyExistsError(
            f"{target} already exists",
            hint="choose another file name, or pass --force to replace the key",
        ) from None
    except OSError as exc:
        raise StrongroomError(
            f"cannot write {target}: {exc.strerror}", hint="check the directory's permissions"
        ) from exc


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"the {what} {path} does not exist", hint=_KEY_FILE_HINT) from None
    except IsADirectoryError:
        raise UsageError(f"the {what} {path} is a directory", hint=_KEY_FILE_HINT) from None
    except OSError as exc:
        raise StrongroomError(
            f"cannot read the {what} {path}: {exc.strerror}", hint="check the file's permissions"
        ) from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidInputError(
            f"the {what} {path} is larger than {MAX_KEY_FILE_BYTES} bytes", hint=_KEY_FILE_HINT
        )
    return data


def _check_public_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
        raise InvalidInputError(
            f"a signer public key must be {PUBLIC_KEY_SIZE} raw bytes",
            hint="load pinned keys with strongroom.sealing.load_signer_public_key",
        )
