"""The Files API's symlinks and hard links (for the mount) never lead out of the shared folder.

The attack: the host makes ``/dataset/input`` a symlink to the app's own
decrypted files (``/enclave/app/model.bin``, absolute, or ``../app/model.bin``,
climbing out, or a ``..`` that stays inside until the link is moved up the
tree or chained). An app that reads its input and writes what it derives to
``/output`` would then hand the host its own secret. So the API makes a
symlink only with a relative target that points down (no ``..``), never
follows one, and hard-links only a regular file of the folder. Each attack
runs against a real debug enclave; a probe inside (where the app runs)
checks that what the host was allowed to make resolves inside the folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from strongroom.image import build_image
from strongroom.server import SHARED_DIR
from tests.integration.enclave.conftest import (
    Exec,
    client,
    make_workspace,
    python_probe,
    start,
    teardown_workspace,
)

NAME = "links"

PLANT = f"""
import os
os.makedirs("{SHARED_DIR}/data", exist_ok=True)
with open("{SHARED_DIR}/data/x.csv", "w") as f:
    f.write("a,b\\n1,2\\n")
os.symlink("/etc/hostname", "{SHARED_DIR}/app-link")  # the app's own choice
os.makedirs("{SHARED_DIR}/out", exist_ok=True)
"""


@dataclass
class Enclave:
    api: httpx.Client
    probe: Exec


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
            yield Enclave(api, probe)
    finally:
        teardown_workspace(ws)


def _exists(api: httpx.Client, path: str) -> bool:
    return api.get("/v1/files/stat", params={"path": path}).status_code == 200


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("/dataset-abs", "/enclave/app/model.bin"),
        ("/dataset-up", "../app/model.bin"),
        ("/out/deep", "../../etc/passwd"),
        ("/out/sneaky", "x/../../../app"),
        # stays inside by its names, but would escape once renamed up the tree
        ("/out/up", "../data/x.csv"),
        # a link that points up is what a chain climbs through: none may
        ("/out/a/b/hop", "../.."),
        ("/out/nul", "a\x00b"),
    ],
)
def test_a_symlink_out_of_the_folder_is_refused(enclave: Enclave, link: str, target: str) -> None:
    response = enclave.api.post("/v1/files/symlink", json={"path": link, "target": target})
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body["error"] in {"PathEscapeError", "InvalidInputError"}, body
    if "\x00" in target:  # the description forbids it: a 400 before any filesystem call
        assert response.status_code == 400, body
    else:
        assert body.get("errno") in {"EPERM", "EINVAL"}, body
    assert not _exists(enclave.api, link)


def test_a_symlink_down_the_folder_is_made_read_and_never_followed(enclave: Enclave) -> None:
    api = enclave.api
    made = api.post("/v1/files/symlink", json={"path": "/input", "target": "data/./x.csv"})
    assert made.status_code == 200, made.text
    assert api.get("/v1/files/readlink", params={"path": "/input"}).json()["target"] == (
        "data/./x.csv"
    )
    assert api.get("/v1/files/stat", params={"path": "/input"}).json()["type"] == "symlink"
    # the server reads through no symlink, not even one it made
    read = api.get("/v1/files/content", params={"path": "/input"})
    assert read.status_code == 403 and read.json()["error"] == "PathEscapeError"
    # where the app runs, it resolves inside the shared folder, and still does once moved
    moved = api.post("/v1/files/rename", json={"source": "/input", "destination": "/out/input"})
    assert moved.status_code == 200, moved.text
    probe = enclave.probe(
        f"import json, os; print(json.dumps(os.path.realpath('{SHARED_DIR}/out/input')))"
    )
    assert json.loads(probe["stdout"]) == f"{SHARED_DIR}/out/data/x.csv"
    # an existing name is not replaced
    again = api.post("/v1/files/symlink", json={"path": "/out/input", "target": "data"})
    assert again.status_code == 409 and again.json()["errno"] == "EEXIST"


def test_readlink_of_what_is_not_a_symlink_says_so(enclave: Enclave) -> None:
    response = enclave.api.get("/v1/files/readlink", params={"path": "/data/x.csv"})
    assert response.status_code == 409 and response.json()["errno"] == "EINVAL"


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("/app-link", "a symlink the app made (to /etc/hostname): never a second name for it"),
        ("/data", "a directory"),
        ("/../etc/passwd", "a path out of the folder"),
    ],
)
def test_a_hard_link_to_anything_but_a_file_of_the_folder_is_refused(
    enclave: Enclave, source: str, why: str
) -> None:
    response = enclave.api.post(
        "/v1/files/link", json={"source": source, "destination": "/out/linked"}
    )
    assert 400 <= response.status_code < 500, (why, response.text)
    assert not _exists(enclave.api, "/out/linked"), why


def test_a_hard_link_to_a_file_of_the_folder_shares_its_content(enclave: Enclave) -> None:
    api = enclave.api
    made = api.post("/v1/files/link", json={"source": "/data/x.csv", "destination": "/out/copy"})
    assert made.status_code == 200, made.text
    assert api.get("/v1/files/content", params={"path": "/out/copy"}).content == b"a,b\n1,2\n"
    api.put("/v1/files/content", params={"path": "/data/x.csv", "offset": 0}, content=b"z")
    assert api.get("/v1/files/content", params={"path": "/out/copy"}).content == b"z,b\n1,2\n"


def test_fsync_flushes_a_file_and_refuses_what_is_not_one(enclave: Enclave) -> None:
    api = enclave.api
    assert api.post("/v1/files/fsync", json={"path": "/data/x.csv"}).status_code == 200
    assert api.post("/v1/files/fsync", json={"path": "/data"}).status_code == 200
    missing = api.post("/v1/files/fsync", json={"path": "/nothing"})
    assert missing.status_code == 404 and missing.json()["errno"] == "ENOENT"
    through = api.post("/v1/files/fsync", json={"path": "/app-link"})
    assert through.status_code == 403, through.text  # not followed to /etc/hostname
