"""Addresses of Strongroom's channels, and plain sockets for them.

Every channel (the enclave API, the attestor, the egress path, the key
service) is named by one of three address types, written as text in
configuration and on the command line:

==================  ==========================================================
``unix:/path``      a unix stream socket (the local target's channels)
``vsock:CID:PORT``  an ``AF_VSOCK`` socket (Nitro: the enclave is a CID,
                    the parent instance is CID 3); ``-1`` means "any CID"
``HOST:PORT``       TCP (``[v6addr]:PORT`` for IPv6 literals)
==================  ==========================================================

:func:`bind` and :func:`connect` return plain, blocking :class:`socket.socket`
objects so that every layer above (uvicorn, httpx, asyncio forwarders) uses
the same code on both targets: the local target is the Nitro code path over
unix sockets instead of vsock.

Errors are ours: a malformed address is a :class:`~strongroom.errors.UsageError`;
a socket that cannot be reached is an :class:`~strongroom.errors.UnavailableError`.
This module runs on the host *and* inside the enclave; it imports nothing
host-only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from strongroom.errors import UnavailableError, UsageError

#: ``VMADDR_CID_ANY``: bind on every CID of this machine (written ``-1``).
VSOCK_CID_ANY = 0xFFFFFFFF
#: ``sizeof(sockaddr_un.sun_path)`` minus the terminating NUL.
UNIX_PATH_MAX = 107
DEFAULT_BACKLOG = 128
DEFAULT_CONNECT_TIMEOUT_S = 10.0
_MAX_PORT = 65535
_MAX_VSOCK = 0xFFFFFFFF


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class VsockAddress:
    cid: int
    port: int

    def __str__(self) -> str:
        cid = "-1" if self.cid == VSOCK_CID_ANY else str(self.cid)
        return f"vsock:{cid}:{self.port}"


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


Address = UnixAddress | VsockAddress | TcpAddress

_HINT = "write unix:/path/to.sock, vsock:CID:PORT or HOST:PORT"


def parse_address(text: str) -> Address:
    """Parse ``unix:/path``, ``vsock:CID:PORT`` or ``HOST:PORT``."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise UsageError(f"invalid unix socket address {text!r}", hint=_HINT)
        return UnixAddress(path)
    if text.startswith("vsock:"):
        cid_text, sep, port_text = text[len("vsock:") :].partition(":")
        cid = VSOCK_CID_ANY if cid_text == "-1" else _number(cid_text, _MAX_VSOCK, text)
        if not sep:
            raise UsageError(f"invalid vsock address {text!r}: no port", hint=_HINT)
        return VsockAddress(cid, _number(port_text, _MAX_VSOCK, text))
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise UsageError(f"invalid address {text!r}", hint=_HINT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"invalid address {text!r}: put IPv6 hosts in brackets", hint=_HINT)
    if not host or any(c.isspace() or c in "/[]@" for c in host):
        raise UsageError(f"invalid host in address {text!r}", hint=_HINT)
    return TcpAddress(host, _number(port_text, _MAX_PORT, text))


def _number(text: str, maximum: int, whole: str) -> int:
    if not text.isdigit() or len(text) > 10 or int(text) > maximum:
        raise UsageError(f"invalid number {text!r} in address {whole!r}", hint=_HINT)
    return int(text)


def _check_unix_path(path: str) -> None:
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise UsageError(
            f"unix socket path too long ({len(os.fsencode(path))} > {UNIX_PATH_MAX} bytes): {path}",
            hint="use a shorter workspace path (--home)",
        )


def _new_socket(address: Address) -> socket.socket:
    if isinstance(address, UnixAddress):
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if isinstance(address, VsockAddress):
        return socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM)


def bind(address: Address, *, backlog: int = DEFAULT_BACKLOG, mode: int = 0o600) -> socket.socket:
    """A listening socket on ``address``.

    A unix socket file left behind by a dead process is replaced; one that
    still accepts connections, or any other kind of file, is not. The socket
    file gets ``mode`` (only its owner may connect by default); keep it in a
    0700 directory so there is no window in which others could.
    """
    if isinstance(address, UnixAddress):
        _check_unix_path(address.path)
        _remove_stale_socket(Path(address.path))
    sock = _new_socket(address)
    try:
        if isinstance(address, TcpAddress):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host, address.port))
        elif isinstance(address, VsockAddress):
            sock.bind((address.cid, address.port))
        else:
            sock.bind(address.path)
            os.chmod(address.path, mode)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise UnavailableError(f"cannot listen on {address}: {e.strerror or e}") from e
    return sock


def _remove_stale_socket(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(
            f"{path} exists and is not a socket", hint="remove it or pick another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError:
        return
    finally:
        probe.close()
    raise UsageError(f"{path} is in use by another process", hint="stop that service first")


def connect(
    address: Address, *, timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S
) -> socket.socket:
    """A connected, blocking socket to ``address`` (``timeout`` bounds the connect only)."""
    try:
        if isinstance(address, TcpAddress):
            sock = socket.create_connection((address.host, address.port), timeout)
        else:
            if isinstance(address, UnixAddress):
                _check_unix_path(address.path)
            sock = _new_socket(address)
            try:
                sock.settimeout(timeout)
                sock.connect(
                    address.path
                    if isinstance(address, UnixAddress)
                    else (address.cid, address.port)
                )
            except BaseException:
                sock.close()
                raise
        sock.settimeout(None)
    except OSError as e:
        raise UnavailableError(f"cannot connect to {address}: {e.strerror or e}") from e
    return sock
