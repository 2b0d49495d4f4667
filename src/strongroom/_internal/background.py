"""One function run in a thread, for work that overlaps other work of the same process.

Hashing and file reads release the GIL, so on a machine with more than one
core a checksum over a file runs beside other work. The thread is a daemon:
a process that must end (SIGTERM, an error) does not wait for it; what it
computes is then dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """Runs ``function()`` in a daemon thread at once; :meth:`result` waits for it."""

    def __init__(self, function: Callable[[], T], *, name: str = "background") -> None:
        self._function = function
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._function()
        except BaseException as e:  # handed to the caller of result()
            self._error = e

    def result(self) -> T:
        """The function's return value, or its exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
