"""Tar streams for the enclave's archive endpoints, on the host side.

``push`` sends many small files as one ``POST /v1/files/archive`` body
(:func:`tar_stream`), and ``pull`` fetches them as one ``GET
/v1/files/archive`` answer (:func:`pull_archive`); see
:mod:`strongroom.server.archive` for the enclave's side.

The download archive comes from the enclave, which is not the host's friend
(see :mod:`.transfer`). Its member names are never used as paths: each must
be a relative path of valid names (:func:`~.transfer.check_name`), a regular
file no larger than asked, not seen before, with a SHA-256 record; anything
else refuses the pull with one error before anything of that member is
written. A valid member is written only if the checked listing named it
(:class:`~.transfer.PullItem`), to the target planned from that listing,
through :func:`~.transfer.write_confined`, and only once its bytes match its
SHA-256. A member the listing did not name (a file made since) is skipped;
a planned file the archive lacks is left to the caller, which fetches it on
its own. Files written before a refusal stay: they were named by the checked
listing and verified.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Protocol, cast

from strongroom.client.transfer import PullItem, _hostile, check_name, write_confined
from strongroom.errors import InvalidInputError, TamperedError

#: The pax record that carries a member's SHA-256 (as the server writes it).
SHA256_RECORD = "STRONGROOM.sha256"
#: Pieces of the upload body handed to the connection at once.
STREAM_PIECE = 256 * 1024
#: What tarfile reads from the answer at a time.
TAR_BUFFER = 256 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


def tar_stream(
    members: Iterable[tuple[str, bytes, int, float]], sent: Callable[[str, bytes], None]
) -> Iterator[bytes]:
    """The tar (pax format) of ``members``, a piece at a time; ``sent`` sees each member."""
    out = bytearray()
    for name, data, mode, mtime in members:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = mtime
        out += info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        out += data
        out += bytes(-len(data) % tarfile.BLOCKSIZE)
        sent(name, data)
        if len(out) >= STREAM_PIECE:
            yield bytes(out)
            out.clear()
    out += bytes(2 * tarfile.BLOCKSIZE)  # the end of the archive
    yield bytes(out)


class Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


class _Reader(io.RawIOBase):
    def __init__(self, source: Readable) -> None:
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._source.readinto(memoryview(buffer).cast("B"))


def member_remote(listed: str, name: object) -> str:
    """The shared-folder path of member ``name`` of the archive of ``listed``, if it is valid."""
    if not isinstance(name, str) or not name or name.startswith("/"):
        raise _hostile(f"the enclave's archive of {listed} holds the member {name!r}")
    parts = name.split("/")
    for part in parts:
        try:
            check_name(part, entry=name)
        except InvalidInputError as e:
            reason = e.message.partition(": ")[2]
            raise _hostile(
                f"the enclave's archive of {listed} holds the member {name!r}: {reason}"
            ) from None
    return listed.rstrip("/") + "/" + "/".join(parts)


def pull_archive(
    source: Readable,
    listed: str,
    items: Mapping[str, PullItem],
    *,
    max_size: int,
    progress: Callable[[int], None],
) -> dict[str, str]:
    """Write the members of the archive of ``listed`` that ``items`` names; remote → SHA-256."""
    written: dict[str, str] = {}
    seen: set[str] = set()
    try:
        stream = cast(IO[bytes], _Reader(source))
        tar = tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_BUFFER)  # noqa: SIM115
    except tarfile.ReadError as e:
        if "empty file" in str(e):
            return written  # a stand-in's empty answer: everything is fetched on its own
        raise _hostile(f"the enclave's archive of {listed} is malformed: {e}") from e
    with tar:
        try:
            for member in tar:
                remote = member_remote(listed, member.name)
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise _hostile(
                        f"the enclave's archive of {listed} holds {member.name!r}, "
                        "which is not a regular file"
                    )
                if member.size > max_size:
                    raise _hostile(
                        f"the enclave's archive of {listed} holds {member.name!r} of "
                        f"{member.size} bytes, more than the {max_size} asked for"
                    )
                if remote in seen:
                    raise _hostile(f"the enclave's archive of {listed} holds {remote!r} twice")
                seen.add(remote)
                expected = member.pax_headers.get(SHA256_RECORD)
                if not isinstance(expected, str) or not _HEX64.fullmatch(expected):
                    raise _hostile(
                        f"the enclave's archive of {listed} gives {member.name!r} no SHA-256"
                    )
                item = items.get(remote)
                if item is None:
                    continue  # not in the checked listing (made since): not written
                data = tar.extractfile(member)
                content = data.read() if data is not None else b""
                if len(content) != member.size:
                    raise _hostile(f"the enclave's archive of {listed} ends inside {remote!r}")
                if hashlib.sha256(content).hexdigest() != expected:
                    raise TamperedError(f"{remote} arrived altered", hint="pull it again")
                with write_confined(item.target) as f:
                    f.write(content)
                written[remote] = expected
                progress(len(content))
        except tarfile.TarError as e:
            raise _hostile(f"the enclave's archive of {listed} is malformed: {e}") from e
    return written
