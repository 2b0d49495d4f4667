"""Classify 8x8 handwritten digits with the vendor's secret model: the example sealed app.

This directory is what the vendor seals. Inside the enclave the Strongroom server runs

    python main.py --model model.npz --input /dataset/digits.csv --output /output/

after mapping the arguments to real paths: a relative path points into the private app
folder (so ``model.npz`` is the decrypted weights), an absolute path into the shared
folder (``/dataset/`` -> ``shared/dataset/``, ``/output/`` -> ``shared/output/``). The
app therefore opens exactly what it is given and knows nothing about enclaves. The one
exception is a *relative* ``--model``: it is resolved against this file's folder rather
than the working directory, which is what "relative means the app folder" says and
keeps the app correct whatever directory it is started from.

The host sees only what lands in the output folder, so the app writes its results
there and nothing else: ``predictions.csv`` (one row per input row) and
``metrics.json`` (counts, accuracy when labels are present, and the SHA-256 of the
input so the host can tie the result to the exact data it supplied). The weights are
never written out. Progress goes to stdout, flushed line by line, because the server
streams it back to the host operator live.

The weights are read with ``np.load(..., allow_pickle=False)``: the model file holds
plain arrays only, and no code-executing deserializer is used on any input.

Exit codes: 0 success, 1 unreadable or malformed input/model (one line on stderr),
2 bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import numpy as np
    import numpy.typing as npt
except ImportError:  # the enclave image lacks the app's requirements: say so in one line
    print("error: numpy is not installed (see requirements.txt)", file=sys.stderr)
    sys.exit(1)

APP_DIR = Path(__file__).resolve().parent
FEATURES = 64  # 8x8 pixels
CLASSES = 10
LABEL_COLUMN = "label"
BATCH = 100  # rows per progress line
MAX_INPUT_BYTES = 256 * 1024 * 1024  # refuse absurd inputs rather than exhaust enclave memory

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class AppError(Exception):
    """A problem with the inputs that the user can fix; reported as one line, exit 1."""


@dataclass(frozen=True)
class Model:
    """The MLP weights: 64 -> hidden (tanh) -> 10 (softmax)."""

    name: str
    w1: FloatArray
    b1: FloatArray
    w2: FloatArray
    b2: FloatArray
    input_scale: float

    def predict(self, pixels: FloatArray) -> IntArray:
        """Most probable digit per row; argmax of the logits equals argmax of the softmax."""
        hidden = np.tanh((pixels * self.input_scale) @ self.w1 + self.b1)
        logits = hidden @ self.w2 + self.b2
        best: IntArray = logits.argmax(axis=1).astype(np.int64)
        return best


@dataclass(frozen=True)
class Dataset:
    """Pixel rows, optional labels, and the digest of the exact bytes they came from."""

    pixels: FloatArray
    labels: IntArray | None
    sha256: str


def load_model(path: Path) -> Model:
    """Read and shape-check the weights so a wrong file fails clearly, not mid-inference."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise AppError(f"cannot read model {path}: {exc}") from exc
    missing = {"w1", "b1", "w2", "b2"} - arrays.keys()
    if missing:
        raise AppError(f"model {path} lacks arrays: {', '.join(sorted(missing))}")
    w1, b1, w2, b2 = (arrays[k].astype(np.float32) for k in ("w1", "b1", "w2", "b2"))
    hidden = w1.shape[1] if w1.ndim == 2 else -1
    if (
        w1.shape != (FEATURES, hidden)
        or b1.shape != (hidden,)
        or w2.shape != (hidden, CLASSES)
        or b2.shape != (CLASSES,)
    ):
        raise AppError(f"model {path} has unexpected shapes for a {FEATURES}->H->{CLASSES} MLP")
    name = str(arrays["name"]) if "name" in arrays else path.stem
    scale = float(arrays["input_scale"]) if "input_scale" in arrays else 1.0
    return Model(name=name, w1=w1, b1=b1, w2=w2, b2=b2, input_scale=scale)


def load_dataset(path: Path) -> Dataset:
    """Parse a header + integer-rows CSV; any column named ``label`` is the ground truth."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise AppError(f"cannot read input {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_INPUT_BYTES:
        raise AppError(f"input {path} is larger than {MAX_INPUT_BYTES} bytes")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AppError(f"input {path} is not UTF-8 text") from exc

    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise AppError(f"input {path} is empty")
    header = [h.strip() for h in header]
    label_at = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
    feature_at = [i for i in range(len(header)) if i != label_at]
    if len(feature_at) != FEATURES:
        raise AppError(f"input {path} has {len(feature_at)} feature columns, expected {FEATURES}")

    rows: list[list[float]] = []
    labels: list[int] = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue  # tolerate blank lines, e.g. a trailing one
        if len(row) != len(header):
            raise AppError(
                f"input {path} line {line_no}: {len(row)} fields, header has {len(header)}"
            )
        try:
            rows.append([float(row[i]) for i in feature_at])
            if label_at is not None:
                labels.append(int(row[label_at]))
        except ValueError as exc:
            raise AppError(f"input {path} line {line_no}: {exc}") from exc
    if not rows:
        raise AppError(f"input {path} has a header but no rows")
    return Dataset(
        pixels=np.asarray(rows, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64) if label_at is not None else None,
        sha256=digest,
    )


def write_outputs(out_dir: Path, model: Model, data: Dataset, predicted: IntArray) -> float | None:
    """Write predictions.csv and metrics.json; return the accuracy (None without labels)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "predictions.csv").open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if data.labels is None:
                writer.writerow(["index", "predicted"])
                writer.writerows([i, int(p)] for i, p in enumerate(predicted))
            else:
                writer.writerow(["index", "predicted", "label"])
                writer.writerows(
                    [i, int(p), int(t)]
                    for i, (p, t) in enumerate(zip(predicted, data.labels, strict=True))
                )
        acc = None if data.labels is None else float((predicted == data.labels).mean())
        metrics = {
            "samples": len(predicted),
            "accuracy": acc,
            "model": model.name,
            "sha256_of_input": data.sha256,
        }
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as exc:
        raise AppError(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from exc
    return acc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line in the runbook's style; argparse exits 2 on anything malformed."""
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Classify 8x8 digit images (CSV, 64 pixel columns 0..16, optional 'label').",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("model.npz"),
        help="weights file; a relative path is taken from the app folder (default: model.npz)",
    )
    parser.add_argument("--input", type=Path, required=True, help="CSV of pixel rows")
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="folder for predictions.csv and metrics.json (created if missing)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """Load, classify in batches (one progress line each), and write the results."""
    started = time.perf_counter()
    model_path: Path = args.model if args.model.is_absolute() else APP_DIR / args.model
    model = load_model(model_path)
    print(
        f"loaded model: {model.name} ({FEATURES}->{model.w1.shape[1]}->{CLASSES})",
        flush=True,
    )
    data = load_dataset(args.input)
    print(
        f"read {len(data.pixels)} samples from {args.input} (sha256 {data.sha256[:16]}...)",
        flush=True,
    )

    parts: list[IntArray] = []
    total = len(data.pixels)
    for start in range(0, total, BATCH):
        parts.append(model.predict(data.pixels[start : start + BATCH]))
        print(f"classified {min(start + BATCH, total)}/{total}", flush=True)
    predicted = np.concatenate(parts)

    acc = write_outputs(args.output, model, data, predicted)
    if acc is not None:
        print(f"accuracy: {acc:.4f}", flush=True)
    print(
        f"wrote predictions.csv and metrics.json to {args.output} "
        f"in {time.perf_counter() - started:.2f}s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: map our own errors to one stderr line and exit code 1."""
    args = parse_args(argv)
    try:
        run(args)
    except AppError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
