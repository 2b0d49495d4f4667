"""Parsing and writing the CONNECT heads of the egress path."""

from __future__ import annotations

import pytest

from strongroom.transport.connect import (
    MAX_HEAD,
    HeadError,
    format_connect,
    format_response,
    parse_authority,
    parse_connect,
    parse_status,
)


def test_parse_a_connect_head() -> None:
    request = parse_connect(
        b"CONNECT KMS.example.com:443 HTTP/1.1\r\nHost: x\r\nStrongroom-Enclave: e1\r\n\r\n"
    )
    assert (request.host, request.port) == ("kms.example.com", 443)
    assert request.headers["strongroom-enclave"] == "e1"
    assert request.destination == "kms.example.com:443"


def test_ipv6_destinations_need_brackets() -> None:
    assert parse_authority("[::1]:8000") == ("::1", 8000)
    assert parse_connect(b"CONNECT [::1]:80 HTTP/1.0\r\n\r\n").destination == "[::1]:80"
    with pytest.raises(HeadError, match="brackets"):
        parse_authority("::1:80")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 405),
        (b"CONNECT host:443 HTTP/2\r\n\r\n", 400),
        (b"CONNECT host:0 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT host:65536 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT host HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT ho st:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT h\xc3\xa9:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT host/../x:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT host:1 HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"CONNECT host:1 HTTP/1.1\r\n", 400),
        (b"CONNECT host:1 HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    ],
)
def test_malformed_heads_are_refused_with_a_status(head: bytes, status: int) -> None:
    with pytest.raises(HeadError) as excinfo:
        parse_connect(head)
    assert excinfo.value.status == status


def test_format_connect_round_trips_and_refuses_header_injection() -> None:
    head = format_connect("127.0.0.1", 8000, {"Strongroom-Enclave": "e1"})
    request = parse_connect(head)
    assert (request.host, request.port) == ("127.0.0.1", 8000)
    assert request.headers["strongroom-enclave"] == "e1"
    with pytest.raises(HeadError):
        format_connect("127.0.0.1", 8000, {"X": "a\r\nInjected: yes"})
    with pytest.raises(HeadError):
        format_connect("bad host", 80)


def test_responses() -> None:
    assert parse_status(format_response(200)) == 200
    denied = format_response(403, "not allowed")
    assert parse_status(denied.split(b"\r\n\r\n")[0] + b"\r\n\r\n") == 403
    assert denied.endswith(b"not allowed\n")
    with pytest.raises(HeadError):
        parse_status(b"SSH-2.0-OpenSSH\r\n\r\n")
