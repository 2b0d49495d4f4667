"""Issue 17: where the code and the description disagreed, on a real enclave, as decided.

Each case is one line of the issue's list; the decision is in the comment.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.integration.enclave.conftest import client, make_workspace, start, teardown_workspace

from strongroom.image import build_image

NAME = "contract"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    image = build_image(tmp_path_factory.mktemp("image") / "enclave.eif")
    ws = make_workspace()
    try:
        start(ws, image, NAME)
        with client(ws, NAME) as enclave_api:
            yield enclave_api
    finally:
        teardown_workspace(ws)


def _status(response: httpx.Response, status: int, errno: str | None = None) -> None:
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.headers["content-type"] == "application/json", response.headers
        if errno is not None:
            assert response.json().get("errno") == errno, response.text


def test_the_root_is_a_path_like_any_other(api: httpx.Client) -> None:
    # allowed: what makes sense on a directory (stat, list, times, chmod, fsync)
    for root in ("", "/"):
        _status(api.get("/v1/files/stat", params={"path": root}), 200)
        _status(api.get("/v1/files/list", params={"path": root}), 200)
        _status(api.post("/v1/files/times", json={"path": root, "atime": 1, "mtime": 2}), 200)
        _status(api.post("/v1/files/fsync", json={"path": root}), 200)
        chmod = api.post("/v1/files/chmod", json={"path": root, "mode": 0o755})
        _status(chmod, 200)
        assert chmod.json()["mode"] == 0o755
    # refused as a conflict with what the root is (409), not as a malformed request
    _status(api.delete("/v1/files", params={"path": "/"}), 409, "EBUSY")
    _status(api.post("/v1/files/mkdir", json={"path": "/"}), 409, "EEXIST")
    _status(api.put("/v1/files/content", params={"path": "/"}, content=b"x"), 409, "EISDIR")
    _status(api.get("/v1/files/content", params={"path": "/"}), 409, "EBUSY")
    _status(api.post("/v1/files/symlink", json={"path": "/", "target": "x"}), 409, "EEXIST")
    _status(api.post("/v1/files/truncate", json={"path": "", "size": 1}), 409, "EBUSY")


def test_a_name_longer_than_the_filesystem_takes_is_413(api: httpx.Client) -> None:
    name_max = api.get("/v1/files/statfs").json()["name_max"]
    too_long = "/" + "é" * name_max  # 255 characters, 510 bytes
    _status(
        api.put("/v1/files/content", params={"path": too_long}, content=b"x"), 413, "ENAMETOOLONG"
    )
    _status(api.post("/v1/files/mkdir", json={"path": too_long}), 413, "ENAMETOOLONG")
    _status(api.get("/v1/files/stat", params={"path": too_long}), 413, "ENAMETOOLONG")


def test_listing_a_file_is_not_a_directory(api: httpx.Client) -> None:
    # was PathEscapeError (400): a file is no escape, the folder's state conflicts (409)
    listed = api.get("/v1/files/list", params={"path": "/from_server.txt"})
    _status(listed, 409, "ENOTDIR")
    assert listed.json()["error"] == "UsageError"
    _status(api.get("/v1/files/stat", params={"path": "/from_server.txt/x"}), 409, "ENOTDIR")


def test_required_and_unknown_query_parameters(api: httpx.Client) -> None:
    # missing path on stat/list was taken as the root: now a 400, as described
    for url in ("/v1/files/stat", "/v1/files/list"):
        _status(api.get(url), 400)
    # unknown and repeated parameters are refused, everywhere
    _status(api.get("/v1/files/stat", params={"path": "/", "follow": "true"}), 400)
    _status(api.get("/v1/describe", params={"verbose": "1"}), 400)
    _status(api.get("/v1/files/stat", params=[("path", "/"), ("path", "/x")]), 400)
    # booleans are true or false, as the description says
    for flag in ("1", "yes", "True", "1.5e308"):
        _status(api.delete("/v1/files", params={"path": "/nothing", "recursive": flag}), 400)
    _status(api.delete("/v1/files", params={"path": "/nothing", "recursive": "false"}), 404)


def test_bodies_are_standard_json_with_exactly_the_described_fields(api: httpx.Client) -> None:
    nonce = "ab" * 16
    _status(api.post("/v1/attestation", json={"nonce": nonce}), 200)
    # the spec said any hex: odd-length or empty nonces were refused by the code, which is right
    for bad in ("abc", "", "zz", "ab cd"):
        _status(api.post("/v1/attestation", json={"nonce": bad}), 400)
    for extra in ({"public_key": None}, {"public_key": ""}, {"user_data": "00"}):
        _status(api.post("/v1/attestation", json={"nonce": nonce, **extra}), 400)
    # an empty egress host is refused, as the description now says
    _status(api.post("/v1/egress-check", json={"host": "", "port": 443}), 400)
    _status(api.post("/v1/egress-check", json={"host": "kms.local", "port": 0}), 400)
    _status(api.post("/v1/egress-check", json={"host": "kms.local", "port": "443"}), 400)
    # no NaN, Infinity or duplicate keys; no coercion of strings or booleans
    for body in (
        b'{"path": "/", "atime": NaN, "mtime": 0}',
        b'{"path": "/", "atime": 0, "mtime": Infinity}',
        b'{"path": "/", "path": "/x", "atime": 0, "mtime": 0}',
        b'{"path": "/", "atime": "0", "mtime": 0}',
        b'{"path": "/", "atime": true, "mtime": 0}',
    ):
        _status(api.post("/v1/files/times", content=body), 400)
    # an integral number is an integer, however it is written (JSON Schema's rule)
    _status(api.post("/v1/files/chmod", content=b'{"path": "/", "mode": 493.0}'), 200)


def test_a_405_names_every_method_of_its_path(api: httpx.Client) -> None:
    response = api.request("OPTIONS", "/v1/files/content", params={"path": "/"})
    _status(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PUT"}
    _status(api.request("PATCH", "/v1/files/archive"), 405)
    assert {"GET", "POST"} <= set(
        api.request("PATCH", "/v1/files/archive").headers["allow"].replace(" ", "").split(",")
    )
    missing = api.get("/v1/nothing")
    _status(missing, 404)
    assert missing.json()["error"] == "NotFoundError"


def test_a_run_is_refused_before_its_stream_begins(api: httpx.Client) -> None:
    request = {
        "package": "/no-such.sealed",
        "credentials": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "x"},
        "key_service": {"region": "eu-west-2"},
    }
    # was a 200 stream whose only event was an error
    _status(api.post("/v1/runs", json=request), 404, "ENOENT")
    not_sealed = api.post("/v1/runs", json={**request, "package": "/from_server.txt"})
    assert not_sealed.status_code in (400, 422), not_sealed.text  # malformed, or bad evidence
    assert not_sealed.headers["content-type"] == "application/json"
    _status(api.post("/v1/runs", json={**request, "timeout_s": 0}), 400)
    _status(api.post("/v1/runs", json={**request, "args": ["a\x00b"]}), 400)
    _status(api.post("/v1/runs", json={**request, "env": {"A=B": "x"}}), 400)
