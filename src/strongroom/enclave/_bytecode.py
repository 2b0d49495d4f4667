"""Bytecode for an unpacked image, compiled in a sandbox and written by the supervisor.

Why: an enclave server that compiles its ~800 modules at every start spends
about a second doing it; with ``.pyc`` files next to the sources (and the
host's own for its standard library) it imports them. The image cache
(:mod:`._image_cache`) keeps them, in the tree, with their digests in the
entry's manifest like every other file.

What the supervisor trusts: nothing the compiler sandbox (:mod:`._compile`)
says but code bytes for the paths it was asked, in the order asked. It writes
each ``.pyc`` itself -- the header (magic number, source mtime and size) from
the source file it unpacked, the code bytes after it, ``O_EXCL``, read-only --
and never unmarshals them. A ``.pyc`` the image itself ships is measured
content and is left as it is. A compiler that fails, is too slow or answers
out of protocol costs the image its bytecode (the enclave compiles what it
imports, as without a cache), never the start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from strongroom.enclave import _compile
from strongroom.image._archive import UNPACKED_FILE_MODE, FileDigest

#: How long compiling one image's sources may take before the image goes without.
COMPILE_TIMEOUT_S = 120.0
#: Where the compiler sandbox sees its program.
COMPILE_PROGRAM = "/run/strongroom/compile.py"
#: Code bytes accepted per source byte (marshalled code is ~1-3x the source).
MAX_CODE_PER_SOURCE_BYTE = 16
_MIN_CODE_ALLOWANCE = 1 << 20
PYCACHE = "__pycache__"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY_MODE = 0o755


class CompilerProtocolError(Exception):
    """The compiler sandbox answered something other than what it was asked."""


@dataclass
class Bytecode:
    """The ``.pyc`` files and ``__pycache__`` directories written into a tree."""

    files: dict[str, FileDigest] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    #: Why there is no bytecode (or only some), for the supervisor's log.
    problem: str | None = None


def sources_to_compile(files: dict[str, FileDigest]) -> list[str]:
    """The ``.py`` files of an unpacked tree that the compiler is asked for."""
    return sorted(name for name, digest in files.items() if _is_source(name, digest))


def _is_source(name: str, digest: FileDigest) -> bool:
    return name.endswith(".py") and digest.size <= _compile.MAX_SOURCE_BYTES


def pyc_path(source: str) -> str | None:
    """Where the import system looks for the bytecode of ``source`` (relative), or None."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    path = PurePosixPath(source)
    return str(path.parent / PYCACHE / f"{path.name[: -len('.py')]}.{tag}.pyc")


def compile_command(bwrap: str, tree_fd: int) -> list[str]:
    """A sandbox that runs the host's :mod:`._compile` over the tree at ``tree_fd``.

    No network, no capabilities, nothing writable but a small private /tmp;
    the tree is read-only. bubblewrap closes ``tree_fd`` before it starts the
    program, so the program holds no descriptor of a host directory.
    """
    from strongroom.enclave.sandbox import host_system_binds
    from strongroom.server import IMAGE_MOUNT

    executable, binds = host_system_binds()
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    argv += ["--cap-drop", "ALL", "--clearenv", "--setenv", "LANG", "C.UTF-8"]
    argv += [*binds, "--ro-bind-fd", str(tree_fd), IMAGE_MOUNT]
    argv += ["--ro-bind", _compile.__file__, COMPILE_PROGRAM]
    argv += ["--dev", "/dev", "--tmpfs", "/tmp", "--remount-ro", "/"]  # noqa: S108 - private
    return [*argv, "--", str(executable), "-I", "-S", "-B", COMPILE_PROGRAM]


def compile_tree(bwrap: str, tree_fd: int, tree: Path, sources: Sequence[str]) -> Bytecode:
    """Compile ``sources`` (relative to ``tree``) in a sandbox; write their ``.pyc`` files."""
    result = Bytecode()
    if not sources or sys.implementation.cache_tag is None:
        return result
    allowance = _MIN_CODE_ALLOWANCE + MAX_CODE_PER_SOURCE_BYTE * sum(
        (tree / source).stat().st_size for source in sources
    )
    process = subprocess.Popen(
        compile_command(bwrap, tree_fd),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        pass_fds=(tree_fd,),
    )
    timer = threading.Timer(COMPILE_TIMEOUT_S, process.kill)
    timer.start()
    try:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(b"".join(s.encode() + b"\0" for s in sources))
            process.stdin.close()
            _read_records(process.stdout, tree, sources, allowance, result)
        except (CompilerProtocolError, BrokenPipeError) as e:
            result.problem = f"the compiler sandbox failed: {e or type(e).__name__}"
    finally:
        timer.cancel()
        process.kill()
        process.wait()
        timer.join()
    if result.problem is None and process.returncode not in (0, -9):
        result.problem = f"the compiler sandbox exited with {process.returncode}"
    return result


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise CompilerProtocolError("its output ended early (killed, or out of time?)")
    return data


def _read_records(
    stream: IO[bytes], tree: Path, sources: Sequence[str], allowance: int, result: Bytecode
) -> None:
    length = _compile.LENGTH
    for expected in [*sources, ""]:
        (path_size,) = length.unpack(_read_exactly(stream, length.size))
        if path_size != len(expected.encode()):
            raise CompilerProtocolError(f"it answered for another path than {expected!r}")
        if _read_exactly(stream, path_size).decode(errors="replace") != expected:
            raise CompilerProtocolError(f"it answered for another path than {expected!r}")
        (data_size,) = length.unpack(_read_exactly(stream, length.size))
        if data_size > allowance:
            raise CompilerProtocolError("it answered more code than its sources can make")
        allowance -= data_size
        data = _read_exactly(stream, data_size)
        if expected and data:
            _write_pyc(tree, expected, data, result)


def _write_pyc(tree: Path, source: str, code: bytes, result: Bytecode) -> None:
    """Write the ``.pyc`` of ``source`` (header from the source file), unless one exists."""
    target = pyc_path(source)
    if target is None:
        return
    status = os.stat(tree / source, follow_symlinks=False)
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += (int(status.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    header += (status.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    directory = str(PurePosixPath(target).parent)
    if directory not in result.dirs:
        try:
            os.mkdir(tree / directory, _DIRECTORY_MODE)
            result.dirs.add(directory)
        except FileExistsError:
            if not (tree / directory).is_dir() or (tree / directory).is_symlink():
                return  # the image has a file of that name: no bytecode for this one
    data = header + code
    try:
        fd = os.open(tree / target, _CREATE_FLAGS, UNPACKED_FILE_MODE)
    except FileExistsError:
        return  # the image ships its own (measured) bytecode
    with open(fd, "wb") as out:
        out.write(data)
        mode = os.fstat(out.fileno()).st_mode & 0o7777
    result.files[target] = FileDigest(hashlib.sha256(data).hexdigest(), len(data), mode)
