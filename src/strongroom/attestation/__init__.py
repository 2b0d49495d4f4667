"""Attestation: proving which enclave image is running, and releasing keys only to it.

Roles and the modules that play them:

==================  ===============================================================
``document``        the Nitro attestation document (COSE_Sign1 over a CBOR map):
                    strict parsing, and signing exactly as Nitro lays documents out
``verify``          the one verifier: chain to a pinned anchor, signature, then the
                    caller's expectations (PCRs, nonce, age, no debug mode)
``roots``           trust anchors: the AWS Nitro root G1 (package data, fingerprint
                    checked), the workspace's local root, or a pinned PEM file
``authority``       the local attestation authority (a workspace CA shaped like
                    Nitro's PKI) and its :class:`AuthorityAttestor`
``nsm``             ``/dev/nsm`` inside a real Nitro enclave: :class:`NsmAttestor`
``base``            the :class:`Attestor` interface both implement
``recipient``       the CMS envelope (CiphertextForRecipient) a key service seals to
                    the key in an attestation document
``release``         enclave side: ephemeral RSA key → attest → Decrypt with Recipient
                    → open the envelope
``service``         key-service side: verify a Recipient document, derive the
                    ``kms:RecipientAttestation:*`` condition values
``describe``        a JSON-ready description of a document for the CLI
==================  ===============================================================

The life of a document: bytes → :meth:`AttestationDocument.parse` (well formed,
nothing trusted) → :func:`authenticate` (made under a pinned root, at a given
time) → :func:`verify` (what the caller expects). Only the last state may be
acted on. Local and Nitro documents take the same path; only the pinned anchor
differs.
"""

from strongroom.attestation.base import Attestor
from strongroom.attestation.document import AttestationDocument, load_document, sign_document
from strongroom.attestation.errors import (
    AttestationFormatError,
    CertificateChainError,
    DebugEnclaveError,
    EnvelopeFormatError,
    FreshnessError,
    MeasurementMismatchError,
    NonceMismatchError,
    NsmError,
    NsmRequestError,
    SignatureError,
    UnsafeAttestationWarning,
)
from strongroom.attestation.roots import TrustAnchor, aws_root, load_anchor
from strongroom.attestation.verify import VerifiedDocument, authenticate, verify

__all__ = [
    "AttestationDocument",
    "AttestationFormatError",
    "Attestor",
    "CertificateChainError",
    "DebugEnclaveError",
    "EnvelopeFormatError",
    "FreshnessError",
    "MeasurementMismatchError",
    "NonceMismatchError",
    "NsmError",
    "NsmRequestError",
    "SignatureError",
    "TrustAnchor",
    "UnsafeAttestationWarning",
    "VerifiedDocument",
    "authenticate",
    "aws_root",
    "load_anchor",
    "load_document",
    "sign_document",
    "verify",
]
