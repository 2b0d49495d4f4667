"""The enclave's attestor: ``/dev/nsm`` on Nitro, the host's attestor socket locally.

Both speak the same NSM CBOR messages through the same codec
(:mod:`strongroom.attestation.nsm`); only the transport differs. Locally each
request is one length-prefixed frame on a fresh connection to the attestor
socket (:mod:`strongroom.transport.framing`), and the host's attestor signs
with the PCRs it measured when it launched the enclave: a request can bind a
public key, user data and a nonce into a document, never choose its PCRs.
"""

from __future__ import annotations

from pathlib import Path

from strongroom.attestation.base import Attestor
from strongroom.attestation.nsm import NSM_DEVICE, NsmAttestor
from strongroom.transport.base import UnixAddress, connect
from strongroom.transport.framing import MAX_REQUEST, MAX_RESPONSE, recv_frame, send_frame

#: How long one attestation round trip may take (the host signs with a fresh P-384 key).
ATTESTOR_TIMEOUT_S = 30.0


class SocketNsmTransport:
    """An :class:`~strongroom.attestation.nsm.NsmTransport` over a unix socket."""

    def __init__(self, path: str) -> None:
        self.address = UnixAddress(path)

    def call(self, request: bytes) -> bytes:
        with connect(self.address) as sock:
            sock.settimeout(ATTESTOR_TIMEOUT_S)
            send_frame(sock, request, max_size=MAX_REQUEST)
            return recv_frame(sock, max_size=MAX_RESPONSE)


class SocketAttestor(NsmAttestor):
    """The local target's attestor: the NSM protocol over the attestor socket."""

    def __init__(self, path: str) -> None:
        super().__init__(SocketNsmTransport(path))


def default_attestor(socket_path: str) -> Attestor:
    """``/dev/nsm`` when it exists (a Nitro enclave), else the attestor socket."""
    if NSM_DEVICE.exists():
        return NsmAttestor.open(Path(NSM_DEVICE))
    return SocketAttestor(socket_path)
