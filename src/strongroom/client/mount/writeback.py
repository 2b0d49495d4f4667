"""Small new files, closed but not yet in the enclave: sent in batches, in the background.

Extracting an archive makes thousands of small files, each created, written,
closed and given its times and mode. Sending each as it closes would cost a
request per step, with the writer waiting for every one. Instead a small
file, once closed, waits here (:class:`Pending`) for at most
:data:`FLUSH_DELAY_S` with the others, and they are sent together by one
thread; its mode and times, if they change meanwhile, go with it.

What keeps this correct:

- everything that needs the file *in the enclave* first calls
  :meth:`WriteBack.drain` for its path (open, rename, unlink, link, truncate,
  fsync, ``fsync`` of a directory: ``strongroom run`` does that on the mounts
  of its enclave, so a run sees what was copied in);
- the attributes and the listing of a waiting file are answered from here;
- a file that could fill the enclave's folder is not kept: it is sent at
  close, where a lack of space can still be reported (``ENOSPC``);
- a batch that fails is reported by the next ``close`` or ``fsync`` of the
  mount (``EIO``/``ENOSPC``, once) and in the mount's log, file by file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from strongroom.errors import StrongroomError

log = logging.getLogger("strongroom.client.mount")

FLUSH_DELAY_S = 0.05
#: Files larger than this are sent when they are closed.
MAX_FILE = 1024 * 1024
#: At most this much waits at once (a batch starts sooner when it is reached).
MAX_BYTES = 32 * 1024 * 1024
MAX_FILES = 1024


@dataclass
class Pending:
    path: str
    data: bytes
    mode: int
    #: (atime, mtime) to set, or None to leave the enclave's own.
    times: tuple[float, float] | None
    closed_at: float


Upload = Callable[[list[Pending]], list[tuple[Pending, StrongroomError]]]


class WriteBack:
    """The waiting files and the thread that sends them (``upload`` sends a batch)."""

    def __init__(self, upload: Upload) -> None:
        self._upload = upload
        self._waiting: dict[str, Pending] = {}
        self._sending: dict[str, Pending] = {}
        self._bytes = 0
        self._failure: StrongroomError | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="write-back", daemon=True)
        self._thread.start()

    # --- what the filesystem asks -------------------------------------------

    def room_for(self, size: int, free_bytes: int) -> bool:
        """Whether a closed file of ``size`` may wait (small, and far from filling the folder)."""
        with self._cond:
            waiting = self._bytes
        return size <= MAX_FILE and waiting + size < min(MAX_BYTES, free_bytes // 2)

    def keep(self, pending: Pending) -> None:
        with self._cond:
            old = self._waiting.pop(pending.path, None)
            self._bytes += len(pending.data) - (len(old.data) if old else 0)
            self._waiting[pending.path] = pending
            self._cond.notify_all()

    def get(self, path: str) -> Pending | None:
        """The waiting (or in-flight) file at ``path``, if any."""
        with self._cond:
            return self._waiting.get(path) or self._sending.get(path)

    def children(self, directory: str) -> list[Pending]:
        prefix = directory.rstrip("/") + "/"
        with self._cond:
            return [
                p
                for p in [*self._waiting.values(), *self._sending.values()]
                if p.path.startswith(prefix) and "/" not in p.path[len(prefix) :]
            ]

    def change(
        self, path: str, *, mode: int | None = None, times: tuple[float, float] | None = None
    ) -> bool:
        """Give a file that still waits a new mode or times; False if it is not waiting."""
        with self._cond:
            pending = self._waiting.get(path)
            if pending is None:
                return False
            if mode is not None:
                pending.mode = mode
            if times is not None:
                pending.times = times
            return True

    def drain(self, *paths: str) -> None:
        """Send now what waits at or below ``paths`` ("/" for all); wait for it to land."""

        def below(path: str) -> bool:
            return any(p == "/" or path == p or path.startswith(p.rstrip("/") + "/") for p in paths)

        with self._cond:
            mine = [p for path, p in self._waiting.items() if below(path)]
            for pending in mine:
                del self._waiting[pending.path]
                self._bytes -= len(pending.data)
                self._sending[pending.path] = pending
        if mine:
            self._send(mine)
        with self._cond:
            while any(below(path) for path in self._sending):
                self._cond.wait()

    def report(self) -> None:
        """Raise, once, the failure of a batch sent since the last report."""
        with self._cond:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Send everything that waits, then stop the thread."""
        self.drain("/")
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    # --- the thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._waiting:
                    return
                oldest = next(iter(self._waiting.values())).closed_at
                due = oldest + FLUSH_DELAY_S
                full = self._bytes >= MAX_BYTES or len(self._waiting) >= MAX_FILES
                if not full and not self._stopping and time.monotonic() < due:
                    self._cond.wait(due - time.monotonic())
                    continue
                batch = list(self._waiting.values())[:MAX_FILES]
                for pending in batch:
                    del self._waiting[pending.path]
                    self._bytes -= len(pending.data)
                    self._sending[pending.path] = pending
            self._send(batch)

    def _send(self, batch: list[Pending]) -> None:
        try:
            failed = self._upload(batch)
        except StrongroomError as e:  # the whole batch: the enclave is gone, most likely
            failed = [(pending, e) for pending in batch]
        except Exception as e:  # never let the thread die with files waiting on it
            log.exception("write-back failed")
            failed = [(p, StrongroomError(f"write-back failed: {e}")) for p in batch]
        for pending, error in failed:
            log.error("%s: not written to the enclave: %s", pending.path, error.message)
        with self._cond:
            for pending in batch:
                self._sending.pop(pending.path, None)
            if failed and self._failure is None:
                self._failure = failed[0][1]
            self._cond.notify_all()
