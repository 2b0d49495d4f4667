"""The NSM client: frames constructed from the documented API, the ioctl plumbing, errors.

The frames in ``tests/assets/nsm-frames.json`` are constructed from the
documented ``Request``/``Response`` shapes, not recorded from a device (see
``tests/assets/README.md``); the ioctl itself can only run inside an enclave,
so here it is driven against ``/dev/null`` to exercise the struct and the
error translation.
"""

from __future__ import annotations

import ctypes
import json
import runpy
from pathlib import Path

import cbor2
import pytest

from strongroom.attestation import nsm
from strongroom.attestation.base import Attestor
from strongroom.attestation.document import AttestationDocument
from strongroom.attestation.errors import AttestationFormatError, NsmError, NsmRequestError
from strongroom.attestation.nsm import (
    NSM_IOCTL_RAW,
    NsmAttestor,
    NsmDevice,
    decode_response,
    encode_attestation_request,
    encode_describe_nsm,
    encode_describe_pcr,
    encode_get_random,
)
from strongroom.errors import UnavailableError

from .helpers import ASSETS, PRODUCTION_DOC

FRAMES = {
    name: bytes.fromhex(value)
    for name, value in json.loads((ASSETS / "nsm-frames.json").read_text()).items()
}


class RecordedTransport:
    """Answers each request with a fixed frame and remembers the requests."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self.requests: list[bytes] = []

    def call(self, request: bytes) -> bytes:
        self.requests.append(request)
        return self.responses.pop(0)


def test_frames_file_is_reproducible() -> None:
    script = runpy.run_path(str(ASSETS / "make_nsm_frames.py"))
    assert {name: value.hex() for name, value in FRAMES.items()} == script["build_frames"]()


def test_request_encoding_matches_the_documented_frames() -> None:
    assert (
        encode_attestation_request(public_key=None, user_data=b"user data", nonce=bytes(range(32)))
        == (FRAMES["request-attestation"])
    )
    assert (
        encode_attestation_request(public_key=None, user_data=None, nonce=None)
        == FRAMES["request-attestation-empty"]
    )
    assert encode_get_random() == FRAMES["request-get-random"]
    assert encode_describe_nsm() == FRAMES["request-describe-nsm"]
    assert encode_describe_pcr(4) == FRAMES["request-describe-pcr"]


def test_attest() -> None:
    transport = RecordedTransport(FRAMES["response-attestation"])
    attestor = NsmAttestor(transport)
    assert isinstance(attestor, Attestor)
    document = attestor.attest(user_data=b"user data", nonce=bytes(range(32)))
    assert document == PRODUCTION_DOC
    assert AttestationDocument.parse(document).pcrs[0].hex().startswith("e72a46ca")
    assert transport.requests == [FRAMES["request-attestation"]]


def test_get_random() -> None:
    attestor = NsmAttestor(RecordedTransport(FRAMES["response-get-random"]))
    assert attestor.get_random() == bytes(range(256))


def test_describe_nsm() -> None:
    description = NsmAttestor(RecordedTransport(FRAMES["response-describe-nsm"])).describe_nsm()
    assert description.version == (1, 0, 0)
    assert description.max_pcrs == 32
    assert description.locked_pcrs == frozenset({0, 1, 2, 3, 4, 8})
    assert description.digest == "SHA384"
    assert description.module_id.startswith("i-0123456789abcdef0")


def test_describe_pcr() -> None:
    state = NsmAttestor(RecordedTransport(FRAMES["response-describe-pcr"])).describe_pcr(4)
    assert state.index == 4 and state.locked and state.data == bytes(range(48))


def test_error_codes_blaming_the_request() -> None:
    attestor = NsmAttestor(RecordedTransport(FRAMES["response-error-invalid-index"]))
    with pytest.raises(NsmRequestError, match="InvalidIndex") as caught:
        attestor.describe_pcr(40)
    assert caught.value.code == "InvalidIndex"


def test_error_codes_blaming_the_module() -> None:
    attestor = NsmAttestor(RecordedTransport(FRAMES["response-error-internal"]))
    with pytest.raises(NsmError, match="InternalError") as caught:
        attestor.get_random()
    assert caught.value.code == "InternalError"


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (FRAMES["response-get-random"], NsmError),  # another variant than asked for
        (b"\x69GetRandom", NsmError),  # a bare unit variant where fields were expected
        (b"\xa1\x65Error\x05", NsmError),  # an error code that is not text
        (b"\xa2\x61a\x01\x61b\x02", NsmError),  # two variants
        (b"\xff", AttestationFormatError),  # not CBOR
        (FRAMES["response-attestation"] + b"\x00", AttestationFormatError),  # trailing bytes
    ],
)
def test_malformed_responses(frame: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        NsmAttestor(RecordedTransport(frame)).attest()


def test_wrong_field_types_are_invalid_responses() -> None:
    frame = cbor2.dumps({"GetRandom": {"random": "not bytes"}})
    with pytest.raises(NsmError, match="InvalidResponse"):
        NsmAttestor(RecordedTransport(frame)).get_random()
    frame = cbor2.dumps({"DescribePCR": {"lock": 1, "data": b""}})
    with pytest.raises(NsmError, match="InvalidResponse"):
        NsmAttestor(RecordedTransport(frame)).describe_pcr(0)


def test_a_garbled_document_is_refused() -> None:
    frame = cbor2.dumps({"Attestation": {"document": b"\x84\x40\xa0\x40\x40"}})
    with pytest.raises(AttestationFormatError):
        NsmAttestor(RecordedTransport(frame)).attest()


def test_oversized_fields_are_refused_before_any_call() -> None:
    transport = RecordedTransport()
    with pytest.raises(AttestationFormatError, match="nonce: 1025 bytes"):
        NsmAttestor(transport).attest(nonce=b"n" * 1025)
    assert transport.requests == []
    with pytest.raises(NsmRequestError, match="InvalidIndex"):
        encode_describe_pcr(70_000)


# --- the device --------------------------------------------------------------------------


def test_ioctl_number_is_iowr_0x0a_0_32() -> None:
    read_write, size, magic, number = 3, 32, 0x0A, 0
    assert (read_write << 30) | (size << 16) | (magic << 8) | number == NSM_IOCTL_RAW
    assert ctypes.sizeof(nsm._NsmRaw) == 32


def test_missing_device_means_not_in_an_enclave(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="not inside a Nitro enclave") as caught:
        NsmAttestor.open(tmp_path / "nsm")
    assert "local target" in caught.value.hint


def test_ioctl_failure_is_translated() -> None:
    with NsmDevice.open(Path("/dev/null")) as device, pytest.raises(NsmError, match="ENOTTY"):
        device.call(encode_get_random())


def test_oversized_request_is_refused() -> None:
    with NsmDevice.open(Path("/dev/null")) as device, pytest.raises(NsmRequestError):
        device.call(b"\x00" * (nsm.REQUEST_MAX_SIZE + 1))


def test_decode_response_returns_the_fields() -> None:
    assert decode_response(FRAMES["response-describe-pcr"], "DescribePCR") == {
        "lock": True,
        "data": bytes(range(48)),
    }
