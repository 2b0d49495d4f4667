"""Issue 9, finding 7: what an app plants in the shared folder cannot wedge the enclave API.

An app can make a FIFO (``mkfifo /enclave/shared/trap``) or a unix socket in
the shared folder. Before the fix, the host's ``GET /v1/files/content`` on the
FIFO blocked ``open()`` on the server's event loop until a writer came, which
the app controls: the whole enclave API stopped answering. Here the FIFO,
socket and a symlink to ``/dev/zero`` are planted in a real debug enclave
through its exec probe (the probe runs where an app would), and every Files
operation on them must answer at once with a one-line error, while
``/v1/describe`` and ordinary transfers keep being served. A slow or stalled
upload must not hold up anyone else either. Device nodes cannot be made by an
app (no ``CAP_MKNOD``), which is checked too; should one ever appear, the
shared folder refuses it like a FIFO.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from strongroom.enclave.sandbox import EnclavePaths
from strongroom.errors import UsageError
from strongroom.image import build_image
from strongroom.server import SHARED_DIR
from strongroom.server.files import SharedFolder
from strongroom.workspace import Workspace
from tests.integration.enclave.conftest import (
    Exec,
    client,
    make_workspace,
    python_probe,
    start,
    teardown_workspace,
)

NAME = "traps"
#: Every answer here takes milliseconds; a blocked call never answers at all.
PROMPT_S = 2.0
#: Requests on the FIFO sent at once: more than the server's worker threads (40).
CONCURRENT = 48

PLANT = f"""
import os, socket, stat
os.mkfifo("{SHARED_DIR}/trap")
sock = socket.socket(socket.AF_UNIX)
sock.bind("{SHARED_DIR}/sock")  # the socket file stays after the process ends
os.symlink("/dev/zero", "{SHARED_DIR}/zero")
refused = {{}}
for name, make in (
    ("mknod", lambda: os.mknod("{SHARED_DIR}/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))),
    ("link", lambda: os.link("/dev/null", "{SHARED_DIR}/null")),
):
    try:
        make()
    except OSError as e:
        refused[name] = e.errno
print(__import__("json").dumps(refused))
"""


@dataclass
class Enclave:
    ws: Workspace
    api: httpx.Client
    probe: Exec

    def fresh_client(self) -> httpx.Client:
        return client(self.ws, NAME)


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclave]:
    image = build_image(tmp_path_factory.mktemp("image") / "enclave.eif")
    ws = make_workspace()
    try:
        start(ws, image, NAME, debug=True)
        with client(ws, NAME) as api:
            probe = python_probe(api)
            planted = probe(PLANT)
            assert planted["exit_code"] == 0, planted
            refused = json.loads(planted["stdout"])
            # no device node can be made (or linked in) by anything inside the enclave
            assert set(refused) == {"mknod", "link"}, refused
            yield Enclave(ws, api, probe)
    finally:
        teardown_workspace(ws)


def _timed(call: Any, *args: Any, **kwargs: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call(*args, **kwargs)
    return response, time.monotonic() - started


def _attempts(path: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every Files operation that would open ``path``."""
    return [
        ("GET", "/v1/files/content", {"params": {"path": path}}),
        ("GET", "/v1/files/content", {"params": {"path": path, "offset": 1, "length": 10}}),
        ("GET", "/v1/files/checksum", {"params": {"path": path}}),
        ("PUT", "/v1/files/content", {"params": {"path": path}, "content": b"x"}),
        ("PUT", "/v1/files/content", {"params": {"path": path, "offset": 0}, "content": b"x"}),
        (
            "PUT",
            "/v1/files/content",
            {"params": {"path": path, "truncate": "true"}, "content": b"replaced"},
        ),
        ("POST", "/v1/files/chmod", {"json": {"path": path, "mode": 0o600}}),
        ("POST", "/v1/files/truncate", {"json": {"path": path, "size": 0}}),
    ]


@pytest.mark.parametrize(("path", "kind"), [("/trap", "FIFO"), ("/sock", "socket")])
def test_every_operation_on_a_fifo_or_socket_answers_at_once(
    enclave: Enclave, path: str, kind: str
) -> None:
    api = enclave.api
    for method, url, kwargs in _attempts(path):
        response, took = _timed(api.request, method, url, timeout=30, **kwargs)
        assert took < PROMPT_S, (method, url, kwargs, took)
        assert response.status_code == 403, (method, url, response.text)  # EPERM: refused
        body = response.json()
        assert body["message"] == f"{path} is a {kind}: only regular files are read or written"
        assert body["error"] == "UsageError" and "\n" not in body["message"]
    # stat and list describe it without opening it; it was neither replaced nor removed
    response, took = _timed(api.get, "/v1/files/stat", params={"path": path})
    assert took < PROMPT_S and response.json()["type"] == "other"
    entries = {
        e["path"]: e["type"]
        for e in api.get("/v1/files/list", params={"path": "/"}).json()["entries"]
    }
    assert entries[path] == "other" and entries["/zero"] == "symlink"
    # a symlink to a device is never followed
    for url in ("/v1/files/content", "/v1/files/checksum"):
        response, took = _timed(api.get, url, params={"path": "/zero"}, timeout=30)
        assert took < PROMPT_S and response.status_code == 403, response.text
    # next to them, the legitimate use
    put = api.put("/v1/files/content", params={"path": "/ok.txt", "truncate": "true"}, content=b"1")
    assert put.status_code == 200, put.text
    assert api.get("/v1/files/content", params={"path": "/ok.txt"}).content == b"1"
    assert api.post("/v1/files/chmod", json={"path": "/ok.txt", "mode": 0o600}).status_code == 200


def test_the_api_keeps_serving_while_requests_hit_the_fifo(enclave: Enclave) -> None:
    """Many FIFO requests at once (more than the worker threads); describe stays fast."""

    def hit(i: int) -> tuple[int, float]:
        method, url, kwargs = _attempts("/trap")[i % len(_attempts("/trap"))]
        with enclave.fresh_client() as api:
            response, took = _timed(api.request, method, url, timeout=30, **kwargs)
        return response.status_code, took

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(hit, i) for i in range(CONCURRENT)]
        describes = []
        while not all(f.done() for f in futures):
            response, took = _timed(enclave.api.get, "/v1/describe", timeout=30)
            assert response.status_code == 200
            describes.append(took)
        results = [f.result() for f in futures]
    assert {status for status, _ in results} == {403}
    slowest = max(took for _, took in results)
    assert slowest < PROMPT_S * 2, slowest
    assert describes and max(describes) < PROMPT_S, describes
    print(
        f"\n{CONCURRENT} concurrent FIFO requests: slowest {slowest * 1000:.0f} ms; "
        f"describe meanwhile: max {max(describes) * 1000:.0f} ms over {len(describes)}"
    )


def _raw_upload(enclave: Enclave, path: str, size: int) -> socket.socket:
    """Start ``PUT path`` on a raw connection, announcing ``size`` bytes and sending none yet."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(EnclavePaths.of(enclave.ws.run_dir, NAME).control_socket))
    head = (
        f"PUT /v1/files/content?path={path}&truncate=true HTTP/1.1\r\n"
        f"host: enclave\r\ncontent-type: application/octet-stream\r\n"
        f"content-length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def _response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body)


def test_a_stalled_upload_does_not_block_other_requests(enclave: Enclave) -> None:
    api = enclave.api
    payload = os.urandom(4 * 1024 * 1024)
    stalled = _raw_upload(enclave, "/slow.bin", len(payload))
    abandoned = _raw_upload(enclave, "/gone.bin", len(payload))
    try:
        stalled.sendall(payload[: 1024 * 1024])
        abandoned.sendall(payload[:1000])
        time.sleep(0.5)  # the server now waits for the rest of both bodies
        # meanwhile: describe, a whole transfer each way, a FIFO refusal
        response, took = _timed(api.get, "/v1/describe")
        assert response.status_code == 200 and took < PROMPT_S, took
        small = os.urandom(100_000)
        put = api.put(
            "/v1/files/content",
            params={"path": "/meanwhile.bin", "truncate": "true"},
            content=small,
        )
        assert put.json()["sha256"] == hashlib.sha256(small).hexdigest()
        assert api.get("/v1/files/content", params={"path": "/meanwhile.bin"}).content == small
        response, took = _timed(api.get, "/v1/files/content", params={"path": "/trap"})
        assert response.status_code == 403 and took < PROMPT_S
        names = {
            e["path"] for e in api.get("/v1/files/list", params={"path": "/"}).json()["entries"]
        }
        assert "/slow.bin" not in names  # an unfinished upload is not under its name yet
        # the stalled one resumes and completes; the abandoned one leaves nothing
        stalled.sendall(payload[1024 * 1024 :])
        status, body = _response(stalled)
        assert status == 200 and body["sha256"] == hashlib.sha256(payload).hexdigest(), body
        abandoned.close()
        deadline = time.monotonic() + 10
        while True:
            names = {
                e["path"] for e in api.get("/v1/files/list", params={"path": "/"}).json()["entries"]
            }
            leftovers = {n for n in names if "gone.bin" in n}
            if not leftovers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert leftovers == set(), names
        assert api.get("/v1/files/checksum", params={"path": "/slow.bin"}).json()["sha256"] == (
            hashlib.sha256(payload).hexdigest()
        )
    finally:
        stalled.close()
        abandoned.close()


def test_a_device_node_is_refused_if_one_ever_appears(tmp_path: Path) -> None:
    """No app can make one (see the fixture); the shared folder refuses one all the same.

    Reading ``/dev/zero`` would never end, and opening some devices has side
    effects: neither is opened for a host's request.
    """
    shared = SharedFolder(tmp_path / "shared")
    os.mknod(shared.root / "zero", stat.S_IFCHR, os.makedev(1, 5))
    os.chmod(shared.root / "zero", 0o640)
    for call in (
        lambda: shared.open_read("/zero"),
        lambda: shared.open_write("/zero", create=False),
        lambda: shared.truncate("/zero", 0),
        lambda: shared.chmod("/zero", 0o600),
        lambda: shared.check_replaceable("/zero"),
    ):
        with pytest.raises(UsageError, match="/zero is a character device"):
            call()
    assert os.stat(shared.root / "zero").st_mode & 0o777 == 0o640
    assert shared.stat("/zero").type == "other"
