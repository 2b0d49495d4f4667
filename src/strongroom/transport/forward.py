"""Asyncio byte forwarders: the pipes of the egress path.

Inside the enclave, :func:`serve_forward` listens on the sandbox's own
loopback (there is no other interface) and turns every accepted connection
into a tunnel through the egress socket: it sends ``CONNECT host:port`` and,
once the host side answers 200, pipes bytes both ways. A program in the
enclave therefore needs no proxy support: boto3 with
``endpoint_url="http://127.0.0.1:8000"`` reaches the key service the host
allowlisted (:data:`KMS_LOCAL_PORT`, as with Nitro's ``vsock-proxy 8000``).

:func:`splice` is the one pipe every hop uses (in-enclave forwarder, the
host-side relay of each enclave, the egress proxy). It keeps backpressure
(it awaits ``drain()`` after every chunk, so a slow reader stalls the writer
instead of filling memory) and half-close (EOF in one direction is passed on
with ``write_eof`` while the other direction keeps flowing), and it closes
both connections when either fails.

This module runs inside the enclave and on the host; it imports nothing
host-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from strongroom.errors import StrongroomError, UnavailableError
from strongroom.transport.base import Address, TcpAddress, UnixAddress
from strongroom.transport.connect import format_connect, parse_status, read_head

#: Inside the enclave, the key service is at ``http://127.0.0.1:8000``.
KMS_LOCAL_PORT = 8000
#: Read size of the pipes, and the buffer limit of their streams.
CHUNK = 64 * 1024
STREAM_LIMIT = 64 * 1024
#: How long a hop waits for the next hop's answer to a CONNECT.
TUNNEL_TIMEOUT_S = 15.0
_REFUSAL_BODY_MAX = 512

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class TunnelRefusedError(UnavailableError):
    """The egress path answered a CONNECT with something other than 200."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


async def open_stream(address: Address) -> Stream:
    """An asyncio stream connected to ``address`` (unix, vsock or TCP)."""
    try:
        if isinstance(address, UnixAddress):
            return await asyncio.open_unix_connection(address.path, limit=STREAM_LIMIT)
        if isinstance(address, TcpAddress):
            return await asyncio.open_connection(address.host, address.port, limit=STREAM_LIMIT)
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (address.cid, address.port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
    except OSError as e:
        raise UnavailableError(f"cannot connect to {address}: {e.strerror or e}") from e


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``."""
    while chunk := await reader.read(CHUNK):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def splice(a: Stream, b: Stream) -> None:
    """Pipe ``a`` ⇄ ``b`` until both directions ended (or one failed); close both."""
    tasks = [asyncio.create_task(pipe(a[0], b[1])), asyncio.create_task(pipe(b[0], a[1]))]
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
    except OSError:
        pass  # a reset or broken pipe on either side ends the tunnel
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close(a[1])
        await close(b[1])


async def open_tunnel(
    egress: Address, host: str, port: int, *, headers: dict[str, str] | None = None
) -> Stream:
    """Connect to ``egress`` and ask it for a tunnel to ``host:port``.

    Raises :class:`TunnelRefusedError` with the answer's status (403: the
    allowlist said no; 502/504: the destination did not answer; 503: the
    egress proxy is not running).
    """
    reader, writer = await open_stream(egress)
    body = b""
    try:
        writer.write(format_connect(host, port, headers))
        await writer.drain()
        async with asyncio.timeout(TUNNEL_TIMEOUT_S):
            status = parse_status(await read_head(reader))
            if status != 200:
                body = await reader.read(_REFUSAL_BODY_MAX)
    except (OSError, TimeoutError, StrongroomError) as e:
        await close(writer)
        if isinstance(e, StrongroomError):
            raise
        raise UnavailableError(f"no answer from the egress path at {egress}: {e}") from e
    if status != 200:
        await close(writer)
        detail = body.decode("utf-8", "replace").strip()
        raise TunnelRefusedError(
            f"egress to {host}:{port} refused ({status}): {detail}", status=status
        )
    return reader, writer


async def serve_forward(
    listen: TcpAddress, egress: Address, destination: tuple[str, int]
) -> asyncio.Server:
    """Listen on ``listen``; tunnel each connection through ``egress`` to ``destination``.

    A connection whose tunnel is refused is closed without a byte: the
    forwarder cannot know the client's protocol, so it cannot answer in it.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            tunnel = await open_tunnel(egress, *destination)
        except StrongroomError:
            await close(writer)
            return
        await splice((reader, writer), tunnel)

    return await asyncio.start_server(handle, listen.host, listen.port, limit=STREAM_LIMIT)
