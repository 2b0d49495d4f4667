"""``pull`` against a hostile enclave server, and ``push`` of symlinks (issue 10, finding 3).

The enclave is not the host's friend: an app that took over the enclave
server (here, a stand-in for it) answers whatever it likes to ``stat`` and
``list``. The stand-in is a real HTTP server on a unix socket, registered as a
running enclave of the workspace (a service record with a live pid, its
socket where the runtime looks), so the console script finds it exactly as it
finds a real enclave. Every attack must fail with exit code 3 and one
``error:`` line, having written nothing, inside the destination or out; the
same commands against an honest listing still work.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingUnixStreamServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from strongroom._internal import services
from strongroom._internal.files import atomic_write_json
from strongroom.client.archive import SHA256_RECORD
from strongroom.enclave.sandbox import KIND, EnclavePaths
from strongroom.workspace import Workspace
from tests.e2e.run_helpers import STRONGROOM, error_line

NAME = "standin"
CLI_TIMEOUT_S = 60.0


@dataclass
class Answers:
    """What the stand-in says: entries by path, listings by directory, file contents."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    listings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    #: What the CLI asked for, in order: (method, endpoint, path).
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    #: Files whose content answer carries a SHA-256 that does not match the bytes.
    wrong_digest: set[str] = field(default_factory=set)
    #: Raw tar answers to ``GET /v1/files/archive`` by directory (else an honest archive).
    archives: dict[str, bytes] = field(default_factory=dict)
    #: The answer to statfs (push checks the free space before sending).
    statfs: Any = field(
        default_factory=lambda: {
            "block_size": 4096,
            "blocks": 1 << 20,
            "blocks_free": 1 << 20,
            "files": 1 << 20,
            "files_free": 1 << 20,
            "name_max": 255,
        }
    )

    def entry(self, path: str, kind: str, size: int = 0) -> dict[str, Any]:
        return {"path": path, "type": kind, "size": size, "mode": 0o644, "mtime": 0.0}

    def tree(self, files: dict[str, bytes], *, extra: dict[str, list[dict[str, Any]]]) -> None:
        """An honest tree of ``files`` (absolute paths), plus hostile ``extra`` listing entries."""
        self.entries.clear()
        self.listings.clear()
        self.contents = dict(files)
        self.entries["/"] = self.entry("/", "dir")
        self.listings["/"] = []
        for path, data in files.items():
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts) + 1):
                sub = "/" + "/".join(parts[:depth])
                if sub in self.entries:
                    continue
                parent = "/" + "/".join(parts[: depth - 1])
                is_file = depth == len(parts)
                entry = self.entry(sub, "file" if is_file else "dir", len(data) if is_file else 0)
                self.entries[sub] = entry
                self.listings.setdefault(parent, []).append(entry)
                if not is_file:
                    self.listings[sub] = []
        for directory, entries in extra.items():
            self.listings[directory] = [*self.listings.get(directory, []), *entries]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: Answers

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"content-type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode())

    def _missing(self, path: str) -> None:
        message = f"{path}: no such file or directory"
        self._json({"error": "NotFoundError", "message": message, "hint": None}, 404)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = parse_qs(url.query).get("path", [""])[0]
        self.answers.requests.append(("GET", url.path, path))
        if url.path == "/v1/describe":
            self._json({"version": "stand-in", "debug": True, "measurements": {}})
        elif url.path == "/v1/files/stat":
            if path in self.answers.entries:
                self._json(self.answers.entries[path])
            else:
                self._missing(path)
        elif url.path == "/v1/files/list":
            self._json({"entries": self.answers.listings.get(path, [])})
        elif url.path == "/v1/files/content":
            data = self.answers.contents.get(path, b"what a hostile server sends")
            digest = hashlib.sha256(data).hexdigest()
            if path in self.answers.wrong_digest:
                digest = "0" * 64
            self._send(200, data, {"content-type": "application/octet-stream", "x-sha256": digest})
        elif url.path == "/v1/files/archive":
            answer = self.answers.archives.get(path)
            if answer is None:
                limit = int(parse_qs(url.query).get("max_size", ["1048576"])[0])
                answer = honest_archive(path, self.answers.contents, limit)
            self._send(200, answer, {"content-type": "application/x-tar"})
        elif url.path == "/v1/files/statfs":
            self._json(self.answers.statfs)
        elif url.path == "/v1/files/checksum":
            data = self.answers.contents.get(path, b"")
            self._json({"path": path, "sha256": hashlib.sha256(data).hexdigest()})
        else:
            self._json({"error": "NotFoundError", "message": "no route", "hint": None}, 404)

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length", "0")))
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return body

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self._body()
        if url.path == "/v1/files/archive":  # an honest extraction, recorded as uploads
            base = parse_qs(url.query).get("path", [""])[0].rstrip("/")
            self.answers.requests.append(("POST", url.path, base))
            entries = []
            with tarfile.open(fileobj=io.BytesIO(body), mode="r|") as tar:
                for member in tar:
                    member_file = tar.extractfile(member)
                    data = member_file.read() if member_file is not None else b""
                    self.answers.uploads[f"{base}/{member.name}"] = data
                    digest = hashlib.sha256(data).hexdigest()
                    entries.append(
                        {"path": f"{base}/{member.name}", "size": len(data), "sha256": digest}
                    )
            self._json({"entries": entries})
            return
        self.answers.requests.append(("POST", url.path, body.decode()))
        self._json({"ok": True})

    def do_PUT(self) -> None:
        url = urlsplit(self.path)
        path = parse_qs(url.query).get("path", [""])[0]
        self.answers.requests.append(("PUT", url.path, path))
        data = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.answers.uploads[path] = data
        digest = hashlib.sha256(data).hexdigest()
        self._json({"path": path, "size": len(data), "sha256": digest})


def archive_member(name: str, data: bytes = b"", **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    """A member as an archive answer holds it: its SHA-256 in the pax record the server uses."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.pax_headers = {SHA256_RECORD: hashlib.sha256(data).hexdigest()}
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def honest_archive(directory: str, contents: dict[str, bytes], limit: int) -> bytes:
    """What an honest server answers: the files below ``directory`` of at most ``limit`` bytes."""
    prefix = directory.rstrip("/") + "/"
    return tar_of(
        [
            archive_member(path[len(prefix) :], data)
            for path, data in sorted(contents.items())
            if path.startswith(prefix) and len(data) <= limit
        ]
    )


@dataclass
class StandIn:
    root: Path
    home: Path
    answers: Answers

    def cli(self, *args: str, expect: int) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STRONGROOM, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            cwd=self.root,
        )
        assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
        return result


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A workspace whose one "running enclave" is the stand-in server."""
    root = Path(tempfile.mkdtemp(prefix="sr-pull-", dir="/tmp"))  # short: socket paths
    ws = Workspace.create(root / "ws")
    paths = EnclavePaths.of(ws.run_dir, NAME)
    paths.directory.mkdir(mode=0o700, parents=True)
    answers = Answers()
    handler = type("Handler", (_Handler,), {"answers": answers})
    server = ThreadingUnixStreamServer(str(paths.control_socket), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # the record names a live process of its own (never this test's: `stop` would kill it)
    holder = subprocess.Popen(["sleep", "600"])
    record = services.ServiceRecord(
        kind=KIND,
        name=NAME,
        pid=holder.pid,
        started_at=0.0,
        proc_start=services.process_start_time(holder.pid),
        addresses={"control": f"unix:{paths.control_socket}"},
        extra={"state": "RUNNING", "spec": {"name": NAME, "cpus": 1, "memory_mib": 64}},
    )
    atomic_write_json(services.record_path(ws.run_dir, KIND, NAME), record.to_json())
    try:
        yield StandIn(root, ws.root, answers)
    finally:
        server.shutdown()
        server.server_close()
        holder.kill()
        holder.wait()
        shutil.rmtree(root, ignore_errors=True)


def _files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def _downloads(answers: Answers) -> list[str]:
    """What the CLI fetched, file by file or as archives."""
    fetched = ("/v1/files/content", "/v1/files/archive")
    return [path for method, url, path in answers.requests if method == "GET" and url in fetched]


HONEST = {"/out/a.csv": b"a,b\n1,2\n", "/out/sub/deep/b.bin": bytes(range(256)) * 5}

#: (what the hostile listing adds, under which directory) -> the entry the error must name
HOSTILE: dict[str, tuple[str, dict[str, Any]]] = {
    "dot-dot": ("/out", {"path": "/out/../../../escaped/x", "type": "file"}),
    "absolute": ("/out", {"path": "ABSOLUTE", "type": "file"}),
    "nested": ("/out", {"path": "/out/sub/../../../escaped/x", "type": "file"}),
    "slash-in-name": ("/out", {"path": "/out/a/b", "type": "file"}),
    "nul": ("/out", {"path": "/out/a\x00b", "type": "file"}),
    "outside-listed-dir": ("/out/sub", {"path": "/elsewhere/x", "type": "file"}),
    "dot-dot-dir": ("/out", {"path": "/out/..", "type": "dir"}),
    "listed-twice": ("/out", {"path": "/out/a.csv", "type": "dir"}),
}


#: How LOCAL may be spelled (cp -r's rules): each must refuse a hostile listing the same way.
DESTINATIONS = {
    "existing directory": ("/out", "d1/d2", True),
    "new directory (becomes the copy)": ("/out", "d1/d2", False),
    "contents (/out/.)": ("/out/.", "d1/d2", True),
    "spelled with a slash": ("/out", "d1/d2/", False),
}


@pytest.mark.parametrize("spelling", sorted(DESTINATIONS))
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_listing_refuses_the_whole_pull(
    standin: StandIn, case: str, spelling: str
) -> None:
    root = standin.root
    remote, typed, existing = DESTINATIONS[spelling]
    dest = root / typed
    dest.parent.mkdir(parents=True)
    if existing:
        dest.mkdir()
    outside = root / "escaped"
    directory, extra = HOSTILE[case]
    bad = dict(extra)
    if bad["path"] == "ABSOLUTE":
        bad["path"] = str(outside / "x")  # an absolute host path, as a name
    bad = {**standin.answers.entry(bad["path"], bad["type"], 5), **bad}
    standin.answers.tree(HONEST, extra={directory: [bad]})
    standin.answers.contents[bad["path"]] = b"pwned"

    refused = standin.cli("pull", remote, root_relative(root, typed), expect=3)
    line = error_line(refused.stderr)
    assert repr(bad["path"]) in line, line
    # nothing written: not outside, not inside (not even the honest files), nothing fetched
    assert not outside.exists()
    assert (list(dest.iterdir()) == []) if existing else not dest.exists()
    assert sorted(p.name for p in root.iterdir()) == ["d1", "ws"]
    assert _downloads(standin.answers) == []

    # the honest listing, same commands: pulled as cp -r would
    standin.answers.tree(HONEST, extra={})
    standin.cli("pull", remote, root_relative(root, typed), expect=0)
    prefix = "out/" if existing and remote == "/out" else ""
    assert _files(dest) == {
        f"{prefix}a.csv": HONEST["/out/a.csv"],
        f"{prefix}sub/deep/b.bin": HONEST["/out/sub/deep/b.bin"],
    }


#: Hostile answers to the archive of /out -> what the one error line must say. Each comes
#: first in the archive (but for the second copy of "twice"), so nothing may be written;
#: the honest files follow it.
HOSTILE_ARCHIVES: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes]], str]] = {
    "dot-dot": ([archive_member("../../escaped/x", b"pwned")], "'..' is not a file name"),
    "nested-dot-dot": ([archive_member("sub/../../x", b"pwned")], "'..' is not a file name"),
    "absolute": ([archive_member("ABSOLUTE", b"pwned")], "holds the member"),
    "symlink": (
        [archive_member("a.csv", type=tarfile.SYMTYPE, linkname="ABSOLUTE")],
        "not a regular file",
    ),
    "hard link": (
        [archive_member("a.csv", type=tarfile.LNKTYPE, linkname="ABSOLUTE")],
        "not a regular file",
    ),
    "device": ([archive_member("a.csv", type=tarfile.CHRTYPE)], "not a regular file"),
    "fifo": ([archive_member("a.csv", type=tarfile.FIFOTYPE)], "not a regular file"),
    "directory": ([archive_member("sub", type=tarfile.DIRTYPE)], "not a regular file"),
    "twice": (
        [archive_member("a.csv", b"a,b\n1,2\n"), archive_member("a.csv", b"pwned")],
        "twice",
    ),
    "too large": ([archive_member("a.csv", bytes(2 * 1024 * 1024))], "more than the"),
    "no checksum": ([archive_member("a.csv", b"pwned", pax_headers={})], "no SHA-256"),
    "garbage": ([], "malformed"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ARCHIVES))
def test_a_hostile_archive_refuses_the_pull(standin: StandIn, case: str) -> None:
    """The small files of a pulled directory come in one archive, which is not trusted either."""
    root = standin.root
    dest = root / "dest"
    outside = root / "escaped"
    members, expected = HOSTILE_ARCHIVES[case]
    for info, _ in members:
        if info.name == "ABSOLUTE":
            info.name = str(outside / "x")
        if info.linkname == "ABSOLUTE":
            info.linkname = str(outside / "x")
    standin.answers.tree(HONEST, extra={})
    honest = [archive_member(p[len("/out/") :], d) for p, d in sorted(HONEST.items())]
    if case == "garbage":
        raw = b"not a tar archive, but long enough to look like one's first block" * 16
    else:
        raw = tar_of([*members, *honest])
    standin.answers.archives["/out"] = raw

    refused = standin.cli("pull", "/out", str(dest), expect=3)
    line = error_line(refused.stderr)
    assert expected in line and "archive of /out" in line, line
    assert not outside.exists()
    if case == "twice":  # the first a.csv was named by the listing and verified: it stays
        assert _files(dest) == {"a.csv": HONEST["/out/a.csv"]}
        shutil.rmtree(dest)  # so that the honest pull makes dest again (cp -r's rules)
    else:
        assert sorted(p.name for p in root.iterdir()) == ["ws"]  # not even dest was made

    standin.answers.archives.clear()
    standin.cli("pull", "/out", str(dest), expect=0)
    assert _files(dest) == {
        "a.csv": HONEST["/out/a.csv"],
        "sub/deep/b.bin": HONEST["/out/sub/deep/b.bin"],
    }
    assert ("GET", "/v1/files/archive", "/out") in standin.answers.requests


def test_an_archive_is_checked_member_by_member(standin: StandIn) -> None:
    """A member whose bytes do not match its SHA-256 is not written (exit 4); one the listing
    did not name is skipped; a planned file the archive lacks is fetched on its own."""
    root = standin.root
    dest = root / "dest"
    standin.answers.tree(HONEST, extra={})
    forged, _ = archive_member("a.csv", b"a,b\n1,2\n")
    standin.answers.archives["/out"] = tar_of([(forged, b"pwned!!!")])
    refused = standin.cli("pull", "/out", str(dest), expect=4)
    assert "/out/a.csv arrived altered" in error_line(refused.stderr)
    assert not (dest / "a.csv").exists()

    unlisted = archive_member("not-listed.txt", b"made since the listing")
    fine = archive_member("a.csv", HONEST["/out/a.csv"])
    standin.answers.archives["/out"] = tar_of([unlisted, fine])
    standin.cli("pull", "/out", str(dest), expect=0)
    assert _files(dest) == {
        "a.csv": HONEST["/out/a.csv"],
        "sub/deep/b.bin": HONEST["/out/sub/deep/b.bin"],
    }
    assert _downloads(standin.answers)[-1] == "/out/sub/deep/b.bin"  # lacking: fetched alone


def root_relative(root: Path, typed: str) -> str:
    """``typed`` under ``root``, keeping a trailing slash (it means "a directory")."""
    return f"{root}/{typed}"


def test_pull_to_stdout_trusts_no_answer_either(standin: StandIn) -> None:
    standin.answers.tree(HONEST, extra={})
    # asked about a file, the server answers about another one
    standin.answers.entries["/out/a.csv"] = standin.answers.entry("/out/sub/deep/b.bin", "file")
    refused = standin.cli("pull", "/out/a.csv", "-", expect=3)
    assert "when asked about '/out/a.csv'" in error_line(refused.stderr)
    assert refused.stdout == "" and _downloads(standin.answers) == []
    standin.answers.tree(HONEST, extra={})
    honest = standin.cli("pull", "/out/a.csv", "-", expect=0)
    assert honest.stdout == HONEST["/out/a.csv"].decode()
    # bytes that do not match the checksum the enclave gives: streamed, then exit 4
    standin.answers.wrong_digest.add("/out/a.csv")
    for command in (("pull", "/out/a.csv", "-"), ("cat", "/out/a.csv")):
        refused = standin.cli(*command, expect=4)
        assert "/out/a.csv arrived altered" in error_line(refused.stderr)
        assert "discard what was written" in refused.stderr


def test_a_malformed_statfs_answer_refuses_the_push(standin: StandIn) -> None:
    local = standin.root / "rows.csv"
    local.write_text("1,2\n")
    standin.answers.tree({}, extra={})
    for answer in ({"block_size": 4096}, {"block_size": -1, "blocks": 1, "blocks_free": 1,
                   "files": 1, "files_free": 1}, [], {"block_size": 0, "blocks": 1,
                   "blocks_free": 1, "files": 1, "files_free": 1}):  # fmt: skip
        standin.answers.statfs = answer
        refused = standin.cli("push", str(local), "/dataset/", expect=3)
        assert "statfs" in error_line(refused.stderr) or "block size" in refused.stderr
    assert standin.answers.uploads == {}


def test_a_stat_answer_for_another_path_is_refused(standin: StandIn) -> None:
    dest = standin.root / "dest"
    standin.answers.tree(HONEST, extra={})
    # asked about /out, the server answers about "/" (so /out's files would land one up)
    standin.answers.entries["/out"] = standin.answers.entry("/", "dir")
    refused = standin.cli("pull", "/out", str(dest), expect=3)
    assert "when asked about '/out'" in error_line(refused.stderr)
    assert not dest.exists() and _downloads(standin.answers) == []


def test_symlinks_in_the_destination_are_not_written_through(standin: StandIn) -> None:
    root = standin.root
    outside = root / "outside"
    outside.mkdir()
    (outside / "a.csv").write_bytes(b"the host's own file")
    standin.answers.tree(HONEST, extra={})

    # a symlinked directory where the pull would create one
    dest = root / "dest"
    dest.mkdir()
    (dest / "out").symlink_to(outside)
    refused = standin.cli("pull", "/out", str(dest), expect=3)
    assert f"{dest / 'out'} is a symlink: pull does not write through it" in error_line(
        refused.stderr
    )
    # a symlinked file where the pull would write one
    (dest / "out").unlink()
    (dest / "out").mkdir()
    (dest / "out" / "a.csv").symlink_to(outside / "a.csv")
    refused = standin.cli("pull", "/out", str(dest), expect=3)
    assert "a.csv is a symlink" in error_line(refused.stderr)
    # ... and a single-file pull onto a symlink
    refused = standin.cli("pull", "/out/a.csv", str(dest / "out" / "a.csv"), expect=3)
    assert "a.csv is a symlink" in error_line(refused.stderr)

    assert _files(outside) == {"a.csv": b"the host's own file"}
    assert _downloads(standin.answers) == []
    assert (dest / "out" / "a.csv").is_symlink()

    # without the links, the same pulls work; a destination given as a link is the user's choice
    (dest / "out" / "a.csv").unlink()
    standin.cli("pull", "/out", str(dest), expect=0)
    assert (dest / "out" / "a.csv").read_bytes() == HONEST["/out/a.csv"]
    chosen = root / "chosen"
    chosen.symlink_to(outside, target_is_directory=True)
    standin.cli("pull", "/out/a.csv", str(chosen), expect=0)
    assert (outside / "a.csv").read_bytes() == HONEST["/out/a.csv"]


def test_push_refuses_symlinks_given_or_inside_a_directory(standin: StandIn) -> None:
    root = standin.root
    secret = root / "host-secret.txt"
    secret.write_text("the host's private key")
    data = root / "dataset"
    (data / "sub").mkdir(parents=True)
    (data / "rows.csv").write_text("1,2\n")
    (data / "sub" / "more.csv").write_text("3,4\n")
    (root / "link.csv").symlink_to(secret)
    (data / "sub" / "leak.csv").symlink_to(secret)

    refused = standin.cli("push", str(root / "link.csv"), "/dataset/", expect=2)
    assert "link.csv is a symlink: push copies regular files" in error_line(refused.stderr)
    refused = standin.cli("push", str(data), "/", expect=2)
    assert "leak.csv is a symlink" in error_line(refused.stderr)
    (data / "sub" / "leak.csv").unlink()
    (data / "sub" / "dir-link").symlink_to(root)
    refused = standin.cli("push", str(data), "/", expect=2)
    assert "dir-link is a symlink" in error_line(refused.stderr)
    assert standin.answers.uploads == {}

    # the legitimate push still works: the dataset, file by file
    (data / "sub" / "dir-link").unlink()
    standin.cli("push", str(data), "/", expect=0)
    assert standin.answers.uploads == {
        "/dataset/rows.csv": b"1,2\n",
        "/dataset/sub/more.csv": b"3,4\n",
    }
