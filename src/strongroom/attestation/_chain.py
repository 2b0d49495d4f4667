"""Certificate path validation for attestation documents, as the Nitro specification asks.

The path is taken from the document, never searched for::

    certificate → cabundle[n-1] → … → cabundle[1] → the pinned anchor

and ``cabundle[0]`` must be byte-identical to the anchor: the root a document
brings is never trusted by itself. Links are checked from the anchor down, so
the first error names the highest broken link. For every certificate:

- valid at the verification time (the anchor included);
- no critical extension other than basicConstraints and keyUsage;
- CA certificates: basicConstraints CA=true, keyUsage keyCertSign, and a
  pathLenConstraint (if any) that allows the intermediates below them;
- the leaf: keyUsage digitalSignature, not a CA, a P-384 key;
- signed with ecdsa-with-SHA384 by the next certificate's P-384 key.

There is no revocation check: Nitro's PKI is short-lived by design (leaves
live 3 hours) and the specification tells verifiers not to use CRLs.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from strongroom.attestation.document import AttestationDocument
from strongroom.attestation.errors import CertificateChainError
from strongroom.attestation.roots import TrustAnchor

_ALLOWED_CRITICAL_EXTENSIONS = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
_ExtensionT = TypeVar("_ExtensionT", bound=x509.ExtensionType)


def validate_chain(
    document: AttestationDocument, anchor: TrustAnchor, at: datetime
) -> ec.EllipticCurvePublicKey:
    """Check the document's chain to ``anchor`` at ``at``; return the leaf's public key."""
    if document.cabundle[0] != anchor.der:
        bundled = _name(x509.load_der_x509_certificate(document.cabundle[0]))
        raise CertificateChainError(
            f"certificate chain: the document's root {bundled!r} is not the trust anchor "
            f"{anchor.name!r} ({_name(anchor.certificate)!r})",
            hint="pin the root this document was issued under, or get a document from "
            "an enclave attested by the expected authority",
        )
    intermediates = [x509.load_der_x509_certificate(der) for der in reversed(document.cabundle[1:])]
    path = [document.leaf_certificate(), *intermediates, anchor.certificate]
    for depth in range(len(path) - 1, -1, -1):
        certificate = path[depth]
        if depth < len(path) - 1:
            _check_issued_by(certificate, path[depth + 1])
        _check_validity(certificate, at)
        _check_extensions(certificate, depth)
    return _p384_key(path[0])


def _check_validity(certificate: x509.Certificate, at: datetime) -> None:
    if at < certificate.not_valid_before_utc:
        raise CertificateChainError(
            f"certificate chain: {_name(certificate)!r} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()} (checked at {at.isoformat()})"
        )
    if at > certificate.not_valid_after_utc:
        raise CertificateChainError(
            f"certificate chain: {_name(certificate)!r} expired at "
            f"{certificate.not_valid_after_utc.isoformat()} (checked at {at.isoformat()})"
        )


def _check_extensions(certificate: x509.Certificate, depth: int) -> None:
    """``depth`` 0 is the leaf; a CA at depth d has d - 1 intermediates below it."""
    name = _name(certificate)
    try:
        extensions = certificate.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise CertificateChainError(
            f"certificate chain: {name!r} has malformed extensions ({exc})"
        ) from exc
    for extension in extensions:
        if extension.critical and extension.oid not in _ALLOWED_CRITICAL_EXTENSIONS:
            raise CertificateChainError(
                f"certificate chain: {name!r} has an unsupported critical extension "
                f"{extension.oid.dotted_string}"
            )
    constraints = _extension(extensions, x509.BasicConstraints)
    usage = _extension(extensions, x509.KeyUsage)
    if depth == 0:
        if constraints is not None and constraints.ca:
            raise CertificateChainError(f"certificate chain: the leaf {name!r} is a CA certificate")
        if usage is None or not usage.digital_signature:
            raise CertificateChainError(
                f"certificate chain: the leaf {name!r} lacks the digitalSignature key usage"
            )
        return
    if constraints is None or not constraints.ca:
        raise CertificateChainError(f"certificate chain: {name!r} is not a CA certificate")
    if usage is None or not usage.key_cert_sign:
        raise CertificateChainError(f"certificate chain: {name!r} lacks the keyCertSign key usage")
    below = depth - 1
    if constraints.path_length is not None and constraints.path_length < below:
        raise CertificateChainError(
            f"certificate chain: {name!r} has pathLenConstraint {constraints.path_length} "
            f"but {below} intermediate CA(s) below it"
        )


def _check_issued_by(child: x509.Certificate, issuer: x509.Certificate) -> None:
    if child.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        raise CertificateChainError(
            f"certificate chain: {_name(child)!r} is signed with "
            f"{child.signature_algorithm_oid.dotted_string}, expected ecdsa-with-SHA384"
        )
    _p384_key(issuer)
    try:
        child.verify_directly_issued_by(issuer)
    except ValueError as exc:
        raise CertificateChainError(
            f"certificate chain: {_name(child)!r} was not issued by {_name(issuer)!r}"
        ) from exc
    except InvalidSignature as exc:
        raise CertificateChainError(
            f"certificate chain: the signature on {_name(child)!r} does not verify "
            f"with the key of {_name(issuer)!r}"
        ) from exc


def _p384_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateChainError(
            f"certificate chain: {_name(certificate)!r} has an unusable public key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise CertificateChainError(
            f"certificate chain: {_name(certificate)!r} does not have a P-384 key"
        )
    return key


def _extension(extensions: x509.Extensions, kind: type[_ExtensionT]) -> _ExtensionT | None:
    for extension in extensions:
        if isinstance(extension.value, kind):
            return extension.value
    return None


def _name(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string()
    except (ValueError, TypeError):
        return "<unprintable subject>"
