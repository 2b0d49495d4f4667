"""Trust anchors: the roots a document's chain must end in, pinned by their DER bytes.

A verifier never trusts the root a document brings with it (``cabundle[0]``);
it compares that root byte for byte with an anchor chosen here:

- ``aws`` — the AWS Nitro Enclaves root G1, shipped as package data and checked
  against its published SHA-256 fingerprint every time it is loaded, so a
  modified installation fails loudly instead of trusting another root;
- ``local`` — the workspace's local attestation authority root
  (:mod:`strongroom.attestation.authority`);
- a path — any PEM (or DER) certificate the user pins explicitly.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from strongroom.attestation.authority import read_root_certificate
from strongroom.errors import ConfigError, InvalidInputError, NotFoundError, VerificationError

AWS_ROOT_RESOURCE = "roots/aws-nitro-enclaves-root-g1.pem"
#: SHA-256 of the DER encoding of the AWS Nitro Enclaves root G1.
AWS_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

ANCHOR_AWS = "aws"
ANCHOR_LOCAL = "local"


@dataclass(frozen=True)
class TrustAnchor:
    """A pinned root certificate and the name it is reported under."""

    certificate: x509.Certificate
    name: str

    @classmethod
    def of(cls, anchor: x509.Certificate | TrustAnchor) -> TrustAnchor:
        """``anchor`` itself, or a bare certificate named by its subject."""
        if isinstance(anchor, TrustAnchor):
            return anchor
        return cls(anchor, anchor.subject.rfc4514_string())

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


@functools.cache
def aws_root() -> x509.Certificate:
    """The AWS Nitro Enclaves root G1, after checking its fingerprint."""
    pem = resources.files("strongroom.attestation").joinpath(AWS_ROOT_RESOURCE).read_bytes()
    certificate = x509.load_pem_x509_certificate(pem)
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    if fingerprint != AWS_ROOT_SHA256:
        raise VerificationError(
            f"the shipped AWS Nitro root has fingerprint {fingerprint}, expected {AWS_ROOT_SHA256}",
            hint="the Strongroom installation was modified; reinstall it",
        )
    return certificate


def load_anchor(spec: str, workspace_ca_dir: Path | None) -> TrustAnchor:
    """Resolve an anchor spec: ``aws``, ``local`` (needs ``workspace_ca_dir``) or a path."""
    if spec == ANCHOR_AWS:
        return TrustAnchor(aws_root(), ANCHOR_AWS)
    if spec == ANCHOR_LOCAL:
        if workspace_ca_dir is None:
            raise ConfigError(
                "the local trust anchor needs a workspace",
                hint="run inside a workspace (`strongroom init`), or pass a PEM file instead",
            )
        return TrustAnchor(read_root_certificate(workspace_ca_dir), ANCHOR_LOCAL)
    return TrustAnchor(_read_certificate_file(Path(spec)), spec)


def _read_certificate_file(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"trust anchor {str(path)!r} is neither 'aws', 'local' nor an existing file"
        ) from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot read trust anchor {path}: {exc.strerror}") from exc
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise InvalidInputError(f"trust anchor {path} is not a certificate: {exc}") from exc
