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
        return result
    process = subprocess.Popen(
        compile_command(bwrap),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    watcher = threading.Thread(
        target=_watch, args=(process, cancelled, time.monotonic() + timeout), daemon=True
    )
    watcher.start()
    assert process.stdin is not None and process.stdout is not None
    try:
        for path, source in sources:
            raw = path.encode(errors="surrogateescape")
            _compile.write_record(process.stdin, raw, source)
            answer = _compile.read_record(process.stdout, _allowance(source))
            if answer is None or answer[0] != raw:
                raise CompilerProtocolError("no answer, or an answer for another source")
            if answer[1]:
                result.codes[path] = answer[1]
        _compile.write_record(process.stdin, b"", b"")
    except (CompilerProtocolError, OSError) as e:
        stopped = "stopped" if cancelled.is_set() else "killed, or out of time?"
        result.problem = f"the compiler sandbox failed ({stopped}): {e}"
    finally:
        for stream in (process.stdin, process.stdout):
            stream.close()
        if process.wait() not in (0, -9) and result.problem is None:
            result.problem = f"the compiler sandbox exited with {process.returncode}"
        watcher.join()
    return result


def _allowance(source: bytes) -> int:
    return _MIN_CODE_ALLOWANCE + MAX_CODE_PER_SOURCE_BYTE * len(source)


def _watch(process: subprocess.Popen[bytes], cancelled: threading.Event, deadline: float) -> None:
    """Kill the compiler when the caller cancels or the time is up; end with it."""
    while process.poll() is None:
        if cancelled.wait(_WATCH_S) or time.monotonic() > deadline:
            process.kill()
            return
