"""Egress for an app whose manifest asks for it, through the host's egress proxy.

An app has no network: its jail has a network namespace of its own with only
a loopback, and seccomp refuses every socket family but ``AF_UNIX``. When its
manifest declares egress (``egress = ["api.example.com:443"]``), the jail
also allows ``AF_INET``/``AF_INET6`` (still only that loopback), brings the
loopback up, and listens on :data:`APP_PROXY_PORT` there; the listening socket
is handed to the server, which answers on it as an HTTP ``CONNECT`` proxy
(:func:`serve_app_egress`): every tunnel must name a destination the manifest
declares, and goes through the enclave's egress path, where the host's
allowlist has the last word. The app finds the proxy where HTTP clients look
(``HTTPS_PROXY``). TLS is end to end: the enclave never sees inside it.

Two checks happen before the run gets its key (:func:`check_app_egress`): the
key service's own destination is never an app's (that channel is the
server's), and every declared destination must be one the host's egress
proxy allows — a run the host has not allowed fails at once, with the command
that allows it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Collection

from strongroom.errors import AccessDeniedError, StrongroomError, UnavailableError
from strongroom.transport.base import Address
from strongroom.transport.connect import format_response, parse_connect, read_head
from strongroom.transport.forward import (
    STREAM_LIMIT,
    TunnelRefusedError,
    close,
    open_tunnel,
    splice,
)

#: Where, on the jail's own loopback, the app's CONNECT proxy listens.
APP_PROXY_PORT = 3128
APP_PROXY_URL = f"http://127.0.0.1:{APP_PROXY_PORT}"
#: The variables HTTP clients read (curl and Python read either case).
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
#: How long the app may take to send its CONNECT line and headers.
HEAD_TIMEOUT_S = 10.0

Destination = tuple[str, int]


def proxy_environment() -> dict[str, str]:
    return dict.fromkeys(PROXY_VARIABLES, APP_PROXY_URL)


async def check_app_egress(
    declared: Collection[Destination],
    egress: Address | None,
    key_service: Destination | None,
) -> None:
    """Refuse a run whose declared egress the host does not allow (before any key)."""
    for host, port in declared:
        if (host, port) == key_service:
            raise AccessDeniedError(
                f"the app declares egress to {host}:{port}, the key service's address: "
                "that channel is the enclave server's, never an app's",
                hint="the vendor removes it from the app's strongroom.toml",
            )
    if egress is None:
        raise UnavailableError(
            "the app needs network egress, and this enclave has no egress path",
            hint="start the enclave with an egress path (the local target always has one)",
        )
    for host, port in declared:
        try:
            _, writer = await open_tunnel(egress, host, port)
        except TunnelRefusedError as e:
            if e.status == 403:
                raise AccessDeniedError(
                    f"the app needs egress to {host}:{port}, which the host's egress proxy "
                    "does not allow",
                    hint=f"allow it: strongroom proxy stop; strongroom proxy start --allow kms "
                    f"--allow {host}:{port}",
                ) from e
            raise UnavailableError(
                f"the app needs egress to {host}:{port}, which cannot be reached: {e.message}",
                hint="start the egress proxy on the host: `strongroom proxy start --allow ...`"
                if e.status == 503
                else None,
            ) from e
        await close(writer)


async def serve_app_egress(
    listener: socket.socket, egress: Address, declared: Collection[Destination]
) -> asyncio.Server:
    """Answer ``CONNECT`` on the jail's ``listener`` for the declared destinations only."""
    allowed = frozenset(declared)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                request = parse_connect(await read_head(reader))
        except (StrongroomError, TimeoutError, OSError):
            await _answer(writer, 400, "send CONNECT host:port HTTP/1.1")
            return
        if (request.host, request.port) not in allowed:
            declared_list = ", ".join(f"{h}:{p}" for h, p in sorted(allowed))
            await _answer(writer, 403, f"not in the app's manifest ({declared_list})")
            return
        try:
            tunnel = await open_tunnel(egress, request.host, request.port)
        except TunnelRefusedError as e:
            await _answer(writer, e.status, e.message)
            return
        except StrongroomError as e:
            await _answer(writer, 502, e.message)
            return
        writer.write(format_response(200))
        try:
            await writer.drain()
        except OSError:
            await close(tunnel[1])
            await close(writer)
            return
        await splice((reader, writer), tunnel)

    listener.setblocking(False)
    return await asyncio.start_server(handle, sock=listener, limit=STREAM_LIMIT)


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    try:
        writer.write(format_response(status, message))
        await writer.drain()
    except OSError:
        pass
    await close(writer)


__all__ = [
    "APP_PROXY_PORT",
    "APP_PROXY_URL",
    "check_app_egress",
    "proxy_environment",
    "serve_app_egress",
]
