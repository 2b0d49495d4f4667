"""CiphertextForRecipient: the CMS envelope that carries a key to an attested enclave.

When a request names a ``Recipient``, the key service does not return the
plaintext: it seals it to the RSA key from the verified attestation document,
in the envelope AWS KMS uses (and :func:`seal_for_recipient` reproduces)::

    ContentInfo envelopedData                         BER, indefinite lengths
      EnvelopedData v2
        recipientInfos: KeyTransRecipientInfo v2
          rid [0] subjectKeyIdentifier                (ignored when opening)
          rsaesOaep(SHA-256, MGF1-SHA-256)            RSA-OAEP of the 32-byte content key
        encryptedContentInfo id-data
          aes256-CBC(16-byte IV), [0] ciphertext      PKCS#7-padded content

Opening is a short state machine: parse (any defect, or any algorithm other
than exactly these, is an :class:`EnvelopeFormatError` — a hostile relay must
not be able to downgrade the envelope); RSA-OAEP-decrypt the content key and
AES-256-CBC-decrypt and unpad the content (a failure there means the wrong
private key or a modified envelope: :class:`~strongroom.errors.TamperedError`).
asn1crypto parses BER lazily and raises many exception types on hostile
input, so every access to it happens behind one boundary that translates them.

CBC carries no MAC, as in AWS's format: the envelope's integrity comes from the
channel to the key service, and the content (a data key) is checked by the
authenticated encryption it unlocks.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from strongroom.attestation.errors import EnvelopeFormatError
from strongroom.errors import TamperedError

#: Largest envelope accepted (KMS returns at most 4 KiB of plaintext, sealed).
MAX_ENVELOPE_SIZE = 65_536
CONTENT_KEY_SIZE = 32
IV_SIZE = 16
_AES_BLOCK_BITS = 128
#: Size of the OCTET STRING chunks of the constructed encrypted content.
_CONTENT_CHUNK_SIZE = 1024
_OAEP = asym_padding.OAEP(
    mgf=asym_padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_SEQUENCE, _CONTEXT_0 = 0x30, 0xA0
_END_OF_CONTENTS = b"\x00\x00"
_WHAT = "CiphertextForRecipient"


@dataclass(frozen=True)
class ParsedEnvelope:
    """The parts of a well-formed envelope, algorithms already checked."""

    subject_key_identifier: bytes
    encrypted_key: bytes = field(repr=False)
    iv: bytes
    ciphertext: bytes = field(repr=False)


def seal_for_recipient(plaintext: bytes, public_key: rsa.RSAPublicKey) -> bytes:
    """Seal ``plaintext`` to ``public_key`` as AWS KMS does (BER, indefinite lengths)."""
    content_key, iv = os.urandom(CONTENT_KEY_SIZE), os.urandom(IV_SIZE)
    padder = padding.PKCS7(_AES_BLOCK_BITS).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    recipient = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier(
                name="subject_key_identifier", value=_subject_key_identifier(public_key)
            ),
            "key_encryption_algorithm": cms.KeyEncryptionAlgorithm(
                {"algorithm": "rsaes_oaep", "parameters": _oaep_parameters()}
            ),
            "encrypted_key": public_key.encrypt(content_key, _OAEP),
        }
    )
    recipients = cms.RecipientInfos([cms.RecipientInfo(name="ktri", value=recipient)])
    content_algorithm = cms.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv})
    chunks = b"".join(
        core.OctetString(ciphertext[i : i + _CONTENT_CHUNK_SIZE]).dump()
        for i in range(0, len(ciphertext), _CONTENT_CHUNK_SIZE)
    )
    encrypted_content_info = _indefinite(
        _SEQUENCE,
        cms.ContentType("data").dump(),
        content_algorithm.dump(),
        _indefinite(_CONTEXT_0, chunks),
    )
    enveloped_data = _indefinite(
        _SEQUENCE, core.Integer(2).dump(), recipients.dump(), encrypted_content_info
    )
    return _indefinite(
        _SEQUENCE,
        cms.ContentType("enveloped_data").dump(),
        _indefinite(_CONTEXT_0, enveloped_data),
    )


def parse_recipient_cms(data: bytes) -> ParsedEnvelope:
    """Parse an envelope (BER or DER; either encoding of the encrypted content)."""
    if len(data) > MAX_ENVELOPE_SIZE:
        raise EnvelopeFormatError(f"{_WHAT}: {len(data)} bytes (limit {MAX_ENVELOPE_SIZE})")
    try:
        return _parse(bytes(data))
    except EnvelopeFormatError:
        raise
    except Exception as exc:  # asn1crypto: ValueError, TypeError, KeyError, ... on hostile BER
        raise EnvelopeFormatError(f"{_WHAT}: malformed CMS ({type(exc).__name__})") from exc


def open_for_recipient(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Open an envelope with the recipient's private key and return the plaintext."""
    envelope = parse_recipient_cms(data)
    try:
        content_key = private_key.decrypt(envelope.encrypted_key, _OAEP)
    except ValueError as exc:
        raise TamperedError(
            f"{_WHAT}: the content key does not decrypt with this private key "
            "(wrong key, or the envelope was modified)"
        ) from exc
    if len(content_key) != CONTENT_KEY_SIZE:
        raise TamperedError(f"{_WHAT}: the content key is not {CONTENT_KEY_SIZE} bytes")
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(envelope.iv)).decryptor()
    padded = decryptor.update(envelope.ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(_AES_BLOCK_BITS).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise TamperedError(f"{_WHAT}: bad padding after decryption (modified content)") from exc


def _parse(data: bytes) -> ParsedEnvelope:
    info = cms.ContentInfo.load(data, strict=True)
    _expect(info["content_type"].native == "enveloped_data", "content is not EnvelopedData")
    enveloped = info["content"]
    _expect(enveloped["version"].native == "v2", "EnvelopedData version is not 2")
    _expect(
        enveloped["originator_info"].native is None
        and enveloped["unprotected_attrs"].native is None,
        "unexpected originatorInfo or unprotectedAttrs",
    )
    recipients = enveloped["recipient_infos"]
    _expect(len(recipients) == 1, f"expected one recipient, found {len(recipients)}")
    _expect(recipients[0].name == "ktri", "the recipient is not a KeyTransRecipientInfo")
    recipient = recipients[0].chosen
    _expect(recipient["version"].native == "v2", "KeyTransRecipientInfo version is not 2")
    _expect(
        recipient["rid"].name == "subject_key_identifier",
        "the recipient is not identified by subjectKeyIdentifier",
    )
    _check_key_encryption(recipient["key_encryption_algorithm"])

    content = enveloped["encrypted_content_info"]
    _expect(content["content_type"].native == "data", "encrypted content is not id-data")
    algorithm = content["content_encryption_algorithm"]
    _expect(algorithm["algorithm"].native == "aes256_cbc", "content cipher is not AES-256-CBC")
    iv = algorithm["parameters"].native
    _expect(isinstance(iv, bytes) and len(iv) == IV_SIZE, "the AES-CBC IV is not 16 bytes")
    ciphertext = content["encrypted_content"].native
    _expect(
        isinstance(ciphertext, bytes) and len(ciphertext) > 0 and len(ciphertext) % IV_SIZE == 0,
        "the encrypted content is missing or not a whole number of AES blocks",
    )
    encrypted_key = recipient["encrypted_key"].native
    _expect(isinstance(encrypted_key, bytes), "encryptedKey is not an OCTET STRING")
    return ParsedEnvelope(
        subject_key_identifier=recipient["rid"].chosen.native,
        encrypted_key=encrypted_key,
        iv=iv,
        ciphertext=ciphertext,
    )


def _check_key_encryption(algorithm: cms.KeyEncryptionAlgorithm) -> None:
    _expect(algorithm["algorithm"].native == "rsaes_oaep", "key transport is not RSAES-OAEP")
    parameters = algorithm["parameters"]
    _expect(isinstance(parameters, algos.RSAESOAEPParams), "RSAES-OAEP parameters are missing")
    mask = parameters["mask_gen_algorithm"]
    source = parameters["p_source_algorithm"]
    _expect(
        parameters["hash_algorithm"]["algorithm"].native == "sha256"
        and mask["algorithm"].native == "mgf1"
        and mask["parameters"]["algorithm"].native == "sha256",
        "RSAES-OAEP does not use SHA-256 with MGF1-SHA-256",
    )
    _expect(
        source["algorithm"].native == "p_specified" and source["parameters"].native == b"",
        "RSAES-OAEP uses a label",
    )


def _oaep_parameters() -> algos.RSAESOAEPParams:
    sha256 = {"algorithm": "sha256", "parameters": core.Null()}
    return algos.RSAESOAEPParams(
        {
            "hash_algorithm": sha256,
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
        }
    )


def _subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the subjectPublicKey bits (32 bytes, the length AWS uses)."""
    key_bits = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha256(key_bits).digest()


def _indefinite(tag: int, *contents: bytes) -> bytes:
    """A constructed BER element with indefinite length."""
    return bytes([tag, 0x80]) + b"".join(contents) + _END_OF_CONTENTS


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise EnvelopeFormatError(f"{_WHAT}: {problem}")
