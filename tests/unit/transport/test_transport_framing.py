"""The length-prefixed frames that carry NSM messages over the attestor socket."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from strongroom.transport.framing import (
    MAX_REQUEST,
    FrameError,
    FrameTooLargeError,
    encode_frame,
    read_frame,
    recv_frame,
    send_frame,
)


def test_a_frame_is_a_big_endian_u32_length_then_the_payload() -> None:
    assert encode_frame(b"abc", max_size=10) == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"", max_size=10) == b"\x00\x00\x00\x00"


def test_frames_over_a_socket_pair() -> None:
    left, right = socket.socketpair()
    with left, right:
        send_frame(left, b"one", max_size=MAX_REQUEST)
        send_frame(left, b"x" * MAX_REQUEST, max_size=MAX_REQUEST)
        assert recv_frame(right, max_size=MAX_REQUEST) == b"one"
        assert recv_frame(right, max_size=MAX_REQUEST) == b"x" * MAX_REQUEST


def test_oversized_frames_are_refused_on_both_sides() -> None:
    with pytest.raises(FrameTooLargeError):
        encode_frame(b"x" * (MAX_REQUEST + 1), max_size=MAX_REQUEST)
    left, right = socket.socketpair()
    with left, right:
        # Only the header is sent: the reader must refuse before reading on.
        left.sendall(struct.pack(">I", 1 << 31))
        with pytest.raises(FrameTooLargeError, match="announced"):
            recv_frame(right, max_size=MAX_REQUEST)


def test_a_truncated_frame_is_an_error() -> None:
    left, right = socket.socketpair()
    with right:
        left.sendall(b"\x00\x00\x00\x05ab")
        left.close()
        with pytest.raises(FrameError, match="2 of 5"):
            recv_frame(right, max_size=MAX_REQUEST)


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_async_reader() -> None:
    async def scenario() -> None:
        reader = _reader(encode_frame(b"hi", max_size=8) + encode_frame(b"", max_size=8))
        assert await read_frame(reader, max_size=8) == b"hi"
        assert await read_frame(reader, max_size=8) == b""
        assert await read_frame(reader, max_size=8) is None  # clean EOF between frames
        with pytest.raises(FrameError, match="header"):
            await read_frame(_reader(b"\x00\x00"), max_size=8)
        with pytest.raises(FrameError, match="1 of 3"):
            await read_frame(_reader(b"\x00\x00\x00\x03a"), max_size=8)
        with pytest.raises(FrameTooLargeError):
            await read_frame(_reader(b"\x00\x00\x00\x09"), max_size=8)

    asyncio.run(scenario())
