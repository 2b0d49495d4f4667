"""The shared folder never lets a path out (`..`, absolute escapes, symlinks), never blocks."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import socket
import stat
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from strongroom.errors import AlreadyExistsError, NotFoundError, UsageError
from strongroom.server.files import PathEscapeError, SharedFolder


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[SharedFolder]:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "app.py").write_text("print('the vendor secret')")
    yield SharedFolder(tmp_path / "shared")
    while _SOCKETS:
        _SOCKETS.pop().close()


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


# --- things that are not files: FIFOs, sockets ------------------------------------------


def _plant(shared: SharedFolder) -> dict[str, str]:
    """A FIFO and a listening unix socket, as an app inside the enclave could make them."""
    os.mkfifo(shared.root / "trap")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(shared.root / "sock"))
    sock.listen()
    _SOCKETS.append(sock)
    return {"/trap": "FIFO", "/sock": "socket"}


_SOCKETS: list[socket.socket] = []


#: A call on a FIFO either fails at once or blocks forever: a second is plenty.
PROMPT_S = 1.0


def _outcome(call: Callable[[], object], fifo: Path) -> BaseException | None:
    """Run ``call`` in a thread: its exception, or None if it returned; fail if it blocks.

    A blocked call is waiting for a writer (or reader) on ``fifo``: open one, so
    the thread ends and the test run with it.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            return future.exception(timeout=PROMPT_S)
        except concurrent.futures.TimeoutError:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
            raise AssertionError(f"{call} blocked on {fifo}") from None


def _refused(call: Callable[[], object], fifo: Path) -> UsageError:
    error = _outcome(call, fifo)
    assert isinstance(error, UsageError), error
    return error


def test_fifos_and_sockets_are_refused_without_blocking(shared: SharedFolder) -> None:
    planted = _plant(shared)
    fifo = shared.root / "trap"
    for path, kind in planted.items():
        calls: list[Callable[[], object]] = [
            partial(shared.open_read, path),
            partial(shared.read, path),
            partial(shared.open_write, path),
            partial(shared.open_write, path, truncate=True),
            partial(shared.open_write, path, create=False),
            partial(shared.truncate, path, 0),
            partial(shared.chmod, path, 0o600),
            partial(shared.check_replaceable, path),
        ]
        for call in calls:
            error = _refused(call, fifo)
            assert error.message == f"{path} is a {kind}: only regular files are read or written"
        with pytest.raises(UsageError) as listed:  # not a directory (issue 17: was PathEscape)
            shared.list(path)
        assert listed.value.errno_name == "ENOTDIR"
    # what still works on them: stat, listing, renaming, removing
    kinds = {e.path: e.type for e in shared.list("/")}
    assert kinds == {"/trap": "other", "/sock": "other"}
    assert shared.stat("/trap").type == "other"
    shared.rename("/trap", "/trap2")
    shared.remove("/trap2")
    shared.remove("/sock")
    assert shared.list("/") == []
    # and the legitimate use, next to them
    fd = shared.open_write("/ok.txt", truncate=True)
    os.write(fd, b"fine")
    os.close(fd)
    shared.chmod("/ok.txt", 0o600)
    shared.mkdir("/d")
    shared.chmod("/d", 0o700)
    assert b"".join(shared.read("/ok.txt")) == b"fine"
    shared.check_replaceable("/ok.txt")
    shared.check_replaceable("/new.txt")
    with pytest.raises(UsageError, match="is a directory"):
        shared.check_replaceable("/d")


def test_a_fifo_swapped_in_after_the_type_check_is_refused_too(
    shared: SharedFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app replaces a regular file by a FIFO between the lstat and the open."""
    os.mkfifo(shared.root / "trap")
    (shared.root / "file").write_text("x")
    regular = os.stat(shared.root / "file")
    real_stat = os.stat

    def lying_stat(name: object, *args: object, **kwargs: object) -> os.stat_result:
        if name == "trap":
            return regular  # what lstat saw just before the swap
        return real_stat(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", lying_stat)
    for call in (
        lambda: shared.open_read("/trap"),
        lambda: shared.open_write("/trap", create=False),
        lambda: shared.chmod("/trap", 0o600),
    ):
        assert "is a FIFO" in _refused(call, shared.root / "trap").message
    keep = shared.open_read("/file")
    assert stat.S_ISREG(os.fstat(keep).st_mode)
    os.close(keep)


def test_a_regular_file_is_handed_out_blocking(shared: SharedFolder) -> None:
    """O_NONBLOCK is only for the open: the descriptor of a regular file is an ordinary one."""
    (shared.root / "f").write_text("x")
    for fd in (shared.open_read("/f"), shared.open_write("/f")):
        try:
            assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        finally:
            os.close(fd)


def test_recursive_remove_does_not_open_what_is_not_a_directory(shared: SharedFolder) -> None:
    shared.mkdir("/tree/sub/deeper", parents=True)
    os.mkfifo(shared.root / "tree" / "sub" / "trap")
    os.symlink("/", shared.root / "tree" / "sub" / "root-link")
    (shared.root / "tree" / "sub" / "deeper" / "f").write_text("x")
    removing = lambda: shared.remove("/tree", recursive=True)  # noqa: E731
    assert _outcome(removing, shared.root / "tree" / "sub" / "trap") is None
    assert shared.list("/") == []
    assert Path("/").exists()


# --- symlinks the API makes (issue 12: the mount's ln -s) -----------------------------------


def _escaping_links(root: Path) -> list[str]:
    """Every symlink below ``root`` that really resolves outside it."""
    inside = str(root.resolve())
    return [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_symlink()
        and not (os.path.realpath(path) + "/").startswith(inside + "/")
        and os.path.realpath(path) != inside
    ]


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/link", "/etc/passwd"),
        ("/link", ".."),
        ("/a/link", "../../x"),
        ("/a/link", "./../.."),
        ("/a/b/link", "c/../../../x"),
        ("/a/out", "sub/up/.."),  # climbs out of whatever sub/up is
        ("/a/b/up", "../x"),  # inside from here, not once moved to /
    ],
)
def test_links_that_could_lead_out_are_refused(
    shared: SharedFolder, path: str, target: str
) -> None:
    parent = path.rsplit("/", 1)[0]
    if parent:
        shared.mkdir(parent, parents=True)
    with pytest.raises(PathEscapeError) as refused:
        shared.symlink(path, target)
    assert refused.value.errno_name == "EPERM"
    assert not os.path.lexists(shared.root / path.lstrip("/"))


def test_links_that_descend_are_made(shared: SharedFolder) -> None:
    shared.mkdir("/a/b", parents=True)
    for path, target in [("/a/b/f", "x/y"), ("/down", "a/./b"), ("/a/here", ".")]:
        shared.symlink(path, target)
        assert shared.readlink(path) == target
    assert _escaping_links(shared.root) == []


def test_a_link_that_descends_stays_inside_wherever_it_is_moved(shared: SharedFolder) -> None:
    shared.mkdir("/x/y/z", parents=True)
    shared.symlink("/x/y/z/down", "deep/file")
    shared.rename("/x/y/z/down", "/down")  # up: still below the root
    shared.rename("/x", "/w")  # and the directories around it
    shared.rename("/down", "/w/y/down")
    assert _escaping_links(shared.root) == []


def test_a_chain_of_links_stays_inside(shared: SharedFolder) -> None:
    shared.mkdir("/chain/sub/deeper", parents=True)
    shared.symlink("/chain/sub/in", "deeper")  # -> /chain/sub/deeper
    shared.symlink("/chain/via", "sub/in")  # descends through a link: still below /chain
    with pytest.raises(PathEscapeError):
        shared.symlink("/chain/out", "sub/in/../../..")
    assert _escaping_links(shared.root) == []
