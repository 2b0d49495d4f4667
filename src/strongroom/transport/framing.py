"""Length-prefixed messages over a stream socket: ``u32 big-endian length ‖ payload``.

The local attestor speaks the NSM device's CBOR messages over a unix socket,
one request and one response per frame, so the enclave uses the same codec
as it would with ``/dev/nsm``. The NSM driver accepts requests of at most
4 KiB; :data:`MAX_REQUEST` keeps that limit so a local enclave cannot send
what a Nitro enclave could not. Responses (an attestation document with its
certificate chain) may be larger, up to :data:`MAX_RESPONSE`.

Both sides check the announced length *before* reading the payload, so a
peer cannot make the other allocate more than the limit.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from strongroom.errors import InvalidInputError, UnavailableError

#: The NSM driver's request limit (``NSM_REQUEST_MAX_SIZE``).
MAX_REQUEST = 4 * 1024
#: Generous for a document plus a chain of P-384 certificates.
MAX_RESPONSE = 64 * 1024
_HEADER = struct.Struct(">I")


class FrameError(InvalidInputError):
    """A frame was truncated or announced more bytes than allowed."""


class FrameTooLargeError(FrameError):
    """A frame is (or announced) more bytes than the limit."""


def encode_frame(payload: bytes, *, max_size: int) -> bytes:
    if len(payload) > max_size:
        raise FrameTooLargeError(
            f"message of {len(payload)} bytes exceeds the {max_size}-byte limit"
        )
    return _HEADER.pack(len(payload)) + payload


def _check_length(length: int, max_size: int) -> None:
    if length > max_size:
        raise FrameTooLargeError(f"peer announced a {length}-byte message (limit {max_size})")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise FrameError(f"connection closed after {len(chunks)} of {n} bytes")
        chunks += chunk
    return bytes(chunks)


def send_frame(sock: socket.socket, payload: bytes, *, max_size: int) -> None:
    """Write one frame on a blocking socket."""
    frame = encode_frame(payload, max_size=max_size)
    try:
        sock.sendall(frame)
    except OSError as e:
        raise UnavailableError(f"cannot send to the peer: {e.strerror or e}") from e


def recv_frame(sock: socket.socket, *, max_size: int) -> bytes:
    """Read one frame from a blocking socket."""
    try:
        (length,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
        _check_length(length, max_size)
        return _recv_exactly(sock, length)
    except OSError as e:
        raise UnavailableError(f"cannot read from the peer: {e.strerror or e}") from e


async def read_frame(reader: asyncio.StreamReader, *, max_size: int) -> bytes | None:
    """Read one frame; None if the peer closed the connection between frames."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise FrameError("connection closed inside a frame header") from e
    (length,) = _HEADER.unpack(header)
    _check_length(length, max_size)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise FrameError(f"connection closed after {len(e.partial)} of {length} bytes") from e


async def write_frame(writer: asyncio.StreamWriter, payload: bytes, *, max_size: int) -> None:
    writer.write(encode_frame(payload, max_size=max_size))
    await writer.drain()
