"""The key service's audit trail: one JSON object per line, appended, never rewritten.

Each line records who asked for what on which key, the decision and the policy
statement that made it, and the enclave measurements when an attestation was
presented. Never plaintext, data keys, key material or secrets.

Lines are written with a single ``write`` on an ``O_APPEND`` descriptor, so
several server processes may append to the same file without interleaving.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from strongroom._internal.files import SECRET_MODE


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, event: dict[str, Any]) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, SECRET_MODE)
        os.write(self._fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: A key id as KMS makes them (the local key service too).
_KEY_ID = re.compile(r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}", re.ASCII | re.IGNORECASE)
#: A key ARN: its resource is ``key/<id>`` (an alias ARN's is ``alias/<name>``).
_KEY_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:kms:[a-z0-9-]*:\d*:key/(.+)", re.ASCII)


def key_id_of(key: str) -> str | None:
    """The key id in a key id or key ARN; None for anything else (an alias, an alias ARN),
    which only the key service can resolve."""
    arn = _KEY_ARN.fullmatch(key)
    candidate = arn.group(1) if arn else key
    return candidate.lower() if _KEY_ID.fullmatch(candidate) else None


@dataclass(frozen=True)
class AuditQuery:
    #: Only events on this key. Events record the key's ARN, whatever name the request
    #: used (id, ARN, alias), so a query by key id finds them all.
    key_id: str | None = None
    since: datetime | None = None


def read_events(path: Path, query: AuditQuery = AuditQuery()) -> Iterator[dict[str, Any]]:
    """Yield the events matching ``query``, oldest first; skip lines that are not JSON."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if query.key_id and key_id_of(str(event.get("key") or "")) != query.key_id:
                continue
            if query.since and datetime.fromisoformat(event["time"]) < query.since:
                continue
            yield event
