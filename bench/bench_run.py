"""Enclave run overhead and file transfer throughput, against baselines measured in the same run.

    .venv/bin/python bench/bench_run.py [--runs 20] [--size-mib 1024] [--small-files 5000]
                                        [--repeat 3] [--workdir DIR] [--skip-run]
                                        [--skip-transfer] [--keep]

Needs bubblewrap (the local enclave). Everything runs in a scratch workspace
under a temporary directory (inside ``--workdir`` if given), set up with the
CLI exactly as a user types it: ``init``, ``keys serve --detach``, ``keys
create``, ``image build`` (no requirements), ``image approve``, ``seal`` of a
hello-world app, ``enclave start --memory M``, ``proxy start``. The enclave,
the proxy and the key service are stopped at the end, whatever happens.

1. ``run`` overhead, warm enclave, ``--runs`` interleaved runs of each:

   - baseline: ``python -S -s hello.py`` with this very interpreter;
   - CLI start-up alone: ``strongroom --version`` (the console script);
   - (a) ``strongroom run hello.sealed --entry hello.py`` (process start included);
   - (b) ``EnclaveClient.run`` with the request ``strongroom run`` builds, from
     this process over one warm connection: the enclave-side cost alone,
     split by the run's own events (key release, decryption + spawn, app).

   - and for the start-up alone, its own baseline: ``python -c pass`` (with site).

   Targets at p50: (a) at most 150 ms more than ``python hello.py``, (b) 60 ms;
   ``strongroom --version`` at most 60 ms more than ``python -c pass``.

2. ``push`` and ``pull`` of one ``--size-mib`` file and of ``--small-files`` ×
   4 KiB files (100 per directory), best of ``--repeat``, each against a raw
   unix-socket copy of the same bytes: a server process that ``recv_into``s a
   1 MiB buffer and writes to a file on tmpfs (like the enclave's shared
   folder; the host-side files live in /dev/shm too), and a client that reads
   1 MiB chunks and ``sendall``s them; the reverse for pull. One connection,
   one request and acknowledgement per file. Also shown for reference (not a
   denominator): the same raw copy with SHA-256 on both ends, which is the
   end-to-end check that push and pull always do.

   Measured through the CLI (wall time, process start included, and the
   CLI's own transfer timer from ``--json``) and through ``EnclaveClient``
   directly (small files: the archive endpoints, as push and pull use them).
   Every figure is also a ratio against the raw copy of the same bytes in the
   same run (``x raw``). Targets: >= 0.5x raw for the large file; >= 3,000
   small files/s.

MB/s are payload bytes per second, 1 MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

MiB = 1 << 20
CHUNK = MiB
SMALL_SIZE = 4096
FILES_PER_DIR = 100
#: Targets over the baseline at p50: the CLI path, and the library path alone.
CLI_TARGET_MS = 150.0
LIBRARY_TARGET_MS = 60.0
STARTUP_TARGET_MS = 60.0
LARGE_TARGET_RATIO = 0.5
SMALL_TARGET_FPS = 3000.0
WARMUP_RUNS = 2
HELLO = 'print("hello")\n'
KEY_ALIAS = "alias/bench-run"
REMOTE_ROOT = "/bench"

#: Raw baseline protocol: op (P put, G get; lower case: with SHA-256), path length, size.
HEADER = struct.Struct("!cHQ")
SIZE = struct.Struct("!Q")
DIGEST_SIZE = 32


class BenchError(Exception):
    """The benchmark cannot go on (said in one line, with what to do)."""


# --- small helpers -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _noop(_n: int) -> None:
    return None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            break
        data += got
    return bytes(data)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- the workspace, through the CLI ----------------------------------------------------------


class Cli:
    """Runs the installed ``strongroom`` console script in the scratch workspace.

    As on a user's machine, Python may cache bytecode: an environment that sets
    PYTHONDONTWRITEBYTECODE (CI machines do) would have every CLI run compile
    Strongroom's modules again, ~100 ms no user pays after the first run.
    """

    def __init__(self, home: Path, cwd: Path) -> None:
        self.home = home
        self.cwd = cwd
        script = Path(sys.executable).parent / "strongroom"
        self.prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "strongroom"]
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, "--home", str(self.home), *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args), cwd=self.cwd, capture_output=True, text=True, env=self.env
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise BenchError(
                f"`strongroom {' '.join(args)}` exited with {result.returncode}: "
                + (detail[-1] if detail else "(no output)")
            )
        return result

    def timed(self, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        started = time.perf_counter()
        result = self.run(*args)
        return time.perf_counter() - started, result


def check_prerequisites() -> None:
    if shutil.which("bwrap") is None:
        raise BenchError(
            "bubblewrap (bwrap) is not installed: the local enclave needs it "
            "(apt-get install bubblewrap)"
        )
    from strongroom.enclave.sandbox import check_sandbox
    from strongroom.errors import StrongroomError

    try:
        check_sandbox()
    except StrongroomError as e:
        raise BenchError(f"{e.message} ({e.hint})" if e.hint else e.message) from e


@dataclass
class Scratch:
    root: Path  # the scratch directory (workspace, app, image, package)
    data: Path  # host-side transfer files, on tmpfs when possible
    cli: Cli
    memory_mib: int

    @property
    def home(self) -> Path:
        return self.root / "ws"


def set_up(scratch: Scratch) -> None:
    cli = scratch.cli
    app = scratch.root / "hello"
    app.mkdir()
    (app / "hello.py").write_text(HELLO)
    steps: list[tuple[str, ...]] = [
        ("init",),
        ("keys", "serve", "--detach"),
        ("keys", "create", "--alias", KEY_ALIAS, "--description", "bench_run"),
        ("image", "build", "--key", KEY_ALIAS, "-o", "hello.eif"),
        ("image", "approve", "hello.eif", "--key", KEY_ALIAS),
        ("seal", "hello", "--key", KEY_ALIAS, "-o", "hello.sealed"),
        ("enclave", "start", "hello.eif", "--memory", str(scratch.memory_mib)),
        ("proxy", "start"),
    ]
    for step in steps:
        started = time.perf_counter()
        cli.run(*step)
        print(f"  setup: strongroom {' '.join(step)}  ({time.perf_counter() - started:.1f} s)")


def tear_down(scratch: Scratch) -> None:
    for args in (("enclave", "stop", "--all"), ("proxy", "stop"), ("keys", "stop")):
        with contextlib.suppress(Exception):
            scratch.cli.run(*args, check=False)


def enclave_client(scratch: Scratch) -> Any:
    from strongroom.cli.client import connect_enclave
    from strongroom.workspace import Workspace

    return connect_enclave(Workspace.locate(scratch.home), None)


# --- 1. run overhead -----------------------------------------------------------------------


@dataclass
class RunSplits:
    """Seconds since the request, when each event of one library run arrived."""

    first_event: float
    key_released: float
    started: float
    exited: float
    ended: float


def run_request(scratch: Scratch, client: Any) -> dict[str, Any]:
    """The request ``strongroom run hello.sealed --entry hello.py`` sends (see run_command),
    with the run's session credentials (valid 15 minutes: longer than the benchmark)."""
    from strongroom.cli.client import ENCRYPTED_DIR, _run_credentials
    from strongroom.workspace import Workspace

    credentials, key_service = _run_credentials(
        Workspace.locate(scratch.home),
        client,
        scratch.root / "hello.sealed",
        f"{ENCRYPTED_DIR}/hello.sealed",
    )
    return {
        "package": f"{ENCRYPTED_DIR}/hello.sealed",
        "entry": "hello.py",
        "args": [],
        "env": {},
        "timeout_s": None,
        "credentials": credentials,
        "key_service": key_service,
    }


def library_run(client: Any, request: dict[str, Any]) -> RunSplits:
    marks: dict[str, float] = {}
    statuses = 0
    output = bytearray()
    code = None
    started = time.perf_counter()
    for event in client.run(request):
        now = time.perf_counter() - started
        kind = event["type"]
        marks.setdefault("first", now)
        if kind == "status":
            statuses += 1
            if statuses == 2:  # "decrypting the app": the key has been released
                marks["key"] = now
        elif kind == "started":
            marks["started"] = now
        elif kind == "stdout":
            output += base64.b64decode(event["data"])
        elif kind == "exit":
            marks["exit"] = now
            code = event["code"]
        elif kind == "error":
            raise BenchError(f"the library run failed: {event.get('message')}")
    ended = time.perf_counter() - started
    if code != 0 or bytes(output) != b"hello\n" or len(marks) != 4:
        raise BenchError(f"the library run ended oddly: code {code}, output {bytes(output)!r}")
    return RunSplits(marks["first"], marks["key"], marks["started"], marks["exit"], ended)


def bench_run(scratch: Scratch, runs: int) -> None:
    cli = scratch.cli
    hello = scratch.root / "hello" / "hello.py"
    baseline_cmd = [sys.executable, "-S", "-s", str(hello)]

    def direct() -> float:
        started = time.perf_counter()
        result = subprocess.run(baseline_cmd, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0 or result.stdout != "hello\n":
            raise BenchError(f"python hello.py failed: {result.stderr.strip()}")
        return elapsed

    def startup() -> float:
        return cli.timed("--version")[0]

    def bare_python() -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return time.perf_counter() - started

    def via_cli() -> float:
        elapsed, result = cli.timed("run", "hello.sealed", "--entry", "hello.py")
        if result.stdout != "hello\n":
            raise BenchError(f"strongroom run printed {result.stdout!r}")
        return elapsed

    times: dict[str, list[float]] = {
        "base": [], "python": [], "startup": [], "cli": [], "lib": []
    }  # fmt: skip
    splits: list[RunSplits] = []
    with enclave_client(scratch) as client:
        request = run_request(scratch, client)
        for _ in range(WARMUP_RUNS):  # the first CLI run also uploads the package
            direct(), bare_python(), startup(), via_cli(), library_run(client, request)
        for _ in range(runs):  # interleaved, so that all see the same machine
            times["base"].append(direct())
            times["python"].append(bare_python())
            times["startup"].append(startup())
            times["cli"].append(via_cli())
            split = library_run(client, request)
            splits.append(split)
            times["lib"].append(split.ended)

    print(f"\n## 1. run overhead: hello world, warm enclave, {runs} interleaved runs each\n")
    print(
        f"{'variant':<48}{'p50 ms':>9}{'p95 ms':>9}{'+p50 ms':>9}{'+p95 ms':>9}"
        f"{'x p50':>8}  targets +p50: (a) <= {CLI_TARGET_MS:.0f} ms, "
        f"(b) <= {LIBRARY_TARGET_MS:.0f} ms, start-up <= {STARTUP_TARGET_MS:.0f} ms"
    )
    #: label, times, their baseline (None: a baseline itself), target over it
    rows = [
        ("baseline: python -S -s hello.py", "base", None, None),
        ("baseline: python -c pass", "python", None, None),
        ("start-up: strongroom --version (vs -c pass)", "startup", "python", STARTUP_TARGET_MS),
        ("(a) CLI: strongroom run hello.sealed", "cli", "base", CLI_TARGET_MS),
        ("(b) library: EnclaveClient.run (warm conn.)", "lib", "base", LIBRARY_TARGET_MS),
    ]
    for label, key, against, target in rows:
        p50, p95 = percentile(times[key], 50) * 1e3, percentile(times[key], 95) * 1e3
        extra, verdict, ratio = " " * 18, "", 1.0
        if against is not None:
            b50 = percentile(times[against], 50) * 1e3
            b95 = percentile(times[against], 95) * 1e3
            extra, ratio = f"{p50 - b50:>9.1f}{p95 - b95:>9.1f}", p50 / b50
            verdict = "meets" if target is None or p50 - b50 <= target else "MISSES"
        print(f"{label:<48}{p50:>9.1f}{p95:>9.1f}{extra}{ratio:>8.2f}  {verdict}")

    parts: list[tuple[str, Callable[[RunSplits], float]]] = [
        ("request -> first event", lambda s: s.first_event),
        ("key release (RSA key, attest, KMS Decrypt)", lambda s: s.key_released - s.first_event),
        ("decrypt app + spawn python", lambda s: s.started - s.key_released),
        ("app run (start -> exit event)", lambda s: s.exited - s.started),
        ("end of stream", lambda s: s.ended - s.exited),
    ]
    print(f"\n(b) split by the run's own events{'':<16}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for label, pick in parts:
        values = [pick(s) * 1e3 for s in splits]
        print(
            f"  {label:<46}{percentile(values, 50):>9.1f}{percentile(values, 95):>9.1f}"
            f"{max(values):>9.1f}"
        )


# --- 2. transfers: the raw baseline ----------------------------------------------------------


def raw_server(listener: socket.socket, root: str) -> None:
    """Serve put/get requests, one connection at a time, until killed."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        conn, _ = listener.accept()
        with conn:
            while head := _recv_exact(conn, HEADER.size):
                op, length, size = HEADER.unpack(head)
                path = os.path.join(root, _recv_exact(conn, length).decode())
                digest = hashlib.sha256() if op in (b"p", b"g") else None
                if op in (b"P", b"p"):
                    try:
                        f = open(path, "wb", buffering=0)  # noqa: SIM115
                    except FileNotFoundError:
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        f = open(path, "wb", buffering=0)  # noqa: SIM115
                    with f:
                        remaining = size
                        while remaining:
                            got = conn.recv_into(view[: min(CHUNK, remaining)])
                            if not got:
                                raise ConnectionError("client went away")
                            f.write(view[:got])
                            if digest is not None:
                                digest.update(view[:got])
                            remaining -= got
                    reply = SIZE.pack(size) + (digest.digest() if digest is not None else b"")
                    conn.sendall(reply)
                else:
                    with open(path, "rb", buffering=0) as f:
                        conn.sendall(SIZE.pack(os.fstat(f.fileno()).st_size))
                        while chunk := f.read(CHUNK):
                            conn.sendall(chunk)
                            if digest is not None:
                                digest.update(chunk)
                    if digest is not None:
                        conn.sendall(digest.digest())


class RawClient:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(address)
        self.buffer = bytearray(CHUNK)

    def close(self) -> None:
        self.sock.close()

    def push(self, local: Path, remote: str, *, hashed: bool = False) -> None:
        name = remote.encode()
        size = local.stat().st_size
        self.sock.sendall(HEADER.pack(b"p" if hashed else b"P", len(name), size) + name)
        digest = hashlib.sha256()
        with local.open("rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                self.sock.sendall(chunk)
                if hashed:
                    digest.update(chunk)
        reply = _recv_exact(self.sock, SIZE.size + (DIGEST_SIZE if hashed else 0))
        if SIZE.unpack(reply[: SIZE.size])[0] != size:
            raise BenchError(f"raw push of {local} was not acknowledged")
        if hashed and reply[SIZE.size :] != digest.digest():
            raise BenchError(f"raw push of {local}: checksums differ")

    def pull(self, remote: str, local: Path, *, hashed: bool = False) -> None:
        name = remote.encode()
        self.sock.sendall(HEADER.pack(b"g" if hashed else b"G", len(name), 0) + name)
        (size,) = SIZE.unpack(_recv_exact(self.sock, SIZE.size))
        view = memoryview(self.buffer)
        digest = hashlib.sha256()
        with local.open("wb", buffering=0) as f:
            remaining = size
            while remaining:
                got = self.sock.recv_into(view[: min(CHUNK, remaining)])
                if not got:
                    raise BenchError(f"raw pull of {remote} was cut short")
                f.write(view[:got])
                if hashed:
                    digest.update(view[:got])
                remaining -= got
        if hashed and _recv_exact(self.sock, DIGEST_SIZE) != digest.digest():
            raise BenchError(f"raw pull of {remote}: checksums differ")


@contextlib.contextmanager
def raw_service(data: Path) -> Iterator[tuple[str, Path]]:
    """A raw copy server process; yields (its socket, the directory it writes into)."""
    root = data / "raw-server"
    root.mkdir()
    address = str(data / "raw.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(4)
    process = mp.get_context("fork").Process(
        target=raw_server, args=(listener, str(root)), daemon=True
    )
    process.start()
    listener.close()
    try:
        yield address, root
    finally:
        process.kill()
        process.join(5)


# --- 2. transfers: the measurements -------------------------------------------------------


@dataclass
class Dataset:
    label: str
    source: Path  # a file or a directory
    files: list[Path]
    nbytes: int
    large: bool


def make_datasets(data: Path, size_mib: int, small_files: int) -> list[Dataset]:
    datasets = []
    if size_mib > 0:
        big = data / "big.bin"
        block = os.urandom(CHUNK)  # distinct 1 MiB blocks, so nothing dedups or compresses
        with big.open("wb") as f:
            for i in range(size_mib):
                f.write(hashlib.sha256(i.to_bytes(8, "big")).digest() + block[DIGEST_SIZE:])
        datasets.append(Dataset(f"1 file x {size_mib} MiB", big, [big], size_mib * MiB, True))
    if small_files > 0:
        small = data / "small"
        files = []
        for i in range(small_files):
            path = small / f"d{i // FILES_PER_DIR:04d}" / f"f{i:06d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(SMALL_SIZE))
            files.append(path)
        label = f"{small_files:,} files x 4 KiB"
        datasets.append(Dataset(label, small, files, small_files * SMALL_SIZE, False))
    return datasets


@dataclass
class Result:
    dataset: Dataset
    direction: str  # push | pull
    method: str
    seconds: float
    denominator: bool = False  # the raw baseline of its group
    targeted: bool = False


def _clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remote_of(ds: Dataset) -> str:
    return f"{REMOTE_ROOT}/{ds.source.name}"


def lib_push(client: Any, ds: Dataset) -> None:
    """What ``strongroom push SOURCE /bench/`` does, from this process (small files: archives
    of up to ``ARCHIVE_BATCH_FILES``, one request each, as push sends them)."""
    if not ds.large:
        from strongroom.cli.client import ARCHIVE_BATCH_FILES

        def members(files: list[Path]) -> Iterator[tuple[str, bytes, int, float]]:
            now = time.time()
            for local in files:
                rel = local.relative_to(ds.source.parent)
                yield str(PurePosixPath(*rel.parts)), local.read_bytes(), 0o644, now

        for start in range(0, len(ds.files), ARCHIVE_BATCH_FILES):
            batch = ds.files[start : start + ARCHIVE_BATCH_FILES]
            client.upload_archive(REMOTE_ROOT, members(batch))
        return
    made: set[str] = set()
    for local in ds.files:
        rel = local.relative_to(ds.source.parent)
        target = str(PurePosixPath(REMOTE_ROOT, *rel.parts))
        parent = str(PurePosixPath(target).parent)
        if parent not in made:
            client.mkdir(parent, parents=True)
            made.add(parent)
        client.upload(local, target, progress=_noop)


def lib_pull(client: Any, ds: Dataset, dest: Path) -> int:
    """What ``strongroom pull /bench/NAME DEST`` does, from this process; the file count."""
    entry = client.stat(_remote_of(ds))
    plan: list[tuple[str, Path]] = []
    if entry.type == "file":
        plan.append((entry.path, dest))
    else:
        base = PurePosixPath(entry.path)
        stack = [entry.path]
        while stack:
            for child in client.list(stack.pop()):
                if child.type == "dir":
                    stack.append(child.path)
                elif child.type == "file":
                    rel = PurePosixPath(child.path).relative_to(base.parent)
                    plan.append((child.path, dest.joinpath(*rel.parts)))
    if not ds.large:  # as pull fetches small files: one archive of the directory pulled
        from strongroom.client.archive import pull_archive
        from strongroom.client.transfer import LocalTarget, PullItem

        items = {
            remote: PullItem(remote, LocalTarget(dest, local.relative_to(dest).parts), SMALL_SIZE)
            for remote, local in plan
        }
        with client.open_archive(entry.path, max_size=MiB) as answer:
            written = pull_archive(answer, entry.path, items, max_size=MiB, progress=_noop)
        return len(written)
    for remote, local in plan:
        client.download(remote, local, progress=_noop)
    return len(plan)


@dataclass
class Case:
    direction: str  # push | pull
    method: str
    measure: Callable[[], float]
    after: Callable[[], None]  # undo what the measurement left behind
    denominator: bool = False
    targeted: bool = False
    times: list[float] = field(default_factory=list)


def bench_transfers(scratch: Scratch, datasets: list[Dataset], repeat: int) -> None:
    cli = scratch.cli
    results: list[Result] = []
    pulled = scratch.data / "pulled"
    with raw_service(scratch.data) as (address, raw_root), enclave_client(scratch) as client:
        raw = RawClient(address)

        def clear_remote() -> None:
            with contextlib.suppress(Exception):
                client.remove(REMOTE_ROOT, recursive=True)

        def clear_raw() -> None:
            for child in raw_root.iterdir():
                _clear(child)

        def clear_pulled() -> None:
            _clear(pulled)

        try:
            for ds in datasets:
                results += _bench_dataset(
                    ds, repeat, cli, client, raw, clear_remote, clear_raw, clear_pulled, pulled
                )
                clear_remote()
                clear_raw()
                clear_pulled()
        finally:
            raw.close()
    print_transfers(results, repeat)


def _bench_dataset(
    ds: Dataset,
    repeat: int,
    cli: Cli,
    client: Any,
    raw: RawClient,
    clear_remote: Callable[[], None],
    clear_raw: Callable[[], None],
    clear_pulled: Callable[[], None],
    pulled: Path,
) -> list[Result]:
    rels = [str(p.relative_to(ds.source.parent)) for p in ds.files]
    dest = pulled / ds.source.name if ds.large else pulled  # what `pull` is given

    def raw_push(hashed: bool) -> float:
        started = time.perf_counter()
        for local, rel in zip(ds.files, rels, strict=True):
            raw.push(local, rel, hashed=hashed)
        return time.perf_counter() - started

    def raw_pull(hashed: bool) -> float:
        made: set[Path] = set()
        started = time.perf_counter()
        for rel in rels:
            local = pulled / rel
            if local.parent not in made:
                local.parent.mkdir(parents=True, exist_ok=True)
                made.add(local.parent)
            raw.pull(rel, local, hashed=hashed)
        return time.perf_counter() - started

    own: dict[str, list[float]] = {"push": [], "pull": []}
    library_name = {
        "push": "EnclaveClient.upload" if ds.large else "EnclaveClient.upload_archive",
        "pull": "EnclaveClient.download" if ds.large else "EnclaveClient.open_archive",
    }

    def cli_push() -> float:
        elapsed, result = cli.timed("--json", "push", str(ds.source), REMOTE_ROOT + "/")
        own["push"].append(float(json.loads(result.stdout)["seconds"]))
        return elapsed

    def cli_pull() -> float:
        pulled.mkdir(exist_ok=True)
        elapsed, result = cli.timed("--json", "pull", _remote_of(ds), str(dest))
        own["pull"].append(float(json.loads(result.stdout)["seconds"]))
        return elapsed

    def library_push() -> float:
        started = time.perf_counter()
        lib_push(client, ds)
        return time.perf_counter() - started

    def library_pull() -> float:
        started = time.perf_counter()
        count = lib_pull(client, ds, dest)
        elapsed = time.perf_counter() - started
        if count != len(ds.files):
            raise BenchError(f"pulled {count} files of {len(ds.files)}")
        return elapsed

    # one raw round trip with checksums, checked outside the timings
    raw_push(True)
    raw_pull(True)
    if ds.large and _sha256_file(pulled / rels[0]) != _sha256_file(ds.files[0]):
        raise BenchError("the raw baseline's copy differs from the source")
    clear_raw()
    clear_pulled()

    push = [
        Case("push", "raw unix socket", lambda: raw_push(False), clear_raw, denominator=True),
        Case("push", "raw + SHA-256 both ends", lambda: raw_push(True), clear_raw),
        Case("push", "CLI strongroom push (wall)", cli_push, clear_remote, targeted=True),
        Case("push", library_name["push"], library_push, clear_remote, targeted=True),
    ]
    pull = [
        Case("pull", "raw unix socket", lambda: raw_pull(False), clear_pulled, denominator=True),
        Case("pull", "raw + SHA-256 both ends", lambda: raw_pull(True), clear_pulled),
        Case("pull", "CLI strongroom pull (wall)", cli_pull, clear_pulled, targeted=True),
        Case("pull", library_name["pull"], library_pull, clear_pulled, targeted=True),
    ]
    if not ds.large:  # the checksum reference matters for bandwidth only
        push.pop(1)
        pull.pop(1)
    for cases in (push, pull):
        if cases is pull:  # the copies to pull from, on both sides
            lib_push(client, ds)
            raw_push(False)
        for _ in range(repeat):  # round robin, so that all see the same machine
            for case in cases:
                case.times.append(case.measure())
                case.after()
    results = []
    for case in push + pull:
        results.append(
            Result(
                ds, case.direction, case.method, min(case.times), case.denominator, case.targeted
            )
        )
        if case.method.startswith("CLI"):
            label = f"CLI strongroom {case.direction} (own timer)"
            results.append(
                Result(ds, case.direction, label, min(own[case.direction]), targeted=True)
            )
    return results


def print_transfers(results: list[Result], repeat: int) -> None:
    print(f"\n## 2. push / pull, best of {repeat}, vs raw unix-socket copy (tmpfs both ends)\n")
    print(
        f"{'data':<24}{'dir':<6}{'method':<40}{'s':>8}{'MB/s':>9}{'files/s':>10}{'x raw':>8}"
        "  target"
    )
    raw = {(r.dataset.label, r.direction): r for r in results if r.denominator}
    for r in results:
        base = raw[(r.dataset.label, r.direction)]
        ratio = base.seconds / r.seconds
        mbps = r.dataset.nbytes / r.seconds / 1e6
        fps = len(r.dataset.files) / r.seconds
        verdict = ""
        if r.targeted and r.dataset.large:
            verdict = f"{'meets' if ratio >= LARGE_TARGET_RATIO else 'MISSES'} (>= 0.5x raw)"
        elif r.targeted:
            ok = fps >= SMALL_TARGET_FPS
            verdict = f"{'meets' if ok else 'MISSES'} (>= {SMALL_TARGET_FPS:,.0f} files/s)"
        files = "" if r.dataset.large else f"{fps:.0f}"
        print(
            f"{r.dataset.label:<24}{r.direction:<6}{r.method:<40}{r.seconds:>8.3f}{mbps:>9.1f}"
            f"{files:>10}{ratio:>8.2f}  {verdict}"
        )


# --- main ------------------------------------------------------------------------------------


def pin_source() -> Path:
    """Where the strongroom being measured comes from (printed with the results)."""
    import strongroom

    return Path(strongroom.__file__).resolve().parent


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _tmpfs_dir() -> Path | None:
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(shm) and fields[2] == "tmpfs":
                return shm
    return None


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=20, help="runs per variant (>= 1)")
    parser.add_argument("--size-mib", type=int, default=1024, help="large file size (0: skip)")
    parser.add_argument("--small-files", type=int, default=5000, help="4 KiB files (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="transfer repeats (best kept)")
    parser.add_argument("--workdir", type=Path, help="where the scratch directory goes")
    parser.add_argument("--skip-run", action="store_true", help="skip the run benchmark")
    parser.add_argument("--skip-transfer", action="store_true", help="skip the transfers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.repeat < 1 or args.size_mib < 0 or args.small_files < 0:
        parser.error("--runs and --repeat must be >= 1; sizes >= 0")
    signal.signal(signal.SIGTERM, _terminated)
    source = pin_source()

    try:
        check_prerequisites()
    except BenchError as e:
        print(f"bench_run: {e}", file=sys.stderr)
        return 2

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-run-", dir=args.workdir)).resolve()
    tmpfs = _tmpfs_dir()
    data = Path(tempfile.mkdtemp(prefix="bench-run-data-", dir=tmpfs or root))
    transfer = not args.skip_transfer
    need = 3 * (args.size_mib * MiB + args.small_files * SMALL_SIZE) + 64 * MiB
    free = os.statvfs(data).f_bavail * os.statvfs(data).f_frsize
    memory_mib = max(1024, args.size_mib + 2048) if transfer else 1024
    scratch = Scratch(root, data, Cli(root / "ws", root), memory_mib)
    print(f"bench_run: scratch {root}; transfer files in {data} ({'tmpfs' if tmpfs else 'disk'})")
    print(f"  CLI: {' '.join(scratch.cli.prefix)}; python {sys.version.split()[0]}")
    print(f"  strongroom from {source}")
    print(
        f"  machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"enclave --memory {memory_mib} MiB"
    )
    code = 0
    try:
        if transfer and free < need:
            raise BenchError(f"{data} has {free / MiB:.0f} MiB free, {need / MiB:.0f} needed")
        set_up(scratch)
        if not args.skip_run:
            bench_run(scratch, args.runs)
        if transfer:
            datasets = make_datasets(data, args.size_mib, args.small_files)
            bench_transfers(scratch, datasets, args.repeat)
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    except BenchError as e:
        print(f"bench_run: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("bench_run: interrupted; stopping everything", file=sys.stderr)
        code = 130
    finally:
        tear_down(scratch)
        shutil.rmtree(data, ignore_errors=True)
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
