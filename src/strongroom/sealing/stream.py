"""The body of a v1 package: AES-256-GCM in the STREAM construction.

The payload is cut into chunks of ``chunk_size`` plaintext bytes. Every chunk
but the last is full; the last holds the remaining ``0 .. chunk_size - 1``
bytes (an empty final chunk when the payload is a multiple of the chunk size),
so a reader knows a chunk is final exactly when it is short, with no
look-ahead and no length field. Chunk ``i`` is sealed as::

    nonce_i = nonce_prefix (7 bytes) || i (4 bytes, big-endian) || final (1 byte, 0 or 1)
    chunk_i = AES-256-GCM(payload_key, nonce_i, plaintext_i, aad=SHA-256(header))

with ``payload_key = HKDF-SHA256(data_key, salt, info=PAYLOAD_KEY_INFO)``.

Invariants this module keeps:

- A reader returns plaintext only from chunks that authenticated, in order.
  Reordering, duplication, truncation and appended bytes all make some chunk
  fail, because the counter and the final flag are inside the nonce; a stream
  ends only after a final chunk authenticated *and* the source is at EOF.
- Memory is two chunk-sized buffers per direction, whatever the payload size.
- Failures raise :class:`TamperedError` with a message that names the likely
  cause (reordered, duplicated, truncated, appended, corrupted); the
  diagnosis only runs after a failure and is bounded.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.errors import InvalidInputError, StrongroomError, TamperedError

TAG_SIZE = 16
DATA_KEY_SIZE = 32
PAYLOAD_KEY_INFO = b"strongroom v1 payload key"
#: The chunk counter is 32 bits.
MAX_CHUNKS = 1 << 32
#: How far from its expected position the diagnosis looks for a misplaced chunk.
DIAGNOSE_DISTANCE = 64
#: How many trailing bytes the diagnosis strips looking for appended data.
DIAGNOSE_APPENDED = 256

Progress = Callable[[int], None]


class ReadableInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


_TAMPERED_HINT = "obtain a fresh copy of the package from the vendor"


def derive_payload_key(data_key: bytes, salt: bytes) -> bytes:
    """The AES-256 key of one package: the KMS data key is never used directly."""
    if len(data_key) != DATA_KEY_SIZE:
        raise InvalidInputError(
            f"the data key is {len(data_key)} bytes; sealed packages use {DATA_KEY_SIZE}-byte keys",
            hint="pass the plaintext data key KMS Decrypt returned",
        )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=PAYLOAD_KEY_INFO)
    return hkdf.derive(data_key)


def chunk_nonce(nonce_prefix: bytes, index: int, final: bool) -> bytes:
    return nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def body_geometry(body_size: int, chunk_size: int) -> tuple[int, int] | None:
    """``(chunk_count, payload_size)`` for a body of ``body_size`` bytes, or None if impossible."""
    full_chunks, rest = divmod(body_size, chunk_size + TAG_SIZE)
    if rest < TAG_SIZE or full_chunks + 1 > MAX_CHUNKS:
        return None
    return full_chunks + 1, full_chunks * chunk_size + rest - TAG_SIZE


class ChunkWriter:
    """Encrypts a byte stream into chunks written to ``sink``; call :meth:`finish` at the end."""

    def __init__(
        self,
        sink: BinaryIO,
        payload_key: bytes,
        nonce_prefix: bytes,
        aad: bytes,
        chunk_size: int,
        progress: Progress | None = None,
    ) -> None:
        self._sink = sink
        self._aead = AESGCM(payload_key)
        self._prefix = nonce_prefix
        self._aad = aad
        self._plain = bytearray(chunk_size)
        self._plain_view = memoryview(self._plain)
        self._sealed = memoryview(bytearray(chunk_size + TAG_SIZE))
        self._fill = 0
        self._progress = progress
        self.chunk_count = 0
        self.payload_size = 0
        self.body_size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), len(self._plain) - self._fill)
            self._plain_view[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == len(self._plain):
                self._emit(final=False)

    def copy_from(self, source: ReadableInto, size: int) -> int:
        """Read up to ``size`` bytes of ``source`` straight into the chunk buffer.

        Returns how many bytes were copied: fewer than ``size`` only at EOF.
        """
        copied = 0
        while copied < size:
            want = min(size - copied, len(self._plain) - self._fill)
            got = source.readinto(self._plain_view[self._fill : self._fill + want])
            if not got:
                break
            self._fill += got
            copied += got
            if self._fill == len(self._plain):
                self._emit(final=False)
        return copied

    def finish(self) -> None:
        """Seal the final (short, possibly empty) chunk."""
        self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        if self.chunk_count >= MAX_CHUNKS - 1 and not final:
            raise InvalidInputError(
                "the payload needs more chunks than the format allows",
                hint="seal it with a larger chunk size",
            )
        size = self._fill
        sealed = self._sealed[: size + TAG_SIZE]
        nonce = chunk_nonce(self._prefix, self.chunk_count, final)
        self._aead.encrypt_into(nonce, self._plain_view[:size], self._aad, sealed)
        try:
            while sealed:
                sealed = sealed[self._sink.write(sealed) :]
        except OSError as exc:
            raise StrongroomError(
                f"cannot write the package: {exc.strerror}",
                hint="check the free space and permissions of the output directory",
            ) from exc
        self.chunk_count += 1
        self.payload_size += size
        self.body_size += size + TAG_SIZE
        self._fill = 0
        if self._progress is not None:
            self._progress(size)


class ChunkReader(io.RawIOBase):
    """A readable stream of the authenticated plaintext of a body read from ``source``.

    ``limit``, when set, is the plaintext position a read may not go past: the
    archive layer uses it to bound what the tar parser may buffer for metadata.
    """

    def __init__(
        self,
        source: ReadableInto,
        payload_key: bytes,
        nonce_prefix: bytes,
        aad: bytes,
        chunk_size: int,
        progress: Progress | None = None,
    ) -> None:
        super().__init__()
        self._source = source
        self._aead = AESGCM(payload_key)
        self._prefix = nonce_prefix
        self._aad = aad
        self._sealed = memoryview(bytearray(chunk_size + TAG_SIZE))
        self._plain = memoryview(bytearray(chunk_size))
        self._start = 0
        self._end = 0
        self._done = False
        self._progress = progress
        self.limit: int | None = None
        self.chunk_count = 0
        self.payload_size = 0
        self.body_size = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.payload_size - (self._end - self._start)

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes, from one chunk; ``b""`` once the final chunk is consumed."""
        if size < 0:
            return self.readall()
        if self._start == self._end and not self._next_chunk():
            return b""
        available = self._end - self._start
        take = available if size < 0 else min(size, available)
        if self.limit is not None and self.tell() + take > self.limit:
            raise InvalidInputError(
                "the package's archive has an oversized metadata record",
                hint="ask the vendor to re-seal the application with `strongroom seal`",
            )
        data = bytes(self._plain[self._start : self._start + take])
        self._start += take
        return data

    def _next_chunk(self) -> bool:
        if self._done:
            return False
        got = _read_into(self._source, self._sealed)
        self.body_size += got
        final = got < len(self._sealed)
        index = self.chunk_count
        if index >= MAX_CHUNKS:
            raise TamperedError(
                "the package has more chunks than the format allows", hint=_TAMPERED_HINT
            )
        if final and got < TAG_SIZE:
            if index == 0:
                raise TamperedError(
                    "the package is truncated: it has no chunks", hint=_TAMPERED_HINT
                )
            raise TamperedError(
                f"the package is truncated: it ends after chunk {index - 1} "
                "without its final chunk",
                hint=_TAMPERED_HINT,
            )
        sealed = self._sealed[:got]
        size = got - TAG_SIZE
        try:
            self._aead.decrypt_into(
                chunk_nonce(self._prefix, index, final), sealed, self._aad, self._plain[:size]
            )
        except InvalidTag:
            raise TamperedError(self._diagnose(bytes(sealed), final), hint=_TAMPERED_HINT) from None
        self.chunk_count += 1
        self.payload_size += size
        self._start, self._end = 0, size
        self._done = final
        if self._progress is not None:
            self._progress(size)
        return True

    def _diagnose(self, sealed: bytes, final: bool) -> str:
        """Name the likely cause of an authentication failure at chunk ``chunk_count``."""
        index = self.chunk_count
        low = max(0, index - DIAGNOSE_DISTANCE)
        high = min(MAX_CHUNKS - 1, index + DIAGNOSE_DISTANCE)
        for other in range(low, high + 1):
            if other != index and self._opens(sealed, other, final):
                if other > index:
                    return f"chunk {index} of the package is chunk {other}: chunks were reordered"
                return (
                    f"chunk {index} of the package repeats chunk {other}: "
                    "chunks were duplicated or reordered"
                )
        for extra in range(1, min(DIAGNOSE_APPENDED, len(sealed) - TAG_SIZE) + 1):
            if self._opens(sealed[:-extra], index, True):
                return f"the package has data appended after its final chunk ({index})"
        if index == 0:
            return (
                "chunk 0 of the package failed authentication: the header or the first chunk "
                "was modified, or the data key does not belong to this package"
            )
        if final:
            return (
                f"the last chunk ({index}) of the package failed authentication: "
                "the package was truncated inside a chunk, or corrupted"
            )
        return f"chunk {index} of the package failed authentication: the package is corrupted"

    def _opens(self, sealed: bytes, index: int, final: bool) -> bool:
        try:
            self._aead.decrypt(chunk_nonce(self._prefix, index, final), sealed, self._aad)
        except InvalidTag:
            return False
        return True


def _read_into(source: ReadableInto, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``source``; fewer bytes only at EOF (sockets return short reads)."""
    filled = 0
    while filled < len(buffer):
        got = source.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled
