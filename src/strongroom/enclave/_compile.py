"""Compiles an image's Python sources to code objects, inside a sandbox of its own.

The image cache (:mod:`._image_cache`) keeps the bytecode of an image's
sources next to them, so that a later start of the image imports instead of
compiling (~1 s of the enclave server's start). The sources are the vendor's:
a hostile image could aim at a bug in CPython's compiler, so compiling never
happens in the supervisor (which holds the workspace CA's key). The supervisor
runs this file -- the host's copy, as a program: standard library only -- in a
bubblewrap sandbox with no network, no capabilities, no writable file system
and the unpacked tree read-only at ``/image``, and this program limits its own
memory and CPU time before it reads anything.

Protocol. stdin: the paths to compile, relative to ``/image``, each ended by a
NUL. stdout: for each path, in order, a record ``u32 path length ‖ path ‖ u32
data length ‖ data`` (big-endian), where data is :func:`marshal.dumps` of the
code object, or empty when the source does not compile; then a record with an
empty path. The supervisor checks the paths, never unmarshals the data, and
writes the ``.pyc`` header itself, from the source file it holds.
"""

from __future__ import annotations

import marshal
import resource
import struct
import sys
from typing import BinaryIO

#: Where the sandbox mounts the unpacked tree (also the file names code objects carry).
ROOT = "/image"
LENGTH = struct.Struct(">I")
#: Address space and CPU seconds the compiler may use, whatever the sources are.
ADDRESS_SPACE_BYTES = 2 << 30
CPU_SECONDS = 300
#: Sources larger than this are left to the enclave to compile when imported.
MAX_SOURCE_BYTES = 4 << 20


def _limit_self() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def code_bytes(path: str) -> bytes:
    """The marshalled code object of ``ROOT/path``, or b"" if it does not compile.

    Compiled as the import system does (``dont_inherit``, no optimisation: the
    enclave runs without ``-O``), under the name the enclave imports it by.
    """
    name = f"{ROOT}/{path}"
    try:
        with open(name, "rb") as f:
            source = f.read(MAX_SOURCE_BYTES + 1)
        if len(source) > MAX_SOURCE_BYTES:
            return b""
        code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return b""
    return marshal.dumps(code)


def _record(out: BinaryIO, path: bytes, data: bytes) -> None:
    out.write(LENGTH.pack(len(path)) + path + LENGTH.pack(len(data)))
    out.write(data)


def main() -> int:
    _limit_self()
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer.read().split(b"\0"):
        if raw:
            _record(out, raw, code_bytes(raw.decode()))
    _record(out, b"", b"")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
