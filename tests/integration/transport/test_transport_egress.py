"""The egress path, hop by hop, with real sockets in one event loop.

in-enclave forwarder (TCP) → relay (unix, enclave side) → egress proxy (unix) → destination (TCP)
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from strongroom.transport.base import TcpAddress, UnixAddress, bind
from strongroom.transport.forward import TunnelRefusedError, close, open_tunnel, serve_forward
from strongroom.transport.proxy import Allowlist, AllowRule, EgressProxy, serve_relay


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Short: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sr-egress-") as directory:
        yield Path(directory)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything, then close after the client half-closes (tests half-close)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write(b"<eof seen>")
    await writer.drain()
    await close(writer)


@asynccontextmanager
async def egress_chain(sockdir: Path, allow_echo: bool) -> AsyncIterator[tuple[int, int, Path]]:
    """Yields (echo port, forwarder port, proxy log)."""
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    rules = (AllowRule("127.0.0.1", echo_port),) if allow_echo else ()
    log_path = sockdir / "egress.log"
    with log_path.open("a") as log:
        proxy_sock = bind(UnixAddress(str(sockdir / "proxy.sock")))
        proxy = await asyncio.start_unix_server(
            EgressProxy(Allowlist(rules), log).handle, sock=proxy_sock
        )
        relay = await serve_relay(
            bind(UnixAddress(str(sockdir / "egress.sock"))),
            UnixAddress(str(sockdir / "proxy.sock")),
            "e1",
        )
        forwarder = await serve_forward(
            TcpAddress("127.0.0.1", 0),
            UnixAddress(str(sockdir / "egress.sock")),
            ("127.0.0.1", echo_port),
        )
        forward_port = forwarder.sockets[0].getsockname()[1]
        try:
            yield echo_port, forward_port, log_path
        finally:
            for server in (forwarder, relay, proxy, echo):
                server.close()
                await server.wait_closed()


def _log(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_unmodified_client_reaches_an_allowlisted_destination(sockdir: Path) -> None:
    payload = os.urandom(4 * 1024 * 1024)  # several times every buffer: backpressure

    async def scenario() -> None:
        async with egress_chain(sockdir, allow_echo=True) as (echo_port, forward_port, log):
            reader, writer = await asyncio.open_connection("127.0.0.1", forward_port)

            async def send() -> None:
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()  # half-close: the answer must still come back

            sender = asyncio.create_task(send())
            received = await asyncio.wait_for(reader.read(), timeout=30)
            await sender
            await close(writer)
            assert received == payload + b"<eof seen>"
            entries = _log(log)
            assert [(e["enclave"], e["destination"], e["decision"]) for e in entries] == [
                ("e1", f"127.0.0.1:{echo_port}", "allow")
            ]

    asyncio.run(scenario())


def test_a_destination_off_the_allowlist_gets_403_and_is_logged(sockdir: Path) -> None:
    async def scenario() -> None:
        async with egress_chain(sockdir, allow_echo=False) as (echo_port, forward_port, log):
            egress = UnixAddress(str(sockdir / "egress.sock"))
            with pytest.raises(TunnelRefusedError) as excinfo:
                await open_tunnel(egress, "127.0.0.1", echo_port)
            assert excinfo.value.status == 403
            assert "not on the egress allowlist" in excinfo.value.message
            # Through the forwarder the client sees a closed connection, no bytes.
            reader, writer = await asyncio.open_connection("127.0.0.1", forward_port)
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""
            await close(writer)
            decisions = [(e["destination"], e["decision"]) for e in _log(log)]
            assert decisions == [(f"127.0.0.1:{echo_port}", "deny")] * 2

    asyncio.run(scenario())


def test_the_enclave_cannot_forge_its_name_nor_smuggle_a_second_request(sockdir: Path) -> None:
    async def scenario() -> None:
        async with egress_chain(sockdir, allow_echo=True) as (echo_port, _, log):
            reader, writer = await asyncio.open_unix_connection(str(sockdir / "egress.sock"))
            head = f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nStrongroom-Enclave: other\r\n\r\n"
            writer.write(head.encode() + b"payload right after the head")
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), timeout=10)
            await close(writer)
            assert answer.startswith(b"HTTP/1.1 200")
            assert answer.endswith(b"payload right after the head<eof seen>")
            assert _log(log)[0]["enclave"] == "e1"

    asyncio.run(scenario())


def test_bad_heads_and_unreachable_destinations(sockdir: Path) -> None:
    async def scenario() -> None:
        async with egress_chain(sockdir, allow_echo=True) as (echo_port, _, log):
            reader, writer = await asyncio.open_unix_connection(str(sockdir / "egress.sock"))
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 405")
            await close(writer)
        # The proxy allows a port where nothing listens any more: 502, logged as an error.
        async with egress_chain(sockdir, allow_echo=True) as (echo_port, _, log):
            pass
        rules = Allowlist((AllowRule("127.0.0.1", echo_port),))
        with log.open("a") as handle:
            server = await asyncio.start_unix_server(
                EgressProxy(rules, handle).handle, path=str(sockdir / "p2.sock")
            )
            with pytest.raises(TunnelRefusedError) as excinfo:
                await open_tunnel(UnixAddress(str(sockdir / "p2.sock")), "127.0.0.1", echo_port)
            server.close()
            await server.wait_closed()
        assert excinfo.value.status == 502
        assert _log(log)[-1]["decision"] == "error"

    asyncio.run(scenario())


def test_no_proxy_means_503(sockdir: Path) -> None:
    async def scenario() -> None:
        relay = await serve_relay(
            bind(UnixAddress(str(sockdir / "egress.sock"))),
            UnixAddress(str(sockdir / "no-proxy.sock")),
            "e1",
        )
        with pytest.raises(TunnelRefusedError) as excinfo:
            await open_tunnel(UnixAddress(str(sockdir / "egress.sock")), "127.0.0.1", 1)
        relay.close()
        await relay.wait_closed()
        assert excinfo.value.status == 503
        assert "strongroom proxy start" in excinfo.value.message

    asyncio.run(scenario())
