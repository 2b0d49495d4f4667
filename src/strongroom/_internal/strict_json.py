"""JSON as the documents we sign or check must be: no duplicate keys, integers only.

A duplicate key leaves a reader to guess which value counts (and two readers
may guess differently); a float or ``Infinity``/``NaN`` has no one canonical
spelling, so a document holding one cannot be checked byte for byte.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: bytes) -> Any:
    """Parse UTF-8 JSON; raises ``ValueError`` (``UnicodeDecodeError`` included) otherwise."""
    return json.loads(
        data.decode("utf-8"),
        object_pairs_hook=_no_duplicate_keys,
        parse_float=_no_float,
        parse_constant=_no_float,
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_float(text: str) -> Any:
    raise ValueError(f"a number that is not an integer ({text[:32]})")
