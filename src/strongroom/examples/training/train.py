"""Train the example digit classifier and write the vendor's and the host's example files.

This is the *vendor's* training script. It is not part of the sealed application: the
vendor runs it once, keeps the resulting ``model.npz`` secret, and seals
``examples/classifier/`` (which holds that file). It also writes the *host's* example
dataset, ``examples/host-dataset/digits.csv``, from the held-out part of the same split,
so that the example can demonstrate a meaningful accuracy without either side having
to download anything: the data is scikit-learn's bundled ``load_digits`` set (1,797 8x8
images, pixel values 0..16).

The model is a one-hidden-layer MLP, 64 -> 32 (tanh) -> 10 (softmax), trained with
plain numpy mini-batch Adam so that the inference code in ``classifier/main.py`` is an
exact mirror of the training forward pass. Everything is seeded, so the same numpy and
scikit-learn versions produce the same files; ``--check`` regenerates into a temporary
folder and compares with the committed ones (the dataset byte for byte, the weights
within a small tolerance, since BLAS builds may differ in the last bits).

scikit-learn is only needed here, never at run time: install it into a throwaway venv
(see ``README.md`` beside this file).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch

EXAMPLES = Path(__file__).resolve().parent.parent
MODEL_PATH = EXAMPLES / "classifier" / "model.npz"
DATASET_PATH = EXAMPLES / "host-dataset" / "digits.csv"

MODEL_NAME = "digits-mlp-64-32-10"
SEED = 20240601
HELD_OUT = 360  # rows given to the host; the rest (1,437) train the model
HIDDEN = 32
CLASSES = 10
EPOCHS = 80
BATCH = 32
LEARNING_RATE = 3e-3
L2 = 1e-4
PIXEL_MAX = 16.0  # load_digits pixels are counts 0..16; the model sees them scaled to 0..1
MIN_ACCURACY = 0.9
WEIGHT_TOLERANCE = 1e-4

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """The fixed train/held-out split; held-out rows become the host's dataset."""

    x_train: IntArray
    y_train: IntArray
    x_test: IntArray
    y_test: IntArray
    feature_names: list[str]


def load_split() -> Split:
    """Split the bundled digits deterministically, stratified so every digit is in both parts."""
    digits = cast(Bunch, load_digits())  # the default overload: a Bunch, not (X, y)
    x = digits.data.astype(np.int64)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELD_OUT, random_state=SEED, stratify=y
    )
    return Split(x_train, y_train, x_test, y_test, list(digits.feature_names))


def forward(params: dict[str, FloatArray], x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Return (hidden activations, class probabilities); the same maths as main.py."""
    hidden = np.tanh(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return hidden, exp / exp.sum(axis=1, keepdims=True)


def train(x_train: IntArray, y_train: IntArray) -> dict[str, FloatArray]:
    """Fit the MLP with mini-batch Adam; seeded shuffling and init make it repeatable."""
    rng = np.random.default_rng(SEED)
    x = x_train.astype(np.float64) / PIXEL_MAX
    onehot = np.eye(CLASSES)[y_train]
    params: dict[str, FloatArray] = {
        # Glorot-style init suits tanh: keeps the pre-activations away from saturation.
        "w1": rng.normal(0.0, np.sqrt(1.0 / x.shape[1]), (x.shape[1], HIDDEN)),
        "b1": np.zeros(HIDDEN),
        "w2": rng.normal(0.0, np.sqrt(1.0 / HIDDEN), (HIDDEN, CLASSES)),
        "b2": np.zeros(CLASSES),
    }
    first = {k: np.zeros_like(v) for k, v in params.items()}
    second = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    for _epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            xb, tb = x[idx], onehot[idx]
            hidden, probs = forward(params, xb)
            d_logits = (probs - tb) / len(idx)
            d_hidden = (d_logits @ params["w2"].T) * (1.0 - hidden**2)
            grads = {
                "w2": hidden.T @ d_logits + L2 * params["w2"],
                "b2": d_logits.sum(axis=0),
                "w1": xb.T @ d_hidden + L2 * params["w1"],
                "b1": d_hidden.sum(axis=0),
            }
            step += 1
            for k, g in grads.items():
                first[k] = beta1 * first[k] + (1 - beta1) * g
                second[k] = beta2 * second[k] + (1 - beta2) * g * g
                m_hat = first[k] / (1 - beta1**step)
                v_hat = second[k] / (1 - beta2**step)
                params[k] = params[k] - LEARNING_RATE * m_hat / (np.sqrt(v_hat) + eps)
    return params


def accuracy(params: dict[str, FloatArray], x: IntArray, y: IntArray) -> float:
    """Fraction of rows whose most probable class is the label."""
    _, probs = forward(params, x.astype(np.float64) / PIXEL_MAX)
    return float((probs.argmax(axis=1) == y).mean())


def write_model(params: dict[str, FloatArray], path: Path) -> None:
    """Save plain arrays only (float32, one unicode name) so np.load needs no pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        w1=params["w1"].astype(np.float32),
        b1=params["b1"].astype(np.float32),
        w2=params["w2"].astype(np.float32),
        b2=params["b2"].astype(np.float32),
        input_scale=np.float32(1.0 / PIXEL_MAX),
        name=np.array(MODEL_NAME),
    )


def write_dataset(split: Split, path: Path) -> None:
    """Write the held-out rows as integer CSV with a header, as a host would export them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*split.feature_names, "label"])
        for row, label in zip(split.x_test, split.y_test, strict=True):
            writer.writerow([*(int(v) for v in row), int(label)])


def generate(model_path: Path, dataset_path: Path) -> float:
    """Train, write both files, and return the held-out accuracy of the float32 weights."""
    split = load_split()
    params = train(split.x_train, split.y_train)
    write_model(params, model_path)
    write_dataset(split, dataset_path)
    with np.load(model_path, allow_pickle=False) as saved:
        stored = {k: saved[k].astype(np.float64) for k in ("w1", "b1", "w2", "b2")}
    train_acc = accuracy(stored, split.x_train, split.y_train)
    test_acc = accuracy(stored, split.x_test, split.y_test)
    print(f"train accuracy: {train_acc:.4f} ({len(split.y_train)} rows)")
    print(f"held-out accuracy: {test_acc:.4f} ({len(split.y_test)} rows)")
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes)")
    print(f"wrote {dataset_path} ({dataset_path.stat().st_size} bytes)")
    return test_acc


def check() -> int:
    """Regenerate into a temp folder and compare with the committed files (exit 0 = match)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.npz"
        dataset = Path(tmp) / "digits.csv"
        generate(model, dataset)
        problems: list[str] = []
        if dataset.read_bytes() != DATASET_PATH.read_bytes():
            problems.append(f"{DATASET_PATH} differs from a fresh run")
        with (
            np.load(model, allow_pickle=False) as fresh,
            np.load(MODEL_PATH, allow_pickle=False) as committed,
        ):
            if sorted(fresh.files) != sorted(committed.files):
                problems.append(f"{MODEL_PATH} has arrays {sorted(committed.files)}")
            else:
                for key in fresh.files:
                    a, b = fresh[key], committed[key]
                    same = (
                        a.shape == b.shape
                        and a.dtype == b.dtype
                        and (
                            bool(np.array_equal(a, b))
                            if a.dtype.kind == "U"
                            else bool(np.allclose(a, b, atol=WEIGHT_TOLERANCE, rtol=0))
                        )
                    )
                    if not same:
                        problems.append(f"{MODEL_PATH}: array {key!r} differs")
    for line in problems:
        print(line, file=sys.stderr)
    print("committed files match" if not problems else "committed files are stale")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """Write the example files (default) or verify that the committed ones are current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temp folder and compare with the committed files",
    )
    args = parser.parse_args(argv)
    if args.check:
        return check()
    test_acc = generate(MODEL_PATH, DATASET_PATH)
    if test_acc < MIN_ACCURACY:
        print(f"held-out accuracy {test_acc:.4f} is below {MIN_ACCURACY}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
