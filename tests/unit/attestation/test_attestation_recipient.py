"""CiphertextForRecipient: real KMS envelopes, our own envelopes, and hostile ones."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.attestation.errors import EnvelopeFormatError
from strongroom.attestation.recipient import (
    MAX_ENVELOPE_SIZE,
    open_for_recipient,
    parse_recipient_cms,
    seal_for_recipient,
)
from strongroom.errors import InvalidInputError, StrongroomError, TamperedError

from .helpers import ASSETS

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EXPECTED = json.loads((ASSETS / "kms-recipient-cms.expected.json").read_text())
KMS_FILES = {name: (ASSETS / name).read_bytes() for name in EXPECTED}
SEALED = seal_for_recipient(b"a 32-byte data key, for example!", KEY.public_key())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_kms_envelopes_parse(name: str) -> None:
    data = KMS_FILES[name]
    expected = EXPECTED[name]
    assert hashlib.sha256(data).hexdigest() == expected["sha256"]
    envelope = parse_recipient_cms(data)
    assert envelope.encrypted_key.hex() == expected["encrypted_key_hex"]
    assert envelope.iv.hex() == expected["iv_hex"]
    assert envelope.ciphertext.hex() == expected["ciphertext_hex"]
    assert len(envelope.subject_key_identifier) == 32


def test_real_kms_envelope_does_not_open_with_our_key() -> None:
    with pytest.raises(TamperedError, match="does not decrypt with this private key"):
        open_for_recipient(KMS_FILES["kms-recipient-cms-1.ber"], KEY)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 32, 1000, 4096])
def test_seal_open_round_trip(size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    sealed = seal_for_recipient(plaintext, KEY.public_key())
    assert open_for_recipient(sealed, KEY) == plaintext


def test_sealed_envelope_is_laid_out_like_kms() -> None:
    # outer ContentInfo, [0] and EnvelopedData use indefinite lengths, as AWS writes them
    assert SEALED.startswith(bytes.fromhex("308006092a864886f70d010703a080308002010231"))
    assert SEALED.endswith(b"\x00" * 10)
    kms = KMS_FILES["kms-recipient-cms-1.ber"]
    oaep_algorithm = kms[65:127]  # the rsaesOaep AlgorithmIdentifier AWS KMS wrote
    aes_prefix = kms[389:402]  # id-data, then the aes256-CBC AlgorithmIdentifier header
    assert oaep_algorithm in SEALED
    assert aes_prefix in SEALED
    envelope = parse_recipient_cms(SEALED)
    assert len(envelope.subject_key_identifier) == 32 and len(envelope.iv) == 16


def test_der_reencoding_still_opens() -> None:
    der = cms.ContentInfo.load(SEALED).dump(force=True)
    assert der[:2] != b"\x30\x80"
    assert open_for_recipient(der, KEY) == b"a 32-byte data key, for example!"


def test_wrong_private_key() -> None:
    with pytest.raises(TamperedError):
        open_for_recipient(SEALED, OTHER_KEY)


def test_modified_content_fails_the_padding_check() -> None:
    sealed = seal_for_recipient(b"x" * 20, KEY.public_key())  # two AES blocks
    envelope = parse_recipient_cms(sealed)
    first_block = envelope.ciphertext[:16]
    tampered = sealed.replace(first_block, first_block[:15] + bytes([first_block[15] ^ 0xFF]))
    with pytest.raises(TamperedError, match="padding"):
        open_for_recipient(tampered, KEY)


# --- algorithm and structure checks --------------------------------------------------


def _mutate(change: Callable[[Any], None]) -> bytes:
    info = cms.ContentInfo.load(SEALED)
    change(info)
    return info.dump(force=True)


def _recipient(info: Any) -> Any:
    return info["content"]["recipient_infos"][0].chosen


def _set_oaep_hash(info: Any) -> None:
    parameters = _recipient(info)["key_encryption_algorithm"]["parameters"]
    parameters["hash_algorithm"] = {"algorithm": "sha1"}


def _set_pkcs1v15(info: Any) -> None:
    _recipient(info)["key_encryption_algorithm"] = {"algorithm": "rsaes_pkcs1v15"}


def _set_aes128(info: Any) -> None:
    algorithm = info["content"]["encrypted_content_info"]["content_encryption_algorithm"]
    info["content"]["encrypted_content_info"]["content_encryption_algorithm"] = {
        "algorithm": "aes128_cbc",
        "parameters": algorithm["parameters"].native,
    }


def _set_label(info: Any) -> None:
    parameters = _recipient(info)["key_encryption_algorithm"]["parameters"]
    parameters["p_source_algorithm"] = {"algorithm": "p_specified", "parameters": b"label"}


def _set_short_iv(info: Any) -> None:
    info["content"]["encrypted_content_info"]["content_encryption_algorithm"] = {
        "algorithm": "aes256_cbc",
        "parameters": b"\x00" * 8,
    }


def _two_recipients(info: Any) -> None:
    recipients = info["content"]["recipient_infos"]
    info["content"]["recipient_infos"] = [recipients[0], recipients[0]]


def _version_0(info: Any) -> None:
    info["content"]["version"] = "v0"


def _recipient_by_issuer(info: Any) -> None:
    _recipient(info)["rid"] = cms.RecipientIdentifier(
        name="issuer_and_serial_number",
        value={"issuer": {"": {}}, "serial_number": 1},
    )


def _content_type_signed(info: Any) -> None:
    info["content"]["encrypted_content_info"]["content_type"] = "signed_data"


def _no_content(info: Any) -> None:
    info["content"]["encrypted_content_info"]["encrypted_content"] = None


def _partial_block(info: Any) -> None:
    content = info["content"]["encrypted_content_info"]
    content["encrypted_content"] = content["encrypted_content"].native[:-1]


MUTATIONS = {
    "OAEP with SHA-1": (_set_oaep_hash, "SHA-256"),
    "PKCS#1 v1.5": (_set_pkcs1v15, "not RSAES-OAEP"),
    "AES-128": (_set_aes128, "not AES-256-CBC"),
    "OAEP label": (_set_label, "label"),
    "short IV": (_set_short_iv, "IV"),
    "two recipients": (_two_recipients, "expected one recipient, found 2"),
    "version 0": (_version_0, "version is not 2"),
    "issuer and serial": (_recipient_by_issuer, "subjectKeyIdentifier"),
    "not id-data": (_content_type_signed, "not id-data"),
    "no content": (_no_content, "missing"),
    "partial block": (_partial_block, "AES blocks"),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_unexpected_envelopes_are_rejected(case: str) -> None:
    change, message = MUTATIONS[case]
    data = _mutate(change)
    with pytest.raises(EnvelopeFormatError, match=message):
        parse_recipient_cms(data)
    with pytest.raises(EnvelopeFormatError):
        open_for_recipient(data, KEY)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30\x80",
        SEALED + b"\x00",
        SEALED[:-2],
        cms.ContentInfo({"content_type": "data", "content": b"x"}).dump(),
        b"\x30" * (MAX_ENVELOPE_SIZE + 1),
    ],
    ids=["empty", "truncated header", "trailing", "truncated", "id-data", "too large"],
)
def test_malformed_envelopes_are_rejected(data: bytes) -> None:
    with pytest.raises(EnvelopeFormatError):
        parse_recipient_cms(data)


def test_envelope_errors_are_invalid_input() -> None:
    assert issubclass(EnvelopeFormatError, InvalidInputError)


# --- fuzzing: nothing but our own errors may escape -----------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(StrongroomError):
        parse_recipient_cms(data)
    with contextlib.suppress(StrongroomError):
        open_for_recipient(data, KEY)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([SEALED, *KMS_FILES.values()]),
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["flip", "insert", "delete"]),
)
def test_fuzz_mutated_envelopes(base: bytes, edits: list[tuple[int, int]], how: str) -> None:
    data = bytearray(base)
    for position, value in edits:
        index = position % len(data)
        if how == "flip":
            data[index] ^= value or 1
        elif how == "insert":
            data.insert(index, value)
        else:
            del data[index]
    with contextlib.suppress(EnvelopeFormatError):
        parse_recipient_cms(bytes(data))
    with contextlib.suppress(EnvelopeFormatError, TamperedError):
        open_for_recipient(bytes(data), KEY)
