"""The example vendor app runs as the enclave will run it: a plain process, mapped paths.

These tests start ``examples/classifier/main.py`` with the test interpreter, exactly as
the enclave server starts an app after mapping its arguments, so they check the example
that the docs and the end-to-end tests seal. The app needs numpy; the project's test
environment must provide it, so a missing numpy is a failure with a clear message, never
a skip (a skip would hide a broken example on CI).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
APP_DIR = ROOT / "examples" / "classifier"
MAIN = APP_DIR / "main.py"
MODEL = APP_DIR / "model.npz"
DATASET = ROOT / "examples" / "host-dataset" / "digits.csv"

SEALED_FILES = {"main.py", "model.npz", "README.md", "requirements.txt", "strongroom.toml"}
DATASET_ROWS = 360
MIN_ACCURACY = 0.9
MAX_MODEL_BYTES = 100 * 1024
RUN_TIMEOUT = 60  # seconds; the app takes well under one


def _require_numpy() -> None:
    if importlib.util.find_spec("numpy") is None:
        pytest.fail(
            f"numpy is not installed in the test interpreter ({sys.executable}); the example "
            "app examples/classifier needs it: add numpy to the project's test extras",
            pytrace=False,
        )


@pytest.fixture
def numpy_ok() -> None:
    """Fail (not skip) every app test when numpy is missing."""
    _require_numpy()


def run_app(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_numpy_is_available() -> None:
    _require_numpy()


def test_app_folder_holds_only_what_is_sealed() -> None:
    """Everything in this folder ends up in the sealed package, so nothing else may creep in."""
    present = {p.name for p in APP_DIR.iterdir() if p.name != "__pycache__"}
    assert present == SEALED_FILES
    assert MODEL.stat().st_size < MAX_MODEL_BYTES
    assert (APP_DIR / "requirements.txt").read_text().split() == ["numpy>=1.26"]


def test_model_loads_without_pickle(numpy_ok: None) -> None:
    import numpy as np

    with np.load(MODEL, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert set(arrays) == {"w1", "b1", "w2", "b2", "input_scale", "name"}
    assert arrays["w1"].shape == (64, 32)
    assert arrays["b1"].shape == (32,)
    assert arrays["w2"].shape == (32, 10)
    assert arrays["b2"].shape == (10,)
    assert all(arrays[k].dtype == np.float32 for k in ("w1", "b1", "w2", "b2", "input_scale"))
    assert arrays["name"].dtype.kind == "U"


def test_classifies_the_host_dataset(numpy_ok: None, tmp_path: Path) -> None:
    out = tmp_path / "shared" / "output"  # does not exist yet: the app creates it
    # A relative --model means the app folder, whatever the working directory is.
    result = run_app("--model", "model.npz", "--input", DATASET, "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""

    lines = result.stdout.splitlines()
    assert lines[0].startswith("loaded model: digits-mlp-64-32-10")
    progress = [line for line in lines if line.startswith("classified ")]
    assert progress == [f"classified {n}/360" for n in (100, 200, 300, 360)]
    assert any(line.startswith("accuracy: ") for line in lines)

    with (out / "predictions.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "predicted", "label"]
    assert len(rows) - 1 == DATASET_ROWS
    assert [int(r[0]) for r in rows[1:]] == list(range(DATASET_ROWS))

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"samples", "accuracy", "model", "sha256_of_input"}
    assert metrics["samples"] == DATASET_ROWS
    assert metrics["accuracy"] >= MIN_ACCURACY
    assert metrics["model"] == "digits-mlp-64-32-10"
    assert metrics["sha256_of_input"] == hashlib.sha256(DATASET.read_bytes()).hexdigest()
    correct = sum(r[1] == r[2] for r in rows[1:])
    assert metrics["accuracy"] == pytest.approx(correct / DATASET_ROWS)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.csv"]


def test_dataset_without_labels(numpy_ok: None, tmp_path: Path) -> None:
    """A host may hold unlabelled data: predictions only, accuracy null."""
    with DATASET.open(newline="") as f:
        rows = list(csv.reader(f))
    label = rows[0].index("label")
    unlabelled = tmp_path / "unlabelled.csv"
    with unlabelled.open("w", newline="") as f:
        csv.writer(f).writerows([c for i, c in enumerate(r) if i != label] for r in rows[:11])
    out = tmp_path / "out"

    result = run_app("--input", unlabelled, "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accuracy:" not in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples"] == 10
    assert metrics["accuracy"] is None
    assert (out / "predictions.csv").read_text().splitlines()[0] == "index,predicted"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--input", "digits.csv"],
        ["--output", "out"],
        ["--input", "digits.csv", "--output", "out", "--bogus"],
        ["--input"],
    ],
    ids=["nothing", "no-output", "no-input", "unknown-flag", "flag-without-value"],
)
def test_bad_arguments_exit_2(numpy_ok: None, tmp_path: Path, args: list[str]) -> None:
    result = run_app(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: main.py" in result.stderr
    assert not (tmp_path / "out").exists()


HEADER = ",".join([f"pixel_{i}" for i in range(64)] + ["label"]) + "\n"

# name -> (file content, or None for no file at all, or a folder; expected message)
BAD_INPUTS: dict[str, tuple[bytes | None, str]] = {
    "missing": (None, "cannot read input"),
    "empty": (b"", "is empty"),
    "too-few-columns": (b"a,b,label\n1,2,3\n", "expected 64"),
    "ragged-row": ((HEADER + "1,2\n").encode(), "line 2"),
    "not-numbers": ((HEADER + ",".join(["x"] * 65) + "\n").encode(), "line 2"),
    "header-only": (HEADER.encode(), "no rows"),
    "binary": (b"\xff\xfe\x00garbage\x80\x81", "not UTF-8"),
}


@pytest.mark.parametrize("case", [*BAD_INPUTS, "directory"])
def test_unreadable_input_exit_1(numpy_ok: None, tmp_path: Path, case: str) -> None:
    path = tmp_path / "input.csv"
    if case == "directory":
        path.mkdir()
        message = "cannot read input"
    else:
        content, message = BAD_INPUTS[case]
        if content is not None:
            path.write_bytes(content)
    out = tmp_path / "out"

    result = run_app("--input", path, "--output", out, cwd=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert not out.exists()


def test_unreadable_model_exit_1(numpy_ok: None, tmp_path: Path) -> None:
    bogus = tmp_path / "model.npz"
    bogus.write_text("not a zip")
    for model in (tmp_path / "absent.npz", bogus):
        result = run_app(
            "--model", model, "--input", DATASET, "--output", tmp_path / "out", cwd=tmp_path
        )
        assert result.returncode == 1
        assert result.stderr.startswith("error: cannot read model")
        assert len(result.stderr.splitlines()) == 1
