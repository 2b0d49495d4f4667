"""Strict CBOR decoding for untrusted attestation data.

Attestation documents reach us from outside (a key-service request, a host
socket, ``/dev/nsm``) before anything about them is verified: the payload must
be decoded to find the certificate that will verify its signature. So decoding
itself is attack surface. :func:`loads` first walks the item headers without
building anything and rejects, with a message naming the problem:

- trailing bytes after the item (cbor2 would silently ignore them),
- indefinite-length items, tags, floats and simple values other than
  ``false``/``true``/``null`` (Nitro emits none of them; cbor2 would turn some
  tags into arbitrary Python objects, e.g. compiled regular expressions),
- containers with more than :data:`MAX_CONTAINER_ITEMS` entries and nesting
  deeper than :data:`MAX_DEPTH` (thousands of integer map keys with equal
  hashes take cbor2 seconds to insert into a dict),
- lengths that run past the end of the input.

Only then does cbor2 build the value, refusing duplicate map keys.
"""

from __future__ import annotations

from typing import Any

import cbor2

from strongroom.attestation.errors import AttestationFormatError

#: Largest number of entries in one array or map (32 PCRs is the largest legitimate one).
MAX_CONTAINER_ITEMS = 64
#: Deepest nesting of arrays and maps (a document payload nests three levels).
MAX_DEPTH = 8

_MAJOR_UINT, _MAJOR_NINT, _MAJOR_BYTES, _MAJOR_TEXT = 0, 1, 2, 3
_MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG, _MAJOR_SIMPLE = 4, 5, 6, 7
_SIMPLE_FALSE, _SIMPLE_TRUE, _SIMPLE_NULL = 20, 21, 22
_INFO_ONE_BYTE, _INFO_EIGHT_BYTES, _INFO_INDEFINITE = 24, 27, 31


def loads(data: bytes, *, what: str) -> Any:
    """Decode one CBOR item that must fill ``data`` exactly; ``what`` names it in errors."""
    end = _skip_item(data, 0, 0, what)
    if end != len(data):
        raise AttestationFormatError(
            f"{what}: {len(data) - end} trailing bytes after the CBOR item"
        )
    try:
        return cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False)
    except cbor2.CBORDecodeError as exc:
        raise AttestationFormatError(f"{what}: invalid CBOR ({exc})") from exc


def _skip_item(data: bytes, pos: int, depth: int, what: str) -> int:
    """Return the offset just past the item starting at ``pos``, checking our limits."""
    if depth > MAX_DEPTH:
        raise AttestationFormatError(f"{what}: CBOR nesting deeper than {MAX_DEPTH}")
    if pos >= len(data):
        raise AttestationFormatError(f"{what}: truncated CBOR")
    major, info = data[pos] >> 5, data[pos] & 0x1F
    pos += 1
    if info < _INFO_ONE_BYTE:
        argument = info
    elif info <= _INFO_EIGHT_BYTES:
        width = 1 << (info - _INFO_ONE_BYTE)
        if pos + width > len(data):
            raise AttestationFormatError(f"{what}: truncated CBOR")
        argument = int.from_bytes(data[pos : pos + width], "big")
        pos += width
    elif info == _INFO_INDEFINITE:
        raise AttestationFormatError(f"{what}: indefinite-length CBOR items are not allowed")
    else:
        raise AttestationFormatError(f"{what}: malformed CBOR (reserved header value)")

    if major in (_MAJOR_UINT, _MAJOR_NINT):
        return pos
    if major in (_MAJOR_BYTES, _MAJOR_TEXT):
        if argument > len(data) - pos:
            raise AttestationFormatError(f"{what}: truncated CBOR")
        return pos + argument
    if major in (_MAJOR_ARRAY, _MAJOR_MAP):
        if argument > MAX_CONTAINER_ITEMS:
            raise AttestationFormatError(
                f"{what}: a CBOR container has {argument} entries (limit {MAX_CONTAINER_ITEMS})"
            )
        for _ in range(argument * (2 if major == _MAJOR_MAP else 1)):
            pos = _skip_item(data, pos, depth + 1, what)
        return pos
    if major == _MAJOR_TAG:
        raise AttestationFormatError(f"{what}: CBOR tag {argument} is not allowed here")
    if info in (_SIMPLE_FALSE, _SIMPLE_TRUE, _SIMPLE_NULL):
        return pos
    raise AttestationFormatError(f"{what}: CBOR floats and simple values are not allowed")
