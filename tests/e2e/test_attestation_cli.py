"""Issue 3's "done when": verifying real Nitro documents through the console script."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.conftest import STRONGROOM

ASSETS = Path(__file__).parents[1] / "assets"
PRODUCTION = ASSETS / "nitro-attestation-production.b64"
DEBUG = ASSETS / "nitro-attestation-debug.b64"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STRONGROOM, *args], capture_output=True, text=True)


def test_real_production_document_verifies_at_its_time() -> None:
    result = run(
        "attestation",
        "verify",
        str(PRODUCTION),
        "--root",
        "aws",
        "--at",
        "2024-09-07T14:37:39.545Z",
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout and "PCR0" in result.stdout
    assert "e72a46ca" in result.stdout
    data = json.loads(
        run(
            "--json",
            "attestation",
            "verify",
            str(PRODUCTION),
            "--root",
            "aws",
            "--at",
            "2024-09-07T14:37:39.545Z",
        ).stdout
    )
    assert data["verified"] is True and data["pcrs"]["0"].startswith("e72a46ca")
    assert data["pcrs"]["0"].endswith("e86a")


def test_expectations_and_time_are_checked() -> None:
    at = ("--at", "2024-09-07T14:37:39.545Z")
    wrong = run(
        "attestation",
        "verify",
        str(PRODUCTION),
        "--root",
        "aws",
        *at,
        "--expect-pcr",
        "0=" + "00" * 48,
    )
    assert wrong.returncode == 4 and "PCR0" in wrong.stderr
    expired = run("attestation", "verify", str(PRODUCTION), "--root", "aws")
    assert expired.returncode == 4 and "expired" in expired.stderr


def test_debug_document_needs_allow_debug() -> None:
    at = ("--at", "2024-09-07T14:38:06.508Z")
    refused = run("attestation", "verify", str(DEBUG), "--root", "aws", *at)
    assert refused.returncode == 4 and "debug" in refused.stderr
    assert "Traceback" not in refused.stderr
    allowed = run("attestation", "verify", str(DEBUG), "--root", "aws", *at, "--allow-debug")
    assert allowed.returncode == 0, allowed.stderr


def test_inspect_decodes_without_verifying(tmp_path: Path) -> None:
    result = run("--json", "attestation", "inspect", str(PRODUCTION))
    assert result.returncode == 0
    assert json.loads(result.stdout)["module_id"].startswith("i-")
    junk = tmp_path / "junk.b64"
    junk.write_text("bm90IGEgZG9jdW1lbnQ=")
    bad = run("attestation", "inspect", str(junk))
    assert bad.returncode == 3 and bad.stderr.startswith("error:")
