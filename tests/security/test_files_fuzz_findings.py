"""Issue 17: what the fuzz run found that a hostile host could use, fixed on a real enclave.

- **Lock-out**: ``chmod`` to mode 0 made an entry unreadable and unchangeable for
  good, and a non-empty folder at mode 0 could not be deleted, even
  recursively. Now the owner -- the enclave server -- keeps read and write
  (and search, on a directory) whatever mode is asked, the answer says the
  mode applied, and a tree an app locked (mode 0, which the API never sets)
  is still removed recursively.
- **Unbounded work**: ``truncate`` to 2**63-1 was accepted, and a checksum of
  that sparse file hashed forever at 100% of a core, even after the client
  left. Now no file can be made to end beyond the shared folder's size
  (413: ``EFBIG`` for a truncation, ``ENOSPC`` for a write), and a checksum
  stops when its client goes away.
- **Unbounded integers**: offsets and sizes of 2**63 and more, or written
  with Unicode digits, were 500s with a text body; times of 1e300 or
  ``Infinity`` too. Now each is a 400 Problem, before any work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from strongroom.image import build_image
from strongroom.server import SHARED_DIR
from strongroom.workspace import Workspace
from tests.integration.enclave.conftest import (
    Exec,
    client,
    make_workspace,
    python_probe,
    start,
    teardown_workspace,
)

NAME = "fuzzfound"
#: A sparse file this large would take a core about an hour to hash.
HUGE = 1 << 40


@dataclass
class Enclave:
    ws: Workspace
    api: httpx.Client
    probe: Exec


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclave]:
    image = build_image(tmp_path_factory.mktemp("image") / "enclave.eif")
    ws = make_workspace()
    try:
        start(ws, image, NAME, debug=True)
        with client(ws, NAME) as api:
            yield Enclave(ws, api, python_probe(api))
    finally:
        teardown_workspace(ws)


def _problem(response: httpx.Response, status: int, errno: str | None = None) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    body: dict[str, str] = response.json()
    assert {"error", "message", "hint"} <= set(body), body
    if errno is not None:
        assert body.get("errno") == errno, body
    return body


def test_chmod_to_zero_cannot_lock_the_server_out(enclave: Enclave) -> None:
    api = enclave.api
    assert api.post("/v1/files/mkdir", json={"path": "/locked/deep", "parents": True}).is_success
    put = api.put(
        "/v1/files/content", params={"path": "/locked/deep/a.txt", "truncate": "true"}, content=b"x"
    )
    assert put.status_code == 200, put.text
    for path, kept in (("/locked/deep/a.txt", 0o600), ("/locked/deep", 0o700), ("/locked", 0o700)):
        answer = api.post("/v1/files/chmod", json={"path": path, "mode": 0})
        assert answer.status_code == 200 and answer.json()["mode"] == kept, answer.text
        assert api.get("/v1/files/stat", params={"path": path}).json()["mode"] == kept
    # the file is still readable and changeable, the folder still listable
    assert api.get("/v1/files/content", params={"path": "/locked/deep/a.txt"}).content == b"x"
    assert api.post("/v1/files/truncate", json={"path": "/locked/deep/a.txt", "size": 0}).is_success
    assert api.get("/v1/files/list", params={"path": "/locked/deep"}).status_code == 200
    # a mode's group and other bits are set as asked
    answer = api.post("/v1/files/chmod", json={"path": "/locked/deep/a.txt", "mode": 0o044})
    assert answer.json()["mode"] == 0o644
    # and the tree is removed, recursively
    removed = api.delete("/v1/files", params={"path": "/locked", "recursive": "true"})
    assert removed.status_code == 200, removed.text
    _problem(api.get("/v1/files/stat", params={"path": "/locked"}), 404, "ENOENT")


def test_a_tree_an_app_locked_is_still_removed(enclave: Enclave) -> None:
    made = enclave.probe(
        f"""
import os
os.makedirs("{SHARED_DIR}/applocked/a/b")
open("{SHARED_DIR}/applocked/a/b/f", "w").write("x")
os.chmod("{SHARED_DIR}/applocked/a/b/f", 0)
os.chmod("{SHARED_DIR}/applocked/a/b", 0)
os.chmod("{SHARED_DIR}/applocked/a", 0)
"""
    )
    assert made["exit_code"] == 0, made
    # what the app locked is, at worst, refused as a permission (403), never malformed
    # (the local sandbox's server may read it anyway, as root of its namespace can)
    listed = enclave.api.get("/v1/files/list", params={"path": "/applocked/a"})
    assert listed.status_code in (200, 403), listed.text
    removed = enclave.api.delete("/v1/files", params={"path": "/applocked", "recursive": "true"})
    assert removed.status_code == 200, removed.text
    assert enclave.api.get("/v1/files/stat", params={"path": "/applocked"}).status_code == 404


def test_no_file_can_end_beyond_the_shared_folder(enclave: Enclave) -> None:
    api = enclave.api
    capacity = api.get("/v1/files/statfs").json()
    size = capacity["blocks"] * capacity["block_size"]
    assert api.put("/v1/files/content", params={"path": "/sparse"}, content=b"").is_success
    for too_big in (size + 1, 2**63 - 1):
        _problem(
            api.post("/v1/files/truncate", json={"path": "/sparse", "size": too_big}), 413, "EFBIG"
        )
        _problem(
            api.put(
                "/v1/files/content", params={"path": "/sparse", "offset": too_big}, content=b"x"
            ),
            413,
            "ENOSPC",  # a write: what a full filesystem says
        )
    assert api.get("/v1/files/stat", params={"path": "/sparse"}).json()["size"] == 0
    # up to the folder's size is fine (a sparse file costs nothing)
    assert api.post("/v1/files/truncate", json={"path": "/sparse", "size": size}).is_success
    assert api.get("/v1/files/stat", params={"path": "/sparse"}).json()["size"] == size
    api.delete("/v1/files", params={"path": "/sparse"})


def _cpu_s(enclave: Enclave) -> float:
    """The enclave server's CPU time so far (the probe is its child)."""
    out = enclave.probe(
        "import os; f = open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split();"
        "print((int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))"
    )
    assert out["exit_code"] == 0, out
    return float(out["stdout"])


def test_a_checksum_stops_when_its_client_goes_away(enclave: Enclave) -> None:
    # an app can make a sparse file of any size; the host asks for its checksum and leaves
    made = enclave.probe(
        f"import os; fd = os.open('{SHARED_DIR}/huge', os.O_CREAT | os.O_WRONLY);"
        f"os.ftruncate(fd, {HUGE})"
    )
    assert made["exit_code"] == 0, made
    with client(enclave.ws, NAME) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get("/v1/files/checksum", params={"path": "/huge"}, timeout=1.0)
    time.sleep(1.0)  # the hashing notices at its next piece (1 MiB: microseconds)
    before = _cpu_s(enclave)
    time.sleep(2.0)
    spent = _cpu_s(enclave) - before
    # hashing on would cost ~2 s of CPU here; the server idles (and answers probes)
    assert spent < 0.8, f"the server spent {spent:.2f} s of CPU after the client left"
    enclave.api.delete("/v1/files", params={"path": "/huge"})


@pytest.mark.parametrize(
    ("method", "url", "params"),
    [
        ("GET", "/v1/files/content", {"path": "/from_server.txt", "offset": str(2**63)}),
        ("GET", "/v1/files/content", {"path": "/from_server.txt", "offset": "²"}),
        ("GET", "/v1/files/content", {"path": "/from_server.txt", "length": "¹²"}),
        ("GET", "/v1/files/content", {"path": "/from_server.txt", "offset": "-1"}),
        ("GET", "/v1/files/content", {"path": "/from_server.txt", "length": str(10**30)}),
        ("PUT", "/v1/files/content", {"path": "/x", "offset": str(2**63)}),
        ("PUT", "/v1/files/content", {"path": "/x", "offset": "٣"}),
        ("PUT", "/v1/files/content", {"path": "/x", "truncate": "1.5e308"}),
    ],
)
def test_unbounded_or_unicode_integers_are_400_problems(
    enclave: Enclave, method: str, url: str, params: dict[str, str]
) -> None:
    response = enclave.api.request(method, url, params=params, content=b"x")
    _problem(response, 400)


@pytest.mark.parametrize(
    "body",
    [
        b'{"path": "/from_server.txt", "atime": 0, "mtime": 1e300}',
        b'{"path": "/from_server.txt", "atime": 0, "mtime": -1.79e308}',
        b'{"path": "/from_server.txt", "atime": 0, "mtime": Infinity}',
        b'{"path": "/from_server.txt", "atime": NaN, "mtime": 0}',
    ],
)
def test_unbounded_times_are_400_problems(enclave: Enclave, body: bytes) -> None:
    _problem(enclave.api.post("/v1/files/times", content=body), 400)


def test_truncate_beyond_the_kernel_is_a_400(enclave: Enclave) -> None:
    body = json.dumps({"path": "/from_server.txt", "size": 2**63})
    _problem(enclave.api.post("/v1/files/truncate", content=body), 400)
