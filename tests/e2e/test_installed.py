"""Strongroom installed from its wheel, not a checkout: `strongroom demo` works anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
SHIPPED = [
    "strongroom/examples/classifier/main.py",
    "strongroom/examples/classifier/model.npz",
    "strongroom/examples/classifier/strongroom.toml",
    "strongroom/examples/classifier/requirements.txt",
    "strongroom/examples/host-dataset/digits.csv",
]


def test_the_wheel_ships_the_demo_and_its_demo_runs_from_any_directory(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("strongroom-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"  # no checkout, no examples/ here
    elsewhere.mkdir()
    ran = subprocess.run(
        [str(site / "bin" / "strongroom"), "demo"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},  # the installed copy, not the checkout
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "demo complete" in ran.stdout and "accuracy" in ran.stdout
    # the demo sealed the installed copy's example (it prints every command it runs)
    assert f"{site}/strongroom/examples/classifier" in ran.stdout
