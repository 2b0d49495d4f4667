"""Benchmark sealing and opening against raw AES-GCM, measured in the same run.

    .venv/bin/python bench/bench_sealing.py [--size-mib 1024] [--small-files 10000]
                                            [--small-kib 8] [--workdir DIR] [--repeat 3]
                                            [--legacy-max-mib 256]

Two applications are measured: one file of ``--size-mib`` MiB of random data,
and ``--small-files`` files of ``--small-kib`` KiB in 100 directories. Every
measurement runs in its own interpreter, which times the operation alone and
reports its peak RSS (``ru_maxrss``); each is repeated (after ``sync``, so
no run pays for the previous one's writeback) and the best time is kept.
MB/s are payload bytes (the application's files) per second, 1 MB = 10^6.

Baselines, on the same files in the same run:

(a) raw AES-256-GCM with no format: read 1 MiB, ``AESGCM.encrypt``, write —
    file to file for the large app (fsynced, as ``seal`` syncs its package),
    and for the small-file app the same I/O shape as each operation: all files
    into one stream ("pack", like seal) and one stream back into files
    ("unpack", like unseal). Ratios are against (a).
(a') (a) with preallocated buffers (``readinto``, ``encrypt_into``), as the
    sealer does: the stricter bound for the large app, printed for reference.
(b) AES-256-GCM over a buffer in memory: the CPU ceiling.
(c) the AWS sample's path: zip (deflate) + Fernet, entirely in memory. It
    needs several times the package size in RAM, so the large app is measured
    at ``--legacy-max-mib`` at most (256 by default).

The key service is an in-process fake (bench_sealing_fakekms.py): the
benchmark measures the format, not KMS.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench_sealing_fakekms import KEY_ARN, BenchKeyService
from strongroom.sealing import seal, unseal

MiB = 1 << 20
CHUNK = MiB
FILES_PER_DIR = 100
TARGETS = {"large": 0.7, "small": 0.3}
MAX_RSS_MIB = 100

# --- operations, each run in a child interpreter ---------------------------------------


def files_of(app: Path) -> Iterator[Path]:
    for dirpath, _, filenames in sorted(os.walk(app)):
        for name in sorted(filenames):
            yield Path(dirpath, name)


def raw_file(app: Path, work: Path) -> None:
    """(a), large app: one file to one file, as seal writes (and syncs) one package."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    (source,) = files_of(app)
    with source.open("rb") as src, (work / "raw.out").open("wb") as dst:
        counter = 0
        while chunk := src.read(CHUNK):
            dst.write(aead.encrypt(counter.to_bytes(12, "big"), chunk, None))
            counter += 1
        dst.flush()
        os.fsync(dst.fileno())


def raw_file_into(app: Path, work: Path) -> None:
    """(a'), large app: (a) without per-chunk allocations (readinto, encrypt_into)."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    plain = memoryview(bytearray(CHUNK))
    sealed = memoryview(bytearray(CHUNK + 16))
    (source,) = files_of(app)
    with source.open("rb", buffering=0) as src, (work / "raw.out").open("wb") as dst:
        counter = 0
        while size := src.readinto(plain):
            aead.encrypt_into(counter.to_bytes(12, "big"), plain[:size], None, sealed[: size + 16])
            dst.write(sealed[: size + 16])
            counter += 1
        dst.flush()
        os.fsync(dst.fileno())


def raw_pack(app: Path, work: Path) -> None:
    """(a), small files, seal-shaped: every file into one synced stream."""
    aead = AESGCM(bytes(32))
    with (work / "raw.out").open("wb") as dst:
        counter = 0
        for path in files_of(app):
            with path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    dst.write(aead.encrypt(counter.to_bytes(12, "big"), chunk, None))
                    counter += 1
        dst.flush()
        os.fsync(dst.fileno())


def raw_unpack(app: Path, work: Path) -> None:
    """(a), small files, unseal-shaped: raw_pack's stream back into files."""
    aead = AESGCM(bytes(32))
    out = work / "raw.unpacked"
    with (work / "raw.out").open("rb") as src:
        counter = 0
        for path in files_of(app):
            target = out / path.relative_to(app)
            target.parent.mkdir(parents=True, exist_ok=True)
            remaining = path.stat().st_size
            with target.open("wb") as dst:
                while remaining:
                    size = min(remaining, CHUNK)
                    sealed = src.read(size + 16)
                    dst.write(aead.decrypt(counter.to_bytes(12, "big"), sealed, None))
                    counter += 1
                    remaining -= size


def in_memory(app: Path, work: Path) -> None:
    """(b): AES-GCM over a 1 MiB buffer, as many times as the app has MiB."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    buffer = os.urandom(CHUNK)
    for counter in range(max(1, payload_bytes(app) // CHUNK)):
        aead.encrypt(counter.to_bytes(12, "big"), buffer, None)


def strongroom_seal(app: Path, work: Path) -> None:
    seal(app, work / "app.sealed", BenchKeyService(), KEY_ARN, context={"app": "bench"})


def strongroom_unseal(app: Path, work: Path) -> None:
    unseal(work / "app.sealed", work / "unsealed", BenchKeyService())


def legacy_seal(app: Path, work: Path) -> None:
    """(c): the AWS sample's construction: zip in memory, Fernet in memory."""
    data_key = BenchKeyService().generate_data_key(KEY_ARN)
    assert data_key.plaintext is not None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files_of(app):
            archive.write(path, path.relative_to(app))
    token = Fernet(base64.b64encode(data_key.plaintext)).encrypt(buffer.getvalue())
    blob = data_key.ciphertext_blob
    (work / "app.legacy").write_bytes(len(blob).to_bytes(4, "big") + blob + token)


def legacy_open(app: Path, work: Path) -> None:
    unseal(work / "app.legacy", work / "legacy.unsealed", BenchKeyService())


OPERATIONS: dict[str, Callable[[Path, Path], None]] = {
    "raw-file": raw_file,
    "raw-file-into": raw_file_into,
    "raw-pack": raw_pack,
    "raw-unpack": raw_unpack,
    "in-memory": in_memory,
    "seal": strongroom_seal,
    "unseal": strongroom_unseal,
    "legacy-seal": legacy_seal,
    "legacy-open": legacy_open,
}
#: What each operation writes, removed before it runs again.
OUTPUTS = {
    "raw-unpack": "raw.unpacked",
    "unseal": "unsealed",
    "legacy-open": "legacy.unsealed",
}


def child(operation: str, app: Path, work: Path) -> None:
    start = time.perf_counter()
    OPERATIONS[operation](app, work)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak}))


# --- the parent: datasets, runs, table ---------------------------------------------------


@dataclass
class Result:
    seconds: float
    peak_rss_mib: float


def payload_bytes(app: Path) -> int:
    return sum(path.stat().st_size for path in files_of(app))


def make_large(app: Path, size_mib: int) -> None:
    app.mkdir(parents=True)
    with (app / "weights.bin").open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))


def make_small(app: Path, count: int, size_kib: int) -> None:
    for i in range(count):
        directory = app / f"pkg{i // FILES_PER_DIR:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"module{i:06d}.py").write_bytes(os.urandom(size_kib * 1024))


def run(operation: str, app: Path, work: Path) -> Result:
    if operation in OUTPUTS:
        shutil.rmtree(work / OUTPUTS[operation], ignore_errors=True)
    # Start every run with no dirty pages left by the previous one.
    os.sync()
    done = subprocess.run(
        [sys.executable, __file__, "--child", operation, str(app), str(work)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"{operation} failed:\n{done.stderr}")
    return Result(**json.loads(done.stdout))


def measure(operations: list[str], app: Path, work: Path, repeat: int) -> dict[str, Result]:
    """Best time and highest peak RSS of each operation, repeats interleaved."""
    work.mkdir(parents=True, exist_ok=True)
    best: dict[str, Result] = {}
    for _ in range(repeat):
        for operation in operations:
            result = run(operation, app, work)
            previous = best.get(operation)
            if previous is None:
                best[operation] = result
            else:
                previous.seconds = min(previous.seconds, result.seconds)
                previous.peak_rss_mib = max(previous.peak_rss_mib, result.peak_rss_mib)
    return best


LABELS = {
    "in-memory": "(b) AES-GCM in memory",
    "raw-file": "(a) raw AES-GCM file->file",
    "raw-file-into": "(a') same, preallocated buffers",
    "raw-pack": "(a) raw AES-GCM files->stream",
    "raw-unpack": "(a) raw AES-GCM stream->files",
    "seal": "seal",
    "unseal": "unseal",
    "legacy-seal": "(c) legacy zip+Fernet seal",
    "legacy-open": "(c) legacy zip+Fernet open",
}


def report(
    title: str,
    size: int,
    results: dict[str, Result],
    baselines: dict[str, str],
    target: float,
    checks: list[str],
    legacy: tuple[int, dict[str, Result]] | None,
) -> None:
    print(f"\n{title}  ({size / MiB:.0f} MiB of payload)")
    print(f"  {'operation':34} {'MB/s':>9} {'x (a)':>7} {'peak RSS MiB':>13}")
    rows = [(op, size, result) for op, result in results.items()]
    if legacy is not None:
        legacy_size, legacy_results = legacy
        rows += [(op, legacy_size, result) for op, result in legacy_results.items()]
    for operation, nbytes, result in rows:
        rate = nbytes / result.seconds / 1e6
        base = baselines.get(operation)
        ratio = ""
        if base is not None:
            ratio = f"{rate / (size / results[base].seconds / 1e6):.2f}"
        label = LABELS[operation]
        if nbytes != size:
            label += f" ({nbytes / MiB:.0f} MiB)"
        print(f"  {label:34} {rate:9.0f} {ratio:>7} {result.peak_rss_mib:13.0f}")
        if operation in ("seal", "unseal") and base is not None:
            ok_speed = rate / (size / results[base].seconds / 1e6) >= target
            ok_rss = result.peak_rss_mib < MAX_RSS_MIB
            checks.append(
                f"{title}: {operation} {'meets' if ok_speed else 'MISSES'} >= {target}x (a); "
                f"peak RSS {'<' if ok_rss else 'NOT <'} {MAX_RSS_MIB} MiB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the one-file app")
    parser.add_argument("--small-files", type=int, default=10_000, help="files of the small app")
    parser.add_argument("--small-kib", type=int, default=8, help="size of each small file")
    parser.add_argument(
        "--workdir", type=Path, help="where to build the apps (default: a temp dir)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument(
        "--legacy-max-mib",
        type=int,
        default=256,
        help="largest app the in-memory legacy path is run on",
    )
    parser.add_argument("--child", nargs=3, metavar=("OP", "APP", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        operation, app, work = args.child
        child(operation, Path(app), Path(work))
        return

    root = Path(tempfile.mkdtemp(prefix="bench-sealing-", dir=args.workdir))
    checks: list[str] = []
    try:
        print(f"workdir {root}; best of {args.repeat}; Python {sys.version.split()[0]}")
        large = root / "large" / "app"
        make_large(large, args.size_mib)
        results = measure(
            ["in-memory", "raw-file", "raw-file-into", "seal", "unseal"],
            large,
            root / "large",
            args.repeat,
        )
        legacy_mib = min(args.size_mib, args.legacy_max_mib)
        if legacy_mib == args.size_mib:
            legacy_app = large
        else:
            legacy_app = root / "legacy" / "app"
            make_large(legacy_app, legacy_mib)
        legacy = measure(["legacy-seal", "legacy-open"], legacy_app, root / "legacy", args.repeat)
        report(
            f"one {args.size_mib} MiB file",
            payload_bytes(large),
            results,
            {
                op: "raw-file"
                for op in ("seal", "unseal", "legacy-seal", "legacy-open", "in-memory")
            },
            TARGETS["large"],
            checks,
            (payload_bytes(legacy_app), legacy),
        )
        shutil.rmtree(root / "large")
        shutil.rmtree(root / "legacy", ignore_errors=True)

        small = root / "small" / "app"
        make_small(small, args.small_files, args.small_kib)
        results = measure(
            ["raw-pack", "seal", "raw-unpack", "unseal", "legacy-seal", "legacy-open"],
            small,
            root / "small",
            args.repeat,
        )
        report(
            f"{args.small_files} files of {args.small_kib} KiB",
            payload_bytes(small),
            results,
            {
                "seal": "raw-pack",
                "legacy-seal": "raw-pack",
                "unseal": "raw-unpack",
                "legacy-open": "raw-unpack",
            },
            TARGETS["small"],
            checks,
            None,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\ntargets:")
    for line in checks:
        print(f"  {line}")


if __name__ == "__main__":
    main()
