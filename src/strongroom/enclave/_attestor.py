"""The host side of the local attestor socket: an NSM that signs with the workspace CA.

The enclave sends the NSM device's CBOR requests, one length-prefixed frame
each (:mod:`strongroom.transport.framing`); this service answers as
``/dev/nsm`` would. Only ``Attestation`` is served; it binds the request's
``public_key``, ``user_data`` and ``nonce`` (each at most 1024 bytes, any other
field refused) into a document whose PCRs and module id were fixed by the
supervisor when it measured the image (:class:`AuthorityAttestor`). Nothing
in a request can change them. Other requests are answered
``{"Error": "InvalidOperation"}``, malformed ones ``{"Error": "InvalidArgument"}``,
oversized ones ``{"Error": "InputTooLarge"}``.

Requests are decoded with the attestation package's strict CBOR reader, since
they are untrusted input from the enclave.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import cbor2

from strongroom.attestation import _cbor
from strongroom.attestation.authority import AuthorityAttestor
from strongroom.attestation.document import MAX_USER_FIELD_SIZE
from strongroom.errors import StrongroomError
from strongroom.transport.forward import close
from strongroom.transport.framing import (
    MAX_REQUEST,
    MAX_RESPONSE,
    FrameError,
    FrameTooLargeError,
    read_frame,
    write_frame,
)

_ATTESTATION_FIELDS = frozenset({"public_key", "user_data", "nonce"})


def _error(code: str) -> bytes:
    return cbor2.dumps({"Error": code})


def _attestation_fields(request: Any) -> dict[str, bytes | None] | None:
    """The fields of a well-formed Attestation request, else None."""
    if not isinstance(request, dict) or set(request) != {"Attestation"}:
        return None
    body = request["Attestation"]
    if not isinstance(body, dict) or not set(body) <= _ATTESTATION_FIELDS:
        return None
    fields: dict[str, bytes | None] = {}
    for name in _ATTESTATION_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, bytes) or len(value) > MAX_USER_FIELD_SIZE):
            return None
        fields[name] = value
    return fields


class AttestorService:
    """Answers NSM frames with documents from ``attestor``."""

    def __init__(self, attestor: AuthorityAttestor) -> None:
        self._attestor = attestor

    def respond(self, frame: bytes) -> bytes:
        try:
            request = _cbor.loads(frame, what="NSM request")
        except StrongroomError:
            return _error("InvalidArgument")
        if isinstance(request, str) or (
            isinstance(request, dict) and len(request) == 1 and "Attestation" not in request
        ):
            return _error("InvalidOperation")
        fields = _attestation_fields(request)
        if fields is None:
            return _error("InvalidArgument")
        document = self._attestor.attest(**fields)
        return cbor2.dumps({"Attestation": {"document": document}})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    frame = await read_frame(reader, max_size=MAX_REQUEST)
                except FrameTooLargeError:
                    await write_frame(writer, _error("InputTooLarge"), max_size=MAX_RESPONSE)
                    break
                except FrameError:
                    break  # truncated: the enclave closed the connection mid-frame
                if frame is None:
                    break
                # Signing generates a P-384 key: keep it off the event loop.
                response = await asyncio.to_thread(self.respond, frame)
                await write_frame(writer, response, max_size=MAX_RESPONSE)
        except OSError:
            pass  # the enclave went away mid-request
        finally:
            await close(writer)


async def serve_attestor(listener: socket.socket, service: AttestorService) -> asyncio.Server:
    return await asyncio.start_unix_server(service.handle, sock=listener)
