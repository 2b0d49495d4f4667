"""The header of a sealed package (versions 1 and 2): layout, limits, encoding, parsing.

The header is everything a reader needs before it can decrypt: which KMS key
wrapped the data key, the wrapped data key itself, the encryption context the
key service binds to it, and the parameters of the STREAM body (chunk size,
HKDF salt, nonce prefix). Version 2, which :func:`build_header` writes, adds
the app's manifest (what the host may do with it, :mod:`.manifest`) and an
optional vendor signature (:mod:`.signing`). Version 1 is still read: it has
neither, which means the safe defaults. ``docs/FORMAT.md`` is the normative
description; this module is its only implementation.

Invariants:

- The header is readable without any key (``strongroom inspect``), and it is
  authenticated by every chunk of the body: the AAD of each chunk is the
  SHA-256 of the exact header bytes (:attr:`SealedHeader.aad`), manifest and
  signature included.
- There is one encoding of a given header. The parser rejects anything else
  (unsorted or duplicate context keys, a manifest not in canonical form, a
  declared length that does not match the fields, out-of-range values), and
  :func:`build_header` goes through the parser, so the writer can never
  produce a header the reader would refuse.
- A parsed header's signature verified under the public key beside it, so
  :attr:`SealedHeader.signer` is a key that signed these bytes; whether that
  key is *trusted* is :func:`~.signing.verify_signature`'s decision.
- Every variable-length field has a limit, and the whole header is at most
  :data:`MAX_HEADER_SIZE` bytes, so parsing an untrusted header reads and
  allocates a bounded amount.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Literal

from strongroom.errors import InvalidInputError, VerificationError

if TYPE_CHECKING:  # imported where used: reading an unsigned header needs neither
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from strongroom.sealing.manifest import AppManifest

#: Domain separation: header signatures can never be mistaken for another message.
SIGNATURE_CONTEXT = b"strongroom package header v2\x00"
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
#: The signature section's content when signed: public key || signature.
SIGNATURE_SECTION_SIZE = PUBLIC_KEY_SIZE + SIGNATURE_SIZE
#: The largest manifest (canonical JSON, and the strongroom.toml it comes from).
MAX_MANIFEST_BYTES = 64 * 1024

#: The first 8 bytes of every package of this format, whatever its version.
MAGIC = b"STRONGRM"
#: The version :func:`build_header` writes.
FORMAT_VERSION = 2
FORMAT_VERSION_1 = 1
#: The versions this reader accepts.
READ_VERSIONS = (FORMAT_VERSION_1, FORMAT_VERSION)
FORMAT_NAMES: dict[int, Literal["strongroom-v1", "strongroom-v2"]] = {
    FORMAT_VERSION_1: "strongroom-v1",
    FORMAT_VERSION: "strongroom-v2",
}

#: Payload type codes (one byte in the header) and their names.
PAYLOAD_TAR = 1
PAYLOAD_TYPES = {PAYLOAD_TAR: "tar"}

DEFAULT_CHUNK_SIZE = 1 << 20
#: Small chunks cost a 16-byte tag each; the lower bound keeps that overhead
#: sane while letting tests exercise many chunk boundaries cheaply.
MIN_CHUNK_SIZE = 64
#: The reader holds two chunk-sized buffers; this bounds its memory.
MAX_CHUNK_SIZE = 16 << 20

SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
MAX_KEY_ID_BYTES = 2048
#: The largest CiphertextBlob KMS returns.
MAX_ENCRYPTED_DATA_KEY_BYTES = 6144
MAX_CONTEXT_ENTRIES = 64
#: Bytes of the encoded context section (count, lengths, keys and values).
MAX_CONTEXT_BYTES = 8192
#: A v1 header's fields fit in 16 KiB; its declared length may not exceed this.
MAX_V1_HEADER_SIZE = 65536
#: The v1 fields, a manifest of up to 64 KiB and a signature fit in this.
MAX_HEADER_SIZE = 131072
MAX_HEADER_SIZES = {FORMAT_VERSION_1: MAX_V1_HEADER_SIZE, FORMAT_VERSION: MAX_HEADER_SIZE}

#: Well-known encryption-context keys: ``strongroom seal`` fills them in.
CONTEXT_VENDOR = "vendor"
CONTEXT_APP = "app"
CONTEXT_APP_VERSION = "app_version"

# magic, version, header length, payload type, chunk size, salt, nonce prefix, created
_FIXED = struct.Struct(f">8sBIBI{SALT_SIZE}s{NONCE_PREFIX_SIZE}sQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

NOT_A_PACKAGE_HINT = "expected a file made by `strongroom seal` (or a legacy AWS-sample package)"
DAMAGED_HINT = "the file is damaged or was not made by Strongroom; obtain a fresh copy"


@dataclass(frozen=True)
class SealedHeader:
    """A parsed v1 or v2 header. ``raw`` is its exact encoding, which the body authenticates."""

    raw: bytes = field(repr=False)
    key_id: str
    encrypted_data_key: bytes = field(repr=False)
    encryption_context: dict[str, str]
    chunk_size: int
    payload_type: str
    salt: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    #: Unix time of sealing, 0 when not recorded.
    created: int
    version: int = FORMAT_VERSION
    format: Literal["strongroom-v1", "strongroom-v2"] = "strongroom-v2"
    #: What the host may do with the app; None: the defaults (v1, or no strongroom.toml).
    manifest: AppManifest | None = None
    #: The raw 32-byte Ed25519 public key that signed the header; None when unsigned.
    signer: bytes | None = None
    signature: bytes | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def aad(self) -> bytes:
        """The associated data of every chunk: SHA-256 of the header bytes."""
        return hashlib.sha256(self.raw).digest()

    @property
    def signed_message(self) -> bytes:
        """What the signature signs: the context string, then every byte before its section."""
        if self.version == FORMAT_VERSION_1:
            return b""
        section = 0 if self.signature is None else SIGNATURE_SECTION_SIZE
        return SIGNATURE_CONTEXT + self.raw[: len(self.raw) - _U16.size - section]


def check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInputError(
            f"chunk size {chunk_size} is out of range",
            hint=f"use a chunk size between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes",
        )


def encode_context(context: Mapping[str, str]) -> bytes:
    """The canonical encoding of an encryption context (entries sorted by key)."""
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise InvalidInputError(
            f"the encryption context has {len(context)} entries; "
            f"the limit is {MAX_CONTEXT_ENTRIES}",
            hint="keep the context to a few identifying key/value pairs",
        )
    parts = [_U16.pack(len(context))]
    for key in sorted(context):
        value = context[key]
        if not key:
            raise InvalidInputError(
                "an encryption-context key is empty",
                hint="every encryption-context key needs a name",
            )
        for text in (key, value):
            encoded = _utf8(text, "encryption-context entry")
            parts += [_U16.pack(len(encoded)), encoded]
    data = b"".join(parts)
    if len(data) > MAX_CONTEXT_BYTES:
        raise InvalidInputError(
            f"the encryption context takes {len(data)} bytes; the limit is {MAX_CONTEXT_BYTES}",
            hint="keep the context to a few identifying key/value pairs",
        )
    return data


def build_header(
    *,
    key_id: str,
    encrypted_data_key: bytes,
    encryption_context: Mapping[str, str],
    chunk_size: int,
    salt: bytes,
    nonce_prefix: bytes,
    created: int,
    payload_type: int = PAYLOAD_TAR,
    manifest: AppManifest | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    version: int = FORMAT_VERSION,
) -> SealedHeader:
    """Encode a header, then parse it back: what we write is what we accept.

    ``version`` 1 exists for test vectors and compatibility tests; it can
    carry neither a manifest nor a signature.
    """
    if version not in READ_VERSIONS:
        raise InvalidInputError(
            f"cannot write sealed-package format version {version}",
            hint=f"write version {FORMAT_VERSION}",
        )
    if version == FORMAT_VERSION_1 and (manifest is not None or signing_key is not None):
        raise InvalidInputError(
            "a version 1 header holds no manifest and no signature",
            hint=f"write version {FORMAT_VERSION}",
        )
    check_chunk_size(chunk_size)
    encoded_key_id = _utf8(key_id, "key id")
    if not 0 < len(encoded_key_id) <= MAX_KEY_ID_BYTES:
        raise InvalidInputError(
            f"the key id must be 1 to {MAX_KEY_ID_BYTES} bytes",
            hint="use the key id or ARN the key service returned",
        )
    if not 0 < len(encrypted_data_key) <= MAX_ENCRYPTED_DATA_KEY_BYTES:
        raise InvalidInputError(
            f"the encrypted data key must be 1 to {MAX_ENCRYPTED_DATA_KEY_BYTES} bytes",
            hint="the key service returned an unexpected CiphertextBlob",
        )
    if len(salt) != SALT_SIZE or len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise InvalidInputError(
            f"the salt must be {SALT_SIZE} bytes and the nonce prefix {NONCE_PREFIX_SIZE}",
            hint="draw them from os.urandom",
        )
    if not 0 <= created < 1 << 64:
        raise InvalidInputError(
            f"creation time {created} is out of range", hint="pass a Unix time in seconds"
        )
    parts = [
        _U16.pack(len(encoded_key_id)),
        encoded_key_id,
        _U16.pack(len(encrypted_data_key)),
        encrypted_data_key,
        encode_context(encryption_context),
    ]
    signature_size = 0
    if version == FORMAT_VERSION:
        canonical = b"" if manifest is None else manifest.canonical()
        parts += [_U32.pack(len(canonical)), canonical]
        signature_size = _U16.size + (0 if signing_key is None else SIGNATURE_SECTION_SIZE)
    tail = b"".join(parts)
    size = _FIXED.size + len(tail) + signature_size
    fixed = _FIXED.pack(MAGIC, version, size, payload_type, chunk_size, salt, nonce_prefix, created)
    raw = fixed + tail
    if version == FORMAT_VERSION:
        if signing_key is None:
            raw += _U16.pack(0)
        else:
            from strongroom.sealing.signing import public_key_bytes

            signature = signing_key.sign(SIGNATURE_CONTEXT + raw)
            public_key = public_key_bytes(signing_key)
            raw += _U16.pack(SIGNATURE_SECTION_SIZE) + public_key + signature
    return read_sealed_header(io.BytesIO(raw), name="the new header")


def read_sealed_header(stream: BinaryIO, *, name: str, head: bytes = b"") -> SealedHeader:
    """Parse a v1 or v2 header from ``stream``; ``head`` holds bytes already read from it.

    Leaves the stream positioned at the first chunk. A v2 signature is
    verified against the public key beside it (not against any pin).
    """
    fixed = head + read_exact(stream, _FIXED.size - len(head), name=name)
    magic, version, size, payload_code, chunk_size, salt, prefix, created = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise InvalidInputError(
            f"{name} is not a Strongroom sealed package", hint=NOT_A_PACKAGE_HINT
        )
    if version not in READ_VERSIONS:
        raise InvalidInputError(
            f"{name} uses sealed-package format version {version}; "
            f"this Strongroom reads versions {' and '.join(map(str, READ_VERSIONS))}",
            hint="open it with the Strongroom release that sealed it, or upgrade Strongroom",
        )
    if not _FIXED.size < size <= MAX_HEADER_SIZES[version]:
        raise InvalidInputError(
            f"{name} declares an impossible header length ({size} bytes)", hint=DAMAGED_HINT
        )
    raw = fixed + read_exact(stream, size - _FIXED.size, name=name)
    payload_type = PAYLOAD_TYPES.get(payload_code)
    if payload_type is None:
        raise InvalidInputError(
            f"{name} has an unknown payload type ({payload_code})", hint=DAMAGED_HINT
        )
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInputError(
            f"{name} declares an invalid chunk size ({chunk_size})", hint=DAMAGED_HINT
        )
    fields = _Fields(raw, _FIXED.size, name)
    key_id = fields.text("key id", MAX_KEY_ID_BYTES)
    if not key_id:
        raise InvalidInputError(f"{name} has an empty key id", hint=DAMAGED_HINT)
    encrypted_data_key = fields.blob("encrypted data key", MAX_ENCRYPTED_DATA_KEY_BYTES)
    if not encrypted_data_key:
        raise InvalidInputError(f"{name} has an empty encrypted data key", hint=DAMAGED_HINT)
    context = fields.context()
    manifest: AppManifest | None = None
    signer: bytes | None = None
    signature: bytes | None = None
    signed_end = 0
    canonical = b""
    if version == FORMAT_VERSION:
        canonical = fields.blob32("manifest", MAX_MANIFEST_BYTES)
        signed_end = fields.offset
        section = fields.blob("signature", SIGNATURE_SECTION_SIZE)
        if section:
            if len(section) != SIGNATURE_SECTION_SIZE:
                raise InvalidInputError(
                    f"{name}: the signature section is {len(section)} bytes, "
                    f"not 0 or {SIGNATURE_SECTION_SIZE}",
                    hint=DAMAGED_HINT,
                )
            signer, signature = section[:PUBLIC_KEY_SIZE], section[PUBLIC_KEY_SIZE:]
    if fields.offset != len(raw):
        raise InvalidInputError(
            f"{name} has {len(raw) - fields.offset} unexpected header bytes", hint=DAMAGED_HINT
        )
    if signer is not None and signature is not None:
        from strongroom.sealing.signing import signature_valid, signer_fingerprint

        if not signature_valid(signer, signature, SIGNATURE_CONTEXT + raw[:signed_end]):
            raise VerificationError(
                f"{name}: the signature is invalid (claimed signer "
                f"{signer_fingerprint(signer)}): the header was changed after it was signed",
                hint="obtain a fresh copy of the package from the vendor",
            )
    if canonical:
        from strongroom.sealing.manifest import AppManifest

        manifest = AppManifest.from_canonical(canonical, source=f"{name}: the manifest")
    return SealedHeader(
        raw=raw,
        key_id=key_id,
        encrypted_data_key=encrypted_data_key,
        encryption_context=context,
        chunk_size=chunk_size,
        payload_type=payload_type,
        salt=salt,
        nonce_prefix=prefix,
        created=created,
        version=version,
        format=FORMAT_NAMES[version],
        manifest=manifest,
        signer=signer,
        signature=signature,
    )


def read_exact(stream: BinaryIO, size: int, *, name: str) -> bytes:
    """Read exactly ``size`` header bytes; a short read means a truncated header."""
    data = read_up_to(stream, size)
    if len(data) != size:
        raise InvalidInputError(
            f"{name} is truncated: it ends inside its header", hint=DAMAGED_HINT
        )
    return data


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at end of stream (sockets return short reads)."""
    parts = []
    while size > 0:
        part = stream.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


class _Fields:
    """A cursor over the variable-length part of a header."""

    def __init__(self, raw: bytes, offset: int, name: str) -> None:
        self.raw = raw
        self.offset = offset
        self.name = name

    def blob(self, what: str, limit: int) -> bytes:
        """A field with a 16-bit length."""
        return self._blob(_U16, what, limit)

    def blob32(self, what: str, limit: int) -> bytes:
        """A field with a 32-bit length."""
        return self._blob(_U32, what, limit)

    def _blob(self, length_format: struct.Struct, what: str, limit: int) -> bytes:
        (length,) = self._unpack(length_format, what)
        if length > limit:
            raise InvalidInputError(
                f"{self.name}: the {what} is longer than {limit} bytes", hint=DAMAGED_HINT
            )
        end = self.offset + length
        if end > len(self.raw):
            raise InvalidInputError(
                f"{self.name}: the {what} runs past the end of the header", hint=DAMAGED_HINT
            )
        data = self.raw[self.offset : end]
        self.offset = end
        return data

    def text(self, what: str, limit: int) -> str:
        try:
            return self.blob(what, limit).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"{self.name}: the {what} is not valid UTF-8", hint=DAMAGED_HINT
            ) from None

    def context(self) -> dict[str, str]:
        start = self.offset
        (count,) = self._unpack(_U16, "encryption context")
        if count > MAX_CONTEXT_ENTRIES:
            raise InvalidInputError(
                f"{self.name}: too many encryption-context entries ({count})", hint=DAMAGED_HINT
            )
        context: dict[str, str] = {}
        previous: bytes | None = None
        for _ in range(count):
            key = self.text("encryption-context key", MAX_CONTEXT_BYTES)
            value = self.text("encryption-context value", MAX_CONTEXT_BYTES)
            encoded = key.encode()
            if not key or (previous is not None and encoded <= previous):
                raise InvalidInputError(
                    f"{self.name}: encryption-context keys are empty, unsorted or repeated",
                    hint=DAMAGED_HINT,
                )
            previous = encoded
            context[key] = value
        if self.offset - start > MAX_CONTEXT_BYTES:
            raise InvalidInputError(
                f"{self.name}: the encryption context is too large", hint=DAMAGED_HINT
            )
        return context

    def _unpack(self, fmt: struct.Struct, what: str) -> tuple[int, ...]:
        end = self.offset + fmt.size
        if end > len(self.raw):
            raise InvalidInputError(
                f"{self.name}: the {what} runs past the end of the header", hint=DAMAGED_HINT
            )
        values = fmt.unpack(self.raw[self.offset : end])
        self.offset = end
        return values


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"the {what} {text!r} is not valid UTF-8", hint="use text that encodes as UTF-8"
        ) from None
