"""The shared folder never lets a path out: `..`, absolute escapes, symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strongroom.errors import AlreadyExistsError, NotFoundError, UsageError
from strongroom.server.files import PathEscapeError, SharedFolder


@pytest.fixture
def shared(tmp_path: Path) -> SharedFolder:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "app.py").write_text("print('the vendor secret')")
    return SharedFolder(tmp_path / "shared")


def test_round_trip_and_listing(shared: SharedFolder) -> None:
    shared.mkdir("/dataset/deep", parents=True)
    fd = shared.open_write("/dataset/deep/a.txt", truncate=True)
    os.write(fd, b"hello world")
    os.close(fd)
    assert b"".join(shared.read("dataset/deep/a.txt")) == b"hello world"
    assert b"".join(shared.read("/dataset/deep/a.txt", 6, 3)) == b"wor"
    assert [e.path for e in shared.walk("/")] == [
        "/dataset",
        "/dataset/deep",
        "/dataset/deep/a.txt",
    ]
    shared.rename("/dataset/deep/a.txt", "/b.txt")
    shared.truncate("/b.txt", 5)
    shared.chmod("/b.txt", 0o600)
    shared.set_times("/b.txt", 1.0, 2.0)
    st = shared.stat("/b.txt")
    assert (st.size, st.mode, st.mtime, st.type) == (5, 0o600, 2.0, "file")
    with pytest.raises(AlreadyExistsError):
        shared.mkdir("/dataset")
    with pytest.raises(UsageError):
        shared.remove("/dataset")
    shared.remove("/dataset", recursive=True)
    with pytest.raises(NotFoundError):
        shared.stat("/dataset")
    assert shared.statfs()["block_size"] > 0


@pytest.mark.parametrize("path", ["../secret/app.py", "/../secret/app.py", "a/../../secret/app.py"])
def test_dot_dot_is_refused(shared: SharedFolder, path: str) -> None:
    with pytest.raises(PathEscapeError):
        list(shared.read(path))


def test_symlinks_are_never_followed(shared: SharedFolder, tmp_path: Path) -> None:
    # what a malicious app inside the enclave could plant in the shared folder
    os.symlink(tmp_path / "secret", shared.root / "out")
    os.symlink(tmp_path / "secret" / "app.py", shared.root / "leak.py")
    for path in ("/out/app.py", "/leak.py"):
        with pytest.raises((PathEscapeError, UsageError)):
            list(shared.read(path))
    with pytest.raises(PathEscapeError):
        shared.open_write("/out/new.py", truncate=True)
    with pytest.raises((PathEscapeError, UsageError)):
        shared.open_write("/leak.py", truncate=True)
    assert (tmp_path / "secret" / "app.py").read_text() == "print('the vendor secret')"
    kinds = {e.path: e.type for e in shared.list("/")}
    assert kinds == {"/out": "symlink", "/leak.py": "symlink"}
    with pytest.raises(PathEscapeError):
        shared.list("/out")


def test_host_path_maps_into_the_shared_folder(shared: SharedFolder) -> None:
    assert shared.host_path("/dataset/x.csv") == shared.root / "dataset" / "x.csv"
    with pytest.raises(PathEscapeError):
        shared.host_path("/dataset/../../etc/passwd")
