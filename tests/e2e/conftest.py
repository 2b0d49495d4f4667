"""Run the installed `strongroom` console script as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

STRONGROOM = str(Path(sys.executable).parent / "strongroom")
AWS = str(Path(sys.executable).parent / "aws")

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    yield path
    # never leave a service behind, whatever the test did
    subprocess.run([STRONGROOM, "--home", str(path), "keys", "stop"], capture_output=True)


@pytest.fixture
def cli(home: Path) -> Cli:
    def run(
        *args: str, check: bool = True, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STRONGROOM, "--home", str(home), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            input=input,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result

    return run
