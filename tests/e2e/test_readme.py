"""The README's commands exist: every `strongroom ...` it shows parses with --help."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.conftest import STRONGROOM

README = Path(__file__).parents[2] / "README.md"
KNOWN_GROUPS = {"keys", "image", "enclave", "proxy", "attestation"}


def commands() -> set[tuple[str, ...]]:
    found = set()
    for match in re.finditer(r"strongroom ((?:[a-z-]+ ?){1,3})", README.read_text()):
        words = match.group(1).split()
        words = words[:2] if words[0] in KNOWN_GROUPS else words[:1]
        if words[0] == "keys" and len(words) > 1 and words[1] == "policy":
            words = ["keys", "policy"]
        found.add(tuple(words))
    return found


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = [line for line in README.read_text().splitlines() if line.startswith("sudo apt-get")]
    assert len(lines) >= 2
    assert lines[0].endswith("strongroom demo")
    assert lines[1].endswith("python -m pytest")
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci


def test_every_readme_command_has_help() -> None:
    found = commands()
    assert ("demo",) in found and ("run",) in found and ("image", "approve") in found
    for words in sorted(found):
        result = subprocess.run([STRONGROOM, *words, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, (words, result.stderr)
        assert "Usage:" in result.stdout
