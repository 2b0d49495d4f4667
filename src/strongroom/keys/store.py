"""The local key store: key records and aliases as 0600 JSON files.

Layout under ``<workspace>/keys/``::

    <key-id>.json     one record per key: metadata, policy, key material versions
    aliases.json      {account_id: {"alias/name": key_id}}
    .lock             flock'ed by every writer

Invariants:

- Every write is a read-modify-write under the exclusive lock, ending in an
  atomic rename, so concurrent processes never lose or corrupt an update and a
  reader always sees a whole record.
- Readers take no lock: they stat the file and reuse the parsed record while
  its (inode, mtime, size) are unchanged, so the hot path of the key service
  costs one ``stat`` per request.
- Key material never leaves this module except to :mod:`strongroom.keys.local`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strongroom._internal.files import SECRET_MODE, atomic_write_json, locked
from strongroom.errors import ConfigError, NotFoundError

KEY_BYTES = 32


@dataclass(frozen=True)
class KeyVersion:
    version: int
    material: bytes = field(repr=False)
    created: datetime


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    account_id: str
    region: str
    description: str
    created: datetime
    policy: str
    versions: tuple[KeyVersion, ...]
    state: str = "Enabled"
    deletion_date: datetime | None = None
    rotation_enabled: bool = False

    @property
    def arn(self) -> str:
        return f"arn:aws:kms:{self.region}:{self.account_id}:key/{self.key_id}"

    @property
    def current(self) -> KeyVersion:
        return self.versions[-1]

    def version(self, number: int) -> KeyVersion | None:
        for v in self.versions:
            if v.version == number:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "account_id": self.account_id,
            "region": self.region,
            "description": self.description,
            "created": self.created.isoformat(),
            "policy": self.policy,
            "state": self.state,
            "deletion_date": self.deletion_date.isoformat() if self.deletion_date else None,
            "rotation_enabled": self.rotation_enabled,
            "versions": [
                {
                    "version": v.version,
                    "material": base64.b64encode(v.material).decode(),
                    "created": v.created.isoformat(),
                }
                for v in self.versions
            ],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> KeyRecord:
        deletion = raw.get("deletion_date")
        return cls(
            key_id=raw["key_id"],
            account_id=raw["account_id"],
            region=raw["region"],
            description=raw["description"],
            created=datetime.fromisoformat(raw["created"]),
            policy=raw["policy"],
            state=raw["state"],
            deletion_date=datetime.fromisoformat(deletion) if deletion else None,
            rotation_enabled=raw["rotation_enabled"],
            versions=tuple(
                KeyVersion(
                    version=v["version"],
                    material=base64.b64decode(v["material"]),
                    created=datetime.fromisoformat(v["created"]),
                )
                for v in raw["versions"]
            ),
        )


class KeyStore:
    """Key records and aliases in a directory. Safe for concurrent processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, tuple[tuple[int, int, int], Any]] = {}

    # --- reading ------------------------------------------------------------

    def _read_json(self, path: Path) -> Any:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(path, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            value = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"key store file {path} is unreadable: {e}") from e
        self._cache[path] = (stamp, value)
        return value

    def _key_path(self, key_id: str) -> Path:
        # key ids are UUIDs; anything else cannot name a file of ours
        try:
            canonical = str(uuid.UUID(key_id))
        except ValueError:
            raise NotFoundError(f"key '{key_id}' does not exist") from None
        return self.root / f"{canonical}.json"

    def get(self, key_id: str) -> KeyRecord:
        path = self._key_path(key_id)
        raw = self._read_json(path)
        if raw is None:
            raise NotFoundError(f"key '{key_id}' does not exist")
        cached = self._cache[path]
        record = cached[1]
        if not isinstance(record, KeyRecord):
            try:
                record = KeyRecord.from_json(raw)
            except (KeyError, TypeError, ValueError) as e:
                raise ConfigError(f"key record {path} is malformed: {e}") from e
            self._cache[path] = (cached[0], record)
        return record

    def list(self, account_id: str | None = None) -> list[KeyRecord]:
        records = []
        for path in sorted(self.root.glob("*.json")):
            if path.name == "aliases.json":
                continue
            try:
                record = self.get(path.stem)
            except NotFoundError:
                continue
            if account_id is None or record.account_id == account_id:
                records.append(record)
        return records

    def aliases(self) -> dict[str, dict[str, str]]:
        raw = self._read_json(self.root / "aliases.json")
        return dict(raw) if raw else {}

    # --- writing ------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with locked(self.root / ".lock"):
            yield

    def _write(self, record: KeyRecord) -> None:
        atomic_write_json(self._key_path(record.key_id), record.to_json(), mode=SECRET_MODE)

    def create(
        self, *, account_id: str, region: str, description: str, policy: str, now: datetime
    ) -> KeyRecord:
        record = KeyRecord(
            key_id=str(uuid.uuid4()),
            account_id=account_id,
            region=region,
            description=description,
            created=now,
            policy=policy,
            versions=(KeyVersion(1, secrets.token_bytes(KEY_BYTES), now),),
        )
        with self._writing():
            self._write(record)
        return record

    def update(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """Apply ``change`` to the latest version of a record, under the lock."""
        with self._writing():
            self._cache.pop(self._key_path(key_id), None)
            record = change(self.get(key_id))
            self._write(record)
            return record

    def rotate(self, key_id: str, now: datetime) -> KeyRecord:
        def add_version(r: KeyRecord) -> KeyRecord:
            new = KeyVersion(r.current.version + 1, secrets.token_bytes(KEY_BYTES), now)
            return replace(r, versions=(*r.versions, new))

        return self.update(key_id, add_version)

    def delete(self, key_id: str) -> None:
        with self._writing():
            self._key_path(key_id).unlink(missing_ok=True)
            aliases = self.aliases()
            for names in aliases.values():
                for name in [n for n, k in names.items() if k == key_id]:
                    del names[name]
            atomic_write_json(self.root / "aliases.json", aliases, mode=SECRET_MODE)

    def set_alias(self, account_id: str, name: str, key_id: str | None) -> None:
        """Point ``name`` at ``key_id`` in ``account_id``'s namespace (None removes it)."""
        with self._writing():
            self._cache.pop(self.root / "aliases.json", None)
            aliases = {acct: dict(names) for acct, names in self.aliases().items()}
            names = aliases.setdefault(account_id, {})
            if key_id is None:
                names.pop(name, None)
            else:
                names[name] = key_id
            atomic_write_json(self.root / "aliases.json", aliases, mode=SECRET_MODE)


def utcnow() -> datetime:
    return datetime.now(UTC)
