"""The keyed stream check of large transfers (strongroom._internal.integrity)."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from strongroom._internal.integrity import CHUNK, StreamCheck, new_key, parse_key

DATA = os.urandom(3 * CHUNK + 12345)


def check(key: bytes, *pieces: bytes) -> str:
    stream = StreamCheck(key)
    for piece in pieces:
        stream.update(piece)
    return stream.hexdigest()


def test_the_value_does_not_depend_on_how_the_stream_is_cut() -> None:
    key = new_key()
    whole = check(key, DATA)
    rng = random.Random(12)
    cuts = sorted(rng.sample(range(1, len(DATA)), 40))
    pieces = [DATA[a:b] for a, b in zip([0, *cuts], [*cuts, len(DATA)], strict=True)]
    assert check(key, *pieces) == whole
    assert check(key, *(memoryview(p) for p in pieces)) == whole  # type: ignore[arg-type]
    assert check(key, b"", DATA, b"") == whole


@pytest.mark.parametrize(
    "altered",
    [
        DATA[:-1],  # truncated
        DATA + b"\x00",  # extended
        DATA[:CHUNK] + bytes([DATA[CHUNK] ^ 1]) + DATA[CHUNK + 1 :],  # one bit
        DATA[CHUNK : 2 * CHUNK] + DATA[:CHUNK] + DATA[2 * CHUNK :],  # pieces swapped
        DATA[: 3 * CHUNK],  # a whole piece dropped
    ],
    ids=["truncated", "extended", "bit-flip", "reordered", "piece-dropped"],
)
def test_any_change_changes_the_value(altered: bytes) -> None:
    key = new_key()
    assert check(key, altered) != check(key, DATA)


def test_the_value_depends_on_the_key_and_is_no_sha256() -> None:
    first, second = new_key(), new_key()
    assert check(first, DATA) != check(second, DATA)
    assert check(first, DATA) != hashlib.sha256(DATA).hexdigest()
    assert check(first, b"") != check(second, b"")  # the empty stream too


def test_keys_on_the_wire() -> None:
    key = new_key()
    assert parse_key(key.hex()) == key
    for bad in ("", "00" * 15, "00" * 17, "zz" * 16, key.hex().upper()):
        assert parse_key(bad) is None, bad
    with pytest.raises(ValueError, match="16 bytes"):
        StreamCheck(b"short")
