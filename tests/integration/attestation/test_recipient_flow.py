"""The attested key release, end to end: enclave-side code + boto3 + `strongroom keys serve`."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from strongroom.attestation.authority import AuthorityAttestor, LocalAuthority
from strongroom.attestation.recipient import open_for_recipient
from strongroom.attestation.release import decrypt_with_attestation
from strongroom.keys.audit import read_events
from strongroom.keys.aws import KmsKeyService
from strongroom.policy import runbook_policy
from strongroom.workspace import Workspace

APPROVED = bytes.fromhex("11" * 48)
OTHER = bytes.fromhex("22" * 48)


def pcrs(pcr0: bytes) -> dict[int, bytes]:
    return {0: pcr0, 1: b"\x01" * 48, 2: b"\x02" * 48}


@pytest.fixture
def sealed_key(workspace: Workspace, kms_client: Callable[[str], Any]) -> dict[str, Any]:
    vendor = kms_client("vendor")
    key = vendor.create_key()["KeyMetadata"]
    host = f"arn:aws:iam::{workspace.identity('host').account_id}:root"
    policy = runbook_policy(workspace.identity("vendor").account_id, [host], [APPROVED.hex()])
    vendor.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=policy)
    dk = vendor.generate_data_key(
        KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext={"app": "x"}
    )
    return {"key": key, "blob": dk["CiphertextBlob"], "plaintext": dk["Plaintext"]}


def host_service(workspace: Workspace, endpoint: str) -> KmsKeyService:
    ident = workspace.identity("host")
    return KmsKeyService.connect(
        region="us-east-1",
        endpoint_url=endpoint,
        access_key_id=ident.access_key_id,
        secret_access_key=ident.secret_access_key,
    )


def test_approved_enclave_gets_the_key_and_only_it_can_open_it(
    workspace: Workspace,
    key_service: str,
    kms_client: Callable[[str], Any],
    sealed_key: dict[str, Any],
) -> None:
    authority = LocalAuthority.open_or_create(workspace.ca_dir)
    attestor = AuthorityAttestor(authority, pcrs(APPROVED), "enclave-1")
    plaintext = decrypt_with_attestation(
        host_service(workspace, key_service),
        attestor,
        sealed_key["blob"],
        encryption_context={"app": "x"},
    )
    assert plaintext == sealed_key["plaintext"]

    # the raw response: CiphertextForRecipient, never Plaintext; other keys cannot open it
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    document = authority.attest(pcrs(APPROVED), module_id="enclave-1", public_key=spki)
    response = kms_client("host").decrypt(
        CiphertextBlob=sealed_key["blob"],
        EncryptionContext={"app": "x"},
        Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": document},
    )
    assert not response.get("Plaintext")
    cms = response["CiphertextForRecipient"]
    assert open_for_recipient(cms, private) == sealed_key["plaintext"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Exception) as e:
        open_for_recipient(cms, stranger)
    assert type(e.value).__module__.startswith("strongroom")
    assert base64.b64encode(sealed_key["plaintext"]).decode() not in str(response)

    events = [ev for ev in read_events(workspace.audit_log) if ev.get("attestation")]
    assert events[-1]["attestation"]["image_sha384"] == APPROVED.hex()
    assert events[-1]["outcome"] == "allowed"


def _denied(workspace: Workspace, kms: Any, blob: bytes, document: bytes) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.decrypt(
            CiphertextBlob=blob,
            EncryptionContext={"app": "x"},
            Recipient={
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                "AttestationDocument": document,
            },
        )
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    return str(e.value.response["Error"]["Message"])


def test_every_bad_attestation_is_denied(
    workspace: Workspace,
    key_service: str,
    kms_client: Callable[[str], Any],
    sealed_key: dict[str, Any],
    tmp_path: Any,
) -> None:
    host = kms_client("host")
    blob = sealed_key["blob"]
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    authority = LocalAuthority.open_or_create(workspace.ca_dir)

    assert "not approved" not in _denied(workspace, host, blob, b"\x84garbage")
    # an unapproved image
    _denied(workspace, host, blob, authority.attest(pcrs(OTHER), module_id="e", public_key=spki))
    # a debug enclave: PCRs are zero
    _denied(
        workspace, host, blob, authority.attest(pcrs(b"\x00" * 48), module_id="e", public_key=spki)
    )
    # signed by another CA
    rogue = LocalAuthority.open_or_create(tmp_path / "rogue-ca")
    _denied(workspace, host, blob, rogue.attest(pcrs(APPROVED), module_id="e", public_key=spki))
    # older than five minutes
    old = datetime.now(UTC) - timedelta(minutes=6)
    _denied(
        workspace,
        host,
        blob,
        authority.attest(pcrs(APPROVED), module_id="e", public_key=spki, now=old),
    )
    # tampered payload and tampered signature
    good = bytearray(authority.attest(pcrs(APPROVED), module_id="e", public_key=spki))
    for index in (40, len(good) - 5):
        bad = bytearray(good)
        bad[index] ^= 0x01
        _denied(workspace, host, blob, bytes(bad))
    # no public key, or not RSA-2048
    _denied(workspace, host, blob, authority.attest(pcrs(APPROVED), module_id="e"))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - the weak key is the point
    _denied(
        workspace,
        host,
        blob,
        authority.attest(
            pcrs(APPROVED),
            module_id="e",
            public_key=small.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
    )
    # the real, production Nitro document: not under the workspace root, and long expired
    from pathlib import Path

    real = Path(__file__).parents[2] / "assets" / "nitro-attestation-production.b64"
    _denied(workspace, host, blob, base64.b64decode(real.read_text()))
    # and without any Recipient, the host is denied as well
    with pytest.raises(botocore.exceptions.ClientError) as e:
        host.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "x"})
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    # the approved document, for contrast, works
    ok = host.decrypt(
        CiphertextBlob=blob,
        EncryptionContext={"app": "x"},
        Recipient={
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": bytes(good),
        },
    )
    assert "CiphertextForRecipient" in ok and not ok.get("Plaintext")


def test_generate_data_key_and_random_with_recipient(
    workspace: Workspace,
    key_service: str,
    kms_client: Callable[[str], Any],
) -> None:
    vendor = kms_client("vendor")
    key_id = vendor.create_key()["KeyMetadata"]["KeyId"]
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    authority = LocalAuthority.open_or_create(workspace.ca_dir)
    recipient = {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": authority.attest(pcrs(APPROVED), module_id="e", public_key=spki),
    }
    dk = vendor.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=recipient)
    assert not dk.get("Plaintext")
    key = open_for_recipient(dk["CiphertextForRecipient"], private)
    assert vendor.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == key
    rnd = vendor.generate_random(NumberOfBytes=48, Recipient=recipient)
    assert not rnd.get("Plaintext")
    assert len(open_for_recipient(rnd["CiphertextForRecipient"], private)) == 48
