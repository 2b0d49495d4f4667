"""`enclave start`: a first start of an image, a start of an image started before, and bare bwrap.

    .venv/bin/python bench/bench_enclave.py [--rounds 5] [--memory 1024] [--workdir DIR] [--keep]

Needs bubblewrap. Everything runs in a scratch workspace set up with the CLI as
a user types it: ``init`` and ``image build`` (no requirements; the image
pins a key ARN, so no key service is needed to build or start it). Each round
measures, in this order, the wall time of:

- baseline: ``bwrap --unshare-all --ro-bind / / true`` (a sandbox that runs
  nothing: what bubblewrap itself costs here);
- cold: ``strongroom enclave start hello.eif`` with an empty image cache (the
  image is measured while unpacked), until the enclave server answers and the
  command exits; then (untimed, reported) until the running enclave's
  supervisor has added the image's bytecode to the cached copy;
- warm: the same command again, after ``enclave stop``: the image is measured,
  the cached copy checked file by file and used.

Each ``enclave start`` is followed by an untimed ``enclave stop``. While a
start runs, the enclave's record is polled to tell when each phase began
(measuring, checking or unpacking, compiling, starting the server, waiting
for it); the phase table gives their medians.

Target: warm start at most 1.5 s at p50.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_run import BenchError, Cli, check_prerequisites

WARM_TARGET_S = 1.5
NAME = "bench"
KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/bench-enclave"
POLL_S = 0.005
BYTECODE_TIMEOUT_S = 300.0
#: Phases of a start as the supervisor records them, then the CLI's last one.
EXIT = "the command exits"


@dataclass
class Variant:
    name: str
    times: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)
    bytecode: list[float] = field(default_factory=list)


class PhaseWatch:
    """Polls an enclave's record while its start runs; notes when each phase began."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.started = time.perf_counter()
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                extra = json.loads(self.record.read_text())["extra"]
            except (OSError, ValueError, KeyError):
                extra = {}
            now = time.perf_counter() - self.started
            phase = extra.get("phase")
            if extra.get("state") == "RUNNING":
                phase = "waiting for the enclave server to answer"
            if isinstance(phase, str):
                self.seen.setdefault(phase, now)
            time.sleep(POLL_S)

    def finish(self) -> dict[str, float]:
        """How long each phase lasted (until the next one, or the command's exit)."""
        ended = time.perf_counter() - self.started
        self._stop.set()
        self._thread.join()
        marks = sorted(self.seen.items(), key=lambda item: item[1])
        spans = {"until the first phase (CLI, supervisor start)": marks[0][1] if marks else ended}
        for (phase, began), (_, until) in zip(marks, [*marks[1:], (EXIT, ended)], strict=True):
            spans[phase] = until - began
        return spans


def remove_cache(home: Path) -> None:
    """Empty the image cache (its entries are read-only: made writable first)."""
    cache = home / "run" / "image-cache"
    if cache.exists():
        for directory, _, _ in os.walk(cache):
            os.chmod(directory, 0o700)
        shutil.rmtree(cache)


def timed_start(cli: Cli, memory_mib: int) -> tuple[float, dict[str, float], float | None]:
    """One start (wall time, phases), and how long its bytecode took to be added (if it was)."""
    record = cli.home / "run" / "enclaves" / f"{NAME}.json"
    with contextlib.suppress(FileNotFoundError):
        record.unlink()
    watch = PhaseWatch(record)
    start = ("enclave", "start", "hello.eif", "--name", NAME, "--memory", str(memory_mib))
    elapsed, _ = cli.timed(*start)
    spans = watch.finish()
    bytecode = wait_for_bytecode(record, elapsed)
    cli.run("enclave", "stop", NAME)
    return elapsed, spans, bytecode


def wait_for_bytecode(record: Path, elapsed: float) -> float | None:
    """Seconds from the start until the supervisor added the bytecode (None: it had it)."""
    deadline = time.monotonic() + BYTECODE_TIMEOUT_S
    began = time.monotonic() - elapsed
    while time.monotonic() < deadline:
        state = json.loads(record.read_text())["extra"].get("bytecode")
        if state in (None, "present"):  # None: a Strongroom without the image cache
            return None
        if state != "compiling":
            if state != "added":
                raise BenchError(f"the image's bytecode was not added: {state}")
            return time.monotonic() - began
        time.sleep(POLL_S * 10)
    raise BenchError(f"the image's bytecode was not added within {BYTECODE_TIMEOUT_S} s")


def bare_bwrap() -> float:
    started = time.perf_counter()
    subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], check=True)
    return time.perf_counter() - started


def bench(cli: Cli, rounds: int, memory_mib: int) -> list[Variant]:
    baseline = Variant("baseline: `bwrap --unshare-all --ro-bind / / true`")
    cold, warm = Variant("cold"), Variant("warm")
    for number in range(rounds):
        baseline.times.append(bare_bwrap())
        remove_cache(cli.home)
        for variant in (cold, warm):
            elapsed, spans, bytecode = timed_start(cli, memory_mib)
            variant.times.append(elapsed)
            if bytecode is not None:
                variant.bytecode.append(bytecode)
            for phase, span in spans.items():
                variant.phases.setdefault(phase, []).append(span)
        print(
            f"  round {number + 1}: bwrap {baseline.times[-1]:.3f} s, cold {cold.times[-1]:.2f} s, "
            f"warm {warm.times[-1]:.2f} s",
            flush=True,
        )
    return [baseline, cold, warm]


def report(variants: list[Variant]) -> None:
    baseline, cold, warm = variants
    base = statistics.median(baseline.times)
    print("\n| variant | p50 s | min s | max s | × bwrap (p50) | × cold (p50) |")
    print("|---|---|---|---|---|---|")
    for variant in variants:
        p50 = statistics.median(variant.times)
        label = {
            "cold": "cold: `enclave start` (empty image cache)",
            "warm": "warm: `enclave start` (image started before)",
        }.get(variant.name, variant.name)
        print(
            f"| {label} | {p50:.3f} | {min(variant.times):.3f} | {max(variant.times):.3f} "
            f"| {p50 / base:.1f} | {p50 / statistics.median(cold.times):.2f} |"
        )
    for variant in (cold, warm):
        print(f"\n{variant.name} start, median of each phase:\n")
        print("| phase | p50 s |")
        print("|---|---|")
        for phase, spans in variant.phases.items():
            print(f"| {phase} | {statistics.median(spans):.3f} |")
    if cold.bytecode:
        added = statistics.median(cold.bytecode)
        print(
            f"\ncold start: the bytecode was in the cached copy {added:.1f} s after the start"
            " began (p50; the enclave runs meanwhile)"
        )
    p50 = statistics.median(warm.times)
    verdict = "meets" if p50 <= WARM_TARGET_S else "MISSES"
    print(f"\nwarm start p50 {p50:.2f} s: {verdict} the target (≤ {WARM_TARGET_S} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (>= 1)")
    parser.add_argument("--memory", type=int, default=1024, help="enclave memory, MiB")
    parser.add_argument("--workdir", type=Path, help="where the scratch directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    try:
        check_prerequisites()
    except BenchError as e:
        print(f"bench_enclave: {e}", file=sys.stderr)
        return 2
    # unix socket paths are limited to 107 bytes: a short scratch path
    root = Path(tempfile.mkdtemp(prefix="bench-enc-", dir=args.workdir or "/tmp")).resolve()
    cli = Cli(root / "ws", root)
    print(f"bench_enclave: scratch {root}; python {sys.version.split()[0]}")
    print(f"  machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    code = 0
    try:
        cli.run("init")
        cli.run("image", "build", "--key", KEY_ARN, "-o", "hello.eif")
        size = (root / "hello.eif").stat().st_size
        print(f"  image: {size / 2**20:.0f} MiB; enclave --memory {args.memory} MiB\n")
        report(bench(cli, args.rounds, args.memory))
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    except BenchError as e:
        print(f"bench_enclave: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        cli.run("enclave", "stop", "--all", check=False)
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            remove_cache(cli.home)
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
