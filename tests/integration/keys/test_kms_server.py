"""boto3 and the aws CLI against a real `strongroom keys serve` process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import httpx
import pytest

from strongroom.keys import service as keyservice
from strongroom.keys.audit import read_events
from strongroom.policy.measurements import runbook_policy
from strongroom.workspace import Workspace

PCR0 = "ab" * 48


def error_code(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def runbook(ws: Workspace, approved: list[str]) -> str:
    host = ws.identity("host").account_id
    return runbook_policy(ws.identity("vendor").account_id, [f"arn:aws:iam::{host}:root"], approved)


def test_data_key_round_trip(kms_client: Callable[[str], Any]) -> None:
    kms = kms_client("vendor")
    key = kms.create_key(Description="app key")["KeyMetadata"]
    assert key["KeyState"] == "Enabled" and key["Arn"].endswith(key["KeyId"])
    ctx = {"app": "classifier", "version": "1"}
    dk = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 32
    assert dk["KeyId"] == key["Arn"]
    out = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert out["Plaintext"] == dk["Plaintext"]
    assert out["KeyId"] == key["Arn"]


def test_encryption_context_is_bound(kms_client: Callable[[str], Any]) -> None:
    kms = kms_client("vendor")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret", EncryptionContext={"a": "1"})[
        "CiphertextBlob"
    ]
    for ctx in ({"a": "2"}, {}, {"a": "1", "b": "2"}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
        assert error_code(e) == "InvalidCiphertextException"
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"})["Plaintext"] == b"secret"


def test_tampered_and_foreign_ciphertext(kms_client: Callable[[str], Any]) -> None:
    kms = kms_client("vendor")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = bytearray(kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"])
    for i in (30, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kms.decrypt(CiphertextBlob=bytes(bad))
        assert error_code(e) == "InvalidCiphertextException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.decrypt(CiphertextBlob=b"not a blob of ours at all, no sir, not at all")
    assert error_code(e) == "InvalidCiphertextException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.decrypt(CiphertextBlob=bytes(blob), KeyId=other)
    assert error_code(e) == "IncorrectKeyException"


def test_runbook_policy_denies_host_without_attestation(
    workspace: Workspace, kms_client: Callable[[str], Any]
) -> None:
    vendor, host = kms_client("vendor"), kms_client("host")
    key = kms_client("vendor").create_key()["KeyMetadata"]
    dk = vendor.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=32)
    # the default policy only lets the vendor account in
    with pytest.raises(botocore.exceptions.ClientError) as e:
        host.decrypt(CiphertextBlob=dk["CiphertextBlob"])
    assert error_code(e) == "AccessDeniedException"

    vendor.put_key_policy(
        KeyId=key["KeyId"], PolicyName="default", Policy=runbook(workspace, [PCR0])
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        host.decrypt(CiphertextBlob=dk["CiphertextBlob"])
    assert error_code(e) == "AccessDeniedException"
    assert "explicit deny" in e.value.response["Error"]["Message"]
    # the vendor (owner) still can
    assert vendor.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    events = list(read_events(workspace.audit_log))
    denied = [ev for ev in events if ev["outcome"] == "denied" and ev["operation"] == "Decrypt"]
    assert denied[-1]["statement"] == "DenyDecryptUnlessApprovedImage"
    assert denied[-1]["caller"] == workspace.identity("host").principal_arn
    allowed = [ev for ev in events if ev["outcome"] == "allowed" and ev["operation"] == "Decrypt"]
    assert allowed[-1]["statement"] == "EnableOwnerAccess"
    # nothing secret in the audit log
    log = workspace.audit_log.read_text()
    assert base64.b64encode(dk["Plaintext"]).decode() not in log
    assert dk["Plaintext"].hex() not in log
    assert oct(workspace.audit_log.stat().st_mode & 0o777) == "0o600"


def test_cross_account_needs_arn(kms_client: Callable[[str], Any]) -> None:
    vendor, host = kms_client("vendor"), kms_client("host")
    key = vendor.create_key()["KeyMetadata"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        host.describe_key(KeyId=key["KeyId"])
    assert error_code(e) == "NotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        host.describe_key(KeyId=key["Arn"])
    assert error_code(e) == "AccessDeniedException"


def test_aliases_rotation_and_deletion(kms_client: Callable[[str], Any]) -> None:
    kms = kms_client("vendor")
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/app", TargetKeyId=key["KeyId"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.create_alias(AliasName="alias/app", TargetKeyId=key["KeyId"])
    assert error_code(e) == "AlreadyExistsException"
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=key["KeyId"])["Aliases"]] == [
        "alias/app"
    ]
    old = kms.encrypt(KeyId="alias/app", Plaintext=b"v1")["CiphertextBlob"]

    kms.enable_key_rotation(KeyId=key["KeyId"])
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    kms.rotate_key_on_demand(KeyId=key["KeyId"])
    new = kms.encrypt(KeyId="alias/app", Plaintext=b"v2")["CiphertextBlob"]
    assert old[20:24] != new[20:24]  # blob names the key version
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"v1"
    assert kms.decrypt(CiphertextBlob=new)["Plaintext"] == b"v2"

    assert kms.list_key_policies(KeyId=key["KeyId"])["PolicyNames"] == ["default"]
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.decrypt(CiphertextBlob=old)
    assert error_code(e) == "KMSInvalidStateException"
    kms.cancel_key_deletion(KeyId=key["KeyId"])
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"
    kms.enable_key(KeyId=key["KeyId"])
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"v1"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=3)
    assert error_code(e) == "ValidationException"


def test_generate_random_and_without_plaintext(kms_client: Callable[[str], Any]) -> None:
    kms = kms_client("host")
    assert len(kms.generate_random(NumberOfBytes=64)["Plaintext"]) == 64
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    dk = kms.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_128")
    assert "Plaintext" not in dk
    assert len(kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"]) == 16


def test_policy_lockout_and_malformed_policies(kms_client: Callable[[str], Any]) -> None:
    kms = kms_client("vendor")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    lockout = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                }
            ],
        }
    )
    for policy in ("{not json", json.dumps({"Statement": [{"Effect": "Maybe"}]}), lockout):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy)
        assert error_code(e) == "MalformedPolicyDocumentException"
    # still the original policy, and the server still serves
    assert (
        "Enable IAM User Permissions"
        in kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
    )


def _signed_request(
    ws: Workspace,
    endpoint: str,
    target: str,
    body: bytes,
    *,
    secret: str | None = None,
    when: Any = None,
) -> httpx.Response:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    ident = ws.identity("vendor")
    request = AWSRequest(
        method="POST",
        url=endpoint + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    signer = SigV4Auth(
        Credentials(ident.access_key_id, secret or ident.secret_access_key),
        "kms",
        ws.config.region,
    )
    if when is not None:
        from unittest import mock

        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(request)
    else:
        signer.add_auth(request)
    return httpx.post(endpoint + "/", content=body, headers=dict(request.headers.items()))


def test_bad_requests_get_kms_errors_and_server_keeps_serving(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    from datetime import UTC, datetime, timedelta

    def code(r: httpx.Response) -> str:
        return str(r.json()["__type"])

    r = httpx.post(
        key_service + "/", content=b"{}", headers={"X-Amz-Target": "TrentService.ListKeys"}
    )
    assert r.status_code == 400 and code(r) == "MissingAuthenticationTokenException"
    r = _signed_request(workspace, key_service, "TrentService.ListKeys", b"{}", secret="wrong" * 8)
    assert code(r) == "InvalidSignatureException"
    old = datetime.now(UTC) - timedelta(minutes=10)
    r = _signed_request(workspace, key_service, "TrentService.ListKeys", b"{}", when=old)
    assert code(r) == "InvalidSignatureException" and "expired" in r.json()["message"]
    r = _signed_request(workspace, key_service, "TrentService.NoSuchThing", b"{}")
    assert code(r) == "UnknownOperationException"
    r = _signed_request(workspace, key_service, "TrentService.ListKeys", b"{nope")
    assert code(r) == "SerializationException"
    r = _signed_request(workspace, key_service, "TrentService.DescribeKey", b'{"KeyId": 5}')
    assert code(r) == "ValidationException"
    r = _signed_request(workspace, key_service, "TrentService.ListKeys", b"x" * (600 * 1024))
    assert r.status_code == 413
    r = _signed_request(
        workspace, key_service, "TrentService.DescribeKey", b'{"KeyId": "../../etc/passwd"}'
    )
    assert code(r) == "NotFoundException"
    # a valid request still works
    assert kms_client("vendor").list_keys()["Truncated"] is False


AWS_CLI = str(Path(sys.executable).parent / "aws")  # the one the test extras install


def _aws_env(workspace: Workspace, identity: str) -> dict[str, str]:
    """The environment `strongroom env --as IDENTITY` exports, over this process's."""
    home = str(workspace.root)
    env_json = subprocess.run(
        [sys.executable, "-m", "strongroom", "--home", home, "--json", "env", "--as", identity],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    env = {**os.environ, **json.loads(env_json)["env"]}
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    return env


def _aws(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [AWS_CLI, *args, "--output", "json"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_aws_cli_against_the_server(workspace: Workspace, key_service: str, tmp_path: Path) -> None:
    env = _aws_env(workspace, "vendor")
    key_id = _aws(env, "kms", "create-key")["KeyMetadata"]["KeyId"]
    dk = _aws(env, "kms", "generate-data-key", "--key-id", key_id, "--key-spec", "AES_256")
    blob_file = tmp_path / "data-key.bin"
    blob_file.write_bytes(base64.b64decode(dk["CiphertextBlob"]))
    plain = _aws(env, "kms", "decrypt", "--ciphertext-blob", f"fileb://{blob_file}")
    assert plain["Plaintext"] == dk["Plaintext"]  # both base64


def test_aws_cli_with_session_credentials(workspace: Workspace, key_service: str) -> None:
    """The aws CLI, unchanged, gets session credentials from `keys serve` and uses them."""
    env = _aws_env(workspace, "host")
    host = workspace.identity("host")
    assume = ["--role-arn", host.principal_arn, "--role-session-name", "cli-session"]
    creds = _aws(env, "sts", "assume-role", *assume)["Credentials"]
    env |= {
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_SESSION_TOKEN": creds["SessionToken"],
    }
    assert _aws(env, "sts", "get-caller-identity")["Arn"].endswith("/cli-session")
    key_id = _aws(env, "kms", "create-key")["KeyMetadata"]["KeyId"]
    assert _aws(env, "kms", "describe-key", "--key-id", key_id)["KeyMetadata"]["KeyId"] == key_id
    # the token is part of the signature: without it the same keys are refused
    env.pop("AWS_SESSION_TOKEN")
    refused = subprocess.run([AWS_CLI, "kms", "list-keys"], env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    events = [e for e in read_events(workspace.audit_log) if e.get("session") == "cli-session"]
    assert [e["operation"] for e in events][-2:] == ["CreateKey", "DescribeKey"]


def test_restart_keeps_keys_aliases_and_policies(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    kms = kms_client("vendor")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/keep", TargetKeyId=key_id)
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=runbook(workspace, [PCR0]))
    blob = kms.encrypt(KeyId="alias/keep", Plaintext=b"persist")["CiphertextBlob"]
    keyservice.stop(workspace)
    rec = keyservice.start_detached(workspace)
    assert rec.addresses["endpoint"] == key_service  # same configured port
    kms = kms_client("vendor")
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"persist"
    assert PCR0 in kms.get_key_policy(KeyId="alias/keep", PolicyName="default")["Policy"]


def test_concurrent_clients_do_not_corrupt_the_store(kms_client: Callable[[str], Any]) -> None:
    errors: list[BaseException] = []
    created: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            kms = kms_client("vendor")
            for i in range(5):
                key_id = kms.create_key(Description=f"{n}-{i}")["KeyMetadata"]["KeyId"]
                kms.create_alias(AliasName=f"alias/t{n}-{i}", TargetKeyId=key_id)
                blob = kms.generate_data_key(KeyId=key_id, NumberOfBytes=32)["CiphertextBlob"]
                kms.decrypt(CiphertextBlob=blob)
                with lock:
                    created.append(key_id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    kms = kms_client("vendor")
    listed = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    assert set(created) <= listed and len(created) == 40
    assert (
        len([a for a in kms.list_aliases()["Aliases"] if a["AliasName"].startswith("alias/t")])
        == 40
    )
