"""Bytecode for an image's sources, compiled in a sandbox for the image cache.

Why: an enclave server that compiles its ~800 modules at every start spends
about a second doing it; with ``.pyc`` files next to the sources (and the
host's own for its standard library) it imports them instead. The image cache
(:mod:`._image_cache`) adds them to an entry while the enclave that unpacked
it runs, with their digests in the entry's manifest like every other file.

What the supervisor trusts: nothing the compiler sandbox (:mod:`._compile`)
says but code bytes for the source it was just handed. The sources it hands
over are read from the entry and checked against the manifest first, so the
bytecode is compiled from measured bytes. The supervisor writes each ``.pyc``
itself -- header (magic number, the source's mtime and size) then the code
bytes -- and never unmarshals them. A compiler that fails, is too slow, or
answers out of protocol costs the image its bytecode (the enclave then
compiles what it imports, as without a cache), never a start.
"""

from __future__ import annotations

import importlib.util
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from strongroom.enclave import _compile

#: How long compiling one image's sources may take before the image goes without.
COMPILE_TIMEOUT_S = 300.0
#: Where the compiler sandbox sees its program.
COMPILE_PROGRAM = "/run/strongroom/compile.py"
#: Code bytes accepted per source byte (marshalled code is ~1-3x the source).
MAX_CODE_PER_SOURCE_BYTE = 16
_MIN_CODE_ALLOWANCE = 1 << 20
_WATCH_S = 0.1
MAX_PATH_BYTES = 1 << 16
PYCACHE = "__pycache__"
#: What a source's name ends with, and the largest the compiler is handed.
SOURCE_SUFFIX = ".py"
MAX_SOURCE_BYTES = _compile.MAX_SOURCE_BYTES


class CompilerProtocolError(Exception):
    """The compiler sandbox answered something other than what it was asked."""


@dataclass
class Compiled:
    """Code bytes by source path; ``problem`` says why some (or all) are missing."""

    codes: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None


def pyc_path(source: str) -> str | None:
    """Where the import system looks for the bytecode of ``source`` (relative), or None
    if this interpreter caches no bytecode."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    path = PurePosixPath(source)
    return str(path.parent / PYCACHE / f"{path.name[: -len(SOURCE_SUFFIX)]}.{tag}.pyc")


def pyc_data(code: bytes, source: os.stat_result) -> bytes:
    """A timestamp-checked ``.pyc`` (PEP 552) of ``code`` for a source with ``source``'s
    mtime and size: the import system uses it as long as the source is unchanged."""
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += (int(source.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    header += (source.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    return header + code


def compile_command(bwrap: str) -> list[str]:
    """A sandbox that runs the host's :mod:`._compile`: no network, no capabilities,
    nothing of the host but its read-only system files, nothing writable but a small
    private /tmp."""
    from strongroom.enclave.sandbox import host_system_binds

    executable, binds = host_system_binds()
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    argv += ["--cap-drop", "ALL", "--clearenv", "--setenv", "LANG", "C.UTF-8", *binds]
    argv += ["--ro-bind", _compile.__file__, COMPILE_PROGRAM]
    argv += ["--dev", "/dev", "--tmpfs", "/tmp", "--remount-ro", "/"]  # noqa: S108 - private
    return [*argv, "--", str(executable), "-I", "-S", "-B", COMPILE_PROGRAM]


def compile_sources(
    bwrap: str,
    sources: Iterable[tuple[str, bytes]],
    *,
    cancelled: threading.Event,
    timeout: float = COMPILE_TIMEOUT_S,
) -> Compiled:
    """Compile ``(path, source)`` pairs in a sandbox, one at a time; stops early (with
    what it has) when ``cancelled`` is set or ``timeout`` passes."""
    result = Compiled()
    if sys.implementation.cache_tag is None:
        return result  # this interpreter caches no bytecode
    if cancelled.is_set():
        return Compiled(problem="stopped")
    process = subprocess.Popen(
        compile_command(bwrap),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    answers = _Answers(process.stdout.fileno(), cancelled, time.monotonic() + timeout)
    try:
        for path, source in sources:
            raw = path.encode(errors="surrogateescape")
            _compile.write_record(process.stdin, raw, source)
            if answers.record(_allowance(source)) != raw:
                raise CompilerProtocolError(f"it answered for another source than {path!r}")
            if answers.data:
                result.codes[path] = answers.data
        _compile.write_record(process.stdin, b"", b"")
    except (CompilerProtocolError, OSError) as e:
        result.problem = f"the compiler sandbox failed: {e}"
    finally:
        process.kill()  # done, failed or stopped: nothing of it stays
        process.wait()
        process.stdin.close()
        process.stdout.close()
    return result


def _allowance(source: bytes) -> int:
    return _MIN_CODE_ALLOWANCE + MAX_CODE_PER_SOURCE_BYTE * len(source)


class _Answers:
    """Reads the compiler's answers without ever blocking past a cancel or the deadline."""

    def __init__(self, fd: int, cancelled: threading.Event, deadline: float) -> None:
        self.fd = fd
        self.cancelled = cancelled
        self.deadline = deadline
        self.data = b""

    def record(self, limit: int) -> bytes:
        """The next record's path (its data in :attr:`data`)."""
        parts = []
        for part_limit in (MAX_PATH_BYTES, limit):
            (size,) = _compile.LENGTH.unpack(self._read(_compile.LENGTH.size))
            if size > part_limit:
                raise CompilerProtocolError("it answered more than its source can make")
            parts.append(self._read(size))
        self.data = parts[1]
        return parts[0]

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            if self.cancelled.is_set():
                raise CompilerProtocolError("stopped")
            if time.monotonic() > self.deadline:
                raise CompilerProtocolError("out of time")
            ready, _, _ = select.select([self.fd], [], [], _WATCH_S)
            if ready:
                chunk = os.read(self.fd, size - len(data))
                if not chunk:
                    raise CompilerProtocolError("its output ended early")
                data += chunk
        return bytes(data)
