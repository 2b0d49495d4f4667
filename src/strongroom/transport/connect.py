"""HTTP ``CONNECT`` heads: the only HTTP the egress path itself parses.

The egress path is a chain of byte pipes, and each tunnel starts with one
request head (``CONNECT host:port HTTP/1.1``) and one response head
(``HTTP/1.1 200 …``). Everything after the heads is opaque bytes (TLS, or
the KMS JSON protocol) that no hop interprets.

Heads are untrusted input from the enclave. The parser accepts only the
authority form (``host:port``, ``[v6]:port``), a port in 1–65535, a host made
of hostname or IP-literal characters, ``HTTP/1.0`` or ``HTTP/1.1``, and at most
:data:`MAX_HEAD` bytes, and reports each refusal with the HTTP status to
answer.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from strongroom.errors import InvalidInputError

#: Longest request or response head accepted, terminator included.
MAX_HEAD = 8 * 1024
HEAD_END: Final = b"\r\n\r\n"
#: Set by the host-side relay of each enclave; the proxy logs it. An enclave
#: cannot set it: the relay re-writes every head from the parsed destination.
ENCLAVE_HEADER: Final = "Strongroom-Enclave"

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class HeadError(InvalidInputError):
    """A malformed head; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ConnectRequest:
    host: str
    port: int
    headers: MappingProxyType[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def check_host(host: str) -> str:
    """Return ``host`` lower-cased if it is a hostname or an IP literal, else raise HeadError."""
    if ":" in host:
        if not _IPV6_RE.match(host):
            raise HeadError(f"invalid IPv6 host {host!r}")
    elif not _HOSTNAME_RE.match(host):
        raise HeadError(f"invalid host {host[:64]!r}")
    return host.lower()


def parse_authority(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise HeadError(f"no port in {text[:80]!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise HeadError(f"invalid IPv6 host in {text[:80]!r}")
    elif ":" in host:
        raise HeadError(f"IPv6 hosts must be in brackets: {text[:80]!r}")
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) <= 65535:
        raise HeadError(f"invalid port in {text[:80]!r}")
    return check_host(host), int(port_text)


def _lines(head: bytes) -> list[str]:
    if len(head) > MAX_HEAD:
        raise HeadError(f"head longer than {MAX_HEAD} bytes", status=431)
    if not head.endswith(HEAD_END):
        raise HeadError("incomplete head")
    try:
        text = head[: -len(HEAD_END)].decode("ascii")
    except UnicodeDecodeError as e:
        raise HeadError("non-ASCII bytes in head") from e
    return text.split("\r\n")


def parse_connect(head: bytes) -> ConnectRequest:
    """Parse a complete request head (terminator included)."""
    request_line, *header_lines = _lines(head)
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise HeadError(f"malformed request line {request_line[:80]!r}")
    method, authority, version = parts
    if method != "CONNECT":
        raise HeadError(f"only CONNECT is supported, not {method[:16]!r}", status=405)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(f"unsupported version {version[:16]!r}")
    host, port = parse_authority(authority)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN_RE.match(name):
            raise HeadError(f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return ConnectRequest(host, port, MappingProxyType(headers))


def format_connect(host: str, port: int, headers: dict[str, str] | None = None) -> bytes:
    """A canonical CONNECT head for ``host:port`` (validated), with extra ``headers``."""
    if not 0 < port <= 65535:
        raise HeadError(f"invalid port {port}")
    authority = ConnectRequest(check_host(host), port).destination
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    for name, value in (headers or {}).items():
        if not _TOKEN_RE.match(name) or any(c in value for c in "\r\n"):
            raise HeadError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines)).encode("ascii") + HEAD_END


def parse_status(head: bytes) -> int:
    """The status code of a complete response head."""
    status_line = _lines(head)[0]
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
        raise HeadError(f"malformed status line {status_line[:80]!r}", status=502)
    return int(code)


def format_response(status: int, message: str = "") -> bytes:
    """A response head (with a short text body unless it is the 200 that opens the tunnel)."""
    reason = _REASONS.get(status, "Error")
    if status == 200:
        return f"HTTP/1.1 200 {reason}".encode("ascii") + HEAD_END
    body = (message or reason).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close"
    )
    return head.encode("ascii") + HEAD_END + body


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """Read up to and including the blank line; bytes after it stay in ``reader``.

    The reader's own limit (:data:`~strongroom.transport.forward.STREAM_LIMIT`)
    bounds the memory spent; :func:`parse_connect` and :func:`parse_status`
    then refuse anything longer than :data:`MAX_HEAD`.
    """
    try:
        return await reader.readuntil(HEAD_END)
    except asyncio.LimitOverrunError as e:
        raise HeadError(f"head longer than {MAX_HEAD} bytes", status=431) from e
    except asyncio.IncompleteReadError as e:
        raise HeadError("connection closed before the end of the head") from e
