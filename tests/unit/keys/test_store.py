from __future__ import annotations

import multiprocessing
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from strongroom.errors import NotFoundError
from strongroom.keys import ciphertext
from strongroom.keys.base import InvalidCiphertextError
from strongroom.keys.store import KeyStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _alias_writer(root: str, worker: int) -> None:
    store = KeyStore(Path(root))
    for i in range(25):
        store.set_alias("111122223333", f"alias/w{worker}-{i}", f"key-{worker}-{i}")


def test_concurrent_processes_never_lose_updates(tmp_path: Path) -> None:
    procs = [
        multiprocessing.get_context("fork").Process(target=_alias_writer, args=(str(tmp_path), n))
        for n in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert len(KeyStore(tmp_path).aliases()["111122223333"]) == 100


def test_records_are_secret_files_and_reload_after_change(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    rec = store.create(account_id="1", region="r", description="d", policy="{}", now=NOW)
    path = tmp_path / f"{rec.key_id}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = KeyStore(tmp_path)  # another process's view
    assert other.get(rec.key_id).current.version == 1
    store.rotate(rec.key_id, NOW)
    assert other.get(rec.key_id).current.version == 2
    assert other.get(rec.key_id).version(1) is not None


def test_unknown_and_path_like_key_ids_are_not_found(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    for bad in ("../../etc/passwd", "nope", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(NotFoundError):
            store.get(bad)


def test_blob_names_key_and_version_and_binds_context() -> None:
    material = b"k" * 32
    key_id = "0b7c1f5e-2f38-4d7a-9c55-9d2f7a3e4b10"
    blob = ciphertext.seal(material, key_id, 7, b"plain", {"b": "2", "a": "1"})
    header = ciphertext.parse_header(blob)
    assert (header.key_id, header.version) == (key_id, 7)
    # context order does not matter, content does
    assert ciphertext.open_blob(material, blob, {"a": "1", "b": "2"}) == b"plain"
    with pytest.raises(InvalidCiphertextError):
        ciphertext.open_blob(material, blob, {"a": "1"})
    with pytest.raises(InvalidCiphertextError):
        ciphertext.parse_header(b"SRK\x02" + blob[4:])
    with pytest.raises(InvalidCiphertextError):
        ciphertext.parse_header(blob[:20])
