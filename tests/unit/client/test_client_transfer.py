"""Pull confines every name an enclave answers; push sends regular files only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from strongroom.client.enclave import RemoteEntry
from strongroom.client.transfer import (
    LocalTarget,
    check_destination,
    check_name,
    child_name,
    local_files,
    normalised,
    open_local_file,
    plan_pull,
    plan_push,
    plan_stdout,
    remote_parts,
    write_confined,
)
from strongroom.errors import InvalidInputError, NotFoundError, UsageError


@dataclass
class FakeEnclave:
    """A stand-in for the enclave's Files API: ``tree`` maps a listed directory to entries."""

    tree: dict[str, list[tuple[str, str]]]
    stat_answers: dict[str, str]

    def stat(self, path: str) -> RemoteEntry:
        answered = self.stat_answers.get(path, normalised(path))
        kind = "dir" if answered in self.tree else "file"
        return RemoteEntry(answered, kind, 1, 0o644, 0.0)

    def list(self, path: str) -> Sequence[RemoteEntry]:
        return [RemoteEntry(p, t, 1, 0o644, 0.0) for p, t in self.tree[path]]


def enclave(tree: dict[str, list[tuple[str, str]]], **stat: str) -> FakeEnclave:
    return FakeEnclave(tree, {k.replace("_", "/"): v for k, v in stat.items()})


@pytest.mark.parametrize("name", ["a", "a b", "ünïcode", ".hidden", "..x", "x" * 255])
def test_valid_names(name: str) -> None:
    assert check_name(name, entry="/out/" + name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "/", "a\x00b", "x" * 256, "é" * 128, "\ud800", 3, None]
)
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidInputError):
        check_name(name, entry="/out/x")


def test_remote_parts() -> None:
    assert remote_parts("/") == ()
    assert remote_parts("/out/a.csv") == ("out", "a.csv")
    for hostile in ("out", "", "//", "/out/", "/out//a", "/./a", "/../a", "/a/../../b", 7):
        with pytest.raises(InvalidInputError):
            remote_parts(hostile)


def test_child_name() -> None:
    assert child_name("/out", "/out/a") == "a"
    assert child_name("/", "/a") == "a"
    for listed, hostile in [
        ("/out", "/out/../x"),
        ("/out", "/out/a/b"),
        ("/out", "/outside/a"),
        ("/out", "/etc/passwd"),
        ("/out", "/out/"),
        ("/out", "/out"),
        ("/", "//a"),
        ("/", "a"),
    ]:
        with pytest.raises(InvalidInputError):
            child_name(listed, hostile)


def _targets(tmp_path: Path, remotes: list[str], fake: FakeEnclave) -> list[tuple[str, ...]]:
    return [item.target.parts for item in plan_pull(fake, remotes, tmp_path / "dest")]


def test_plan_of_a_legitimate_listing(tmp_path: Path) -> None:
    """As ``cp -r``: a missing LOCAL becomes the copy; an existing directory receives it."""
    fake = enclave(
        {
            "/out": [("/out/a.csv", "file"), ("/out/sub", "dir"), ("/out/link", "symlink")],
            "/out/sub": [("/out/sub/b.csv", "file"), ("/out/sub/fifo", "other")],
        }
    )
    assert sorted(_targets(tmp_path, ["/out"], fake)) == [("a.csv",), ("sub", "b.csv")]
    (tmp_path / "dest").mkdir()
    assert sorted(_targets(tmp_path, ["/out"], fake)) == [
        ("out", "a.csv"),
        ("out", "sub", "b.csv"),
    ]
    # /out/. is the contents of /out, wherever they go
    assert sorted(_targets(tmp_path, ["/out/."], fake)) == [("a.csv",), ("sub", "b.csv")]
    # the shared folder's root lands directly in the destination
    root = enclave({"/": [("/top.txt", "file")]})
    assert _targets(tmp_path, ["/"], root) == [("top.txt",)]
    # a single file becomes LOCAL itself (the user's name), or lands in it if it is a directory
    (plan,) = plan_pull(enclave({}), ["/out/a.csv"], tmp_path / "mine.csv")
    assert plan.target == LocalTarget(tmp_path, ("mine.csv",))
    (plan,) = plan_pull(enclave({}), ["out/./a.csv"], tmp_path / "dest")
    assert plan.target == LocalTarget(tmp_path / "dest", ("a.csv",))
    # ... or ends with "/" (a directory to create)
    (plan,) = plan_pull(enclave({}), ["/out/a.csv"], f"{tmp_path}/new/")
    assert plan.target == LocalTarget(tmp_path / "new", ("a.csv",))


def test_destinations_that_cp_refuses(tmp_path: Path) -> None:
    fake = enclave({"/out": [("/out/a.csv", "file")]})
    with pytest.raises(UsageError, match="2 sources need a directory destination"):
        plan_pull(fake, ["/out/a.csv", "/out/b.csv"], tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="onto the file"):
        plan_pull(fake, ["/out"], tmp_path / "file")
    with pytest.raises(UsageError, match="one file"):
        plan_stdout(fake, ["/out/a.csv", "/out/b.csv"])
    with pytest.raises(UsageError, match="is a dir"):
        plan_stdout(fake, ["/out"])


def test_push_plans_as_cp_r(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("a")
    (data / "sub" / "b.csv").write_text("b")

    class Remote:
        """The shared folder holds the directories / and /remote, and nothing else."""

        def stat(self, path: str) -> RemoteEntry:
            if normalised(path) not in ("/", "/remote"):
                raise NotFoundError(f"{path}: no such file or directory")
            return RemoteEntry(normalised(path), "dir", 0, 0o755, 0.0)

    fake = Remote()

    def targets(sources: list[str], remote: str) -> list[str]:
        return sorted(item.remote for item in plan_push(fake, sources, remote))

    assert targets([str(data)], "/remote") == ["/remote/data/a.csv", "/remote/data/sub/b.csv"]
    assert targets([str(data)], "/new") == ["/new/a.csv", "/new/sub/b.csv"]
    assert targets([f"{data}/."], "/remote") == ["/remote/a.csv", "/remote/sub/b.csv"]
    assert targets([str(data / "a.csv")], "/remote") == ["/remote/a.csv"]
    assert targets([str(data / "a.csv")], "/new/") == ["/new/a.csv"]
    assert targets([str(data / "a.csv")], "/new.csv") == ["/new.csv"]
    assert targets([str(data / "a.csv"), str(data / "sub")], "/remote") == [
        "/remote/a.csv",
        "/remote/sub/b.csv",
    ]
    with pytest.raises(UsageError, match="2 sources need a directory destination"):
        plan_push(fake, [str(data / "a.csv"), str(data / "sub")], "/new")
    (data / "sub" / "a.csv").write_text("another a")
    with pytest.raises(UsageError, match="would both be pushed"):
        plan_push(fake, [str(data / "a.csv"), str(data / "sub" / "a.csv")], "/remote")


def test_only_the_temporaries_of_dead_pulls_are_swept(tmp_path: Path) -> None:
    import subprocess

    from strongroom._internal.services import process_start_time

    dead = subprocess.Popen(["true"])
    dead.wait()
    me = os.getpid()
    stale = f".strongroom-pull-{dead.pid}-{process_start_time(me)}-{'0' * 16}.part"
    live = f".strongroom-pull-{me}-{process_start_time(me)}-{'1' * 16}.part"
    reused = f".strongroom-pull-{me}-1-{'2' * 16}.part"  # our pid, another start: stale
    other = ".strongroom-pull-x.part"  # not ours
    for name in (stale, live, reused, other):
        (tmp_path / name).write_text("")
    with write_confined(LocalTarget(tmp_path, ("x.bin",))) as f:
        f.write(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, other, "x.bin"])


@pytest.mark.parametrize(
    ("listing", "named"),
    [
        ([("/out/../../../../escaped/x", "file")], "/out/../../../../escaped/x"),
        ([("/etc/cron.d/x", "file")], "/etc/cron.d/x"),
        ([("/out/a/b", "file")], "/out/a/b"),
        ([("/out/a\x00b", "file")], "/out/a\\x00b"),
        ([("/outside/x", "file")], "/outside/x"),
        ([("/out/..", "dir")], "/out/.."),
        ([("/out/x", "file"), ("/out/x", "dir")], "/out/x"),
        ([("/out/x", "device")], "/out/x"),
    ],
)
def test_a_hostile_listing_refuses_the_whole_pull(
    tmp_path: Path, listing: list[tuple[str, str]], named: str
) -> None:
    fake = enclave({"/out": [("/out/fine.txt", "file"), *listing]})
    with pytest.raises(InvalidInputError) as excinfo:
        plan_pull(fake, ["/out"], tmp_path / "dest")
    assert named in excinfo.value.message
    assert "nothing was written" in excinfo.value.hint
    assert not (tmp_path / "dest").exists()


def test_a_stat_answer_for_another_path_is_refused(tmp_path: Path) -> None:
    for answered in ("/etc", "/../../etc", "/out/x"):
        fake = enclave({answered: [(answered + "/x", "file")]}, _out=answered)
        with pytest.raises(InvalidInputError):
            plan_pull(fake, ["/out"], tmp_path / "dest")


def test_two_remotes_to_one_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="would both be pulled"):
        plan_pull(enclave({}), ["/a/x", "/b/x"], tmp_path)


def test_the_destination_is_checked_for_symlinks_first(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "out").mkdir(parents=True)
    ok = LocalTarget(dest, ("out", "new", "a"))
    check_destination([ok])
    (dest / "out" / "sub").symlink_to(outside)
    (dest / "out" / "file-link").symlink_to(outside / "f")
    (dest / "out" / "plain").write_text("")
    for parts in [("out", "sub", "x"), ("out", "file-link"), ("out", "plain", "x"), ("out",)]:
        with pytest.raises(InvalidInputError, match="pull does not write through it"):
            check_destination([ok, LocalTarget(dest, parts)])
    # the destination itself, as typed, may be a link: that is the user's choice
    link = tmp_path / "dest-link"
    link.symlink_to(dest)
    check_destination([LocalTarget(link, ("out", "a"))])


def test_writes_never_follow_a_symlink_planted_on_the_way(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    with write_confined(LocalTarget(dest, ("a", "b", "c.txt"))) as f:
        f.write(b"legit")
    assert (dest / "a" / "b" / "c.txt").read_bytes() == b"legit"
    # planted after the check, before the write: refused by descriptor, not followed
    (dest / "a" / "evil").symlink_to(outside)
    (dest / "a" / "evil-file").symlink_to(outside / "f")
    for parts in [("a", "evil", "x"), ("a", "evil-file")]:
        with (
            pytest.raises(InvalidInputError, match="symlink"),
            write_confined(LocalTarget(dest, parts)) as f,
        ):
            f.write(b"!")
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in (dest / "a").iterdir()) == ["b", "evil", "evil-file"]


def test_an_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    target = LocalTarget(tmp_path, ("x.bin",))
    with pytest.raises(RuntimeError), write_confined(target) as f:
        f.write(b"half")
        raise RuntimeError("connection lost")
    assert list(tmp_path.iterdir()) == []


# --- push ---------------------------------------------------------------------------------


def test_push_sends_regular_files_and_refuses_symlinks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("a")
    (data / "sub" / "b.csv").write_text("b")
    assert local_files([data]) == [
        (data / "a.csv", PurePosixPath("data/a.csv")),
        (data / "sub" / "b.csv", PurePosixPath("data/sub/b.csv")),
    ]
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (tmp_path / "given-link").symlink_to(secret)
    (data / "sub" / "inner-link").symlink_to(secret)
    for sources in ([tmp_path / "given-link"], [data]):
        with pytest.raises(UsageError, match="is a symlink: push copies regular files"):
            local_files(sources)
    (data / "sub" / "inner-link").unlink()
    (data / "dir-link").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="dir-link is a symlink"):
        local_files([data])
    (data / "dir-link").unlink()
    os.mkfifo(data / "fifo")
    with pytest.raises(UsageError, match="fifo is a special file"):
        local_files([data])


def test_open_local_file_refuses_links_and_fifos(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "fifo")
    with open_local_file(tmp_path / "f") as f:
        assert f.read() == b"x"
    with pytest.raises(UsageError, match="symlink"):
        open_local_file(tmp_path / "link")
    with pytest.raises(UsageError, match="special file"):
        open_local_file(tmp_path / "fifo")


def test_remote_entries_are_checked_for_shape() -> None:
    good: dict[str, object] = {"path": "/a", "type": "file", "size": 1, "mode": 420, "mtime": 1}
    assert RemoteEntry.from_json(good).mtime == 1.0
    bad: object
    for bad in (
        [],
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "size"},
        {**good, "size": "1"},
        {**good, "size": True},
        {**good, "path": ["/a"]},
    ):
        with pytest.raises(InvalidInputError, match="malformed file entry"):
            RemoteEntry.from_json(bad)
