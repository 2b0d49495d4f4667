"""A host that changes the image cache's copy of an image between two starts (real enclaves).

The cache keeps the unpacked image (and, once the first enclave has compiled
it, its bytecode) in ``run/image-cache/<PCR0>/tree``, read-only; the sandbox
mounts it at ``/image``. A host that edits a file there -- keeping its size
and read-only mode -- must not get its code run under the image's PCRs: the
next ``enclave start`` checks the copy, finds the change, sets the copy aside,
unpacks the image again and says so. The planted code here would make the
enclave server exit at import, so a start that used it could not succeed.

Next to each attack, the legitimate use: the copy of an unchanged image is
used, and that start is much faster than the first one; the attested PCRs are
the image's every time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import strongroom.server
from strongroom.enclave._limits import Limits
from strongroom.image import BuildResult, build_image
from strongroom.workspace import Workspace
from tests.e2e.run_helpers import STRONGROOM
from tests.integration.enclave.conftest import make_workspace, record, teardown_workspace

NAME = "cached"
SERVER_INIT = "runtime/site-packages/strongroom/server/__init__.py"
PLANTED = b"raise SystemExit('planted code ran')\n"
BYTECODE_TIMEOUT_S = 120.0


@dataclass
class Host:
    ws: Workspace
    image: BuildResult

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [STRONGROOM, "--home", str(self.ws.root), *args],
            capture_output=True,
            text=True,
            timeout=180,
        )

    def start(self, name: str = NAME) -> dict[str, Any]:
        result = self.cli("enclave", "start", str(self.image.path), "--name", name, "--json")
        assert result.returncode == 0, result.stderr
        started: dict[str, Any] = json.loads(result.stdout)
        return started

    def stop(self, name: str = NAME) -> None:
        assert self.cli("enclave", "stop", name).returncode == 0

    def attest(self, name: str = NAME) -> None:
        """The enclave's attestation verifies, with the image's PCR0, over a fresh nonce."""
        result = self.cli("--json", "attest", "--image", str(self.image.path), "--enclave", name)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["verified"] is True

    @property
    def tree(self) -> Path:
        return self.ws.run_dir / "image-cache" / self.image.measurements.pcr0 / "tree"

    def wait_for_bytecode(self, name: str = NAME) -> None:
        """Until the running enclave's supervisor has added the bytecode to the copy."""
        deadline = time.monotonic() + BYTECODE_TIMEOUT_S
        while (state := record(self.ws, name).extra.get("bytecode")) == "compiling":
            assert time.monotonic() < deadline, "no bytecode after two minutes"
            time.sleep(0.2)
        assert state in ("added", "present"), state


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    image = build_image(tmp_path_factory.mktemp("image") / "enclave.eif")
    ws = make_workspace()
    try:
        yield Host(ws, image)
    finally:
        teardown_workspace(ws)


def rewrite(path: Path, data: bytes) -> None:
    """Change a cached file as a careful host would: same size, modes given back."""
    size = path.stat().st_size
    assert len(data) <= size
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (path, path.parent)}
    for p, mode in modes.items():
        p.chmod(mode | 0o200)
    try:
        path.write_bytes(data + b"#" * (size - len(data)))
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def planted_bytecode(pyc: Path) -> bytes:
    """A .pyc with the same header (so the import system would take it) and planted code."""
    import marshal

    code = compile(PLANTED, "/image/" + SERVER_INIT, "exec")
    return pyc.read_bytes()[:16] + marshal.dumps(code)


def host_descriptors_into(ws: Workspace, name: str) -> list[str]:
    """What any process of the enclave holds open inside the workspace (should be nothing)."""
    limits = Limits.from_json(record(ws, name).extra["limits"])
    found = []
    for pid in Path(limits.cgroups[0], "cgroup.procs").read_text().split():
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(ws.root)):
                found.append(f"{pid}: {target}")
    return found


def test_a_changed_copy_never_runs_and_an_unchanged_one_is_used(host: Host) -> None:
    original = Path(strongroom.server.__file__).read_bytes()  # what the image's runtime holds
    cold = host.start()
    ours = cold["Strongroom"]
    assert cold["State"] == "RUNNING" and ours["image_copy"] == "unpacked"
    assert ours["measurements"]["PCR0"] == host.image.measurements.pcr0
    assert (host.tree / SERVER_INIT).read_bytes() == original
    assert host_descriptors_into(host.ws, NAME) == []  # bubblewrap closed the tree's descriptor
    host.attest()
    host.wait_for_bytecode()
    host.stop()

    # legitimate: the same image again uses the copy (with its bytecode), much faster
    warm = host.start()
    assert warm["Strongroom"]["image_copy"] == "reused" and warm["Strongroom"]["warnings"] == []
    assert warm["Strongroom"]["start_s"] < 0.6 * ours["start_s"], (warm, cold)
    host.attest()
    host.stop()

    # a source changed between two starts: detected, set aside, unpacked again
    rewrite(host.tree / SERVER_INIT, PLANTED)
    again = host.start()
    [warning] = again["Strongroom"]["warnings"]
    assert again["Strongroom"]["image_copy"] == "unpacked"
    assert f"{SERVER_INIT} differs from what was unpacked" in warning, warning
    assert (host.tree / SERVER_INIT).read_bytes() == original
    host.attest()
    host.wait_for_bytecode()
    host.stop()

    # its bytecode changed (the source left as it is): likewise
    tag = sys.implementation.cache_tag
    pyc = host.tree / "runtime/site-packages/strongroom/server/__pycache__" / f"__init__.{tag}.pyc"
    assert pyc.exists() and pyc.read_bytes()[:4] == importlib.util.MAGIC_NUMBER
    rewrite(pyc, planted_bytecode(pyc)[: pyc.stat().st_size])
    again = host.start()
    [warning] = again["Strongroom"]["warnings"]
    assert again["Strongroom"]["image_copy"] == "unpacked" and "__pycache__" in warning
    host.attest()
    host.stop()

    # a module added next to the server's: not part of the image
    planted = host.tree / "runtime/site-packages/strongroom/server/planted.py"
    sealed = stat.S_IMODE(planted.parent.stat().st_mode)
    planted.parent.chmod(0o755)
    planted.write_bytes(PLANTED)
    planted.chmod(0o444)
    planted.parent.chmod(sealed)
    again = host.start()
    [warning] = again["Strongroom"]["warnings"]
    assert "planted.py is not part of the image" in warning and not planted.exists()
    host.attest()
    host.stop()

    status = host.cli("enclave", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == []


def test_two_starts_of_one_image_at_once_share_one_copy(host: Host) -> None:
    ws = make_workspace()
    try:
        both = Host(ws, host.image)
        starts = [
            subprocess.Popen(
                [STRONGROOM, "--home", str(ws.root), "enclave", "start", str(host.image.path),
                 "--name", name, "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("one", "two")
        ]  # fmt: skip
        outputs = [proc.communicate(timeout=180) for proc in starts]
        assert [proc.returncode for proc in starts] == [0, 0], outputs
        copies = sorted(json.loads(out)["Strongroom"]["image_copy"] for out, _ in outputs)
        assert copies == ["reused", "unpacked"]
        cache = ws.run_dir / "image-cache"
        assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [
            host.image.measurements.pcr0
        ]
        both.attest("one")
        both.attest("two")
    finally:
        teardown_workspace(ws)
