"""The v1 header: one encoding, bounded fields, and the size arithmetic of inspect."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.errors import InvalidInputError
from strongroom.sealing import read_header
from strongroom.sealing.format import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_ENTRIES,
    MAX_HEADER_SIZE,
    build_header,
)
from strongroom.sealing.stream import TAG_SIZE, body_geometry

BASE: dict[str, Any] = {
    "key_id": "arn:aws:kms:eu-west-1:111122223333:key/k",
    "encrypted_data_key": b"\x01" * 40,
    "encryption_context": {"vendor": "acme"},
    "chunk_size": 1 << 20,
    "salt": bytes(32),
    "nonce_prefix": bytes(7),
    "created": 0,
}


def header(**changes: Any) -> bytes:
    return build_header(**{**BASE, **changes}).raw


def parse(raw: bytes) -> None:
    read_header(io.BytesIO(raw))


@given(
    context=st.dictionaries(
        st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=10
    ).filter(lambda c: all(_utf8(k) and _utf8(v) for k, v in c.items())),
    key_id=st.text(min_size=1, max_size=50).filter(lambda k: _utf8(k)),
    created=st.integers(0, 2**64 - 1),
)
def test_header_roundtrip(context: dict[str, str], key_id: str, created: int) -> None:
    built = build_header(
        **{**BASE, "encryption_context": context, "key_id": key_id, "created": created}
    )
    parsed = read_header(io.BytesIO(built.raw + b"body"))
    assert parsed == built
    assert (parsed.encryption_context, parsed.key_id, parsed.created) == (context, key_id, created)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def test_context_order_does_not_matter() -> None:
    assert header(encryption_context={"b": "2", "a": "1"}) == header(
        encryption_context={"a": "1", "b": "2"}
    )


def test_unsorted_context_is_refused() -> None:
    raw = bytearray(header(encryption_context={"a": "1", "b": "2"}))
    at = raw.index(b"\x00\x01a\x00\x011")
    raw[at : at + 12] = b"\x00\x01b\x00\x012\x00\x01a\x00\x011"
    with pytest.raises(InvalidInputError, match="unsorted or repeated"):
        parse(bytes(raw))


def test_declared_length_must_match_the_fields() -> None:
    raw = bytearray(header())
    raw[9:13] = struct.pack(">I", len(raw) + 3)
    with pytest.raises(InvalidInputError, match="3 unexpected header bytes"):
        parse(bytes(raw) + b"\x00" * 3)
    raw[9:13] = struct.pack(">I", len(raw) - 3)
    with pytest.raises(InvalidInputError, match="runs past the end of the header"):
        parse(bytes(raw))
    raw[9:13] = struct.pack(">I", MAX_HEADER_SIZE + 1)
    with pytest.raises(InvalidInputError, match="impossible header length"):
        parse(bytes(raw))


def test_chunk_size_in_the_header_is_checked() -> None:
    raw = bytearray(header())
    raw[14:18] = struct.pack(">I", 10)
    with pytest.raises(InvalidInputError, match=r"invalid chunk size \(10\)"):
        parse(bytes(raw))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"key_id": ""}, "key id must be 1 to"),
        ({"key_id": "k" * 3000}, "key id must be 1 to"),
        ({"encrypted_data_key": b""}, "encrypted data key must be"),
        ({"encrypted_data_key": b"x" * 7000}, "encrypted data key must be"),
        ({"encryption_context": {"": "v"}}, "key is empty"),
        ({"encryption_context": {str(i): "" for i in range(MAX_CONTEXT_ENTRIES + 1)}}, "entries"),
        ({"encryption_context": {"k": "v" * MAX_CONTEXT_BYTES}}, "the limit is 8192"),
        ({"encryption_context": {"k": "\udcff"}}, "not valid UTF-8"),
        ({"salt": bytes(16)}, "salt must be 32 bytes"),
        ({"created": -1}, "creation time"),
        ({"chunk_size": 63}, "out of range"),
        ({"chunk_size": (16 << 20) + 1}, "out of range"),
    ],
)
def test_build_refuses_out_of_range_fields(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        header(**changes)


def test_every_truncation_of_a_header_is_refused() -> None:
    raw = header()
    for end in range(1, len(raw)):
        with pytest.raises(InvalidInputError):
            parse(raw[:end])


@given(payload=st.integers(0, 10**7), chunk=st.sampled_from([64, 1000, 1 << 20]))
def test_geometry_inverts_the_writer(payload: int, chunk: int) -> None:
    chunks = payload // chunk + 1
    body = payload + TAG_SIZE * chunks
    assert body_geometry(body, chunk) == (chunks, payload)


@pytest.mark.parametrize("rest", range(TAG_SIZE))
def test_geometry_refuses_impossible_lengths(rest: int) -> None:
    assert body_geometry(3 * (64 + TAG_SIZE) + rest, 64) is None
