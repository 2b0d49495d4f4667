"""The Nitro Secure Module (``/dev/nsm``): the attestor inside a real Nitro enclave.

Three layers, so that everything but the ioctl itself is tested without an enclave:

- :class:`NsmDevice` moves one CBOR request frame in and one response frame
  out through ``ioctl(fd, _IOWR(0x0A, 0, 32), struct {iovec request; iovec
  response})`` — nothing more. Anything with the same ``call(request) ->
  response`` method (:class:`NsmTransport`) can stand in for it.
- ``encode_*`` and :func:`decode_response` write and read the frames as the
  aws-nitro-enclaves-nsm-api crate serialises its ``Request``/``Response``
  enums (serde, externally tagged): unit variants are bare strings
  (``"GetRandom"``), struct variants one-entry maps (``{"DescribePCR":
  {"index": 0}}``), failures ``{"Error": "InvalidArgument"}``.
- :class:`NsmAttestor` puts the :class:`~strongroom.attestation.base.Attestor`
  interface (and GetRandom, DescribeNSM, DescribePCR) on top.

Responses are untrusted input like any document: they are decoded with the
strict CBOR reader, must be the variant that was asked for with the fields of
the documented types, and an Attestation response must hold a well-formed
document. Error codes the module reports about the *request* become
:class:`~strongroom.attestation.errors.NsmRequestError`; those about the module
itself :class:`~strongroom.attestation.errors.NsmError`. A missing device is
:class:`~strongroom.errors.UnavailableError`: the code is not in an enclave.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import cbor2

from strongroom.attestation import _cbor
from strongroom.attestation.document import MAX_USER_FIELD_SIZE, AttestationDocument
from strongroom.attestation.errors import AttestationFormatError, NsmError, NsmRequestError
from strongroom.errors import UnavailableError

NSM_DEVICE = Path("/dev/nsm")
#: ``_IOWR(NSM_MAGIC=0x0A, 0, sizeof(struct nsm_raw)=32)``.
NSM_IOCTL_RAW = 0xC0200A00
REQUEST_MAX_SIZE = 0x1000
RESPONSE_MAX_SIZE = 0x3000
#: PCR indices are u16 in the NSM API.
_MAX_PCR_INDEX = 0xFFFF

#: Error codes that blame the request; the others blame the module.
_REQUEST_ERROR_CODES = frozenset(
    {"InvalidArgument", "InvalidIndex", "ReadOnlyIndex", "InvalidOperation", "InputTooLarge"}
)
_INVALID_RESPONSE = "InvalidResponse"
_T = TypeVar("_T")


class NsmTransport(Protocol):
    """Moves one request frame to the NSM and returns its response frame."""

    def call(self, request: bytes) -> bytes: ...


class _IoVec(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint64), ("length", ctypes.c_uint64)]


class _NsmRaw(ctypes.Structure):
    _fields_ = [("request", _IoVec), ("response", _IoVec)]


class NsmDevice:
    """An open ``/dev/nsm``; one ioctl per :meth:`call`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, path: Path = NSM_DEVICE) -> NsmDevice:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise UnavailableError(
                f"{path} does not exist: not inside a Nitro enclave",
                hint="the NSM attestor only works inside a Nitro enclave; "
                "use the local target (local attestation authority) elsewhere",
            ) from exc
        except OSError as exc:
            raise UnavailableError(f"cannot open {path}: {exc.strerror}") from exc
        return cls(fd)

    def call(self, request: bytes) -> bytes:
        if len(request) > REQUEST_MAX_SIZE:
            raise NsmRequestError(
                "InputTooLarge", hint=f"requests are at most {REQUEST_MAX_SIZE} B"
            )
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = ctypes.create_string_buffer(RESPONSE_MAX_SIZE)
        message = bytearray(
            _NsmRaw(
                _IoVec(ctypes.addressof(request_buffer), len(request)),
                _IoVec(ctypes.addressof(response_buffer), RESPONSE_MAX_SIZE),
            )
        )
        try:
            fcntl.ioctl(self._fd, NSM_IOCTL_RAW, message, True)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "unknown")
            raise NsmError(f"ioctl failed ({name}: {exc.strerror})") from exc
        length = int(_NsmRaw.from_buffer(message).response.length)
        if length > RESPONSE_MAX_SIZE:
            raise NsmError("BufferTooSmall")
        return response_buffer.raw[:length]

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> NsmDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class NsmDescription:
    """The DescribeNSM response."""

    version: tuple[int, int, int]
    module_id: str
    max_pcrs: int
    locked_pcrs: frozenset[int]
    digest: str


@dataclass(frozen=True)
class PcrState:
    """The DescribePCR response for one index."""

    index: int
    locked: bool
    data: bytes


def encode_attestation_request(
    *, public_key: bytes | None, user_data: bytes | None, nonce: bytes | None
) -> bytes:
    """``{"Attestation": {"user_data": …, "nonce": …, "public_key": …}}``."""
    fields = {"user_data": user_data, "nonce": nonce, "public_key": public_key}
    for name, value in fields.items():
        if value is not None and len(value) > MAX_USER_FIELD_SIZE:
            raise AttestationFormatError(
                f"{name}: {len(value)} bytes (limit {MAX_USER_FIELD_SIZE})"
            )
    return cbor2.dumps({"Attestation": fields})


def encode_get_random() -> bytes:
    return cbor2.dumps("GetRandom")


def encode_describe_nsm() -> bytes:
    return cbor2.dumps("DescribeNSM")


def encode_describe_pcr(index: int) -> bytes:
    if not 0 <= index <= _MAX_PCR_INDEX:
        raise NsmRequestError("InvalidIndex", hint=f"PCR indices are 0 to {_MAX_PCR_INDEX}")
    return cbor2.dumps({"DescribePCR": {"index": index}})


def decode_response(frame: bytes, expected: str) -> dict[str, Any]:
    """The fields of response variant ``expected``, or the error the frame reports."""
    value = _cbor.loads(frame, what="NSM response")
    if isinstance(value, dict) and len(value) == 1:
        ((variant, body),) = value.items()
    else:
        raise NsmError(_INVALID_RESPONSE, hint="the NSM response is not a single variant")
    if variant == "Error":
        code = body if isinstance(body, str) else _INVALID_RESPONSE
        if code in _REQUEST_ERROR_CODES:
            raise NsmRequestError(code)
        raise NsmError(code)
    if variant != expected or not isinstance(body, dict):
        raise NsmError(_INVALID_RESPONSE, hint=f"expected a {expected} response, got {variant!r}")
    return body


class NsmAttestor:
    """The Attestor of a Nitro enclave, plus the NSM's other read-only requests."""

    def __init__(self, transport: NsmTransport) -> None:
        self._transport = transport

    @classmethod
    def open(cls, path: Path = NSM_DEVICE) -> NsmAttestor:
        return cls(NsmDevice.open(path))

    def attest(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        request = encode_attestation_request(
            public_key=public_key, user_data=user_data, nonce=nonce
        )
        document = _field(self._call(request, "Attestation"), "document", bytes)
        AttestationDocument.parse(document)
        return document

    def get_random(self) -> bytes:
        return _field(self._call(encode_get_random(), "GetRandom"), "random", bytes)

    def describe_nsm(self) -> NsmDescription:
        body = self._call(encode_describe_nsm(), "DescribeNSM")
        locked = _field(body, "locked_pcrs", list)
        if not all(type(index) is int for index in locked):
            raise NsmError(_INVALID_RESPONSE, hint="locked_pcrs must be integers")
        return NsmDescription(
            version=(
                _field(body, "version_major", int),
                _field(body, "version_minor", int),
                _field(body, "version_patch", int),
            ),
            module_id=_field(body, "module_id", str),
            max_pcrs=_field(body, "max_pcrs", int),
            locked_pcrs=frozenset(locked),
            digest=_field(body, "digest", str),
        )

    def describe_pcr(self, index: int) -> PcrState:
        body = self._call(encode_describe_pcr(index), "DescribePCR")
        return PcrState(
            index=index, locked=_field(body, "lock", bool), data=_field(body, "data", bytes)
        )

    def _call(self, request: bytes, expected: str) -> dict[str, Any]:
        return decode_response(self._transport.call(request), expected)


def _field(body: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = body.get(name)
    if type(value) is not kind:
        raise NsmError(_INVALID_RESPONSE, hint=f"field {name!r} is not a {kind.__name__}")
    return value
