"""Issue 11, "paths and files": the shared folder through the console script.

One workspace for the module (:func:`env`): the key service, an image, and
one debug enclave ``files`` of 512 MiB (a 256 MiB shared folder). Debug, so
that tests can look inside (its debug exec endpoint) at what the Files API
does not show: upload temporaries. ``pull`` and ``push`` copy as ``cp -r``
does, ``-`` is standard output or input (tried through real shell pipes),
``rm``/``mkdir``/``cat``/``stat`` work on the shared folder, a push that does
not fit is refused before a byte is sent, transfers killed with ``kill -9``
leave no temporary behind for good, and ``enclave stop`` names the outputs
that were never pulled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.run_helpers import Stack, error_line

NAME = "files"


@dataclass
class Env:
    stack: Stack
    image: Path
    work: Path

    def cli(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.stack.cli(*args, expect=expect)

    def shell(
        self, pipeline: str, *, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a shell pipeline in which ``sr`` is the console script with this workspace."""
        sr = " ".join(shlex.quote(a) for a in self.stack.argv())
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", f'sr() {{ {sr} "$@"; }}; {pipeline}'],
            input=stdin,
            capture_output=True,
            timeout=120,
            cwd=self.work,
        )

    def inside(self, code: str) -> Any:
        """What a Python snippet prints (as JSON) inside the debug enclave: not a CLI command."""
        response = self.stack.api(NAME).post(
            "/v1/debug/exec", json={"argv": ["python3", "-c", code]}
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["exit_code"] == 0, result
        return json.loads(result["stdout"])

    def shared_names(self, folder: str) -> list[str]:
        """Every name in a shared-folder directory as the enclave itself sees it."""
        names: list[str] = self.inside(
            "import json, os\n"
            f"d = '/enclave/shared{folder}'\n"
            "print(json.dumps(sorted(os.listdir(d)) if os.path.isdir(d) else []))"
        )
        return names


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="sr-files-", dir="/tmp"))  # short: socket paths
    stack = Stack(root)
    try:
        stack.cli("init")
        stack.cli("keys", "serve", "--detach")
        stack.cli("keys", "create", "--alias", "apps")
        image = root / "plain.eif"
        stack.cli("image", "build", "--key", "alias/apps", "-o", str(image))
        stack.start_enclaves(image, {NAME: ["--debug", "--memory", "512"]})
        work = root / "work"
        work.mkdir()
        yield Env(stack, image, work)
    finally:
        stack.close()
        stack.cli("enclave", "stop", "--all", expect=None)
        stack.cli("keys", "stop", expect=None)
        shutil.rmtree(root, ignore_errors=True)


def tree(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def remote_tree(env: Env, folder: str) -> dict[str, int]:
    """path -> size of every file below ``folder``, through `ls --json` (recursively)."""
    found: dict[str, int] = {}
    pending = [folder]
    while pending:
        for entry in env.stack.json("ls", "--enclave", NAME, pending.pop()):
            if entry["type"] == "dir":
                pending.append(entry["path"])
            else:
                found[entry["path"]] = entry["size"]
    return found


# --- 1. pull and push copy as cp -r ------------------------------------------------------


def test_pull_puts_files_where_cp_would(env: Env) -> None:
    w = env.work / "pull"
    (w / "src" / "sub").mkdir(parents=True)
    (w / "src" / "a.csv").write_bytes(b"a,b\n1,2\n")
    (w / "src" / "sub" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    env.cli("push", str(w / "src"), "/pullsrc")  # /pullsrc missing: it becomes the copy
    big = (w / "src" / "sub" / "big.bin").read_bytes()

    # a file into a directory, spelled with "/" (created) or existing
    env.cli("pull", "/pullsrc/sub/big.bin", f"{w}/dir/")
    assert (w / "dir" / "big.bin").read_bytes() == big
    env.cli("pull", "/pullsrc/a.csv", str(w / "dir"))
    assert sorted(p.name for p in (w / "dir").iterdir()) == ["a.csv", "big.bin"]
    # a file to a new name
    env.cli("pull", "/pullsrc/a.csv", str(w / "renamed.csv"))
    assert (w / "renamed.csv").read_bytes() == b"a,b\n1,2\n"

    # a directory: LOCAL missing -> it becomes the copy; LOCAL a directory -> LOCAL/pullsrc
    env.cli("pull", "/pullsrc", str(w / "results"))
    assert tree(w / "results") == {"a.csv": b"a,b\n1,2\n", "sub/big.bin": big}
    env.cli("pull", "/pullsrc", str(w / "results"))
    assert set(tree(w / "results")) == {
        "a.csv",
        "sub/big.bin",
        "pullsrc/a.csv",
        "pullsrc/sub/big.bin",
    }
    # /dir/. is its contents
    env.cli("pull", "/pullsrc/sub/.", str(w / "results"))
    assert (w / "results" / "big.bin").read_bytes() == big

    # several sources need a directory; a directory cannot land on a file
    refused = env.cli("pull", "/pullsrc/a.csv", "/pullsrc/sub", str(w / "nowhere"), expect=2)
    assert "2 sources need a directory destination" in error_line(refused.stderr)
    refused = env.cli("pull", "/pullsrc", str(w / "renamed.csv"), expect=2)
    assert "onto the file" in error_line(refused.stderr)
    assert not (w / "nowhere").exists() and (w / "renamed.csv").read_bytes() == b"a,b\n1,2\n"


def test_pull_to_stdout_through_a_pipe(env: Env) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)  # larger than one response: streamed
    (env.work / "stdout.bin").write_bytes(data)
    env.cli("push", str(env.work / "stdout.bin"), "/stdout/")
    piped = env.shell("sr pull /stdout/stdout.bin - | sha256sum")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode().split()[0] == hashlib.sha256(data).hexdigest()
    # nothing but the bytes on stdout, nothing left in the directory
    direct = subprocess.run(
        env.stack.argv("pull", "/stdout/stdout.bin", "-"), capture_output=True, cwd=env.work
    )
    assert direct.returncode == 0 and direct.stdout == data
    assert "Traceback" not in direct.stderr.decode()
    assert not (env.work / "-").exists()
    # one regular file only; and --json would share stdout with the bytes
    for args, message in [
        (("pull", "/stdout", "-"), "copies one regular file"),
        (("pull", "/stdout/stdout.bin", "/stdout/stdout.bin", "-"), "copies one file, not 2"),
        (("--json", "pull", "/stdout/stdout.bin", "-"), "--json prints to standard output"),
    ]:
        refused = env.cli(*args, expect=2)
        assert message in error_line(refused.stderr) and refused.stdout == ""


def test_push_puts_files_where_cp_would(env: Env) -> None:
    w = env.work / "push"
    (w / "dataset" / "sub").mkdir(parents=True)
    (w / "data.csv").write_text("1,2\n")
    (w / "dataset" / "rows.csv").write_text("3,4\n")
    (w / "dataset" / "sub" / "more.csv").write_text("5,6\n")

    env.cli("push", str(w / "data.csv"), "/pushed/")  # "/": a directory, created
    env.cli("push", str(w / "dataset"), "/pushed")  # an existing directory: /pushed/dataset
    env.cli("push", str(w / "dataset"), "/copy")  # missing: /copy becomes the copy
    env.cli("push", f"{w}/dataset/.", "/pushed")  # its contents
    env.cli("push", str(w / "data.csv"), "/pushed/renamed.csv")
    assert remote_tree(env, "/pushed") == {
        "/pushed/data.csv": 4,
        "/pushed/dataset/rows.csv": 4,
        "/pushed/dataset/sub/more.csv": 4,
        "/pushed/rows.csv": 4,
        "/pushed/sub/more.csv": 4,
        "/pushed/renamed.csv": 4,
    }
    assert remote_tree(env, "/copy") == {"/copy/rows.csv": 4, "/copy/sub/more.csv": 4}

    refused = env.cli("push", str(w / "data.csv"), str(w / "dataset"), "/missing", expect=2)
    assert "2 sources need a directory destination" in error_line(refused.stderr)
    refused = env.cli("push", str(w / "dataset"), "/pushed/data.csv", expect=2)
    assert "onto the file /pushed/data.csv" in error_line(refused.stderr)
    assert "/missing" not in {e["path"] for e in env.stack.json("ls", "/")}


def test_many_small_files_and_a_large_one_round_trip(env: Env) -> None:
    """Push and pull send small files in archives (one request per batch), the large one
    alone; both land where cp -r puts them, byte for byte, with nothing left in flight."""
    w = env.work / "many"
    source = w / "tree"
    for n in range(1500):  # more than one push batch (1000 files)
        path = source / f"d{n // 100:02d}" / f"f{n:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(str(n).encode()).digest() * (n % 7 + 1))
    (source / "empty.txt").write_bytes(b"")
    (source / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    pushed = json.loads(env.cli("--json", "push", str(source), "/many/").stdout)  # the copy
    assert len(pushed["files"]) == 1502
    by_remote = {f["remote"]: f["sha256"] for f in pushed["files"]}
    want = hashlib.sha256((source / "d07" / "f0700.bin").read_bytes()).hexdigest()
    assert by_remote["/many/d07/f0700.bin"] == want
    remote = remote_tree(env, "/many")
    assert len(remote) == 1502 and remote["/many/large.bin"] == 3 * 1024 * 1024
    assert not [n for n in env.shared_names("/many/d00") if n.startswith(".")]

    pulled = json.loads(env.cli("--json", "pull", "/many", str(w / "back")).stdout)
    assert len(pulled["files"]) == 1502
    assert tree(w / "back") == tree(source)
    assert not [p for p in (w / "back").rglob(".strongroom-pull-*")]


def test_push_from_stdin_through_a_pipe(env: Env) -> None:
    data = os.urandom(2 * 1024 * 1024 + 11)
    piped = env.shell("cat | sr push - /stdin/piped.bin", stdin=data)
    assert piped.returncode == 0, piped.stderr
    back = env.shell("sr cat /stdin/piped.bin")
    assert back.stdout == data
    # redirected from a file: its size is known (and checked against the free space)
    (env.work / "redirected.csv").write_bytes(b"x,y\n")
    env.shell("sr push - /stdin/redirected.csv < redirected.csv").check_returncode()
    assert env.shell("sr cat /stdin/redirected.csv").stdout == b"x,y\n"
    refused = env.shell("echo hi | sr push - /stdin/")
    assert refused.returncode == 2
    assert "needs a file name" in error_line(refused.stderr.decode())
    refused = env.cli("push", "-", str(env.work / "redirected.csv"), "/stdin/", expect=2)
    assert "standard input) is one source" in error_line(refused.stderr)


# --- 2. rm, mkdir, cat, stat ----------------------------------------------------------------


def test_mkdir_stat_cat_rm(env: Env) -> None:
    cli = env.cli
    missing = cli("mkdir", "/made/deep/er", expect=7)
    assert "no such file or directory" in error_line(missing.stderr)
    made = cli("mkdir", "-p", "/made/deep/er", "/made/other")
    assert made.stdout.splitlines() == ["created /made/deep/er", "created /made/other"]
    cli("mkdir", "-p", "/made/deep/er")  # fine with -p
    exists = cli("mkdir", "/made/other", expect=2)
    assert "already exists" in error_line(exists.stderr)

    (env.work / "one.txt").write_text("one\n")
    (env.work / "two.txt").write_text("two\n")
    cli("push", str(env.work / "one.txt"), str(env.work / "two.txt"), "/made/")
    # cat: the raw bytes, in order, through a pipe
    piped = env.shell("sr cat /made/one.txt /made/two.txt | tr a-z A-Z")
    assert piped.returncode == 0 and piped.stdout == b"ONE\nTWO\n"
    refused = cli("cat", "/made", expect=2)
    assert "not a regular file" in error_line(refused.stderr) and refused.stdout == ""
    refused = cli("cat", "/made/none.txt", expect=7)
    assert "/made/none.txt: no such file" in error_line(refused.stderr)

    # stat: human and JSON
    human = cli("stat", "/made/one.txt", "/made/deep").stdout
    assert "/made/one.txt\n  type      file\n  size      4 bytes\n" in human
    assert "/made/deep\n  type      dir\n" in human
    (one, deep) = env.stack.json("stat", "/made/one.txt", "/made/deep")
    assert one["size"] == 4 and one["type"] == "file" and deep["type"] == "dir"
    assert set(one) == {"path", "type", "size", "mode", "mtime"}
    missing = cli("stat", "/made/one.txt", "/made/none", expect=7)
    assert missing.stdout == "" and "/made/none" in error_line(missing.stderr)

    # rm: everything checked first, so a directory without -r removes nothing at all
    refused = cli("rm", "/made/one.txt", "/made/deep", expect=2)
    assert "/made/deep is a directory" in error_line(refused.stderr)
    assert "remove it with `rm -r`" in refused.stderr
    assert env.stack.json("stat", "/made/one.txt")[0]["size"] == 4
    refused = cli("rm", "/made/one.txt", "/made/nothing", expect=7)
    assert env.stack.json("stat", "/made/one.txt")[0]["size"] == 4
    removed = env.stack.json("rm", "-f", "-r", "/made/one.txt", "/made/deep", "/made/nothing")
    assert removed == {"removed": [{"path": "/made/one.txt", "type": "file"},
                                   {"path": "/made/deep", "type": "dir"}]}  # fmt: skip
    assert [e["path"] for e in env.stack.json("ls", "/made")] == ["/made/other", "/made/two.txt"]
    refused = cli("rm", "-r", "/", expect=2)
    assert "not its root" in error_line(refused.stderr)


def test_every_new_command_has_an_example(env: Env) -> None:
    for command in ("rm", "mkdir", "cat", "stat", "push", "pull"):
        assert "Example:" in env.cli(command, "--help").stdout, command


# --- 3. push checks the free space first ----------------------------------------------------


def test_a_push_that_does_not_fit_is_refused_before_anything_is_sent(env: Env) -> None:
    big = env.work / "too-big.bin"
    with big.open("wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: larger than the 256 MiB shared folder
    refused = env.cli("push", str(big), "/full/", expect=3)
    line = error_line(refused.stderr)
    assert "push needs 300.0 MiB in the shared folder of enclave 'files', which has" in line
    assert "nothing was sent" in line
    assert "strongroom rm -r PATH" in refused.stderr and "--memory" in refused.stderr
    # several files that only together do not fit: refused whole
    parts = env.work / "parts"
    parts.mkdir()
    for n in range(3):
        with (parts / f"part{n}.bin").open("wb") as f:
            f.truncate(100 * 1024 * 1024)
    refused = env.cli("push", str(parts), "/full/", expect=3)
    assert "push needs 300.0 MiB" in error_line(refused.stderr)
    # ... and from a redirected stdin, whose size is known
    piped = env.shell(f"sr push - /full/big.bin < {big}")
    assert piped.returncode == 3 and b"push needs 300.0 MiB" in piped.stderr
    assert env.shared_names("/full") == []  # not even a directory or a temporary
    assert "/full" not in {e["path"] for e in env.stack.json("ls", "/")}


# --- 4. kill -9 mid-transfer leaves no temporary for good ----------------------------------


def test_a_push_killed_with_sigkill_leaves_no_temporary(env: Env) -> None:
    push = subprocess.Popen(
        env.stack.argv("push", "-", "/killed/slow.bin"),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert push.stdin is not None
    try:
        for _ in range(16):  # a slow producer: the push is mid-transfer for as long as we like
            push.stdin.write(os.urandom(1024 * 1024))
            push.stdin.flush()
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while not (names := env.shared_names("/killed")) and time.monotonic() < deadline:
            time.sleep(0.1)
        (temporary,) = names
        assert temporary.startswith(".slow.bin.part-"), names
        # in flight, the temporary is not listed (a pull of /killed would copy it)
        assert env.stack.json("ls", "/killed") == []
    finally:
        os.kill(push.pid, signal.SIGKILL)
        push.wait()
    assert push.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while env.shared_names("/killed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert env.shared_names("/killed") == []
    assert env.stack.json("ls", "/killed") == []


def test_a_pull_killed_with_sigkill_is_cleaned_up_by_the_next_pull(env: Env) -> None:
    env.inside(
        "import os\n"
        "os.makedirs('/enclave/shared/large', exist_ok=True)\n"
        "with open('/enclave/shared/large/big.bin', 'wb') as f:\n"
        "    for _ in range(160): f.write(os.urandom(1 << 20))\n"
        "print('{}')"
    )
    dest = env.work / "killed-pull"
    dest.mkdir()
    left: list[str] = []
    for _attempt in range(5):  # a 160 MiB pull takes a fraction of a second: catch it midway
        pull = subprocess.Popen(
            env.stack.argv("pull", "/large/big.bin", str(dest)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while pull.poll() is None and not (left := _partials(dest)):
            time.sleep(0.001)
        if pull.poll() is None:
            os.kill(pull.pid, signal.SIGKILL)
            pull.wait()
            break
        (dest / "big.bin").unlink(missing_ok=True)
    assert pull.returncode == -signal.SIGKILL, "never caught the pull mid-transfer"
    assert _partials(dest) == left and not (dest / "big.bin").exists()
    (name,) = left
    assert name.startswith(f".strongroom-pull-{pull.pid}-"), name

    # a temporary of a pull that is still running (this process) is left alone
    from strongroom._internal.services import process_start_time

    me = os.getpid()
    alive = dest / f".strongroom-pull-{me}-{process_start_time(me)}-{'0' * 16}.part"
    alive.write_text("")
    env.cli("pull", "/large/big.bin", str(dest))
    assert _partials(dest) == [alive.name]
    expected = env.inside(
        "import hashlib, json\n"
        "print(json.dumps(hashlib.sha256(open('/enclave/shared/large/big.bin','rb').read())"
        ".hexdigest()))"
    )
    assert hashlib.sha256((dest / "big.bin").read_bytes()).hexdigest() == expected
    env.cli("rm", "-r", "/large")


def _partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".strongroom-pull-"))


# --- 5. enclave stop names the outputs never pulled ----------------------------------------


def test_enclave_stop_warns_about_outputs_never_pulled(env: Env) -> None:
    env.stack.start_enclaves(env.image, {"keep": ["--memory", "256"], "lose": ["--memory", "256"]})
    outputs = env.work / "outputs"
    (outputs / "sub").mkdir(parents=True)
    for name in ("a.csv", "b.csv", "c.csv", "sub/d.csv", "sub/e.csv"):
        (outputs / name).write_text(name)
    for enclave in ("keep", "lose"):  # as an app would have written them
        env.cli("push", "--enclave", enclave, f"{outputs}/.", "/output")
    # keep: everything pulled (in two pulls, one of them to stdout)
    env.cli("pull", "--enclave", "keep", "/output/sub", "/output/a.csv", f"{env.work}/kept/")
    env.shell("sr pull --enclave keep /output/b.csv - > /dev/null").check_returncode()
    env.cli("pull", "--enclave", "keep", "/output/c.csv", str(env.work / "kept"))
    # lose: one file pulled, then one rewritten after its pull
    env.cli("pull", "--enclave", "lose", "/output/a.csv", "/output/b.csv", f"{env.work}/lost/")
    time.sleep(0.05)
    (outputs / "b.csv").write_text("rewritten")
    env.cli("push", "--enclave", "lose", str(outputs / "b.csv"), "/output/b.csv")

    kept = env.cli("enclave", "stop", "keep")
    assert "warning" not in kept.stderr and "stopped enclave keep" in kept.stdout
    lost = env.cli("enclave", "stop", "lose")
    (warning,) = [line for line in lost.stderr.splitlines() if line.strip()]
    assert warning.startswith("warning: enclave lose: 4 file(s) in /output were never pulled (")
    assert "/output/b.csv" in warning and "/output/a.csv" not in warning
    assert "and 1 more" in warning
    assert "`strongroom pull --enclave lose /output DIR` before stopping" in warning
    assert "stopped enclave lose" in lost.stdout
    remaining = {s["EnclaveName"] for s in env.stack.json("enclave", "status")}
    assert remaining == {NAME}
