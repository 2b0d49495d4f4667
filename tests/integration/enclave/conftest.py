"""Fixtures for the real-sandbox tests: one image per session, short workspace paths.

These tests need bubblewrap and user namespaces (CI runs them as root with
bubblewrap installed); they fail, rather than skip, where the sandbox cannot
run, so a broken CI machine cannot pass silently.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.socket_httpx import http_transport

from strongroom._internal import services
from strongroom.attestation.authority import LocalAuthority
from strongroom.enclave import EnclaveSpec, runtime_for
from strongroom.enclave.sandbox import KIND, EnclavePaths, SandboxRuntime
from strongroom.image import BuildResult, build_image
from strongroom.transport import proxy
from strongroom.transport.base import UnixAddress
from strongroom.workspace import Workspace

KMS_ANSWER = b"kms stand-in"


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """A real local image (no requirements), built once per test session."""
    return build_image(tmp_path_factory.mktemp("image") / "enclave.eif")


def make_workspace() -> Workspace:
    # Unix socket paths are limited to 107 bytes: keep the workspace path short.
    root = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))
    ws = Workspace.create(root / "ws")
    LocalAuthority.open_or_create(ws.ca_dir)
    return ws


def teardown_workspace(ws: Workspace) -> None:
    runtime = SandboxRuntime(ws)
    runtime.stop()
    if proxy.running(ws.run_dir) is not None:
        proxy.stop(ws.run_dir)
    shutil.rmtree(ws.root.parent, ignore_errors=True)


@pytest.fixture
def ws() -> Iterator[Workspace]:
    workspace = make_workspace()
    yield workspace
    teardown_workspace(workspace)


class _KmsStandIn(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(KMS_ANSWER)))
        self.end_headers()
        self.wfile.write(KMS_ANSWER)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_kms_stand_in(ws: Workspace) -> ThreadingHTTPServer:
    """A tiny HTTP server where the workspace's key service would listen."""
    host, port = ws.config.kms_listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), _KmsStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def client(ws: Workspace, name: str) -> httpx.Client:
    """An httpx client for the enclave API of ``name``, over its control socket."""
    control = EnclavePaths.of(ws.run_dir, name).control_socket
    return httpx.Client(
        transport=http_transport(UnixAddress(str(control))),
        base_url="http://enclave",
        timeout=60,
    )


Exec = Callable[[str], dict[str, Any]]


def python_probe(api: httpx.Client) -> Exec:
    """Run a Python snippet inside a debug enclave (POST /v1/debug/exec)."""

    def run(code: str) -> dict[str, Any]:
        response = api.post("/v1/debug/exec", json={"argv": ["python3", "-c", code]})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    return run


def start(ws: Workspace, image: BuildResult, name: str, **spec: Any) -> Any:
    options = {"cpus": 1, "memory_mib": 512, "debug": False, **spec}
    return runtime_for(ws).start(EnclaveSpec(name=name, image=image.path, **options))


def record(ws: Workspace, name: str) -> services.ServiceRecord:
    rec = services.load(ws.run_dir, KIND, name)
    assert rec is not None
    return rec
