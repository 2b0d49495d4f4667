"""httpx over any Strongroom address, for tests that want a second, independent client.

The product talks to the enclave API through :mod:`strongroom.transport.http`
(the standard library's http.client); tests that drive the API by hand use
httpx, whose behaviour owes nothing to ours, through this transport: an
httpcore network backend that ignores the URL's host and port and opens the
given :class:`~strongroom.transport.base.Address`.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterable, Iterator

import httpcore
import httpx

from strongroom.errors import UnavailableError
from strongroom.transport.base import Address, connect

_EXCEPTIONS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
}


@contextlib.contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """Re-raise httpcore's exceptions as the httpx ones a client expects."""
    try:
        yield
    except tuple(_EXCEPTIONS) as e:
        mapped = next(_EXCEPTIONS[cls] for cls in type(e).__mro__ if cls in _EXCEPTIONS)
        raise mapped(str(e), request=request) from e


class _SocketStream(httpcore.NetworkStream):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)
        except TimeoutError as e:
            raise httpcore.ReadTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.ReadError(str(e)) from e

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)
        except TimeoutError as e:
            raise httpcore.WriteTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.WriteError(str(e)) from e

    def close(self) -> None:
        self._sock.close()

    def get_extra_info(self, info: str) -> object:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # The pool asks before reusing an idle connection: readable means
            # the peer closed it (or sent garbage), so it must not be reused.
            if self._sock.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


class _AddressBackend(httpcore.NetworkBackend):
    """Opens ``address`` whatever host and port the request URL names."""

    def __init__(self, address: Address) -> None:
        self._address = address

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            return _SocketStream(connect(self._address, timeout=timeout))
        except UnavailableError as e:
            if isinstance(e.__cause__, TimeoutError):
                raise httpcore.ConnectTimeout(e.message) from e
            raise httpcore.ConnectError(e.message) from e

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return self.connect_tcp("", 0, timeout)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, response: httpcore.Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _mapped(self._request):
            yield from self._response.iter_stream()

    def close(self) -> None:
        self._response.close()


class SocketTransport(httpx.BaseTransport):
    """An httpx transport whose every connection goes to one address."""

    def __init__(self, address: Address, *, max_connections: int = 16) -> None:
        self.address = address
        self._pool = httpcore.ConnectionPool(
            network_backend=_AddressBackend(address), max_connections=max_connections
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped(request):
            response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def http_transport(address: Address) -> SocketTransport:
    """The transport for ``address``: ``httpx.Client(transport=..., base_url="http://x")``."""
    return SocketTransport(address)
