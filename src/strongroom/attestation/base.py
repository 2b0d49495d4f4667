"""The Attestor interface: how code inside an enclave obtains an attestation document.

The enclave cannot choose its own measurements: those are fixed by whoever
launched it (the Nitro hypervisor, or the local runtime that measured the
image). A request supplies only what the enclave may bind into the document —
a public key, user data and a nonce — and gets back the raw COSE_Sign1 bytes,
which the enclave passes on unparsed (to a key service, to a client).

Implementations:

- :class:`strongroom.attestation.nsm.NsmAttestor` — ``/dev/nsm`` in a Nitro enclave;
- :class:`strongroom.attestation.authority.AuthorityAttestor` — the local
  attestation authority with the PCRs measured at launch (the host-side
  attestor service of the local target wraps it).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Attestor(Protocol):
    """Produce a signed attestation document binding the given values."""

    def attest(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        """Return the raw (untagged) COSE_Sign1 document; each field at most 1024 bytes."""
        ...
