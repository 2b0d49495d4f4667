"""The HTTP client (and the tests' httpx transport) against a real uvicorn server; vsock binding."""

from __future__ import annotations

import asyncio
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from tests.socket_httpx import http_transport

from strongroom.transport.base import VSOCK_CID_ANY, UnixAddress, VsockAddress, bind
from strongroom.transport.http import ChannelError, HttpClient

#: The server closes a connection idle this long; the client must notice.
KEEP_ALIVE_S = 1


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"method": request.method, "body": (await request.body()).decode()})


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _i in range(100):
            yield b"x" * 10_000

    return StreamingResponse(chunks())


async def lines(request: Request) -> StreamingResponse:
    """Two NDJSON lines half a second apart: the first must reach the client before the second."""

    async def events() -> AsyncIterator[bytes]:
        yield b'{"n": 1}\n'
        await asyncio.sleep(0.5)
        yield b'{"n": 2}\n'

    return StreamingResponse(events())


async def upload(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"size": len(body), "chunked": "transfer-encoding" in request.headers})


@pytest.fixture
def server_socket() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sr-http-") as directory:
        path = Path(directory) / "api.sock"
        sock = bind(UnixAddress(str(path)))
        app = Starlette(
            routes=[
                Route("/echo", echo, methods=["GET", "POST"]),
                Route("/stream", stream),
                Route("/lines", lines),
                Route("/upload", upload, methods=["PUT"]),
            ]
        )
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        yield path
        server.should_exit = True
        thread.join(10)


def test_the_client_requests_and_reuses_connections(server_socket: Path) -> None:
    with HttpClient(UnixAddress(str(server_socket))) as client:
        with client.request("POST", "/echo", body=b"hello") as r:
            assert (r.status, r.json()) == (200, {"method": "POST", "body": "hello"})
        with client.request("POST", "/echo", json={"a": 1}) as r:
            assert r.json() == {"method": "POST", "body": '{"a": 1}'}
        for _ in range(3):
            with client.request("GET", "/echo", params={"q": "a b"}) as r:
                assert r.status == 200 and r.read()
        assert len(client._idle) == 1  # one kept-alive connection served them all


def test_the_client_replaces_a_connection_the_server_closed(server_socket: Path) -> None:
    with HttpClient(UnixAddress(str(server_socket))) as client:
        with client.request("GET", "/echo") as r:
            r.read()
        time.sleep(KEEP_ALIVE_S + 0.6)  # the server has closed the idle connection
        with client.request("GET", "/echo") as r:
            assert r.status == 200 and r.json()["method"] == "GET"


def test_the_client_streams_both_ways(server_socket: Path) -> None:
    with HttpClient(UnixAddress(str(server_socket))) as client:
        with client.request("GET", "/stream") as r:
            buffer = memoryview(bytearray(65536))
            total = 0
            while n := r.readinto(buffer):
                total += n
            assert total == 1_000_000
        chunks = [b"x" * 100_000] * 5
        with client.request("PUT", "/upload", body=iter(chunks)) as r:
            assert r.json() == {"size": 500_000, "chunked": True}
        with client.request(
            "PUT", "/upload", body=iter(chunks), headers={"content-length": "500000"}
        ) as r:
            assert r.json() == {"size": 500_000, "chunked": False}
        with client.request("GET", "/lines") as r:
            started = time.monotonic()
            received = r.iter_lines()
            assert next(received) == b'{"n": 1}\n'
            assert time.monotonic() - started < 0.4  # not held back until the stream ended
            assert list(received) == [b'{"n": 2}\n']


def test_an_absent_server_is_a_channel_error(tmp_path: Path) -> None:
    with (
        HttpClient(UnixAddress(str(tmp_path / "nobody.sock"))) as client,
        pytest.raises(ChannelError, match=r"nobody\.sock"),
    ):
        client.request("GET", "/")


def test_the_tests_httpx_transport_requests_and_streams(server_socket: Path) -> None:
    transport = http_transport(UnixAddress(str(server_socket)))
    with httpx.Client(transport=transport, base_url="http://enclave") as client:
        assert client.post("/echo", content=b"hello").json() == {"method": "POST", "body": "hello"}
        for _ in range(3):  # kept-alive connections are reused
            assert client.get("/echo").status_code == 200
        with client.stream("GET", "/stream") as response:
            assert sum(len(chunk) for chunk in response.iter_bytes()) == 1_000_000


def test_vsock_addresses_bind() -> None:
    # Connecting needs a vsock transport (a Nitro parent, or vhost-vsock); binding does not.
    try:
        probe = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as e:
        pytest.skip(f"this kernel has no AF_VSOCK ({e.strerror})")
    probe.close()
    port = 50_000 + secrets.randbelow(10_000)
    with bind(VsockAddress(VSOCK_CID_ANY, port)) as listener:
        assert listener.family == socket.AF_VSOCK
        assert listener.getsockname() == (VSOCK_CID_ANY, port)
