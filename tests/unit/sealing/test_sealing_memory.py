"""Sealing and opening run in constant memory: a 64 MiB file costs a few MiB of RSS.

Each measurement runs in a fresh interpreter, which reads its own peak RSS
(``ru_maxrss``) after importing everything and again after the operation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MiB = 1 << 20

SCRIPT = """
import json, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.unit.sealing.conftest import FakeKeyService
from strongroom.sealing import seal, unseal

work = Path(sys.argv[2])
kms = FakeKeyService()
key = kms.create_key("k")

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# Warm up imports and code paths on a tiny app first.
(work / "tiny").mkdir()
(work / "tiny" / "f").write_bytes(b"x")
seal(work / "tiny", work / "tiny.sealed", kms, key)
unseal(work / "tiny.sealed", work / "tiny.out", kms)

before = peak_mib()
seal(work / "app", work / "app.sealed", kms, key)
after_seal = peak_mib()
unseal(work / "app.sealed", work / "out", kms)
after_unseal = peak_mib()
print(json.dumps({"before": before, "seal": after_seal, "unseal": after_unseal}))
"""


def test_sealing_a_64_mib_file_stays_small(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    with (app / "weights.bin").open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    peaks = json.loads(result.stdout)
    assert peaks["seal"] - peaks["before"] < 30, peaks
    assert peaks["unseal"] - peaks["before"] < 30, peaks
    assert (tmp_path / "out" / "weights.bin").stat().st_size == 64 * MiB
