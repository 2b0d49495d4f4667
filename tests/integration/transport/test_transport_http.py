"""httpx over our socket transport, against a real uvicorn server; vsock binding."""

from __future__ import annotations

import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from strongroom.transport.base import VSOCK_CID_ANY, UnixAddress, VsockAddress, bind
from strongroom.transport.http import http_transport


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"method": request.method, "body": (await request.body()).decode()})


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> object:
        for _i in range(100):
            yield b"x" * 10_000

    return StreamingResponse(chunks())  # type: ignore[arg-type]


@pytest.fixture
def server_socket() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sr-http-") as directory:
        path = Path(directory) / "api.sock"
        sock = bind(UnixAddress(str(path)))
        app = Starlette(
            routes=[Route("/echo", echo, methods=["GET", "POST"]), Route("/stream", stream)]
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        yield path
        server.should_exit = True
        thread.join(10)


def test_requests_and_streams_over_a_unix_socket(server_socket: Path) -> None:
    transport = http_transport(UnixAddress(str(server_socket)))
    with httpx.Client(transport=transport, base_url="http://enclave") as client:
        assert client.post("/echo", content=b"hello").json() == {"method": "POST", "body": "hello"}
        for _ in range(3):  # kept-alive connections are reused
            assert client.get("/echo").status_code == 200
        with client.stream("GET", "/stream") as response:
            assert sum(len(chunk) for chunk in response.iter_bytes()) == 1_000_000


def test_an_absent_server_is_an_httpx_connect_error(tmp_path: Path) -> None:
    transport = http_transport(UnixAddress(str(tmp_path / "nobody.sock")))
    with (
        httpx.Client(transport=transport, base_url="http://enclave") as client,
        pytest.raises(httpx.ConnectError, match=r"nobody\.sock"),
    ):
        client.get("/")


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
