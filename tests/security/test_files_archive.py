"""``POST /v1/files/archive`` against hostile archives, on a real debug enclave (issue 12).

The host is not trusted inside the enclave: an archive it sends may name
``../x`` or ``/tmp/x``, hold a symlink, a hard link, a device or a FIFO,
carry a setuid mode, a name longer than the kernel allows, or more bytes than
the shared folder can hold. Each must be refused with a 4xx problem that names
the member, before anything of it is written, with nothing written outside
the shared folder (looked at from inside the enclave, through the debug exec
probe) and no temporary left behind; the members before it stay, and the
problem says how many. The same endpoint still extracts a legitimate archive,
with its modes and mtimes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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

NAME = "archives"
#: Paths inside the enclave that an escaping member would write (none may ever exist).
ESCAPES = [f"{SHARED_DIR}/../escaped", "/tmp/escaped", f"{SHARED_DIR}/../x", "/x"]


@dataclass
class Enclave:
    ws: Workspace
    api: httpx.Client
    probe: Exec

    def names(self, folder: str = "") -> list[str]:
        """Every name below a shared-folder directory, hidden temporaries included."""
        result = self.probe(
            "import json, os\n"
            f"top = {SHARED_DIR + folder!r}\n"
            "found = [os.path.relpath(os.path.join(r, n), top) for r, ds, fs in os.walk(top)"
            " for n in ds + fs]\n"
            "print(json.dumps(sorted(found)))"
        )
        assert result["exit_code"] == 0, result
        names: list[str] = json.loads(result["stdout"])
        return names

    def escaped(self) -> list[str]:
        result = self.probe(
            f"import json, os; print(json.dumps([p for p in {ESCAPES!r} if os.path.lexists(p)]))"
        )
        assert result["exit_code"] == 0, result
        found: list[str] = json.loads(result["stdout"])
        return found


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclave]:
    image = build_image(tmp_path_factory.mktemp("image") / "enclave.eif")
    ws = make_workspace()
    try:
        start(ws, image, NAME, debug=True)  # 512 MiB: a 256 MiB shared folder
        with client(ws, NAME) as api:
            yield Enclave(ws, api, python_probe(api))
    finally:
        teardown_workspace(ws)


def member(name: str, data: bytes = b"", **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def raw_member(info: tarfile.TarInfo, data: bytes) -> bytes:
    """One member as it lies in a tar stream: header, data, padding to the block."""
    return info.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def post(api: httpx.Client, directory: str, body: bytes | Iterator[bytes]) -> httpx.Response:
    return api.post(
        "/v1/files/archive",
        params={"path": directory},
        content=body,
        headers={"content-type": "application/x-tar"},
        timeout=120,
    )


FIRST = member("first.txt", b"extracted before the bad member")

#: case -> (the bad member, the error class, what the message must say)
HOSTILE: dict[str, tuple[tuple[tarfile.TarInfo, bytes], str, str]] = {
    "dot-dot": (member("../x", b"pwned"), "PathEscapeError", "leaves /hostile-dot-dot"),
    "nested dot-dot": (member("a/../../../x", b"pwned"), "PathEscapeError", "leaves /hostile-"),
    "absolute": (member("/tmp/escaped", b"pwned"), "PathEscapeError", "not a relative path"),
    "symlink": (
        member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "UsageError",
        "it is a symlink",
    ),
    "hard link": (
        member("hard", type=tarfile.LNKTYPE, linkname="first.txt"),
        "UsageError",
        "it is a hard link",
    ),
    "character device": (
        member("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
        "UsageError",
        "it is a character device",
    ),
    "block device": (member("disk", type=tarfile.BLKTYPE), "UsageError", "block device"),
    "fifo": (member("pipe", type=tarfile.FIFOTYPE), "UsageError", "it is a FIFO"),
    "setuid": (member("suid", b"#!/bin/sh\n", mode=0o4755), "UsageError", "setuid"),
    "setgid": (member("sgid", b"#!/bin/sh\n", mode=0o2755), "UsageError", "setuid"),
    "sticky directory": (member("tmp", type=tarfile.DIRTYPE, mode=0o1777), "UsageError", "sticky"),
    "name too long": (
        member("n" * 256, b"x"),
        "InvalidInputError",
        "longer than 255 bytes",
    ),
    "path too long": (
        member("/".join(["d" * 200] * 21), b"x"),
        "InvalidInputError",
        "longer than 4096",
    ),
    "larger than the free space": (
        member("bomb.bin", b"", size=1 << 40),  # the header claims 1 TiB; no data follows
        "InsufficientSpaceError",
        "do not fit in the shared folder",
    ),
}


#: A refusal's status (issue 17): out of the folder is forbidden, too big does not fit,
#: the rest is a malformed member.
STATUS = {"PathEscapeError": 403, "InsufficientSpaceError": 413}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_member_is_refused_before_anything_of_it_is_written(
    enclave: Enclave, case: str
) -> None:
    bad, error, says = HOSTILE[case]
    folder = f"/hostile-{case.replace(' ', '-')}"
    after = member("after.txt", b"never extracted")
    if case == "larger than the free space":  # a header that claims more than follows it
        body = raw_member(*FIRST) + bad[0].tobuf(tarfile.PAX_FORMAT) + bytes(64 * 1024)
    else:
        body = tar_of([FIRST, bad, after])
    response = post(enclave.api, folder, body)
    assert response.status_code == STATUS.get(error, 400), response.text
    problem = response.json()
    assert problem["error"] == error, problem
    assert says in problem["message"], problem
    assert f"archive member {bad[0].name!r} refused" in problem["message"], problem
    assert "1 member(s) before it were extracted" in problem["message"], problem
    # only the member before it; no temporary, nothing of it or after it, nothing outside
    assert enclave.names(folder) == ["first.txt"]
    assert enclave.escaped() == []
    answer = enclave.api.get("/v1/files/content", params={"path": f"{folder}/first.txt"})
    assert answer.content == FIRST[1]


def test_a_stream_beyond_the_free_space_is_refused_and_leaves_no_temporary(
    enclave: Enclave,
) -> None:
    """Members that each fit but together do not: the one that hits ENOSPC is removed."""
    free = enclave.api.get("/v1/files/statfs").json()
    free_bytes = free["blocks_free"] * free["block_size"]
    piece = 32 * 1024 * 1024
    count = free_bytes // piece + 2

    def body() -> Iterator[bytes]:
        block = bytes(piece)
        for n in range(count):
            info, _ = member(f"part{n:03d}.bin", b"")
            info.size = piece
            yield info.tobuf(tarfile.PAX_FORMAT)
            yield block
        yield bytes(2 * tarfile.BLOCKSIZE)

    response = post(enclave.api, "/bomb", body())
    assert response.status_code == 413, response.text
    problem = response.json()
    assert problem["error"] == "InsufficientSpaceError", problem
    names = enclave.names("/bomb")
    assert names and all(n.startswith("part") and ".part-" not in n for n in names), names
    assert len(names) < count
    assert enclave.api.delete("/v1/files", params={"path": "/bomb", "recursive": "true"}).is_success
    after = enclave.api.get("/v1/files/statfs").json()
    assert after["blocks_free"] * after["block_size"] >= free_bytes - 1024 * 1024


def test_a_legitimate_archive_is_extracted_with_modes_and_mtimes(enclave: Enclave) -> None:
    files = {
        "top.txt": (b"top", 0o600, 1_600_000_000.5),
        "deep/er/file.bin": (bytes(range(256)) * 1000, 0o640, 1_650_000_000.0),
        "deep/run.sh": (b"#!/bin/sh\necho hi\n", 0o755, 1_700_000_000.0),
        "empty": (b"", 0o644, 1_000_000_000.0),
    }
    members = [member("deep", type=tarfile.DIRTYPE, mode=0o750, mtime=1_500_000_000)]
    members += [member(n, d, mode=m, mtime=t) for n, (d, m, t) in files.items()]
    response = post(enclave.api, "/legit/new", tar_of(members))  # created, with its parent
    assert response.status_code == 200, response.text
    entries = response.json()["entries"]
    assert entries == [
        {"path": f"/legit/new/{n}", "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for n, (d, _, _) in files.items()
    ]
    for name, (data, mode, mtime) in files.items():
        path = f"/legit/new/{name}"
        stat = enclave.api.get("/v1/files/stat", params={"path": path}).json()
        assert (stat["type"], stat["size"], stat["mode"]) == ("file", len(data), mode), stat
        assert stat["mtime"] == pytest.approx(mtime, abs=1e-3)
        assert enclave.api.get("/v1/files/content", params={"path": path}).content == data
    deep = enclave.api.get("/v1/files/stat", params={"path": "/legit/new/deep"}).json()
    assert (deep["type"], deep["mode"], deep["mtime"]) == ("dir", 0o750, 1_500_000_000)
    # the same archive again replaces the files (renamed over them)
    again = post(enclave.api, "/legit/new", tar_of(members))
    assert again.status_code == 200 and again.json()["entries"] == entries
    assert not any(".part-" in n for n in enclave.names("/legit"))

    # and comes back out: the download archive, each file with its SHA-256
    answer = enclave.api.get("/v1/files/archive", params={"path": "/legit"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(answer.content), mode="r|") as tar:
        got = {}
        for info in tar:
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            got[info.name] = (data, info.mode, info.pax_headers["STRONGROOM.sha256"])
    assert got == {
        f"new/{n}": (d, m, hashlib.sha256(d).hexdigest()) for n, (d, m, _) in files.items()
    }


def test_an_archive_may_not_replace_a_directory_or_go_through_a_symlink(enclave: Enclave) -> None:
    made = enclave.probe(
        "import os\n"
        f"os.makedirs('{SHARED_DIR}/planted/dir', exist_ok=True)\n"
        f"os.symlink('/tmp', '{SHARED_DIR}/planted/tmp-link')\n"
    )
    assert made["exit_code"] == 0, made
    for name, error, status in (
        ("dir", "UsageError", 409),  # EISDIR: the folder's state
        ("tmp-link/escaped", "PathEscapeError", 403),
    ):
        response = post(enclave.api, "/planted", tar_of([member(name, b"pwned")]))
        assert response.status_code == status, response.text
        assert response.json()["error"] == error, response.json()
    assert enclave.escaped() == []
    assert enclave.names("/planted") == ["dir", "tmp-link"]
    # the archive's directory itself may not be reached through a symlink either
    response = post(enclave.api, "/planted/tmp-link", tar_of([member("escaped", b"pwned")]))
    assert response.status_code == 403 and response.json()["error"] == "PathEscapeError"
    assert enclave.escaped() == []


def test_the_keyed_check_of_a_large_transfer_is_computed_by_the_enclave(
    enclave: Enclave,
) -> None:
    """Large uploads and downloads are checked with a fresh key (not SHA-256): the
    enclave's value must be the client's over the same bytes, and differ otherwise."""
    from strongroom._internal.integrity import KEY_HEADER, StreamCheck, new_key

    data = bytes(range(256)) * (12 * 1024)  # 3 MiB
    key = new_key()
    ours = StreamCheck(key)
    ours.update(data)
    headers = {KEY_HEADER: key.hex()}
    params = {"path": "/keyed/big.bin", "truncate": "true"}
    assert enclave.api.post("/v1/files/mkdir", json={"path": "/keyed"}).is_success
    put = enclave.api.put("/v1/files/content", params=params, content=data, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json() == {"path": "/keyed/big.bin", "size": len(data), "check": ours.hexdigest()}
    got = enclave.api.get("/v1/files/checksum", params={"path": "/keyed/big.bin"}, headers=headers)
    assert got.json()["check"] == ours.hexdigest()
    other = new_key()
    answer = enclave.api.get(
        "/v1/files/checksum", params={"path": "/keyed/big.bin"}, headers={KEY_HEADER: other.hex()}
    )
    assert answer.json()["check"] != ours.hexdigest()
    plain = enclave.api.get("/v1/files/checksum", params={"path": "/keyed/big.bin"})
    assert plain.json()["sha256"] == hashlib.sha256(data).hexdigest()
    bad = enclave.api.put(
        "/v1/files/content", params=params, content=data, headers={KEY_HEADER: "not hex"}
    )
    assert bad.status_code == 400 and KEY_HEADER in bad.json()["message"]
