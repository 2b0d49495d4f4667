"""Errors of the attestation component, each naming what is wrong.

Two families, as everywhere in Strongroom (see :mod:`strongroom.errors`):

- *malformed input* (:class:`AttestationFormatError`, :class:`EnvelopeFormatError`):
  the bytes are not an attestation document / CMS envelope of the expected
  shape. Nothing was verified yet.
- *bad evidence* (the :class:`~strongroom.errors.VerificationError` subclasses):
  the document is well formed but does not prove what the caller asked for —
  its chain does not lead to the pinned root, its signature is wrong, a PCR
  differs, it is stale, or it comes from a debug-mode enclave.
"""

from __future__ import annotations

from strongroom.errors import InvalidInputError, ServiceError, VerificationError


class AttestationFormatError(InvalidInputError):
    """An attestation document (or a field in it) is malformed."""

    default_hint = "the document must be a Nitro attestation document (COSE_Sign1, CBOR)"


class EnvelopeFormatError(InvalidInputError):
    """A CiphertextForRecipient CMS envelope is malformed or uses other algorithms."""

    default_hint = (
        "expected CMS EnvelopedData with RSAES-OAEP(SHA-256) key transport and AES-256-CBC"
    )


class CertificateChainError(VerificationError):
    """The certificate chain does not lead to the pinned trust anchor at the given time."""


class SignatureError(VerificationError):
    """The COSE_Sign1 signature does not verify with the leaf certificate's key."""


class MeasurementMismatchError(VerificationError):
    """A PCR in the document differs from the expected measurement."""


class NonceMismatchError(VerificationError):
    """The document does not carry the nonce the verifier asked for."""


class FreshnessError(VerificationError):
    """The document is older than allowed, or dated in the future."""


class DebugEnclaveError(VerificationError):
    """The document comes from a debug-mode enclave (PCR0..2 are zero)."""

    default_hint = (
        "debug-mode enclaves expose their memory to the parent instance; start the "
        "enclave without --debug (`strongroom enclave start`; nitro-cli: --debug-mode)"
    )


class NsmError(ServiceError):
    """The Nitro Secure Module failed a request on its side (internal error, bad response)."""

    def __init__(self, code: str, *, hint: str | None = None) -> None:
        super().__init__(f"the Nitro Secure Module failed the request: {code}", hint=hint)
        self.code = code


class NsmRequestError(InvalidInputError):
    """The Nitro Secure Module rejected a request as invalid (argument, index, size)."""

    def __init__(self, code: str, *, hint: str | None = None) -> None:
        super().__init__(f"the Nitro Secure Module rejected the request: {code}", hint=hint)
        self.code = code


class UnsafeAttestationWarning(UserWarning):
    """An ``unsafe_*`` option admitted a document that would otherwise be rejected."""
