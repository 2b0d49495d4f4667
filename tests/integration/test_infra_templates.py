"""infra/*.yaml: cfn-lint clean, and the vendor key's policy is runbook_policy's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str

from strongroom.policy.measurements import runbook_policy

INFRA = Path(__file__).resolve().parents[2] / "infra"
TEMPLATES = sorted(INFRA.glob("*.yaml"))


def test_the_templates_are_there() -> None:
    names = {t.name for t in TEMPLATES}
    assert {"vendor-key.yaml", "application-encryptor.yaml", "image-builder.yaml"} <= names


@pytest.mark.parametrize("template", TEMPLATES, ids=[t.name for t in TEMPLATES])
def test_cfn_lint_finds_nothing(template: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--", str(template)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _shape(statements: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (s["Sid"], s["Effect"], json.dumps(s.get("Action")), json.dumps(s.get("NotAction")))
        for s in statements
    ]


def test_the_vendor_key_policy_is_the_runbook_policy() -> None:
    document, errors = decode_str((INFRA / "vendor-key.yaml").read_text(encoding="utf-8"))
    assert not errors, errors
    key_policy = document["Resources"]["EncryptionKey"]["Properties"]["KeyPolicy"]
    built = json.loads(runbook_policy("123456789012", ["arn:aws:iam::210987654321:root"], []))
    assert _shape(key_policy["Statement"]) == _shape(built["Statement"])
    conditions = [json.dumps(s.get("Condition")) for s in key_policy["Statement"]]
    assert conditions == [json.dumps(s.get("Condition")) for s in built["Statement"]]
