"""The host side of the attestor socket: NSM requests in, documents with the registered PCRs out."""

from __future__ import annotations

import asyncio
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from strongroom.attestation.authority import AuthorityAttestor, LocalAuthority
from strongroom.attestation.document import AttestationDocument
from strongroom.attestation.errors import NsmRequestError
from strongroom.attestation.nsm import decode_response, encode_attestation_request
from strongroom.enclave._attestor import AttestorService, serve_attestor
from strongroom.server.attestor import SocketAttestor
from strongroom.transport.base import UnixAddress, bind

PCRS = {i: bytes([i]) * 48 for i in range(16)}


@pytest.fixture
def service(tmp_path: Path) -> AttestorService:
    authority = LocalAuthority.open_or_create(tmp_path / "ca")
    return AttestorService(AuthorityAttestor(authority, PCRS, "i-local-test-enc0"))


def test_attestation_binds_only_what_the_request_may_choose(service: AttestorService) -> None:
    request = encode_attestation_request(public_key=b"K" * 300, user_data=b"U", nonce=b"N" * 32)
    document = decode_response(service.respond(request), "Attestation")["document"]
    parsed = AttestationDocument.parse(document)
    assert parsed.pcrs == PCRS and parsed.module_id == "i-local-test-enc0"
    assert (parsed.public_key, parsed.user_data, parsed.nonce) == (b"K" * 300, b"U", b"N" * 32)


@pytest.mark.parametrize(
    ("request_value", "code"),
    [
        ({"Attestation": {"nonce": b"n", "pcrs": {0: b"\0" * 48}}}, "InvalidArgument"),
        ({"Attestation": {"nonce": "text, not bytes"}}, "InvalidArgument"),
        ({"Attestation": {"user_data": b"x" * 1025}}, "InvalidArgument"),
        ({"Attestation": None}, "InvalidArgument"),
        ({"Attestation": {}, "Other": {}}, "InvalidArgument"),
        ("GetRandom", "InvalidOperation"),
        ({"DescribePCR": {"index": 0}}, "InvalidOperation"),
        ([1, 2], "InvalidArgument"),
    ],
)
def test_other_requests_get_nsm_errors(
    service: AttestorService, request_value: object, code: str
) -> None:
    response = cbor2.loads(service.respond(cbor2.dumps(request_value)))
    assert response == {"Error": code}


def test_undecodable_frames_get_invalid_argument(service: AttestorService) -> None:
    assert cbor2.loads(service.respond(b"\xff\x00garbage")) == {"Error": "InvalidArgument"}


@pytest.fixture
def attestor_socket(service: AttestorService) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sr-att-") as directory:
        path = Path(directory) / "attestor.sock"
        listener = bind(UnixAddress(str(path)))
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(serve_attestor(listener, service))
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        yield path
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(server.wait_closed())
        loop.close()


def test_the_enclave_side_speaks_the_same_codec_over_the_socket(attestor_socket: Path) -> None:
    attestor = SocketAttestor(str(attestor_socket))
    document = attestor.attest(nonce=b"n" * 16, user_data=b"hello")
    parsed = AttestationDocument.parse(document)
    assert parsed.pcrs == PCRS and parsed.nonce == b"n" * 16 and parsed.user_data == b"hello"
    with pytest.raises(NsmRequestError, match="InvalidOperation"):
        attestor.get_random()


def test_an_oversized_request_is_refused_before_it_is_read(attestor_socket: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(attestor_socket))
        sock.sendall(struct.pack(">I", 1 << 20))
        (length,) = struct.unpack(">I", sock.recv(4))
        frame = sock.recv(length)
    with pytest.raises(NsmRequestError, match="InputTooLarge"):
        decode_response(frame, "Attestation")
