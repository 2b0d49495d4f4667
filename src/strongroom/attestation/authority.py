"""The local attestation authority: a workspace CA that signs Nitro-format documents.

On the local target there is no Nitro hypervisor, so the enclave runtime asks
this authority for documents instead. Its PKI has the shape of Nitro's, with
the same algorithms (P-384 keys, ecdsa-with-SHA384)::

    root          self-signed, CA, 20 years             (the pinned "local" anchor)
     └ intermediate  CA, pathlen 0, 30 days, renewed when fewer than 10 days remain
        └ leaf         one per document, 3 hours, digitalSignature only

and its documents carry ``cabundle = [root, intermediate]`` — so
:func:`strongroom.attestation.verify.verify` accepts them with exactly the code
path it uses for real Nitro documents; only the pinned anchor differs.

Invariants:

- private keys live in files of mode 0600 written atomically (certificates
  0644) in a directory of mode 0700;
- the root key only issues intermediates, the intermediate key only issues
  leaves, and a leaf key signs one document and is then dropped;
- creating the root and renewing the intermediate happen under an exclusive
  lock on the CA directory, so concurrent processes agree on one root and one
  current intermediate; an existing but damaged root is an error, never
  silently replaced (that would invalidate every pinned copy of it).

This is *not* a security boundary against root on the same machine: whoever
can read the workspace can sign documents. It exists so vendors and CI can
exercise the real protocol without AWS.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from strongroom._internal.files import PUBLIC_MODE, atomic_write, locked, write_secret
from strongroom.attestation._time import to_ms, utc
from strongroom.attestation.document import sign_document
from strongroom.errors import ConfigError, NotFoundError

ROOT_KEY_FILE = "root.key"
ROOT_CERT_FILE = "root.pem"
INTERMEDIATE_KEY_FILE = "intermediate.key"
INTERMEDIATE_CERT_FILE = "intermediate.pem"
LOCK_FILE = ".lock"
CA_DIR_MODE = 0o700

ROOT_LIFETIME = timedelta(days=20 * 365)
INTERMEDIATE_LIFETIME = timedelta(days=30)
#: Renew the intermediate when less than this much of its life remains.
INTERMEDIATE_RENEWAL = timedelta(days=10)
LEAF_LIFETIME = timedelta(hours=3)
#: CA certificates start this long before their creation, to tolerate clock skew.
CA_BACKDATE = timedelta(hours=1)
#: X.509 caps a commonName at 64 characters.
_MAX_COMMON_NAME = 64

ROOT_COMMON_NAME = "strongroom-local-root"
INTERMEDIATE_COMMON_NAME = "strongroom-local-intermediate"
ORGANIZATION = "Strongroom"
_RESET_HINT = (
    "restore the CA directory from a backup, or delete it to create a new local root "
    "(documents and pins made under the old root will no longer verify)"
)


def read_root_certificate(ca_dir: Path) -> x509.Certificate:
    """The workspace root certificate, without creating anything."""
    path = ca_dir / ROOT_CERT_FILE
    if not path.exists():
        raise NotFoundError(
            f"no local attestation root at {path}",
            hint="run `strongroom init` (or start the local enclave once) to create the local CA",
        )
    return _read_certificate(path)


@dataclass(frozen=True)
class _Issuer:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


class LocalAuthority:
    """Signs attestation documents under the workspace CA (see the module docstring)."""

    def __init__(self, ca_dir: Path, root: _Issuer, intermediate: _Issuer) -> None:
        self._ca_dir = ca_dir
        self._root = root
        self._intermediate = intermediate
        self._lock = threading.Lock()

    @classmethod
    def open_or_create(cls, ca_dir: Path, *, now: datetime | None = None) -> LocalAuthority:
        """Open the CA in ``ca_dir``, creating the root and intermediate if needed."""
        at = utc(now)
        ca_dir.mkdir(mode=CA_DIR_MODE, parents=True, exist_ok=True)
        with locked(ca_dir / LOCK_FILE):
            root = _load_issuer(ca_dir, ROOT_KEY_FILE, ROOT_CERT_FILE)
            if root is None:
                root = _create_root(ca_dir, at)
            intermediate = _current_intermediate(ca_dir, root, at)
        return cls(ca_dir, root, intermediate)

    def root_certificate(self) -> x509.Certificate:
        """The root to pin as the ``local`` trust anchor."""
        return self._root.certificate

    def intermediate_certificate(self, *, now: datetime | None = None) -> x509.Certificate:
        """The intermediate that signs leaves at ``now`` (renewed first if due)."""
        return self._intermediate_at(utc(now)).certificate

    def attest(
        self,
        pcrs: Mapping[int, bytes],
        *,
        module_id: str,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """Issue a fresh leaf and return a signed, untagged COSE_Sign1 document."""
        at = utc(now)
        intermediate = self._intermediate_at(at)
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        not_before = at.replace(microsecond=0)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(module_id[:_MAX_COMMON_NAME] or "enclave"))
            .issuer_name(intermediate.certificate.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .sign(intermediate.key, hashes.SHA384())
        )
        return sign_document(
            module_id=module_id,
            timestamp=to_ms(at),
            pcrs=pcrs,
            certificate=_der(leaf),
            cabundle=[_der(self._root.certificate), _der(intermediate.certificate)],
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
            signing_key=leaf_key,
        )

    def _intermediate_at(self, at: datetime) -> _Issuer:
        with self._lock:
            if _needs_renewal(self._intermediate.certificate, at):
                with locked(self._ca_dir / LOCK_FILE):
                    self._intermediate = _current_intermediate(self._ca_dir, self._root, at)
            return self._intermediate


class AuthorityAttestor:
    """An :class:`~strongroom.attestation.base.Attestor` backed by a :class:`LocalAuthority`.

    The PCRs and module id are fixed when the enclave is launched (the runtime
    measures the image); a request from inside the enclave supplies only the
    public key, user data and nonce, exactly as with ``/dev/nsm``.
    """

    def __init__(
        self, authority: LocalAuthority, pcrs: Mapping[int, bytes], module_id: str
    ) -> None:
        self._authority = authority
        self._pcrs = MappingProxyType(dict(pcrs))
        self._module_id = module_id

    def attest(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        return self._authority.attest(
            self._pcrs,
            module_id=self._module_id,
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )


def _create_root(ca_dir: Path, at: datetime) -> _Issuer:
    key = ec.generate_private_key(ec.SECP384R1())
    subject = _name(ROOT_COMMON_NAME, unit=os.urandom(8).hex())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - CA_BACKDATE)
        .not_valid_after(at + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return _store_issuer(ca_dir, ROOT_KEY_FILE, ROOT_CERT_FILE, _Issuer(key, certificate))


def _current_intermediate(ca_dir: Path, root: _Issuer, at: datetime) -> _Issuer:
    """The stored intermediate if it is sound and not due, else a newly issued one."""
    stored = _load_issuer(ca_dir, INTERMEDIATE_KEY_FILE, INTERMEDIATE_CERT_FILE)
    if stored is not None and not _needs_renewal(stored.certificate, at):
        try:
            stored.certificate.verify_directly_issued_by(root.certificate)
        except (ValueError, TypeError, InvalidSignature):
            pass
        else:
            return stored
    key = ec.generate_private_key(ec.SECP384R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(INTERMEDIATE_COMMON_NAME))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - CA_BACKDATE)
        .not_valid_after(at + INTERMEDIATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
            critical=False,
        )
        .sign(root.key, hashes.SHA384())
    )
    return _store_issuer(
        ca_dir, INTERMEDIATE_KEY_FILE, INTERMEDIATE_CERT_FILE, _Issuer(key, certificate)
    )


def _needs_renewal(certificate: x509.Certificate, at: datetime) -> bool:
    return (
        at < certificate.not_valid_before_utc
        or certificate.not_valid_after_utc - at < INTERMEDIATE_RENEWAL
    )


def _load_issuer(ca_dir: Path, key_file: str, cert_file: str) -> _Issuer | None:
    key_path, cert_path = ca_dir / key_file, ca_dir / cert_file
    if not key_path.exists() and not cert_path.exists():
        return None
    if not key_path.exists() or not cert_path.exists():
        raise ConfigError(
            f"local CA is incomplete: {key_path.name} and {cert_path.name} must both exist",
            hint=_RESET_HINT,
        )
    certificate = _read_certificate(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"local CA key {key_path} is unreadable: {exc}", hint=_RESET_HINT
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ConfigError(f"local CA key {key_path} is not a P-384 key", hint=_RESET_HINT)
    if key.public_key() != certificate.public_key():
        raise ConfigError(
            f"local CA key {key_path} does not belong to {cert_path.name}", hint=_RESET_HINT
        )
    return _Issuer(key, certificate)


def _store_issuer(ca_dir: Path, key_file: str, cert_file: str, issuer: _Issuer) -> _Issuer:
    key_pem = issuer.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(ca_dir / key_file, key_pem)
    atomic_write(
        ca_dir / cert_file,
        issuer.certificate.public_bytes(serialization.Encoding.PEM),
        mode=PUBLIC_MODE,
    )
    return issuer


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"local CA certificate {path} is unreadable: {exc}") from exc


def _name(common_name: str, *, unit: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
    ]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(attributes)


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)
