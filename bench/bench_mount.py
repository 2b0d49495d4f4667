"""The synced folder (``strongroom mount``) against baselines measured in the same run.

    .venv/bin/python bench/bench_mount.py [--size-mib 1024] [--small-files 2000]
                                          [--repeat 2] [--workdir DIR] [--keep]

Needs bubblewrap (the local enclave), FUSE 3 (``fusermount3``, ``/dev/fuse``)
and fio. A scratch workspace, set up with the CLI as a user types it
(``init``, ``keys serve --detach``, ``keys create``, ``image build``,
``enclave start --memory M`` with M large enough for the big file in the
shared folder, a slice of the enclave's memory), and ``strongroom mount
DIR``. Host-side files live on tmpfs (/dev/shm), like the shared folder.
Everything is unmounted and stopped at the end, whatever happens.

Every figure is the best of ``--repeat``, measured round robin with its
baselines, and shown as a ratio against them:

- **raw**: the same bytes over a raw unix socket (``bench_run.raw_service``:
  a process that writes what it receives to tmpfs, one request per file);
- **CLI**: ``strongroom push`` / ``pull`` of the same data (wall time);
- **tmpfs**: the same tool copying the same data from tmpfs to tmpfs.

What is measured on the mount, with the tool's own process start and its
final ``close`` included (that is when a file is in the enclave):

1. ``dd bs=1M`` and ``cp`` of one ``--size-mib`` file in and out, and ``fio``
   sequential write (``end_fsync=1``) and read jobs (bs=1M, the same size,
   ``--output-format=json``, fio's own bandwidth). What is read out was put
   there by the library, never through the mount, so no page of it is cached
   in this kernel.
2. ``tar -x`` of ``--small-files`` x 4 KiB files (100 per directory) into the
   mount, until the enclave lists every one of them; ``ls -lR`` of that tree
   with every cached attribute expired.

Targets: write >= 225 MiB/s, read >= 400 MiB/s, small files >= 2,300 files/s.
MiB/s here are 2^20 bytes per second (the issue's unit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_run import (
    CHUNK,
    BenchError,
    Cli,
    RawClient,
    _terminated,
    _tmpfs_dir,
    check_prerequisites,
    pin_source,
    raw_service,
)

MiB = 1 << 20
SMALL_SIZE = 4096
FILES_PER_DIR = 100
WRITE_TARGET = 225.0  # MiB/s
READ_TARGET = 400.0  # MiB/s
SMALL_TARGET = 2300.0  # files/s
KEY_ALIAS = "alias/bench-mount"
#: The mount's attribute TTL, plus slack: ``ls -lR`` is measured with nothing cached.
ATTR_EXPIRY_S = 1.2


@dataclass
class Case:
    group: str
    method: str
    kind: str  # raw | cli | tmpfs | mount
    measure: Callable[[], float]  # seconds
    after: Callable[[], None] = lambda: None
    nbytes: int = 0
    files: int = 0
    target: tuple[str, float] | None = None  # ("MiB/s" | "files/s", at least)
    times: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.times)

    def rate(self, unit: str) -> float:
        return (self.nbytes / MiB if unit == "MiB/s" else self.files) / self.best


def timed(argv: Sequence[str], *, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed: {(done.stderr or done.stdout).strip()}")
    return elapsed


def fio(name: str, rw: str, filename: Path, size_mib: int) -> float:
    """Seconds for ``size_mib`` at fio's own bandwidth of a sequential job."""
    argv = [
        "fio", f"--name={name}", f"--rw={rw}", "--bs=1M", f"--size={size_mib}M",
        f"--filename={filename}", "--ioengine=psync", "--fallocate=none", "--output-format=json",
    ]  # fmt: skip
    if rw == "write":
        argv.append("--end_fsync=1")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"fio {rw} on {filename} failed: {done.stderr.strip() or done.stdout}")
    job = json.loads(done.stdout[done.stdout.index("{") :])["jobs"][0]
    if job["error"]:
        raise BenchError(f"fio {rw} on {filename}: error {job['error']}")
    return size_mib * MiB / float(job[rw]["bw_bytes"])


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- set-up ----------------------------------------------------------------------------------


@dataclass
class Scratch:
    root: Path
    data: Path  # on tmpfs
    cli: Cli
    memory_mib: int

    @property
    def mnt(self) -> Path:
        return self.root / "mnt"


def set_up(scratch: Scratch) -> None:
    scratch.mnt.mkdir()
    steps: list[tuple[str, ...]] = [
        ("init",),
        ("keys", "serve", "--detach"),
        ("keys", "create", "--alias", KEY_ALIAS, "--description", "bench_mount"),
        ("image", "build", "--key", KEY_ALIAS, "-o", "plain.eif"),
        ("enclave", "start", "plain.eif", "--memory", str(scratch.memory_mib)),
        ("mount", str(scratch.mnt)),
    ]
    for step in steps:
        started = time.perf_counter()
        scratch.cli.run(*step)
        print(f"  setup: strongroom {' '.join(step)}  ({time.perf_counter() - started:.1f} s)")


def tear_down(scratch: Scratch) -> None:
    for args in (("unmount", str(scratch.mnt)), ("enclave", "stop", "--all"), ("keys", "stop")):
        with contextlib.suppress(Exception):
            scratch.cli.run(*args, check=False)
    with contextlib.suppress(OSError):
        subprocess.run(["fusermount3", "-u", "-z", str(scratch.mnt)], capture_output=True)


@contextlib.contextmanager
def enclave_client(scratch: Scratch) -> Iterator[Any]:
    from strongroom.cli.client import connect_enclave
    from strongroom.workspace import Workspace

    with connect_enclave(Workspace.locate(scratch.root / "ws"), None) as client:
        yield client


def make_data(data: Path, size_mib: int, small_files: int) -> tuple[Path, Path, Path]:
    """(the big file, the small tree, its tar), on tmpfs; nothing compresses or dedups."""
    big = data / "big.bin"
    with big.open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(CHUNK))
    small = data / "small"
    for i in range(small_files):
        path = small / f"d{i // FILES_PER_DIR:04d}" / f"f{i:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(SMALL_SIZE))
    archive = data / "small.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(small, arcname="small")
    return big, small, archive


# --- the cases -------------------------------------------------------------------------------


def large_cases(
    scratch: Scratch, client: Any, raw: RawClient, raw_root: Path, big: Path, size_mib: int
) -> list[Case]:
    mnt, data, cli = scratch.mnt, scratch.data, scratch.cli
    nbytes = size_mib * MiB
    bench = mnt / "bench"
    local = data / "copy"  # what copies out (and the tmpfs copies) write
    fresh = "/bench/fresh.bin"  # a file the mount never wrote, for each read

    def clear_local() -> None:
        _clear(local)

    def clear_raw() -> None:
        (raw_root / "pushed.bin").unlink(missing_ok=True)

    def clear_bench() -> None:  # through the mount, so that its caches stay right
        for child in bench.iterdir():
            child.unlink()

    def clear_read() -> None:
        clear_local()
        clear_bench()

    def push_fresh() -> None:
        client.upload(big, fresh, progress=lambda _n: None)

    def reading(measure: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            push_fresh()
            time.sleep(ATTR_EXPIRY_S)  # what was cached of the last copy has expired
            return measure()

        return run

    bench.mkdir(exist_ok=True)
    w, r = f"1 file x {size_mib} MiB in", f"1 file x {size_mib} MiB out"
    wt, rt = ("MiB/s", WRITE_TARGET), ("MiB/s", READ_TARGET)

    def cli_pull() -> float:
        return timed(cli.command("pull", fresh, str(local)), env=cli.env)

    def raw_pull() -> float:
        return _timed_call(lambda: raw.pull("big.bin", local))

    cases = [
        Case(w, "raw unix socket", "raw", lambda: _timed_call(lambda: raw.push(big, "pushed.bin")),
             clear_raw),
        Case(w, "CLI strongroom push", "cli",
             lambda: timed(cli.command("push", str(big), "/bench/pushed.bin"), env=cli.env),
             clear_bench),
        Case(w, "tmpfs: dd bs=1M", "tmpfs",
             lambda: timed(["dd", f"if={big}", f"of={local}", "bs=1M", "status=none"]),
             clear_local),
        Case(w, "mount: dd bs=1M", "mount",
             lambda: timed(["dd", f"if={big}", f"of={bench / 'dd.bin'}", "bs=1M", "status=none"]),
             clear_bench, target=wt),
        Case(w, "tmpfs: cp", "tmpfs", lambda: timed(["cp", str(big), str(local)]), clear_local),
        Case(w, "mount: cp", "mount", lambda: timed(["cp", str(big), str(bench / "cp.bin")]),
             clear_bench, target=wt),
        Case(w, "tmpfs: fio write", "tmpfs", lambda: fio("w", "write", local, size_mib),
             clear_local),
        Case(w, "mount: fio write", "mount",
             lambda: fio("w", "write", bench / "fio.bin", size_mib), clear_bench, target=wt),
        Case(r, "raw unix socket", "raw", raw_pull, clear_local),
        Case(r, "CLI strongroom pull", "cli", reading(cli_pull), clear_read),
        Case(r, "tmpfs: dd bs=1M", "tmpfs",
             lambda: timed(["dd", f"if={big}", f"of={local}", "bs=1M", "status=none"]),
             clear_local),
        Case(r, "mount: dd bs=1M", "mount",
             reading(lambda: timed(
                 ["dd", f"if={bench / 'fresh.bin'}", f"of={local}", "bs=1M", "status=none"]
             )), clear_read, target=rt),
        Case(r, "tmpfs: cp", "tmpfs", lambda: timed(["cp", str(big), str(local)]), clear_local),
        Case(r, "mount: cp", "mount",
             reading(lambda: timed(["cp", str(bench / "fresh.bin"), str(local)])), clear_read,
             target=rt),
        Case(r, "tmpfs: fio read", "tmpfs", lambda: fio("r", "read", big, size_mib)),
        Case(r, "mount: fio read", "mount",
             reading(lambda: fio("r", "read", bench / "fresh.bin", size_mib)), clear_bench,
             target=rt),
    ]  # fmt: skip
    for case in cases:
        case.nbytes = nbytes
    raw.push(big, "big.bin")  # what the raw pulls read
    return cases


def small_cases(
    scratch: Scratch, client: Any, raw: RawClient, raw_root: Path, small: Path, archive: Path
) -> tuple[list[Case], list[Case]]:
    """(``tar -x`` and its baselines, ``ls -lR`` and its baselines)."""
    mnt, data, cli = scratch.mnt, scratch.data, scratch.cli
    files = sorted(p for p in small.rglob("*") if p.is_file())
    count = len(files)
    into_mount, into_tmpfs = mnt / "tar", data / "tar"
    listed = mnt / "listed"  # what ls -lR lists: extracted once, before (see main)
    g, ls = f"{count:,} files x 4 KiB in (tar -x)", f"ls -lR of {count:,} files"
    target = ("files/s", SMALL_TARGET)

    def raw_push() -> float:
        rels = [str(p.relative_to(small.parent)) for p in files]
        started = time.perf_counter()
        for path, rel in zip(files, rels, strict=True):
            raw.push(path, rel)
        return time.perf_counter() - started

    def clear_raw() -> None:
        for child in raw_root.iterdir():
            _clear(child)

    def clear_mount() -> None:
        shutil.rmtree(into_mount)

    def clear_tmpfs() -> None:
        shutil.rmtree(into_tmpfs)

    def clear_pushed() -> None:
        client.remove("/pushed", recursive=True)

    def remote_count(top: str) -> int:
        found, pending = 0, [top]
        while pending:
            for entry in client.list(pending.pop()):
                if entry.type == "dir":
                    pending.append(entry.path)
                elif entry.size == SMALL_SIZE:
                    found += 1
        return found

    def tar_into_mount() -> float:
        into_mount.mkdir()
        started = time.perf_counter()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(into_mount)], check=True)
        while remote_count("/tar") < count:  # until the enclave has every one of them
            time.sleep(0.01)
        return time.perf_counter() - started

    def tar_into_tmpfs() -> float:
        into_tmpfs.mkdir()
        return timed(["tar", "-xf", str(archive), "-C", str(into_tmpfs)])

    def ls_mount() -> float:
        time.sleep(ATTR_EXPIRY_S)
        return timed(["ls", "-lR", str(listed)])

    def list_library() -> float:
        time.sleep(ATTR_EXPIRY_S)
        return _timed_call(lambda: remote_count("/listed"))

    tar = [
        Case(g, "raw unix socket", "raw", raw_push, clear_raw),
        Case(g, "CLI strongroom push", "cli",
             lambda: timed(cli.command("push", str(small), "/pushed"), env=cli.env),
             clear_pushed),
        Case(g, "tmpfs: tar -x", "tmpfs", tar_into_tmpfs, clear_tmpfs),
        Case(g, "mount: tar -x (until all in the enclave)", "mount", tar_into_mount, clear_mount,
             target=target),
    ]  # fmt: skip
    listing = [
        Case(ls, "library: EnclaveClient.list per dir", "raw", list_library),
        Case(ls, "tmpfs: ls -lR", "tmpfs", lambda: timed(["ls", "-lR", str(small)])),
        Case(ls, "mount: ls -lR (attributes expired)", "mount", ls_mount),
    ]
    for case in tar + listing:
        case.files = count
        case.nbytes = count * SMALL_SIZE
    return tar, listing


def _timed_call(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run_cases(cases: list[Case], repeat: int) -> None:
    for _ in range(repeat):  # round robin, so that all see the same machine
        for case in cases:
            case.times.append(case.measure())
            case.after()


def print_table(cases: list[Case], repeat: int) -> bool:
    print(f"\n## the synced folder, best of {repeat}, against baselines of the same run\n")
    print(
        f"{'data':<33}{'method':<42}{'s':>8}{'MiB/s':>9}{'files/s':>9}"
        f"{'x raw':>7}{'x CLI':>7}{'x tmpfs':>8}  target"
    )
    met = True
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    for group, members in groups.items():
        base = {kind: next((c for c in members if c.kind == kind), None) for kind in ("raw", "cli")}
        for case in members:
            ratios = []
            for kind in ("raw", "cli"):
                other = base[kind]
                ratios.append(f"{other.best / case.best:>7.2f}" if other else f"{'':>7}")
            # the tmpfs copy by the same tool (dd for dd, cp for cp...), else the first
            tool = case.method.split(": ", 1)[-1]
            tmpfs = next(
                (c for c in members if c.kind == "tmpfs" and c.method.split(": ", 1)[-1] == tool),
                next((c for c in members if c.kind == "tmpfs"), None),
            )
            ratios.append(f"{tmpfs.best / case.best:>8.2f}" if tmpfs else f"{'':>8}")
            verdict = ""
            if case.target is not None:
                unit, least = case.target
                ok = case.rate(unit) >= least
                met = met and ok
                verdict = f"{'meets' if ok else 'MISSES'} (>= {least:,.0f} {unit})"
            files = f"{case.rate('files/s'):>9.0f}" if case.files else f"{'':>9}"
            print(
                f"{group:<33}{case.method:<42}{case.best:>8.3f}{case.rate('MiB/s'):>9.1f}"
                f"{files}{''.join(ratios)}  {verdict}"
            )
    return met


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="the large file (>= 1)")
    parser.add_argument("--small-files", type=int, default=2000, help="4 KiB files (>= 1)")
    parser.add_argument("--repeat", type=int, default=2, help="repeats (best kept)")
    parser.add_argument("--workdir", type=Path, help="where the scratch directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.small_files < 1 or args.repeat < 1:
        parser.error("--size-mib, --small-files and --repeat must be >= 1")
    signal.signal(signal.SIGTERM, _terminated)
    try:
        check_prerequisites()
        for tool in ("fusermount3", "fio", "tar", "dd"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is not installed (apt-get install fuse3 fio)")
    except BenchError as e:
        print(f"bench_mount: {e}", file=sys.stderr)
        return 2
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-mount-", dir=args.workdir)).resolve()
    tmpfs = _tmpfs_dir()
    data = Path(tempfile.mkdtemp(prefix="bench-mount-data-", dir=tmpfs or root))
    # the shared folder takes ~half the enclave's memory: room for the big file twice
    memory_mib = max(5120, 5 * args.size_mib)
    scratch = Scratch(root, data, Cli(root / "ws", root), memory_mib)
    print(f"bench_mount: scratch {root}; host files in {data} ({'tmpfs' if tmpfs else 'disk'})")
    print(f"  strongroom from {pin_source()}; python {sys.version.split()[0]}")
    print(
        f"  machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"enclave --memory {memory_mib} MiB"
    )
    code = 0
    try:
        need = 4 * args.size_mib * MiB + 4 * args.small_files * SMALL_SIZE + 64 * MiB
        space = os.statvfs(data)
        if space.f_bavail * space.f_frsize < need:
            raise BenchError(f"{data} has less than the {need // MiB} MiB needed")
        set_up(scratch)
        big, small, archive = make_data(data, args.size_mib, args.small_files)
        cases: list[Case] = []
        with raw_service(data) as (address, raw_root), enclave_client(scratch) as client:
            raw = RawClient(address)
            try:
                large = large_cases(scratch, client, raw, raw_root, big, args.size_mib)
                run_cases(large, args.repeat)
                for child in raw_root.iterdir():
                    _clear(child)
                client.remove("/bench", recursive=True)
                tar, listing = small_cases(scratch, client, raw, raw_root, small, archive)
                run_cases(tar, args.repeat)
                (scratch.mnt / "listed").mkdir()  # the tree ls -lR lists, kept
                subprocess.run(
                    ["tar", "-xf", str(archive), "-C", str(scratch.mnt / "listed")], check=True
                )
                run_cases(listing, args.repeat)
                cases = large + tar + listing
            finally:
                raw.close()
        met = print_table(cases, args.repeat)
        print(f"\nall targets {'met' if met else 'NOT met'}")
        print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    except BenchError as e:
        print(f"bench_mount: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("bench_mount: interrupted; stopping everything", file=sys.stderr)
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
