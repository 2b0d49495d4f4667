"""HTTP/1.1 over any Strongroom address: one small client for unix, vsock and TCP.

The enclave API (and the workspace's own STS endpoint) are HTTP on local
sockets. :class:`HttpClient` speaks to them through the standard library's
:mod:`http.client`, on sockets opened with
:func:`~strongroom.transport.base.connect`, so the vsock path, which has no
loopback on a development machine, is the very code the unix-socket tests
exercise.

Why not httpx: importing it costs ~70 ms, paid by every ``strongroom run``
(the CLI's run overhead budget is 150 ms all told), and its layers copy each
chunk of a transfer several times. :mod:`http.client` reads a large body
straight into the caller's buffer (:meth:`Response.readinto`) and writes a
body chunk with one ``sendall``.

Connections are kept alive and reused, one request at a time each; the pool
hands every thread its own. A reused connection the peer has closed in the
meantime is noticed before the request (it polls readable) and replaced; a
request that still finds it closed is retried once on a new connection when
its body can be sent again. Every socket or protocol failure is a
:class:`ChannelError`.

TLS is not offered: these channels are local sockets (or the vsock between an
enclave and its parent) and the enclave API authenticates its payloads itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import select
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from strongroom.errors import UnavailableError
from strongroom.transport.base import Address, connect

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Idle connections kept per client (push and pull use up to 8 at once).
MAX_IDLE_CONNECTIONS = 16
#: What ``iter_bytes`` reads at a time.
READ_CHUNK = 1024 * 1024

Body = bytes | Iterable[bytes] | None


class ChannelError(UnavailableError):
    """The connection failed: refused, reset, timed out or answered garbage."""


class _Connection(http.client.HTTPConnection):
    """An HTTP connection over a Strongroom address (whatever the Host header says)."""

    def __init__(self, address: Address, connect_timeout: float) -> None:
        super().__init__("localhost")
        self.address = address
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        try:
            self.sock = connect(self.address, timeout=self.connect_timeout)
        except UnavailableError as e:
            raise ChannelError(e.message) from e
        self.sock.settimeout(self.timeout)

    def set_timeout(self, seconds: float | None) -> None:
        self.timeout = seconds
        if self.sock is not None:
            self.sock.settimeout(seconds)

    def is_stale(self) -> bool:
        """Whether an idle connection cannot be reused: closed, or the peer closed it.

        An idle keep-alive connection has nothing to read; readable means EOF
        (the server's keep-alive timeout) or garbage.
        """
        if self.sock is None or self.sock.fileno() < 0:
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))


class Response:
    """A response whose body is read as the caller needs it; close it (or use ``with``)."""

    def __init__(self, raw: http.client.HTTPResponse, release: Any) -> None:
        self._raw = raw
        self._release = release
        self.status = raw.status

    def header(self, name: str) -> str | None:
        return self._raw.getheader(name)

    def read(self) -> bytes:
        with _mapped():
            return self._raw.read()

    def json(self) -> Any:
        """The body as JSON (``ValueError`` if it is not)."""
        return jsonlib.loads(self.read())

    def readinto(self, buffer: memoryview) -> int:
        """Read body bytes straight into ``buffer``; 0 at the end."""
        with _mapped():
            n = self._raw.readinto(buffer)
        if not n:
            self._check_complete()
        return n

    def iter_bytes(self, size: int = READ_CHUNK) -> Iterator[bytes]:
        with _mapped():
            while chunk := self._raw.read(size):
                yield chunk
        self._check_complete()

    def iter_lines(self) -> Iterator[bytes]:
        """Lines of a streamed body, each as soon as it arrives (NDJSON).

        Through ``read1``, not ``readline``: http.client's readline takes a
        chunked stream cut short for its end, and a run whose enclave died
        must not look like one that ended.
        """
        pending = b""
        with _mapped():
            while chunk := self._raw.read1(READ_CHUNK):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line + b"\n"
        self._check_complete()
        if pending:
            yield pending

    def _check_complete(self) -> None:
        """At the end of the bytes: refuse a body shorter than its Content-Length.

        http.client returns a short body as if it were whole (for compatibility);
        a download cut short must be a broken channel, not a short file.
        """
        if self._raw.length:
            raise ChannelError(f"the connection broke with {self._raw.length} bytes still due")

    def close(self) -> None:
        """Give the connection back for reuse if the body was read to its end, else drop it."""
        reusable = self._raw.isclosed() and not self._raw.will_close
        self._raw.close()
        self._release(reusable)

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpClient:
    """Requests to one address over kept-alive connections; safe to share between threads."""

    def __init__(
        self,
        address: Address,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        host: str = "localhost",
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.host = host
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Body = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send a request; return the response with its body unread.

        ``body`` is bytes or an iterable of chunks (sent as they come: give a
        ``content-length`` header to send them as is, else they are chunked).
        """
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        sent = {"host": self.host, **{k.lower(): v for k, v in (headers or {}).items()}}
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent["content-type"] = "application/json"
        replayable = body is None or isinstance(body, bytes)
        conn, reused = self._acquire()
        while True:
            conn.set_timeout(timeout or self.timeout)
            try:
                raw = self._send(conn, method, target, body, sent)
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if not (reused and replayable):
                    raise _channel_error(self.address, e) from e
                # a kept-alive connection the server closed just as we used it: once more
                conn, reused = self._new(), False
            except BaseException:
                conn.close()
                raise

        def release(reusable: bool) -> None:
            if reusable:
                with self._lock:
                    if len(self._idle) < MAX_IDLE_CONNECTIONS:
                        self._idle.append(conn)
                        return
            conn.close()

        return Response(raw, release)

    def _send(
        self, conn: _Connection, method: str, target: str, body: Body, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        try:
            conn.request(method, target, body=body, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _channel_error(self.address, e) from e

    def _acquire(self) -> tuple[_Connection, bool]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_stale():
                    return conn, True
                conn.close()
        return self._new(), False

    def _new(self) -> _Connection:
        return _Connection(self.address, self.connect_timeout)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _channel_error(address: Address, error: BaseException) -> ChannelError:
    if isinstance(error, ChannelError):
        return error
    if isinstance(error, TimeoutError):
        return ChannelError(f"{address} did not answer in time")
    return ChannelError(f"{address}: {error or type(error).__name__}")


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Re-raise socket and protocol failures while reading a body as :class:`ChannelError`."""
    try:
        yield
    except (OSError, http.client.HTTPException) as e:
        raise ChannelError(f"the connection broke: {e or type(e).__name__}") from e
