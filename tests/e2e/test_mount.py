"""Issue 12, the synced folder: real tools on a real ``strongroom mount``.

One workspace for the module (:func:`env`): the key service, an image approved
for ``alias/apps``, a sealed app of this module's scripts, one production
enclave ``mnt`` of 1 GiB (a 512 MiB shared folder) mounted on ``mnt/`` through
the console script as a user types it, and the egress proxy (for ``run``).
What the tools did is checked on the enclave's side too, through ``strongroom
cat``/``pull``/``stat`` (another path than the mount, so a cache in the mount
cannot pass for the enclave's files). The tests that stop or kill an enclave
start one of their own. Two tests are expected failures, each naming a bug of
the mount (``mount/fs.py``): they pass, and must then lose their mark, once it
is fixed. Everything is unmounted and stopped at the end, whatever happened.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.run_helpers import EXAMPLES, Stack, error_line

NAME = "mnt"
#: Changes made inside the enclave show on the mount within this (a TTL of 1 s, plus slack).
INSIDE_CHANGE_S = 2.0
#: A dead enclave makes operations fail within this; nothing may hang.
FAULT_S = 15.0

APPS = {
    # runbook step 4.5: reads every file of a dataset folder, writes its findings to another
    "count.py": """\
import hashlib, json, os, sys
dataset, output = sys.argv[1], sys.argv[2]
found = {}
for name in sorted(os.listdir(dataset)):
    with open(os.path.join(dataset, name), "rb") as f:
        data = f.read()
    found[name] = {"sha256": hashlib.sha256(data).hexdigest(), "lines": data.count(b"\\n")}
os.makedirs(output, exist_ok=True)
with open(os.path.join(output, "result.json"), "w") as f:
    json.dump(found, f)
print("counted", len(found), flush=True)
""",
    # writes a file, waits for the host's go, changes it in place and makes another
    "live.py": """\
import os, sys, time
folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
def wait_for(name):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(folder, name)):
        if time.monotonic() > deadline:
            sys.exit(f"never got {name}")
        time.sleep(0.02)
with open(os.path.join(folder, "live.txt"), "w") as f:
    f.write("one")
print("wrote one", flush=True)
wait_for("go")
with open(os.path.join(folder, "live.txt"), "r+") as f:
    f.write("two")
with open(os.path.join(folder, "fresh.txt"), "w") as f:
    f.write("fresh from the enclave")
print("wrote two", flush=True)
wait_for("stop")
""",
}


@dataclass
class Env:
    stack: Stack
    image: Path
    sealed: Path
    mnt: Path
    work: Path

    def cli(
        self, *args: str, expect: int | None = 0, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.stack.cli(*args, expect=expect, timeout=timeout)

    def remote(self, path: str) -> bytes:
        """A file of the shared folder as the enclave has it (`strongroom cat`, not the mount)."""
        done = subprocess.run(
            self.stack.argv("cat", "--enclave", NAME, path), capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def remote_stat(self, path: str) -> dict[str, Any]:
        (entry,) = self.stack.json("stat", "--enclave", NAME, path)
        assert isinstance(entry, dict)
        return entry

    def remote_names(self, path: str) -> list[str]:
        return sorted(
            e["path"].rsplit("/", 1)[1] for e in self.stack.json("ls", "--enclave", NAME, path)
        )


def tool(*argv: str, cwd: Path | None = None, timeout: float = 120.0) -> str:
    """Run a real tool; its stdout (it must succeed)."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def mount_table() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def mounts_of(stack: Stack) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = stack.json("mount")
    return found


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="sr-mnt-", dir="/tmp"))  # short: socket paths
    stack = Stack(root)
    try:
        stack.cli("init")
        stack.cli("keys", "serve", "--detach")
        stack.cli("keys", "create", "--alias", "apps")
        image = root / "plain.eif"
        stack.cli("image", "build", "--key", "alias/apps", "-o", str(image))
        stack.cli("image", "approve", str(image), "--key", "alias/apps")
        app = root / "app"
        app.mkdir()
        for name, source in APPS.items():
            (app / name).write_text(source)
        sealed = root / "app.sealed"
        stack.cli("seal", str(app), "--key", "alias/apps", "-o", str(sealed))
        stack.start_enclaves(image, {NAME: ["--memory", "1024"]})
        stack.cli("proxy", "start")  # the way to the key service, for `run`
        mnt, work = root / "mnt", root / "work"
        mnt.mkdir()
        work.mkdir()
        stack.cli("mount", str(mnt), "--enclave", NAME)
        yield Env(stack, image, sealed, mnt, work)
    finally:
        stack.close()
        for mount in mounts_of(stack) if (root / "ws").exists() else []:
            stack.cli("unmount", mount["directory"], expect=None)
        stack.cli("enclave", "stop", "--all", expect=None)
        stack.cli("proxy", "stop", expect=None)
        stack.cli("keys", "stop", expect=None)
        for point in mount_table():  # never leave a mount behind, whatever happened
            if point.startswith(str(root)):
                subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def random_tree(top: Path) -> dict[str, bytes]:
    """A tree of files of awkward sizes (empty, one byte, across the mount's blocks)."""
    sizes = {
        "empty": 0,
        "one": 1,
        "a/page": 4096,
        "a/b/odd": 128 * 1024 + 1,
        "a/b/c/five-mib": 5 * 1024 * 1024 + 7,  # more than a read block
        "a/b/c/nine-mib": 9 * 1024 * 1024 + 3,  # more than a write block
        "z/space name.txt": 100,
    }
    files = {}
    for rel, size in sizes.items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        path.write_bytes(data)
        files[rel] = data
    (top / "a" / "emptydir").mkdir()
    return files


def tree(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


# --- the folder itself --------------------------------------------------------------------


def test_the_banner_is_there_after_mount(env: Env) -> None:
    banner = (env.mnt / "from_server.txt").read_bytes()
    assert banner == env.remote("/from_server.txt") and banner.strip()
    listed = mounts_of(env.stack)
    assert [(m["directory"], m["enclave"], m["read_only"]) for m in listed] == [
        (str(env.mnt), NAME, False)
    ]
    assert str(env.mnt) in mount_table()


def test_runbook_step_4_5_verbatim(env: Env) -> None:
    """Datasets and the sealed package copied in, `run`, the results read back: all on the mount."""
    synced = env.mnt
    tool("mkdir", "-p", "dataset", "encrypted", "output", cwd=synced)
    dataset = EXAMPLES / "host-dataset" / "digits.csv"
    tool("cp", str(dataset), str(synced / "dataset") + "/")
    tool("cp", str(env.sealed), str(synced / "encrypted" / "app.sealed"))
    ran = env.cli(
        "run", "--enclave", NAME, "/encrypted/app.sealed", "--entry", "count.py",
        "--", "/dataset", "/output",
    )  # fmt: skip
    assert ran.stdout == "counted 1\n"
    result = json.loads((synced / "output" / "result.json").read_text())
    data = dataset.read_bytes()
    assert result == {
        "digits.csv": {"sha256": hashlib.sha256(data).hexdigest(), "lines": data.count(b"\n")}
    }
    # the package the enclave decrypted is the one copied in, byte for byte
    assert env.remote("/encrypted/app.sealed") == env.sealed.read_bytes()


def test_cp_r_in_and_out(env: Env) -> None:
    src = env.work / "cp-src"
    files = random_tree(src)
    tool("cp", "-r", str(src), str(env.mnt / "cp"))
    # what the enclave has, through another path than the mount
    pulled = env.work / "cp-pulled"
    env.cli("pull", "--enclave", NAME, "/cp", str(pulled))
    assert tree(pulled) == files
    assert "emptydir" in env.remote_names("/cp/a")
    out = env.work / "cp-out"
    tool("cp", "-r", str(env.mnt / "cp"), str(out))
    assert tree(out) == files and (out / "a" / "emptydir").is_dir()
    tool("diff", "-r", str(src), str(out))


def test_rsync_a_then_diff_r(env: Env) -> None:
    src = env.work / "rsync-src"
    random_tree(src)
    os.utime(src / "one", (1_500_000_000, 1_500_000_000))
    os.chmod(src / "a" / "page", 0o600)
    dest = env.mnt / "rsync"
    tool("rsync", "-a", f"{src}/", f"{dest}/")
    tool("diff", "-r", str(src), str(dest))
    assert (dest / "one").stat().st_mtime == 1_500_000_000
    assert env.remote_stat("/rsync/a/page")["mode"] == 0o600
    # times and modes came through: a second rsync has nothing to do
    assert tool("rsync", "-ai", f"{src}/", f"{dest}/") == ""
    (src / "a" / "page").write_bytes(b"changed")
    again = tool("rsync", "-ai", f"{src}/", f"{dest}/").split("\n")
    assert [line.split()[-1] for line in again if line] == ["a/page"]
    assert env.remote("/rsync/a/page") == b"changed"


def test_dd_64_mib_in_and_out(env: Env) -> None:
    data = env.work / "dd.bin"
    tool("dd", "if=/dev/urandom", f"of={data}", "bs=1M", "count=64", "status=none")
    tool("dd", f"if={data}", f"of={env.mnt / 'dd.bin'}", "bs=1M", "status=none")
    assert env.remote_stat("/dd.bin")["size"] == 64 * 1024 * 1024
    pulled = env.work / "dd.pulled"
    env.cli("pull", "--enclave", NAME, "/dd.bin", str(pulled))
    tool("cmp", str(data), str(pulled))
    # out: a file the mount never wrote (pushed), so no page of it can be cached here
    env.cli("push", "--enclave", NAME, str(data), "/dd-pushed.bin")
    back = env.work / "dd.back"
    tool("dd", f"if={env.mnt / 'dd-pushed.bin'}", f"of={back}", "bs=1M", "status=none")
    tool("cmp", str(data), str(back))


def test_python_open_seek_write_truncate_rename_over(env: Env) -> None:
    path = env.mnt / "py.bin"
    with open(path, "wb") as f:
        f.write(b"0123456789")
        f.seek(3)
        f.write(b"abc")
        f.seek(20)
        f.write(b"Z")  # a hole
    assert env.remote("/py.bin") == b"012abc6789" + bytes(10) + b"Z"
    with open(path, "r+b") as f:
        f.truncate(5)
        assert f.seek(0, os.SEEK_END) == 5
        f.write(b"END")
        f.seek(1)
        assert f.read() == b"12abEND"
    os.truncate(path, 2)
    assert path.read_bytes() == b"01" == env.remote("/py.bin")
    # rename over an existing file replaces it, whoever reads it next
    (env.mnt / "py-new").write_text("new")
    os.rename(env.mnt / "py-new", path)
    assert path.read_text() == "new" and not (env.mnt / "py-new").exists()
    assert env.remote("/py.bin") == b"new"
    assert "py-new" not in env.remote_names("/")
    # the editor's way: write a temporary, rename it over
    with open(env.mnt / ".py.bin.swp", "w") as f:
        f.write("saved by an editor")
    os.replace(env.mnt / ".py.bin.swp", path)
    assert env.remote("/py.bin") == b"saved by an editor"


def test_opening_an_existing_file_with_o_trunc_empties_it(env: Env) -> None:
    """`echo x > file` and open(file, "w") on a file that is longer than what is written.

    Also what breaks git's second commit: COMMIT_EDITMSG keeps the tail of the
    first message ("an edit" over "the classifier" becomes "an edit\\nsifier").
    """
    path = env.mnt / "trunc.txt"
    path.write_text("a long first version\n")
    subprocess.run(["sh", "-c", "echo short > trunc.txt"], cwd=env.mnt, check=True)
    assert env.remote("/trunc.txt") == b"short\n"
    with open(path, "w") as f:
        f.write("xy")
    assert env.remote("/trunc.txt") == b"xy" == path.read_bytes()


def test_mkdir_p_deep_trees(env: Env) -> None:
    deep = "/".join(f"level{i:02d}" for i in range(40))
    tool("mkdir", "-p", f"deep/{deep}", "deep/other/x/y", cwd=env.mnt)
    (env.mnt / "deep" / deep / "leaf.txt").write_text("at the bottom")
    assert env.remote(f"/deep/{deep}/leaf.txt") == b"at the bottom"
    # mkdir -p on what exists is fine; on a file it is not
    tool("mkdir", "-p", f"deep/{deep}", cwd=env.mnt)
    clash = subprocess.run(
        ["mkdir", "-p", f"deep/{deep}/leaf.txt/below"], cwd=env.mnt, capture_output=True, text=True
    )
    assert clash.returncode != 0 and "Not a directory" in clash.stderr
    found = tool("find", "deep", "-type", "d", cwd=env.mnt).split()
    assert len(found) == 1 + 40 + 3
    tool("rm", "-r", "deep", cwd=env.mnt)
    assert "deep" not in env.remote_names("/")


def test_unlink_while_open(env: Env) -> None:
    folder = env.mnt / "unlinked"
    folder.mkdir()
    with open(folder / "open.txt", "w+") as f:
        f.write("written before")
        f.flush()
        os.unlink(folder / "open.txt")
        assert "open.txt" not in os.listdir(folder)
        assert "open.txt" not in env.remote_names("/unlinked")
        assert not (folder / "open.txt").exists()
        f.seek(0)
        assert f.read() == "written before"  # the descriptor still reads ...
        f.write(", and after")  # ... and writes
        f.flush()
        f.seek(0)
        assert f.read() == "written before, and after"
    # once closed, nothing of it is left in the enclave (not even a hidden name)
    assert env.remote_names("/unlinked") == []
    assert os.listdir(folder) == []


def test_sqlite3_database_on_the_mount(env: Env) -> None:
    folder = env.mnt / "db"
    folder.mkdir()
    script = (
        "create table t (n integer primary key, s text);\n"
        "insert into t with recursive c(n) as (select 0 union all select n + 1 from c"
        " where n < 999) select n, 'row ' || n from c;\n"
    )
    tool("sqlite3", str(folder / "data.db"), script)
    tool("sqlite3", str(folder / "data.db"), "update t set s = 'changed' where n % 10 = 0;")
    query = (
        "pragma integrity_check; select count(*), sum(n) from t;"
        " select count(*) from t where s = 'changed';"
    )
    assert tool("sqlite3", str(folder / "data.db"), query).split() == ["ok", "1000|499500", "100"]
    # the enclave has a whole database, not one only this mount's cache makes sense of
    pulled = env.work / "pulled.db"
    env.cli("pull", "--enclave", NAME, "/db/data.db", str(pulled))
    assert tool("sqlite3", str(pulled), query).split() == ["ok", "1000|499500", "100"]
    assert os.listdir(folder) == ["data.db"]  # no journal left behind


def test_git_init_add_commit_on_the_mount(env: Env) -> None:
    repo = env.mnt / "repo"
    repo.mkdir()
    shutil.copytree(EXAMPLES / "classifier", repo / "classifier")
    git = ["git", "-c", "user.name=Host", "-c", "user.email=host@example.com", "-c", "gc.auto=0"]
    tool(*git, "init", "-q", cwd=repo)
    tool(*git, "add", ".", cwd=repo)
    tool(*git, "commit", "-q", "-m", "the classifier", cwd=repo)
    (repo / "classifier" / "extra.txt").write_text("added later\n")
    tool(*git, "add", "classifier/extra.txt", cwd=repo)
    tool(*git, "commit", "-q", "-m", "the classifier, and more", cwd=repo)
    assert tool("git", "log", "--format=%s", cwd=repo).splitlines() == [
        "the classifier, and more",
        "the classifier",
    ]
    assert tool("git", "status", "--porcelain", cwd=repo) == ""
    tool("git", "fsck", "--strict", cwd=repo)
    # a clone from the mount has the same files
    clone = env.work / "clone"
    tool("git", "clone", "-q", str(repo), str(clone))
    assert (clone / "classifier" / "model.npz").read_bytes() == (
        EXAMPLES / "classifier" / "model.npz"
    ).read_bytes()


WRITER = """\
import os, sys
path, seed, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
block = (seed * 1024).encode()[:65536]
with open(path, "wb") as f:
    written = 0
    while written < size:
        written += f.write(block[: size - written])
"""

APPENDER = """\
import os, sys
path, tag = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(300):
    os.write(fd, f"{tag} {i:04d}\\n".encode())
os.close(fd)
"""


def test_concurrent_writers(env: Env) -> None:
    folder = env.mnt / "many"
    folder.mkdir()
    python = shutil.which("python3") or "python3"
    size = 3 * 1024 * 1024 + 11
    writers = [
        subprocess.Popen([python, "-c", WRITER, str(folder / f"w{i}.bin"), f"seed{i}-", str(size)])
        for i in range(6)
    ]
    appenders = [
        subprocess.Popen([python, "-c", APPENDER, str(folder / "log.txt"), tag]) for tag in "ABCD"
    ]
    assert [p.wait(60) for p in writers + appenders] == [0] * 10
    for i in range(6):
        block = (f"seed{i}-" * 1024).encode()[:65536]
        expected = (block * (size // len(block) + 1))[:size]
        got = env.remote(f"/many/w{i}.bin")
        assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest(), f"w{i}.bin"
    lines = env.remote("/many/log.txt").decode().splitlines()
    assert sorted(lines) == sorted(f"{tag} {i:04d}" for tag in "ABCD" for i in range(300))
    for tag in "ABCD":  # each appender's lines in its own order
        assert [ln for ln in lines if ln[0] == tag] == [f"{tag} {i:04d}" for i in range(300)]


def test_chmod_and_utimens_show_in_stat(env: Env) -> None:
    path = env.mnt / "meta.txt"
    path.write_text("meta")
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_600_000_000_250_000_000, 1_600_000_000_500_000_000))
    st = os.stat(path)
    assert oct(st.st_mode & 0o7777) == oct(0o640)
    assert abs(st.st_mtime - 1_600_000_000.5) < 1e-3
    remote = env.remote_stat("/meta.txt")
    assert remote["mode"] == 0o640 and abs(remote["mtime"] - 1_600_000_000.5) < 1e-3
    tool("touch", "-m", "-d", "2021-03-04 05:06:07 UTC", str(path))
    assert abs(os.stat(path).st_mtime - 1_614_834_367) < 1e-3
    tool("chmod", "u+x", str(path))
    assert os.stat(path).st_mode & 0o777 == 0o740 == env.remote_stat("/meta.txt")["mode"]
    (env.mnt / "metadir").mkdir(mode=0o700)
    assert env.remote_stat("/metadir")["mode"] == 0o700
    # set-id bits are not the Files API's to give
    with pytest.raises(PermissionError):
        os.chmod(path, 0o4755)  # noqa: S103 (what is refused)


def test_symlinks_inside_the_folder(env: Env) -> None:
    folder = env.mnt / "links"
    (folder / "sub").mkdir(parents=True)
    (folder / "target.txt").write_text("through the link")
    tool("ln", "-s", "target.txt", "here", cwd=folder)
    (folder / "sub" / "file.txt").write_text(" and down")
    tool("ln", "-s", "sub/file.txt", "down", cwd=folder)
    assert os.readlink(folder / "here") == "target.txt"
    assert tool("cat", "here", "down", cwd=folder) == "through the link and down"
    entry = env.remote_stat("/links/down")
    assert entry["type"] == "symlink"
    # a link that climbs is refused, even one that would stay inside (it could be moved)
    for target in ("/etc/passwd", "../target.txt", "../../etc/passwd", "sub/../../../x"):
        refused = subprocess.run(
            ["ln", "-s", target, "bad"], cwd=folder, capture_output=True, text=True
        )
        assert refused.returncode != 0 and "Operation not permitted" in refused.stderr, target
        with pytest.raises(PermissionError):
            os.symlink(target, folder / "bad")
    assert "bad" not in env.remote_names("/links")


def test_hard_links(env: Env) -> None:
    folder = env.mnt / "hard"
    folder.mkdir()
    (folder / "a").write_text("first")
    tool("ln", "a", "b", cwd=folder)
    assert (folder / "b").read_text() == "first"
    os.unlink(folder / "a")
    assert (folder / "b").read_text() == "first" == env.remote("/hard/b").decode()
    # a symlink cannot be hard-linked (its target would be reached by another name)
    os.symlink("b", folder / "soft")
    with pytest.raises(PermissionError):
        os.link(folder / "soft", folder / "soft2", follow_symlinks=False)


def test_a_hard_link_shows_what_was_written_through_the_other_name(env: Env) -> None:
    """Attributes are kept per name for the attribute TTL (the kernel's and ours), so
    another name of the same file shows a write within that time (docs/CLI.md)."""
    from strongroom.client.mount.fs import ATTR_TTL_S

    folder = env.mnt / "hard2"
    folder.mkdir()
    (folder / "a").write_text("first")
    os.link(folder / "a", folder / "b")
    assert (folder / "a").read_text() == "first"  # its size and pages are now cached here
    with open(folder / "b", "a") as f:
        f.write(" and more")
    assert env.remote("/hard2/a") == b"first and more"
    time.sleep(ATTR_TTL_S + 0.2)
    assert (folder / "a").read_text() == "first and more"


def test_df_is_the_enclave_s_statfs(env: Env) -> None:
    from strongroom.cli.client import connect_enclave
    from strongroom.workspace import Workspace

    with connect_enclave(Workspace.locate(env.stack.home), NAME) as client:
        before = client.statfs()
        mounted = os.statvfs(env.mnt)
        assert mounted.f_frsize * mounted.f_blocks == before.total_bytes
        assert before.total_bytes == 512 * 1024 * 1024  # half the enclave's 1 GiB
        size, avail = tool("df", "-B1", "--output=size,avail", str(env.mnt)).split()[-2:]
        assert int(size) == before.total_bytes
        assert abs(int(avail) - before.free_bytes) <= 1024 * 1024
        # a file written through the mount is taken from the enclave's free space
        with open(env.mnt / "space.bin", "wb") as f:
            f.write(os.urandom(16 * 1024 * 1024))
        after = client.statfs()
    taken = before.free_bytes - after.free_bytes
    assert 16 * 1024 * 1024 <= taken <= 17 * 1024 * 1024
    mounted = os.statvfs(env.mnt)
    assert mounted.f_frsize * mounted.f_bavail == after.free_bytes
    os.unlink(env.mnt / "space.bin")


def test_what_the_app_writes_appears_within_two_seconds(env: Env) -> None:
    folder = env.mnt / "live"
    argv = ["run", "--enclave", NAME, str(env.sealed), "--entry", "live.py", "--", "/live"]
    with env.stack.live(*argv) as run:
        run.wait_for("wrote one")
        # seen once: the mount now holds its attributes (and the kernel its pages)
        deadline = time.monotonic() + INSIDE_CHANGE_S
        while not (folder / "live.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (folder / "live.txt").read_text() == "one"
        assert not (folder / "fresh.txt").exists()
        (folder / "go").write_text("")
        written = run.wait_for("wrote two")
        while True:
            content = (folder / "live.txt").read_text()
            fresh = (folder / "fresh.txt").exists()
            if (content == "two" and fresh) or time.monotonic() - written > 2 * FAULT_S:
                break
            time.sleep(0.05)
        seen = time.monotonic() - written
        assert content == "two" and fresh, (content, fresh)
        assert seen < INSIDE_CHANGE_S, seen
        assert (folder / "fresh.txt").read_text() == "fresh from the enclave"
        assert "fresh.txt" in os.listdir(folder)
        (folder / "stop").write_text("")
        assert run.wait(30) == 0, run.err


# --- modes and refusals -------------------------------------------------------------------


@contextmanager
def extra_mount(env: Env, name: str, *options: str) -> Iterator[Path]:
    directory = env.stack.root / name
    directory.mkdir()
    env.cli("mount", str(directory), "--enclave", NAME, *options)
    try:
        yield directory
    finally:
        if str(directory) in mount_table():
            env.cli("unmount", str(directory))


def test_read_only_refuses_every_change_with_erofs(env: Env) -> None:
    (env.mnt / "ro-file.txt").write_text("keep me")
    with extra_mount(env, "ro", "--read-only") as ro:
        assert (ro / "ro-file.txt").read_text() == "keep me"
        assert [m["read_only"] for m in mounts_of(env.stack) if m["directory"] == str(ro)] == [True]
        attempts = [
            lambda: (ro / "new.txt").write_text("x"),
            lambda: os.open(ro / "ro-file.txt", os.O_WRONLY | os.O_APPEND),
            lambda: os.truncate(ro / "ro-file.txt", 0),
            lambda: os.unlink(ro / "ro-file.txt"),
            lambda: os.mkdir(ro / "dir"),
            lambda: os.rename(ro / "ro-file.txt", ro / "moved.txt"),
            lambda: os.chmod(ro / "ro-file.txt", 0o600),
            lambda: os.utime(ro / "ro-file.txt", (1, 1)),
            lambda: os.symlink("ro-file.txt", ro / "link"),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS, attempt
        touched = subprocess.run(["touch", str(ro / "x")], capture_output=True, text=True)
        assert "Read-only file system" in touched.stderr
    assert env.remote("/ro-file.txt") == b"keep me"
    assert sorted(set(env.remote_names("/")) & {"new.txt", "dir", "moved.txt", "link", "x"}) == []


def test_a_second_mount_of_the_same_directory_is_refused(env: Env) -> None:
    for argv in (["mount", str(env.mnt)], ["sync", "-d", str(env.mnt)]):
        refused = env.cli(*argv, "--enclave", NAME, expect=2)
        assert error_line(refused.stderr) == f"error: {env.mnt} is already a mount point"
    assert (env.mnt / "from_server.txt").exists()  # the first one still serves
    assert len(mounts_of(env.stack)) == 1


def test_mounting_a_missing_or_non_empty_directory_is_refused(env: Env) -> None:
    missing = env.stack.root / "missing"
    refused = env.cli("mount", str(missing), "--enclave", NAME, expect=2)
    assert error_line(refused.stderr) == f"error: {missing} does not exist"
    full = env.stack.root / "full"
    full.mkdir()
    (full / "mine.txt").write_text("the host's own")
    refused = env.cli("mount", str(full), "--enclave", NAME, expect=2)
    assert "is not empty" in error_line(refused.stderr)
    assert (full / "mine.txt").read_text() == "the host's own"
    assert str(full) not in mount_table() and not missing.exists()
    assert len(mounts_of(env.stack)) == 1


def test_unmount_of_a_busy_mount_is_lazy(env: Env) -> None:
    directory = env.stack.root / "busy"
    directory.mkdir()
    env.cli("mount", str(directory), "--enclave", NAME)
    (pid,) = [m["pid"] for m in mounts_of(env.stack) if m["directory"] == str(directory)]
    sitting = subprocess.Popen(["sleep", "60"], cwd=directory)  # a shell cd'ed into it
    try:
        done = env.stack.json("unmount", str(directory))
        assert done == {"directory": str(directory), "lazy": True}
        assert str(directory) not in mount_table()
        assert all(m["directory"] != str(directory) for m in mounts_of(env.stack))
    finally:
        sitting.kill()
        sitting.wait()
    # once let go, the kernel finishes and the mount's process ends
    deadline = time.monotonic() + FAULT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not os.listdir(directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


# --- the enclave goes ---------------------------------------------------------------------


def test_a_full_folder_says_enospc_and_the_mount_lives_on(env: Env) -> None:
    """Before, the enclave answered a write that did not fit before it had read the
    request, the client saw a broken pipe, and the mount took the enclave for gone."""
    from strongroom.cli.client import connect_enclave
    from strongroom.errors import InsufficientSpaceError
    from strongroom.workspace import Workspace

    env.stack.start_enclaves(env.image, {"small": ["--memory", "512"]})
    directory = env.stack.root / "small"
    directory.mkdir()
    try:
        env.cli("mount", str(directory), "--enclave", "small")
        space = os.statvfs(directory)
        count = space.f_bavail * space.f_frsize // (1024 * 1024) + 16
        filled = subprocess.run(
            ["dd", "if=/dev/zero", f"of={directory / 'fill'}", "bs=1M", f"count={count}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert filled.returncode != 0 and "No space left on device" in filled.stderr
        # the mount still serves, and the space comes back
        assert (directory / "from_server.txt").read_bytes()
        os.unlink(directory / "fill")
        (directory / "after.txt").write_text("room again")
        assert env.stack.cli("cat", "--enclave", "small", "/after.txt").stdout == "room again"
        # the Files API itself: refused as such, on a connection that goes on
        with connect_enclave(Workspace.locate(env.stack.home), "small") as client:
            too_big = bytes(client.statfs().free_bytes + 1024 * 1024)
            with pytest.raises(InsufficientSpaceError) as refused:
                client.write_at("/too-big", 0, too_big, create=True)
            assert refused.value.errno_name == "ENOSPC"
            assert client.stat("/after.txt").size == len("room again")
    finally:
        if str(directory) in mount_table():
            env.cli("unmount", str(directory), expect=None)
        env.cli("enclave", "stop", "small", expect=None)


def test_enclave_stop_unmounts(env: Env) -> None:
    env.stack.start_enclaves(env.image, {"stopping": ["--memory", "512"]})
    directory = env.stack.root / "stopping"
    directory.mkdir()
    env.cli("mount", str(directory), "--enclave", "stopping")
    (directory / "left.txt").write_text("unpulled")
    stopped = env.cli("enclave", "stop", "stopping")
    assert f"unmounted {directory} (enclave stopping stops)" in stopped.stderr
    assert str(directory) not in mount_table() and os.listdir(directory) == []
    assert [m["enclave"] for m in mounts_of(env.stack)] == [NAME]


def test_enclave_killed_mid_copy_fails_the_copy_fast(env: Env) -> None:
    env.stack.start_enclaves(env.image, {"doomed": ["--memory", "1024"]})
    directory = env.stack.root / "doomed"
    directory.mkdir()
    env.cli("mount", str(directory), "--enclave", "doomed")
    (status,) = env.stack.json("enclave", "status", "doomed")
    source = Path(tempfile.mkdtemp(dir="/dev/shm")) / "big.bin"
    try:
        with open(source, "wb") as f:
            for _ in range(400):
                f.write(os.urandom(1024 * 1024))
        copy = subprocess.Popen(
            ["cp", str(source), str(directory / "big.bin")],
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_until_read(copy.pid, source, 32 * 1024 * 1024)
        os.kill(status["ProcessID"], signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, err = copy.communicate(timeout=FAULT_S)
        finally:
            copy.kill()
        elapsed = time.monotonic() - killed
        assert copy.returncode != 0, "the copy finished before the enclave was killed"
        assert elapsed < FAULT_S
        assert "Transport endpoint is not connected" in err or "Input/output error" in err, err
        # every later operation fails at once too, never hangs
        started = time.monotonic()
        for attempt in (lambda: os.listdir(directory), lambda: (directory / "x").write_text("x")):
            with pytest.raises(OSError) as failed:
                attempt()
            assert failed.value.errno in (errno.ENOTCONN, errno.EIO)
        assert time.monotonic() - started < 2.0
        unmounted = env.cli("unmount", str(directory), timeout=FAULT_S)
        assert f"unmounted {directory}" in unmounted.stdout
        assert str(directory) not in mount_table()
    finally:
        shutil.rmtree(source.parent, ignore_errors=True)
        env.cli("enclave", "stop", "doomed", expect=None)


def _wait_until_read(pid: int, source: Path, offset: int) -> None:
    """Until process ``pid`` has read ``source`` past ``offset`` (its descriptor's position)."""
    deadline = time.monotonic() + FAULT_S
    while time.monotonic() < deadline:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != str(source):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    pos = int(f.readline().split()[1])
            except OSError:
                continue
            if pos >= offset:
                return
        time.sleep(0.002)
    raise AssertionError(f"cp never read {offset} bytes of {source}")
