"""Parsing and building attestation documents: real documents, Nitro's layout, hostile input."""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.attestation import _cbor
from strongroom.attestation.document import (
    MAX_DOCUMENT_SIZE,
    PAYLOAD_FIELDS,
    AttestationDocument,
    load_document,
    sign_document,
)
from strongroom.attestation.errors import AttestationFormatError
from strongroom.errors import StrongroomError

from .helpers import (
    DELETE,
    PCRS,
    PRODUCTION_DOC,
    PRODUCTION_TIME,
    Pki,
    rebuild,
)

# --- the real documents --------------------------------------------------------------


def test_production_document_parses(production_doc: bytes) -> None:
    doc = AttestationDocument.parse(production_doc)
    assert production_doc[:6] == bytes.fromhex("8444a1013822")
    assert doc.module_id == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    assert doc.digest == "SHA384"
    assert doc.timestamp == 1725719859545
    assert doc.time == PRODUCTION_TIME
    assert sorted(doc.pcrs) == list(range(16))
    assert all(len(value) == 48 for value in doc.pcrs.values())
    assert doc.pcrs[0].hex().startswith("e72a46ca")
    assert doc.pcrs[0].hex().endswith("e86a")
    assert doc.public_key == doc.user_data == doc.nonce == b"\x01" * 1024
    assert len(doc.cabundle) == 4
    assert doc.protected == bytes.fromhex("a1013822")
    assert doc.raw == production_doc
    assert doc.ca_certificates()[0].subject.rfc4514_string() == (
        "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    )


def test_debug_document_parses(debug_doc: bytes) -> None:
    doc = AttestationDocument.parse(debug_doc)
    assert all(not any(doc.pcrs[index]) for index in (0, 1, 2))


def test_tag_18_is_accepted(production_doc: bytes) -> None:
    tagged = b"\xd2" + production_doc
    assert (
        AttestationDocument.parse(tagged).payload
        == AttestationDocument.parse(production_doc).payload
    )


def test_load_document_detects_base64(production_doc: bytes) -> None:
    text = base64.encodebytes(production_doc)  # with newlines every 76 characters
    assert b"\n" in text
    assert load_document(text).raw == production_doc
    assert load_document(text.decode()).raw == production_doc
    assert load_document(production_doc).raw == production_doc


@pytest.mark.parametrize(
    "data",
    [b"", b"not base64 at all!", "caf\u00e9", base64.b64encode(b"\x01\x02"), b"\x85" + b"\x00" * 4],
)
def test_load_document_rejects_garbage(data: bytes | str) -> None:
    with pytest.raises(AttestationFormatError):
        load_document(data)


def test_load_document_bounds_base64_text() -> None:
    with pytest.raises(AttestationFormatError, match="too large"):
        load_document(b"A" * (2 * MAX_DOCUMENT_SIZE + 4))


# --- building documents as Nitro does ------------------------------------------------


def test_sign_document_uses_nitro_layout(pki: Pki) -> None:
    _, intermediate, leaf = pki.chain()
    data = sign_document(
        module_id="i-x-enc0",
        timestamp=1_900_000_000_000,
        pcrs={4: b"\x04" * 48, 0: b"\x00" * 48},
        certificate=leaf.der,
        cabundle=[intermediate.der],
        user_data=b"hello",
        signing_key=leaf.key,
    )
    assert data[:6] == bytes.fromhex("8444a1013822")  # untagged, protected {1: -35}
    _, unprotected, payload, signature = cbor2.loads(data)
    assert unprotected == {}
    assert len(signature) == 96
    fields = cbor2.loads(payload)
    assert list(fields) == list(PAYLOAD_FIELDS)
    assert list(fields["pcrs"]) == [0, 4]
    assert fields["public_key"] is None and fields["nonce"] is None
    doc = AttestationDocument.parse(data)
    assert doc.user_data == b"hello"
    assert doc.signature_verifies(leaf.key.public_key())
    assert not doc.signature_verifies(intermediate.key.public_key())


def test_sign_document_refuses_non_p384_keys(pki: Pki) -> None:
    _, intermediate, leaf = pki.chain()
    with pytest.raises(AttestationFormatError, match="P-384"):
        sign_document(
            module_id="m",
            timestamp=1,
            pcrs=PCRS,
            certificate=leaf.der,
            cabundle=[intermediate.der],
            signing_key=ec.generate_private_key(ec.SECP256R1()),
        )


def test_sign_document_refuses_what_parse_rejects(pki: Pki) -> None:
    _, intermediate, leaf = pki.chain()
    with pytest.raises(AttestationFormatError, match="user_data"):
        sign_document(
            module_id="m",
            timestamp=1,
            pcrs=PCRS,
            certificate=leaf.der,
            cabundle=[intermediate.der],
            user_data=b"x" * 1025,
            signing_key=leaf.key,
        )


def test_signature_does_not_verify_with_another_curve(production_doc: bytes) -> None:
    doc = AttestationDocument.parse(production_doc)
    assert not doc.signature_verifies(ec.generate_private_key(ec.SECP256R1()).public_key())


# --- hostile documents: each rejected with an error naming the problem ----------------

_CERT = object()  # placeholder: replaced by the production leaf certificate


def _payload_case(**changes: Any) -> Callable[[bytes], bytes]:
    return lambda doc: rebuild(doc, **changes)


def _cose(*items: Any) -> Callable[[bytes], bytes]:
    def build(doc: bytes) -> bytes:
        parts = cbor2.loads(doc)
        return cbor2.dumps([parts[i] if item is _CERT else item for i, item in enumerate(items)])

    return build


HOSTILE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "not an array": (lambda doc: cbor2.dumps({"a": 1}), "array of 4"),
    "array of 3": (lambda doc: cbor2.dumps(cbor2.loads(doc)[:3]), "array of 4"),
    "array of 5": (lambda doc: cbor2.dumps([*cbor2.loads(doc), b""]), "array of 4"),
    "protected not bytes": (_cose({1: -35}, _CERT, _CERT, _CERT), "protected header"),
    "unprotected not a map": (_cose(_CERT, [], _CERT, _CERT), "unprotected header"),
    "detached payload": (_cose(_CERT, _CERT, None, _CERT), "payload"),
    "truncated signature": (
        lambda doc: rebuild(doc, signature=cbor2.loads(doc)[3][:95]),
        "95 bytes, expected 96",
    ),
    "empty signature": (lambda doc: rebuild(doc, signature=b""), "0 bytes, expected 96"),
    "signature as text": (lambda doc: rebuild(doc, signature="x" * 96), "byte string"),
    "wrong alg": (
        lambda doc: rebuild(doc, protected=cbor2.dumps({1: -7})),
        "unsupported algorithm -7",
    ),
    "alg as text": (
        lambda doc: rebuild(doc, protected=cbor2.dumps({1: "ES384"})),
        "unsupported algorithm",
    ),
    "no alg": (lambda doc: rebuild(doc, protected=b""), "no algorithm"),
    "alg keyed by true": (
        lambda doc: rebuild(doc, protected=cbor2.dumps({True: -35})),
        "invalid label",
    ),
    "unknown critical header": (
        lambda doc: rebuild(doc, protected=cbor2.dumps({1: -35, 2: [99], 99: 1})),
        "unknown critical header 99",
    ),
    "crit not an array": (
        lambda doc: rebuild(doc, protected=cbor2.dumps({1: -35, 2: 1})),
        "crit must be",
    ),
    "alg in unprotected": (
        lambda doc: rebuild(doc, unprotected={1: -35}),
        "must be in the protected header",
    ),
    "payload not a map": (lambda doc: rebuild(doc, payload=cbor2.dumps([1])), "expected a map"),
    "payload not cbor": (lambda doc: rebuild(doc, payload=b"\xff\xff"), "attestation payload"),
    "unknown field": (_payload_case(extra=b""), "unknown field 'extra'"),
    "integer field name": (lambda doc: rebuild(doc, payload=cbor2.dumps({1: 2})), "unknown field"),
    "null module_id": (_payload_case(module_id=None), "missing field 'module_id'"),
    "empty module_id": (_payload_case(module_id=""), "module_id"),
    "numeric module_id": (_payload_case(module_id=7), "module_id"),
    "digest SHA256": (_payload_case(digest="SHA256"), "digest"),
    "timestamp zero": (_payload_case(timestamp=0), "timestamp"),
    "timestamp negative": (_payload_case(timestamp=-5), "timestamp"),
    "timestamp bool": (_payload_case(timestamp=True), "timestamp"),
    "timestamp text": (_payload_case(timestamp="1725719859545"), "timestamp"),
    "timestamp past year 9999": (_payload_case(timestamp=2**63), "timestamp"),
    "pcrs empty": (_payload_case(pcrs={}), "pcrs"),
    "pcrs a list": (_payload_case(pcrs=[b"\x00" * 48]), "pcrs"),
    "pcr index 32": (_payload_case(pcrs={32: b"\x00" * 48}), "invalid index 32"),
    "pcr index negative": (_payload_case(pcrs={-1: b"\x00" * 48}), "invalid index -1"),
    "pcr index text": (_payload_case(pcrs={"0": b"\x00" * 48}), "invalid index '0'"),
    "pcr 47 bytes": (_payload_case(pcrs={0: b"\x00" * 47}), "PCR0: expected 32, 48 or 64"),
    "pcr as text": (_payload_case(pcrs={0: "0" * 48}), "PCR0"),
    "33 pcrs": (
        _payload_case(pcrs={i: b"\x00" * 48 for i in range(33)}),
        "pcrs: expected a map of 1 to 32",
    ),
    "certificate not DER": (
        _payload_case(certificate=b"\x30\x03abc"),
        "certificate: not a usable DER",
    ),
    "certificate empty": (_payload_case(certificate=b""), "certificate: 0 bytes"),
    "certificate too large": (_payload_case(certificate=b"\x30" * 1025), "1025 bytes"),
    "cabundle empty": (_payload_case(cabundle=[]), "cabundle"),
    "cabundle not an array": (_payload_case(cabundle=b"\x30"), "cabundle"),
    "cabundle entry text": (_payload_case(cabundle=["root"]), "cabundle[0]: expected a byte"),
    "cabundle too long": (_payload_case(cabundle=[b"\x30"] * 17), "cabundle"),
    "missing cabundle": (_payload_case(cabundle=DELETE), "missing field 'cabundle'"),
    "missing certificate": (_payload_case(certificate=DELETE), "missing field 'certificate'"),
    "missing pcrs": (_payload_case(pcrs=DELETE), "missing field 'pcrs'"),
    "missing timestamp": (_payload_case(timestamp=DELETE), "missing field 'timestamp'"),
    "missing digest": (_payload_case(digest=DELETE), "missing field 'digest'"),
    "public_key too large": (_payload_case(public_key=b"k" * 1025), "public_key: 1025 bytes"),
    "public_key empty": (_payload_case(public_key=b""), "public_key: 0 bytes"),
    "public_key number": (_payload_case(public_key=5), "public_key: expected a byte string"),
    "user_data too large": (_payload_case(user_data=b"u" * 1025), "user_data: 1025 bytes"),
    "nonce too large": (_payload_case(nonce=b"n" * 1025), "nonce: 1025 bytes"),
    "nonce as text": (_payload_case(nonce="abc"), "nonce: expected a byte string"),
    "trailing bytes": (lambda doc: doc + b"\x00", "1 trailing bytes"),
    "truncated document": (lambda doc: doc[:-10], "truncated"),
    "indefinite-length array": (
        lambda doc: b"\x9f" + cbor2.dumps(cbor2.loads(doc))[1:] + b"\xff",
        "indefinite-length",
    ),
    "tag inside the payload": (_payload_case(module_id=cbor2.CBORTag(35, "a+")), "tag 35"),
    "float inside the payload": (_payload_case(timestamp=1.5e12), "floats"),
    "undefined value": (_payload_case(nonce=cbor2.undefined), "simple values"),
    "duplicate payload key": (
        lambda doc: rebuild(doc, payload=b"\xa2" + (cbor2.dumps("nonce") + b"\x40") * 2),
        "Duplicate",
    ),
    "too large": (lambda doc: doc + b"\x00" * MAX_DOCUMENT_SIZE, "limit 262144"),
    "deep nesting": (_payload_case(user_data=[[[[[[[[[[b""]]]]]]]]]]), "nesting"),
    "wrong tag": (lambda doc: b"\xd1" + doc, "tag 17"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_documents_are_rejected(production_doc: bytes, case: str) -> None:
    mutate, message = HOSTILE[case]
    with pytest.raises(AttestationFormatError, match=re.escape(message)):
        AttestationDocument.parse(mutate(production_doc))


def test_colliding_map_keys_cannot_stall_the_decoder() -> None:
    # 20,000 integer keys with equal hashes take cbor2 seconds to insert; the
    # header walk rejects the container before anything is built.
    prime, count = (1 << 61) - 1, 20_000
    entries = b"".join(cbor2.dumps(i * prime) + b"\x40" for i in range(1, count + 1))
    bomb = b"\xb9" + count.to_bytes(2, "big") + entries
    started = time.perf_counter()
    with pytest.raises(AttestationFormatError, match="entries"):
        _cbor.loads(bomb, what="bomb")
    assert time.perf_counter() - started < 0.5


# --- fuzzing: nothing but our own errors may escape -----------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(StrongroomError):
        AttestationDocument.parse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=2048))
def test_fuzz_load_document(data: bytes | str) -> None:
    with contextlib.suppress(StrongroomError):
        load_document(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(["flip", "insert", "delete"]),
)
def test_fuzz_mutated_production_document(edits: list[tuple[int, int]], how: str) -> None:
    data = bytearray(PRODUCTION_DOC)
    for position, value in edits:
        index = position % len(data)
        if how == "flip":
            data[index] ^= value or 1
        elif how == "insert":
            data.insert(index, value)
        else:
            del data[index]
    try:
        doc = AttestationDocument.parse(bytes(data))
    except AttestationFormatError:
        return
    assert doc.raw == bytes(data)


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1)
    | st.binary(max_size=80)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.integers(0, 40) | st.sampled_from(PAYLOAD_FIELDS), children, max_size=10
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(PAYLOAD_FIELDS), _cbor_values, max_size=3))
def test_fuzz_structured_payloads(overrides: dict[str, Any]) -> None:
    # Start from the real payload so that most fields pass and the fuzzed ones are reached.
    fields = {**cbor2.loads(cbor2.loads(PRODUCTION_DOC)[2]), **overrides}
    data = rebuild(PRODUCTION_DOC, payload=cbor2.dumps(fields))
    with contextlib.suppress(AttestationFormatError):
        AttestationDocument.parse(data)


def test_invalid_utf8_text_is_rejected() -> None:
    with pytest.raises(AttestationFormatError, match="invalid CBOR"):
        AttestationDocument.parse(rebuild(PRODUCTION_DOC, payload=b"\xa1\x62\xff\xfe\x01"))
