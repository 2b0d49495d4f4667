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


@dataclass(frozen=True)
class AuditQuery:
    key: str | None = None  # key id or ARN (matched against the recorded ARN)
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
            if query.key and not str(event.get("key") or "").endswith(query.key):
                continue
            if query.since and datetime.fromisoformat(event["time"]) < query.since:
                continue
            yield event
