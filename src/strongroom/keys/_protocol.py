"""uvicorn's HTTP protocol, bounded against a hostile local peer.

Any local user can connect to the key service's TCP port. uvicorn on its own
keeps a connection open for as long as its peer likes until the request's
headers are complete (``timeout_keep_alive`` only runs *between* requests),
so a few hundred connections that send half a request line hold that many
file descriptors forever and the next legitimate client finds none left.

Three rules fix that, in one small subclass of uvicorn's httptools protocol:

- **Request-read deadline.** A connection must deliver a whole request
  (request line, headers and body) within :data:`REQUEST_READ_TIMEOUT_S`
  of connecting, or of starting that request on a kept-alive connection;
  otherwise it is closed.
- **Connection cap.** At most ``max_connections`` connections are open. When a
  new one would exceed the cap, the oldest connection that is *waiting for a
  request* (half-open, or idle between requests) is closed to make room;
  connections with a request in progress are never shed. If none can be shed
  the new connection is refused. So a flood of slow connections costs its
  sender its own oldest connections, while a legitimate client, which sends
  its request at once, is served immediately.
- **Head size.** The request line and headers together may hold at most
  :data:`MAX_HEAD_BYTES`; httptools sets no limit of its own, and within the
  deadline a local peer could otherwise send gigabytes of headers.

``limit_concurrency`` (uvicorn's own cap, which answers 503 once reached) is
not used: it would make the flood deny service to everyone until it ended.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: A whole request must arrive within this many seconds.
REQUEST_READ_TIMEOUT_S = 5.0
#: Connections kept open at most (lowered to fit the process's file-descriptor limit).
MAX_CONNECTIONS = 512
#: File descriptors left for everything else (store files, logs, the listening socket).
RESERVED_FDS = 64
#: Largest request line plus headers (a signed KMS request needs about 1.5 KiB).
MAX_HEAD_BYTES = 32 * 1024


def connection_cap(wanted: int = MAX_CONNECTIONS) -> int:
    """``wanted``, or fewer if the file-descriptor limit would not allow that many."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - RESERVED_FDS))


class BoundedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a request-read deadline and a shedding connection cap.

    Set the cap on the class (``BoundedHttpProtocol.max_connections``) before
    the server starts; uvicorn makes one instance per connection.
    """

    max_connections = MAX_CONNECTIONS
    read_timeout_s = REQUEST_READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        #: True from a request's complete headers until its response is complete:
        #: a connection still sending its request line or headers may be shed.
        self._busy = False
        self._waiting_since = time.monotonic()
        self._head_bytes = 0

    # --- deadline ------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _too_slow(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    # --- uvicorn hooks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = time.monotonic()
        self._arm()
        if len(self.connections) > self.max_connections and not self._shed_one():
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._read_deadline is None:  # a new request on a kept-alive connection
            self._arm()

    def on_url(self, url: bytes) -> None:
        if self._within_head(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._within_head(len(name) + len(value)):
            super().on_header(name, value)

    def _within_head(self, size: int) -> bool:
        self._head_bytes += size
        if self._head_bytes <= MAX_HEAD_BYTES:
            return True
        if not self.transport.is_closing():
            self.transport.close()
        return False

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return  # cut off (head size, shed): never start the app
        self._busy = True
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if self.cycle is not None and not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._busy = False
        self._waiting_since = time.monotonic()

    # --- shedding -------------------------------------------------------------------

    def _shed_one(self) -> bool:
        """Close the longest-waiting connection without a request in progress."""
        victims = [
            c
            for c in self.connections
            if isinstance(c, BoundedHttpProtocol) and c is not self and not c._busy
        ]
        if not victims:
            return False
        oldest = min(victims, key=lambda c: c._waiting_since)
        oldest._disarm()
        oldest.transport.close()
        # uvicorn forgets it in connection_lost; count it gone now, for the next arrival
        self.connections.discard(oldest)
        return True
