"""Address parsing and the plain-socket helpers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from strongroom.errors import UnavailableError, UsageError
from strongroom.transport.base import (
    VSOCK_CID_ANY,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    bind,
    connect,
    parse_address,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/x.sock", UnixAddress("/run/x.sock")),
        ("unix:relative.sock", UnixAddress("relative.sock")),
        ("vsock:3:8000", VsockAddress(3, 8000)),
        ("vsock:-1:5005", VsockAddress(VSOCK_CID_ANY, 5005)),
        ("127.0.0.1:8000", TcpAddress("127.0.0.1", 8000)),
        ("kms.eu-west-1.amazonaws.com:443", TcpAddress("kms.eu-west-1.amazonaws.com", 443)),
        ("[::1]:0", TcpAddress("::1", 0)),
    ],
)
def test_parse_and_print_round_trip(text: str, expected: object) -> None:
    address = parse_address(text)
    assert address == expected
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(
    "text",
    [
        "",
        "unix:",
        "vsock:3",
        "vsock:x:1",
        "vsock:3:99999999999",
        "host",
        ":80",
        "host:",
        "host:http",
        "host:65536",
        "::1:80",
        "a b:80",
        "user@host:22",
        "[::1:80",
    ],
)
def test_malformed_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        parse_address(text)
    assert "unix:/path" in excinfo.value.hint


def test_bind_and_connect_over_unix(tmp_path: Path) -> None:
    address = UnixAddress(str(tmp_path / "s.sock"))
    with bind(address) as listener:
        assert (tmp_path / "s.sock").stat().st_mode & 0o777 == 0o600
        with connect(address) as client:
            server, _ = listener.accept()
            with server:
                client.sendall(b"ping")
                assert server.recv(4) == b"ping"


def test_bind_replaces_a_stale_socket_but_not_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with bind(UnixAddress(str(path))), pytest.raises(UsageError, match="in use"):
        bind(UnixAddress(str(path)))


def test_bind_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("keep me")
    with pytest.raises(UsageError, match="not a socket"):
        bind(UnixAddress(str(path)))
    assert path.read_text() == "keep me"


def test_too_long_unix_paths_are_refused_with_a_hint() -> None:
    with pytest.raises(UsageError, match="too long") as excinfo:
        connect(UnixAddress("/tmp/" + "x" * 200))
    assert "--home" in excinfo.value.hint


def test_connect_failure_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="cannot connect"):
        connect(UnixAddress(str(tmp_path / "nobody.sock")))


def test_bind_and_connect_over_tcp() -> None:
    with bind(TcpAddress("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with connect(TcpAddress("127.0.0.1", port), timeout=2) as client:
            server, _ = listener.accept()
            server.close()
            assert client.recv(1) == b""
