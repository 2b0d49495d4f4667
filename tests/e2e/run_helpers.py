"""Machinery of the ``strongroom run`` end-to-end tests (tests/e2e/test_run_*.py).

Everything goes through the installed console script, as a user types it:
:class:`Stack` is one workspace (short path: unix sockets are limited to 107
bytes) with its ``--home`` baked in; :class:`LiveRun` is a ``strongroom run``
whose stdout and stderr are read line by line, with timestamps, while it runs.

Two things are not CLI commands, and are said so where used:

- :meth:`Stack.probe` looks *inside* a debug enclave through its debug exec
  endpoint (``POST /v1/debug/exec``; a debug enclave attests all-zero PCRs, so
  it only ever gets keys whose policy approves the zero PCR0);
- :func:`seal_tar` seals a hand-made (hostile) tar under a real key-service
  data key with the sealing library's low-level writer, as a malicious sealer
  would: ``strongroom seal`` itself refuses to make such archives.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

STRONGROOM = str(Path(sys.executable).parent / "strongroom")
EXAMPLES = Path(__file__).parents[2] / "src" / "strongroom" / "examples"
#: PCR0 of a debug enclave.
ZERO_PCR0 = "0" * 96
CLI_TIMEOUT_S = 120.0

#: The tiny sealed apps of these tests: one app directory, one entry script per behaviour.
#: Absolute paths in their arguments are mapped into the shared folder by the server.
APP_SOURCES = {
    "hello.py": """\
import sys
print("hello from the enclave", *sys.argv[1:])
""",
    "stream.py": """\
import time
print("first line", flush=True)
time.sleep(3)
print("second line", flush=True)
""",
    "fail.py": """\
import sys
print("about to fail", flush=True)
print("app failure: boom", file=sys.stderr, flush=True)
sys.exit(7)
""",
    "sleep.py": """\
import time
print("sleeping", flush=True)
time.sleep(3600)
""",
    # writes a counter into a shared file every 0.2 s; says so once, then is silent
    "beat.py": """\
import os, sys, time
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
print("beating", flush=True)
n = 0
while True:
    n += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(path + ".tmp", path)
    time.sleep(0.2)
""",
    # runs until the host pushes FOLDER/stop; then reports what the host pushed meanwhile
    "hold.py": """\
import hashlib, os, sys, time
folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(folder, "stop")):
    if time.monotonic() > deadline:
        sys.exit("never told to stop")
    time.sleep(0.1)
with open(os.path.join(folder, "data.bin"), "rb") as f:
    print("app saw data.bin", hashlib.sha256(f.read()).hexdigest(), flush=True)
""",
    # the vendor may choose to leak its own code into the shared folder (its own choice),
    # and plants symlinks to its private folder: the host must not get through them
    "leak.py": """\
import os, shutil, stat, sys, time
here = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[1]
secret = os.path.join(here, "secret.txt")
def state():
    with open(secret) as f:
        return f.read(), stat.S_IMODE(os.stat(secret).st_mode), sorted(os.listdir(here))
before = state()
os.makedirs(out, exist_ok=True)
shutil.copy(__file__, os.path.join(out, "leaked.py"))
os.symlink(here, os.path.join(out, "applink"))
os.symlink(secret, os.path.join(out, "secretlink"))
print("ready", here, flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(out, "stop")):
    if time.monotonic() > deadline:
        sys.exit("never told to stop")
    time.sleep(0.1)
print("secret intact" if state() == before else f"secret TOUCHED: {state()}", flush=True)
""",
}

#: Runs inside a debug enclave: what is in the private app folder, which processes run
#: a file from it, and whether any file named *escaped* exists anywhere we can see.
PROBE = """\
import json, os
me = os.getpid()
procs = []
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == me:
        continue
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    # an app: its entry is /enclave/app/... in its jail; its launcher names /enclave/apps/...
    if any(a.startswith((b"/enclave/apps/", b"/enclave/app/")) for a in argv):
        procs.append(b" ".join(argv).decode(errors="replace"))
found = [
    os.path.join(d, f)
    for top in ("/enclave", "/tmp")
    for d, _, files in os.walk(top)
    for f in files
    if "escaped" in f
]
print(json.dumps({"apps": sorted(os.listdir("/enclave/apps")), "procs": procs, "found": found}))
"""


def write_apps(app_dir: Path, secret: str) -> Path:
    app_dir.mkdir(parents=True)
    for name, source in APP_SOURCES.items():
        (app_dir / name).write_text(source)
    (app_dir / "secret.txt").write_text(secret)
    return app_dir


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command (plus at most its hint), never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("·")]
    assert lines and lines[0].startswith("error: "), stderr
    assert len(lines) <= 2 and all(ln.startswith("  hint: ") for ln in lines[1:]), stderr
    return lines[0]


class LiveRun:
    """A running CLI process whose output lines are collected, with arrival times."""

    def __init__(self, argv: list[str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: dict[str, list[tuple[float, str]]] = {"stdout": [], "stderr": []}
        self.ended: float | None = None
        self._cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for thread in self._readers:
            thread.start()
        threading.Thread(target=self._reap, daemon=True).start()

    def _read(self, name: str, stream: io.BufferedReader) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                self.lines[name].append((time.monotonic(), raw.decode(errors="replace")))
                self._cond.notify_all()

    def _reap(self) -> None:
        self.proc.wait()
        with self._cond:
            self.ended = time.monotonic()
            self._cond.notify_all()

    @property
    def out(self) -> str:
        return "".join(line for _, line in self.lines["stdout"])

    @property
    def err(self) -> str:
        return "".join(line for _, line in self.lines["stderr"])

    def arrival(self, text: str, stream: str = "stdout") -> float | None:
        return next((t for t, line in self.lines[stream] if text in line), None)

    def wait_for(self, text: str, *, stream: str = "stdout", timeout: float = 30.0) -> float:
        """When a line containing ``text`` arrived (waiting for it if need be)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (when := self.arrival(text, stream)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or (self.ended is not None and not any(self._alive())):
                    raise AssertionError(
                        f"no {text!r} on {stream} after {timeout}s; "
                        f"exit {self.proc.returncode}\n{self.out}\n{self.err}"
                    )
                self._cond.wait(min(left, 0.5))
        return when

    def _alive(self) -> list[bool]:
        return [t.is_alive() for t in self._readers]

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        for thread in self._readers:
            thread.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


class Stack:
    """One workspace, driven through the console script."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "ws"
        self._apis: dict[str, httpx.Client] = {}

    def argv(self, *args: str) -> list[str]:
        return [STRONGROOM, "--home", str(self.home), *args]

    def cli(
        self, *args: str, expect: int | None = 0, timeout: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if expect is not None:
            assert result.returncode == expect, (
                f"strongroom {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args).stdout)

    def start_enclaves(self, image: Path, enclaves: dict[str, list[str]]) -> None:
        """`enclave start IMAGE --name NAME *extra` for each enclave, all at once."""
        starts = [
            subprocess.Popen(
                self.argv("enclave", "start", str(image), "--name", name, *extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, extra in enclaves.items()
        ]
        outputs = [proc.communicate(timeout=120)[0] for proc in starts]
        assert [proc.returncode for proc in starts] == [0] * len(starts), outputs

    @contextmanager
    def live(self, *args: str) -> Iterator[LiveRun]:
        run = LiveRun(self.argv(*args))
        try:
            yield run
        finally:
            run.close()

    # --- looking inside (not a CLI command) -----------------------------------

    def api(self, enclave: str) -> httpx.Client:
        """An HTTP client of the enclave API, at the control address `enclave status` gives."""
        if enclave not in self._apis:
            from strongroom.transport.base import parse_address
            from tests.socket_httpx import http_transport

            (status,) = self.json("enclave", "status", enclave)
            address = parse_address(status["Strongroom"]["addresses"]["control"])
            self._apis[enclave] = httpx.Client(
                transport=http_transport(address), base_url="http://enclave", timeout=30
            )
        return self._apis[enclave]

    def probe(self, enclave: str) -> dict[str, Any]:
        """Run :data:`PROBE` inside a *debug* enclave."""
        response = self.api(enclave).post("/v1/debug/exec", json={"argv": ["python3", "-c", PROBE]})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["exit_code"] == 0, result
        probed: dict[str, Any] = json.loads(result["stdout"])
        return probed

    def wait_wiped(self, enclave: str, timeout: float = 5.0) -> dict[str, Any]:
        """Probe until no decrypted app and no app process is left (or the time is up)."""
        deadline = time.monotonic() + timeout
        while True:
            probed = self.probe(enclave)
            if (not probed["apps"] and not probed["procs"]) or time.monotonic() > deadline:
                return probed
            time.sleep(0.1)

    def forget_api(self, enclave: str) -> None:
        client = self._apis.pop(enclave, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for name in list(self._apis):
            self.forget_api(name)


# --- hostile packages -------------------------------------------------------------------

Entry = tuple[str, str, bytes | str]  # (file | symlink | dir, name, data or link target)


def make_tar(*entries: Entry) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, value in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                assert isinstance(value, bytes)
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
            elif kind == "symlink":
                assert isinstance(value, str)
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    return buffer.getvalue()


def seal_tar(home: Path, key: str, payload: bytes, out: Path) -> Path:
    """Seal ``payload`` (any tar) as a v1 package under a data key from the real key service."""
    from strongroom.keys import service as keyservice
    from strongroom.workspace import Workspace

    kms = keyservice.connect(Workspace.locate(home))  # as the vendor
    data_key = kms.generate_data_key(key)
    assert data_key.plaintext is not None
    return write_package(
        out, data_key.key_id, data_key.ciphertext_blob, data_key.plaintext, payload
    )


def write_package(out: Path, key_id: str, blob: bytes, plaintext: bytes, payload: bytes) -> Path:
    """Write a v1 package whose header names ``key_id`` and ``blob``, whatever key sealed it.

    A forger's tool: the header may claim a key the data key never came from.
    """
    from strongroom.sealing import DEFAULT_CHUNK_SIZE
    from strongroom.sealing.format import NONCE_PREFIX_SIZE, SALT_SIZE, build_header
    from strongroom.sealing.stream import ChunkWriter, derive_payload_key

    header = build_header(
        key_id=key_id,
        encrypted_data_key=blob,
        encryption_context={},
        chunk_size=DEFAULT_CHUNK_SIZE,
        salt=os.urandom(SALT_SIZE),
        nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
        created=int(time.time()),
    )
    with out.open("wb") as sink:
        sink.write(header.raw)
        key = derive_payload_key(plaintext, header.salt)
        writer = ChunkWriter(sink, key, header.nonce_prefix, header.aad, DEFAULT_CHUNK_SIZE)
        writer.write(payload)
        writer.finish()
    return out
