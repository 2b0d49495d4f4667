"""Issue 12: the synced folder never leads out of the enclave's shared folder.

A real ``strongroom mount`` of a debug enclave (``bound``, 512 MiB), so that
the tests can act *inside* it through its debug exec endpoint, where an app
runs: plant symlinks to a secret outside the shared folder, and ask where a
link really resolves. What must hold:

- ``..`` at the mount's root is the host's own directory (the kernel resolves
  it); nothing of the enclave is reached by climbing.
- A symlink made through the mount must stay inside the folder: absolute or
  escaping targets are refused with ``EPERM`` and nothing is made.
- Symlinks the app plants (absolute, relative and climbing out, to a
  directory, to itself) are shown as links and resolved, if at all, by the
  host's kernel on the *host*: the enclave never follows them, so no tool
  (``cat``, ``cp -r``, ``cp -rL``, ``rsync -a``, ``tar``) gets the secret, and
  a write through one lands nowhere in the enclave.
- A link made through the mount still resolves inside the folder after it is
  moved, and through any link it passes: a rename that would move it up above
  what its target climbs is ``EPERM``, and so is a target that climbs after a
  name (which may be a link). Before, the Files API checked a target's names
  once, at ``symlink``, and both led out (``server/files.py``,
  :func:`contained_target`).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.run_helpers import Stack

NAME = "bound"
SHARED = "/enclave/shared"


@dataclass
class Env:
    stack: Stack
    mnt: Path
    work: Path
    secret: str
    secret_dir: str  # inside the enclave, outside the shared folder; absent on the host

    def inside(self, code: str) -> Any:
        """What a Python snippet prints (as JSON) inside the debug enclave: not a CLI command."""
        response = self.stack.api(NAME).post(
            "/v1/debug/exec", json={"argv": ["python3", "-c", code]}
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["exit_code"] == 0, result
        return json.loads(result["stdout"])

    def resolved(self, path: str) -> str:
        """Where a shared-folder path really leads, inside the enclave."""
        where: str = self.inside(
            f"import json, os; print(json.dumps(os.path.realpath({SHARED + path!r})))"
        )
        return where

    def secret_intact(self) -> bool:
        content: str = self.inside(
            f"import json; print(json.dumps(open({self.secret_dir + '/secret.txt'!r}).read()))"
        )
        return content == self.secret


def _mount_table() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="sr-bound-", dir="/tmp"))  # short: socket paths
    stack = Stack(root)
    secret = f"enclave-secret-{secrets.token_hex(16)}"
    secret_dir = f"/tmp/sr-secret-{secrets.token_hex(8)}"
    assert not os.path.exists(secret_dir)  # so that the host's kernel finds nothing there
    try:
        stack.cli("init")
        stack.cli("keys", "serve", "--detach")
        stack.cli("keys", "create", "--alias", "apps")
        image = root / "plain.eif"
        stack.cli("image", "build", "--key", "alias/apps", "-o", str(image))
        stack.start_enclaves(image, {NAME: ["--debug", "--memory", "512"]})
        mnt, work = root / "mnt", root / "work"
        mnt.mkdir()
        work.mkdir()
        stack.cli("mount", str(mnt), "--enclave", NAME)
        env = Env(stack, mnt, work, secret, secret_dir)
        planted = env.inside(PLANT.format(shared=SHARED, secret_dir=secret_dir, secret=secret))
        assert planted == "planted"
        yield env
    finally:
        stack.close()
        if str(root / "mnt") in _mount_table():
            stack.cli("unmount", str(root / "mnt"), expect=None)
        stack.cli("enclave", "stop", "--all", expect=None)
        stack.cli("keys", "stop", expect=None)
        for point in _mount_table():
            if point.startswith(str(root)):
                subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


#: Run inside the enclave, where an app runs: a secret outside the shared folder, and
#: links to it of every kind in the shared folder.
PLANT = """\
import json, os
os.makedirs("{secret_dir}")
with open("{secret_dir}/secret.txt", "w") as f:
    f.write("{secret}")
planted = "{shared}/planted"
os.makedirs(planted + "/inner")
os.symlink("{secret_dir}/secret.txt", planted + "/abs")
os.symlink("{secret_dir}", planted + "/absdir")
os.symlink("../../.." + "{secret_dir}/secret.txt", planted + "/climb")
os.symlink("../../../.." + "{secret_dir}", planted + "/inner/climbdir")
os.symlink("loop", planted + "/loop")
print(json.dumps("planted"))
"""


# --- climbing out of the mount --------------------------------------------------------------


def test_dotdot_at_the_mount_root_is_the_host_s_own(env: Env) -> None:
    (env.mnt / "sub").mkdir(exist_ok=True)
    parent = env.mnt.parent
    assert os.stat(env.mnt / "..").st_ino == os.stat(parent).st_ino
    assert os.stat(env.mnt / "..").st_dev != os.stat(env.mnt).st_dev
    assert sorted(os.listdir(env.mnt / "sub" / ".." / "..")) == sorted(os.listdir(parent))
    marker = parent / "host-marker.txt"
    marker.write_text("the host's file")
    try:
        assert (env.mnt / "sub" / ".." / ".." / "host-marker.txt").read_text() == "the host's file"
    finally:
        marker.unlink()
    # a planted link that climbs is resolved by the host's kernel, on the host
    assert os.path.realpath(env.mnt / "planted" / "climb").startswith("/tmp/tmp/sr-secret-")


# --- links made through the mount -----------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "target"),
    [
        ("link", "/"),
        ("link", "/enclave/app/model.npz"),
        ("link", "/etc/passwd"),
        ("link", ".."),
        ("link", "../x"),
        ("link", "a/../../x"),
        ("link", "./../../.."),
        ("made/deeper/link", "../../../enclave"),
        ("made/deeper/link", "../x/../../../y"),
    ],
)
def test_links_out_of_the_folder_cannot_be_made(env: Env, where: str, target: str) -> None:
    link = env.mnt / where
    link.parent.mkdir(parents=True, exist_ok=True)
    before = sorted(os.listdir(link.parent))
    with pytest.raises(OSError) as refused:
        os.symlink(target, link)
    assert refused.value.errno == errno.EPERM
    shell = subprocess.run(
        ["ln", "-s", target, link.name], cwd=link.parent, capture_output=True, text=True
    )
    assert shell.returncode != 0 and "Operation not permitted" in shell.stderr
    assert sorted(os.listdir(link.parent)) == before
    parent = SHARED + "/" + where.rpartition("/")[0]
    names = env.inside(f"import json, os; print(json.dumps(os.listdir({parent!r})))")
    assert "link" not in names


# --- links the app plants -------------------------------------------------------------------


def test_planted_links_show_as_links_and_lead_nowhere_in_the_enclave(env: Env) -> None:
    planted = env.mnt / "planted"
    assert os.readlink(planted / "abs") == f"{env.secret_dir}/secret.txt"
    assert os.readlink(planted / "climb") == f"../../..{env.secret_dir}/secret.txt"
    for name in ("abs", "absdir/secret.txt", "climb", "inner/climbdir/secret.txt"):
        # the host's kernel follows them, on the host, where there is nothing
        with pytest.raises(FileNotFoundError):
            (planted / name).read_text()
    with pytest.raises(OSError) as looped:
        (planted / "loop").read_text()
    assert looped.value.errno == errno.ELOOP
    # what the enclave answers for them itself: never their target's content
    for name in ("abs", "climb", "absdir"):
        refused = env.stack.cli("cat", "--enclave", NAME, f"/planted/{name}", expect=None)
        assert refused.returncode != 0 and env.secret not in refused.stdout + refused.stderr
    assert env.secret_intact()


def test_no_tool_copies_the_secret_through_planted_links(env: Env) -> None:
    copies = env.work / "copies"
    copies.mkdir(exist_ok=True)
    attempts = [
        ["cp", "-r", str(env.mnt / "planted"), str(copies / "cp")],
        ["cp", "-rL", str(env.mnt / "planted"), str(copies / "cpL")],  # follows: and fails
        ["rsync", "-a", f"{env.mnt / 'planted'}/", f"{copies / 'rsync'}/"],
        ["rsync", "-aL", f"{env.mnt / 'planted'}/", f"{copies / 'rsyncL'}/"],
        ["tar", "-cf", str(copies / "planted.tar"), "-C", str(env.mnt), "planted"],
        ["tar", "-chf", str(copies / "followed.tar"), "-C", str(env.mnt), "planted"],
    ]
    for argv in attempts:
        subprocess.run(argv, capture_output=True, timeout=60)  # some fail on the links: fine
    found = [
        str(path)
        for path in copies.rglob("*")
        if path.is_file() and not path.is_symlink() and env.secret.encode() in path.read_bytes()
    ]
    assert found == []
    assert os.readlink(copies / "cp" / "abs") == f"{env.secret_dir}/secret.txt"  # a link, kept


def test_writes_through_planted_links_land_nowhere_in_the_enclave(env: Env) -> None:
    planted = env.mnt / "planted"
    for name in ("abs", "climb", "absdir/new.txt"):
        with pytest.raises(FileNotFoundError):
            (planted / name).write_text("overwritten by the host")
    done = subprocess.run(
        ["sh", "-c", "echo overwritten > abs"], cwd=planted, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert env.secret_intact()
    assert not os.path.exists(env.secret_dir)  # nor was anything made on the host
    names = env.inside(
        f"import json, os; print(json.dumps(sorted(os.listdir({env.secret_dir!r}))))"
    )
    assert names == ["secret.txt"]


# --- links made through the mount stay inside, whatever happens next -------------------------


def test_a_link_made_through_the_mount_stays_inside_wherever_it_is_moved(env: Env) -> None:
    """A check of a target's names alone let ``../../escaped``, fine where it was
    made, lead to ``/enclave/escaped`` once moved to the root: no link may climb."""
    folder = env.mnt / "moved"
    (folder / "deep").mkdir(parents=True)
    with pytest.raises(OSError) as refused:
        os.symlink("../../escaped", folder / "deep" / "link")
    assert refused.value.errno == errno.EPERM
    os.symlink("sub/escaped", folder / "deep" / "link")  # down: inside from anywhere
    for source, destination in ((folder / "deep" / "link", env.mnt / "link"),
                                (folder / "deep", env.mnt / "deep")):  # fmt: skip
        os.rename(source, destination)
    assert env.resolved("/link") == f"{SHARED}/sub/escaped"
    assert env.resolved("/deep") == f"{SHARED}/deep"


def test_a_chain_of_links_stays_inside(env: Env) -> None:
    """With ``sub/up -> ..`` allowed, ``sub/up/../..`` would lead to ``/enclave``:
    no host-made link climbs, so none is there to climb through."""
    folder = env.mnt / "chain"
    (folder / "sub" / "deeper").mkdir(parents=True)
    for target, link in (("..", folder / "sub" / "up"), ("sub/up/../..", folder / "out")):
        with pytest.raises(OSError) as refused:
            os.symlink(target, link)
        assert refused.value.errno == errno.EPERM
        assert not os.path.lexists(link)
    os.symlink("deeper", folder / "sub" / "in")
    os.symlink("sub/in", folder / "through")  # descending through links is fine
    assert env.resolved("/chain/through") == f"{SHARED}/chain/sub/deeper"
