"""Compiles an image's Python sources to code objects, inside a sandbox of its own.

The image cache (:mod:`._image_cache`) keeps the bytecode of an image's
sources next to them, so that a later start of the image imports instead of
compiling (~1 s of the enclave server's start). The sources are the vendor's:
a hostile image could aim at a bug in CPython's compiler, so compiling never
happens in the supervisor (which holds the workspace CA's key). The supervisor
runs this file -- the host's copy, as a program: standard library only -- in a
bubblewrap sandbox with no network, no capabilities and no file system but the
host's read-only system files; this program lowers its priority and limits its
own memory and CPU time before it reads anything.

Protocol, one source at a time (the supervisor writes a source, then reads its
answer). A record is ``u32 path length ‖ path ‖ u32 data length ‖ data``
(big-endian). stdin: records of a path (relative to ``/image``) and the
source's bytes, which the supervisor has checked against the image cache's
manifest; an empty path ends. stdout: for each, a record of the same path and
:func:`marshal.dumps` of its code object, or empty data when the source does
not compile. The supervisor never unmarshals the data: it writes the ``.pyc``
header itself and the data after it.
"""

from __future__ import annotations

import marshal
import os
import resource
import struct
import sys
from typing import IO

#: Where the enclave sees the image (the file names code objects carry).
ROOT = "/image"
LENGTH = struct.Struct(">I")
#: Address space and CPU seconds the compiler may use, whatever the sources are.
ADDRESS_SPACE_BYTES = 2 << 30
CPU_SECONDS = 300
#: Sources larger than this are left to the enclave to compile when it imports them.
MAX_SOURCE_BYTES = 4 << 20
#: Compiling is background work: it yields to the enclaves and everything else.
NICENESS = 10


def _limit_self() -> None:
    os.nice(NICENESS)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def code_bytes(path: str, source: bytes) -> bytes:
    """The marshalled code object of ``source``, or b"" if it does not compile.

    Compiled as the import system does (``dont_inherit``, no optimisation: the
    enclave runs without ``-O``), under the name the enclave imports it by.
    """
    try:
        code = compile(source, f"{ROOT}/{path}", "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return b""
    return marshal.dumps(code)


def read_record(stream: IO[bytes], limit: int) -> tuple[bytes, bytes] | None:
    """One record, or None at the end of the stream or when a part is over ``limit``."""
    parts = []
    for _ in range(2):
        head = stream.read(LENGTH.size)
        if len(head) != LENGTH.size:
            return None
        (size,) = LENGTH.unpack(head)
        if size > limit:
            return None
        part = stream.read(size)
        if len(part) != size:
            return None
        parts.append(part)
    return parts[0], parts[1]


def write_record(stream: IO[bytes], path: bytes, data: bytes) -> None:
    stream.write(LENGTH.pack(len(path)) + path + LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def main() -> int:
    _limit_self()
    while (record := read_record(sys.stdin.buffer, MAX_SOURCE_BYTES)) is not None and record[0]:
        path, source = record
        code = code_bytes(path.decode(errors="surrogateescape"), source)
        write_record(sys.stdout.buffer, path, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
