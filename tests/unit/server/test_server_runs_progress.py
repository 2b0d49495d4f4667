"""A long decryption in the enclave says how far it got (``progress`` events of a run)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.unit.sealing.conftest import FakeKeyService

from strongroom.sealing import read_header, seal
from strongroom.server import runs
from strongroom.server.isolation import RunFolder


def test_decrypting_an_app_reports_progress_then_the_app_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kms = FakeKeyService()
    key = kms.create_key("k")
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("print('hi')\n")
    (app / "weights.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    package_path = tmp_path / "app.sealed"
    seal(app, package_path, kms, key)
    # report at every turn of the loop: the first wait already finds the work unfinished
    monkeypatch.setattr(runs, "PROGRESS_INTERVAL_S", 0.0)

    folder = RunFolder(tmp_path / "run")
    folder.app.mkdir(parents=True)

    async def collect() -> list[dict[str, Any]]:
        with package_path.open("rb") as package:
            header = read_header(package)
            data_key = kms.decrypt(header.encrypted_data_key, key_id=key).plaintext
            return [
                event
                async for event in runs._opening(
                    package, header, data_key, folder, threading.Event()
                )
            ]

    events = asyncio.run(collect())
    assert events and all(e["type"] == "progress" for e in events)
    total = package_path.stat().st_size
    assert {e["total"] for e in events} == {total}
    done = [e["done"] for e in events]
    assert done == sorted(done) and done[0] >= 0 and done[-1] <= total
    assert (folder.app / "weights.bin").stat().st_size == 8 * 1024 * 1024
