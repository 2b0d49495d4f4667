"""A loopback TCP port that leads to a unix socket, for HTTP tools that speak TCP only.

The enclave API is served on a unix socket locally (vsock on Nitro);
schemathesis and its ``requests`` session open TCP connections. This relay
listens on ``127.0.0.1`` (an ephemeral port) and copies each connection's
bytes to and from a fresh connection to the socket, both ways, until either
side closes. Tests only: it adds nothing to the API but a hop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

_CHUNK = 256 * 1024


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _serve(listener: socket.socket, target: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(target)
        except OSError:
            conn.close()
            upstream.close()
            continue

        def relay(conn: socket.socket = conn, upstream: socket.socket = upstream) -> None:
            back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
            back.start()
            _pump(conn, upstream)
            back.join()
            conn.close()
            upstream.close()

        threading.Thread(target=relay, daemon=True).start()


@contextlib.contextmanager
def tcp_relay(unix_path: str) -> Iterator[str]:
    """``http://127.0.0.1:PORT``, leading to the HTTP server on ``unix_path``, while open."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, unix_path, stop), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)
