"""The mount's write-back of small closed files: batching, draining, failures reported once.

``upload`` here is a recorder standing in for the enclave (the enclave side is
exercised on a real mount in tests/e2e/test_mount.py); what is under test is
the queue's own logic.
"""

from __future__ import annotations

import threading
import time

import pytest

from strongroom.client.mount import writeback
from strongroom.client.mount.writeback import Pending, WriteBack
from strongroom.errors import InsufficientSpaceError, StrongroomError


class Recorder:
    def __init__(self, fail: set[str] | None = None, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail or set()
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, batch: list[Pending]) -> list[tuple[Pending, StrongroomError]]:
        time.sleep(self.delay)
        with self.lock:
            self.batches.append([p.path for p in batch])
        return [(p, InsufficientSpaceError("no space")) for p in batch if p.path in self.fail]

    @property
    def sent(self) -> list[str]:
        return [path for batch in self.batches for path in batch]


def pending(path: str, data: bytes = b"x", mode: int = 0o644) -> Pending:
    return Pending(path, data, mode, None, time.monotonic())


def test_files_closed_together_go_in_one_batch_after_the_delay() -> None:
    upload = Recorder()
    wb = WriteBack(upload)
    for i in range(50):
        wb.keep(pending(f"/d/f{i}"))
    assert wb.get("/d/f7") is not None  # waiting: answered from here
    time.sleep(writeback.FLUSH_DELAY_S * 4)
    assert upload.batches == [[f"/d/f{i}" for i in range(50)]]
    assert wb.get("/d/f7") is None
    wb.close()


def test_drain_sends_what_waits_below_a_path_now_and_waits_for_it() -> None:
    upload = Recorder()
    wb = WriteBack(upload)
    wb.keep(pending("/a/x"))
    wb.keep(pending("/a/sub/y"))
    wb.keep(pending("/b/z"))
    wb.drain("/a")
    assert sorted(upload.sent) == ["/a/sub/y", "/a/x"]
    assert wb.get("/b/z") is not None
    wb.drain("/")
    assert sorted(upload.sent) == ["/a/sub/y", "/a/x", "/b/z"]
    wb.close()


def test_drain_waits_for_a_batch_already_on_its_way() -> None:
    upload = Recorder(delay=0.3)
    wb = WriteBack(upload)
    wb.keep(pending("/slow"))
    time.sleep(writeback.FLUSH_DELAY_S * 2)  # the thread has taken it
    started = time.monotonic()
    wb.drain("/slow")
    assert upload.sent == ["/slow"] and time.monotonic() - started > 0.1
    wb.close()


def test_a_waiting_file_takes_later_changes_of_mode_and_times_with_it() -> None:
    captured: list[Pending] = []

    def upload(batch: list[Pending]) -> list[tuple[Pending, StrongroomError]]:
        captured.extend(batch)
        return []

    wb = WriteBack(upload)
    wb.keep(pending("/f"))
    assert wb.change("/f", mode=0o600, times=(1.0, 2.0))
    wb.drain("/f")
    assert (captured[0].mode, captured[0].times) == (0o600, (1.0, 2.0))
    assert not wb.change("/f", mode=0o644)  # sent: the caller changes the enclave's copy
    wb.close()


def test_children_are_the_waiting_files_directly_in_a_directory() -> None:
    wb = WriteBack(Recorder(delay=0.0))
    for path in ("/d/a", "/d/b", "/d/sub/c", "/e/d"):
        wb.keep(pending(path))
    assert sorted(p.path for p in wb.children("/d")) == ["/d/a", "/d/b"]
    assert [p.path for p in wb.children("/")] == []
    wb.close()


def test_a_failed_batch_is_reported_once_and_the_rest_still_lands() -> None:
    upload = Recorder(fail={"/full"})
    wb = WriteBack(upload)
    wb.keep(pending("/ok"))
    wb.keep(pending("/full"))
    wb.drain("/")
    with pytest.raises(InsufficientSpaceError):
        wb.report()
    wb.report()  # once
    assert sorted(upload.sent) == ["/full", "/ok"]
    wb.close()


def test_an_upload_that_crashes_does_not_kill_the_thread_or_strand_waiters() -> None:
    calls = []

    def upload(batch: list[Pending]) -> list[tuple[Pending, StrongroomError]]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("bug")
        return []

    wb = WriteBack(upload)
    wb.keep(pending("/a"))
    wb.drain("/a")  # returns, though the upload raised
    with pytest.raises(StrongroomError):
        wb.report()
    wb.keep(pending("/b"))
    wb.drain("/b")
    assert calls == [1, 1]
    wb.close()


def test_only_small_files_wait_and_never_near_the_free_space() -> None:
    wb = WriteBack(Recorder())
    assert wb.room_for(4096, free_bytes=1 << 30)
    assert not wb.room_for(writeback.MAX_FILE + 1, free_bytes=1 << 30)
    assert not wb.room_for(4096, free_bytes=8192)  # close to full: send at close, report there
    wb.close()


def test_close_sends_everything_that_waits() -> None:
    upload = Recorder()
    wb = WriteBack(upload)
    for i in range(5):
        wb.keep(pending(f"/f{i}"))
    wb.close()
    assert sorted(upload.sent) == [f"/f{i}" for i in range(5)]
