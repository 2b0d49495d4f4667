"""Scoped, short-lived run credentials, against a real `keys serve` process.

The host must never hand its long-term secret to an enclave. What it hands
over instead (STS session credentials allowing ``kms:Decrypt`` on the
package's key for 15 minutes) must open that key's data key and nothing
else, must stop working when it expires, and must be what `strongroom run`
actually sends. Every refusal is checked next to the legitimate use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
import uvicorn
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from strongroom.errors import CredentialError
from strongroom.keys import service as keyservice
from strongroom.keys import sessions
from strongroom.keys.audit import read_events
from strongroom.keys.aws import KmsKeyService
from strongroom.workspace import Workspace
from tests.security.test_keys_sigv4 import Signer

NO_RETRIES = botocore.config.Config(retries={"max_attempts": 1})


def client(ws: Workspace, endpoint: str, service: str, signer: Signer, **config: Any) -> Any:
    return boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        region_name=ws.config.region,
        endpoint_url=endpoint,
        aws_access_key_id=signer.access_key_id,
        aws_secret_access_key=signer.secret_access_key,
        aws_session_token=signer.session_token,
        config=NO_RETRIES.merge(botocore.config.Config(**config)),
    )


def assume_host_role(
    ws: Workspace, endpoint: str, *, policy: str | None = None, name: str = "test-session"
) -> Signer:
    """Session credentials of the host's role (no policy: the role's full power)."""
    sts = client(ws, endpoint, "sts", Signer.of(ws, "host"))
    extra = {} if policy is None else {"Policy": policy}
    answer = sts.assume_role(
        RoleArn=ws.identity("host").principal_arn,
        RoleSessionName=name,
        DurationSeconds=900,
        **extra,
    )
    creds = answer["Credentials"]
    return Signer(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


def as_signer(creds: sessions.RunCredentials) -> Signer:
    return Signer(creds.access_key_id, creds.secret_access_key, creds.session_token)


def denied(call: Callable[[], Any], code: str = "AccessDeniedException") -> str:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    assert e.value.response["Error"]["Code"] == code, e.value.response
    return str(e.value.response["Error"]["Message"])


@pytest.fixture
def host_keys(kms_client: Callable[[str], Any]) -> dict[str, Any]:
    """Two keys of the host's own account (default policy: the account may do anything)."""
    host = kms_client("host")
    keys = [host.create_key()["KeyMetadata"] for _ in range(2)]
    blobs = [host.generate_data_key(KeyId=k["KeyId"], NumberOfBytes=32) for k in keys]
    return {"keys": keys, "blobs": blobs}


def test_run_credentials_decrypt_that_key_only(
    workspace: Workspace, key_service: str, host_keys: dict[str, Any]
) -> None:
    key, (dk, other_dk) = host_keys["keys"][0], host_keys["blobs"]
    creds = sessions.run_credentials(workspace, key["Arn"])
    assert creds.access_key_id.startswith("ASIA")
    assert creds.session_name.startswith(sessions.SESSION_NAME_PREFIX)
    lifetime = creds.expiration - datetime.now(UTC)
    assert timedelta(minutes=14) < lifetime <= timedelta(minutes=15)
    kms = client(workspace, key_service, "kms", as_signer(creds))

    # the legitimate use: Decrypt of the package's data key
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    # another key of the same account, which the role itself may use
    message = denied(lambda: kms.decrypt(CiphertextBlob=other_dk["CiphertextBlob"]))
    assert "no session policy allows the kms:Decrypt action" in message
    # other operations on the very same key, and account operations
    for call in (
        lambda: kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x"),
        lambda: kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default"),
        lambda: kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy="{}"),
        lambda: kms.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=32),
        lambda: kms.describe_key(KeyId=key["KeyId"]),
        lambda: kms.disable_key(KeyId=key["KeyId"]),
        lambda: kms.create_key(),
        lambda: kms.list_keys(),
        lambda: kms.generate_random(NumberOfBytes=16),
    ):
        denied(call)
    # nor can the session mint a broader one
    sts = client(workspace, key_service, "sts", as_signer(creds))
    denied(
        lambda: sts.assume_role(
            RoleArn=workspace.identity("host").principal_arn, RoleSessionName="wider"
        ),
        "AccessDenied",
    )
    assert sts.get_caller_identity()["Arn"] == creds.principal_arn
    # the key is untouched and the session still decrypts
    assert kms_enabled(workspace, key_service, key["KeyId"])
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    # the audit log names the session, and which policy refused
    events = [e for e in read_events(workspace.audit_log) if e.get("session") == creds.session_name]
    host_role = workspace.identity("host").principal_arn.rsplit("/", 1)[-1]
    assert all(
        e["caller"].endswith(f":assumed-role/{host_role}/{creds.session_name}") for e in events
    )
    allowed = [e for e in events if e["outcome"] == "allowed" and e["operation"] == "Decrypt"]
    assert len(allowed) == 2 and allowed[0]["key"] == key["Arn"]
    refused = [e for e in events if e["outcome"] == "denied" and e["operation"] != "sts:AssumeRole"]
    assert refused and all(e.get("decided_by") == "session policy" for e in refused)
    issued = [
        e for e in read_events(workspace.audit_log) if e.get("issued_session") == creds.session_name
    ]
    assert issued[0]["operation"] == "sts:AssumeRole" and issued[0]["outcome"] == "allowed"
    assert creds.secret_access_key not in workspace.audit_log.read_text()
    assert creds.session_token not in workspace.audit_log.read_text()


def kms_enabled(ws: Workspace, endpoint: str, key_id: str) -> bool:
    host = client(ws, endpoint, "kms", Signer.of(ws, "host"))
    return bool(host.describe_key(KeyId=key_id)["KeyMetadata"]["Enabled"])


def _fast_forward(ws: Workspace, access_key_id: str, to: datetime) -> None:
    """Make a session expire now: rewrite its expiry in the key store (the
    shortest real session lasts 15 minutes)."""
    path = keyservice.sessions_dir(ws) / f"{access_key_id}.json"
    record = json.loads(path.read_text())
    record["expires"] = to.isoformat()
    path.write_text(json.dumps(record))


def test_expired_session_credentials_are_refused(
    workspace: Workspace, key_service: str, host_keys: dict[str, Any]
) -> None:
    key, dk = host_keys["keys"][0], host_keys["blobs"][0]
    creds = sessions.run_credentials(workspace, key["Arn"])
    kms = client(workspace, key_service, "kms", as_signer(creds))
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    _fast_forward(workspace, creds.access_key_id, datetime.now(UTC) - timedelta(seconds=1))
    message = denied(
        lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"]), "ExpiredTokenException"
    )
    assert message == "The security token included in the request is expired"
    sts = client(workspace, key_service, "sts", as_signer(creds))
    denied(sts.get_caller_identity, "ExpiredToken")
    # inside a run this is a credential error, not "image not approved"
    service = KmsKeyService.connect(
        region=workspace.config.region,
        endpoint_url=key_service,
        access_key_id=creds.access_key_id,
        secret_access_key=creds.secret_access_key,
        session_token=creds.session_token,
        credentials_label="the run's credentials",
    )
    with pytest.raises(CredentialError) as e:
        service.decrypt(dk["CiphertextBlob"])
    assert e.value.message.startswith("the run's credentials were refused by the key service")
    assert "ExpiredTokenException" in e.value.message and e.value.exit_code == 5
    # a fresh session works (the key service expired this one early: the host's cache of
    # run sessions, which trusts the expiry STS announced, is cleared by hand here)
    shutil.rmtree(workspace.run_dir / sessions.SESSION_CACHE)
    fresh = client(
        workspace, key_service, "kms", as_signer(sessions.run_credentials(workspace, key["Arn"]))
    )
    assert fresh.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]


def test_session_bounds_and_who_may_assume_the_host_role(
    workspace: Workspace, key_service: str
) -> None:
    host_role = workspace.identity("host").principal_arn
    unchecked = client(
        workspace, key_service, "sts", Signer.of(workspace, "host"), parameter_validation=False
    )
    for seconds, expected in ((899, "greater than or equal to 900"), (3601, "MaxSessionDuration")):
        message = denied(
            lambda s=seconds: unchecked.assume_role(
                RoleArn=host_role, RoleSessionName="bounds", DurationSeconds=s
            ),
            "ValidationError",
        )
        assert expected in message
    for name in ("x", "a" * 65, "bad name"):
        denied(
            lambda n=name: unchecked.assume_role(RoleArn=host_role, RoleSessionName=n),
            "ValidationError",
        )
    denied(
        lambda: unchecked.assume_role(
            RoleArn=host_role, RoleSessionName="pol", Policy='{"Statement": [{"Effect": "Maybe"}]}'
        ),
        "MalformedPolicyDocument",
    )
    denied(
        lambda: unchecked.assume_role(RoleArn=host_role, RoleSessionName="pol", Policy="x" * 2049),
        "ValidationError",
    )
    # the vendor's account does not own the host role
    vendor_sts = client(workspace, key_service, "sts", Signer.of(workspace, "vendor"))
    message = denied(
        lambda: vendor_sts.assume_role(RoleArn=host_role, RoleSessionName="steal"), "AccessDenied"
    )
    assert "is not authorized to perform: sts:AssumeRole" in message
    # a role that does not exist
    denied(
        lambda: unchecked.assume_role(
            RoleArn=host_role.replace("strongroom-host", "admin"), RoleSessionName="xx"
        ),
        "AccessDenied",
    )
    # legitimate: 900 s, the files holding it are 0600 in a 0700 directory
    signer = assume_host_role(workspace, key_service, name="bounds-ok")
    folder = keyservice.sessions_dir(workspace)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    record = folder / f"{signer.access_key_id}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_federation_token_is_limited_to_its_policy(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    vendor = kms_client("vendor")
    key = vendor.create_key()["KeyMetadata"]
    dk = vendor.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=32)
    sts = client(workspace, key_service, "sts", Signer.of(workspace, "vendor"))
    policy = sessions.decrypt_only_policy(key["Arn"])
    creds = sessions.issue(sts, resource=key["Arn"], role_arn=None)
    assert creds.principal_arn.endswith(f":federated-user/{creds.session_name}")
    kms = client(workspace, key_service, "kms", as_signer(creds))
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    denied(lambda: kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x"))
    # without a policy a federated user may do nothing
    bare = sts.get_federation_token(Name="bare", DurationSeconds=900)["Credentials"]
    nothing = client(
        workspace,
        key_service,
        "kms",
        Signer(bare["AccessKeyId"], bare["SecretAccessKey"], bare["SessionToken"]),
    )
    denied(lambda: nothing.decrypt(CiphertextBlob=dk["CiphertextBlob"]))
    # a session cannot call it, nor can a role's long-term key
    session_sts = client(workspace, key_service, "sts", as_signer(creds))
    denied(lambda: session_sts.get_federation_token(Name="again", Policy=policy), "AccessDenied")
    host_sts = client(workspace, key_service, "sts", Signer.of(workspace, "host"))
    denied(lambda: host_sts.get_federation_token(Name="host", Policy=policy), "AccessDenied")


# --- what `strongroom run` sends ---------------------------------------------------------


class StandInEnclave:
    """The enclave API endpoints `run` uses, on a unix socket; records the run request."""

    def __init__(self, socket_path: Path, files: dict[str, bytes]) -> None:
        self.files = files
        self.run_bodies: list[bytes] = []
        app = Starlette(
            routes=[
                Route("/v1/files/stat", self.stat, methods=["GET"]),
                Route("/v1/files/content", self.content, methods=["GET"]),
                Route("/v1/files/checksum", self.checksum, methods=["GET"]),
                Route("/v1/runs", self.run, methods=["POST"]),
            ]
        )
        self.server = uvicorn.Server(
            uvicorn.Config(app, uds=str(socket_path), log_level="error", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StandInEnclave:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def _missing(self, path: str) -> Response:
        return JSONResponse(
            {"error": "NotFoundError", "message": f"{path}: no such file", "hint": None}, 404
        )

    async def content(self, request: Request) -> Response:
        path = request.query_params["path"]
        if path not in self.files:
            return self._missing(path)
        offset = int(request.query_params.get("offset", 0))
        length = int(request.query_params.get("length", len(self.files[path])))
        return Response(self.files[path][offset : offset + length])

    async def stat(self, request: Request) -> Response:
        path = request.query_params["path"]
        if path not in self.files:
            return self._missing(path)
        size = len(self.files[path])
        return JSONResponse({"path": path, "type": "file", "size": size, "mode": 0o644, "mtime": 0})

    async def checksum(self, request: Request) -> Response:
        path = request.query_params["path"]
        if path not in self.files:
            return self._missing(path)
        return JSONResponse({"sha256": hashlib.sha256(self.files[path]).hexdigest()})

    async def run(self, request: Request) -> Response:
        self.run_bodies.append(await request.body())
        return Response(json.dumps({"type": "exit", "code": 0}) + "\n")


def _v1_package(key_arn: str, blob: bytes) -> bytes:
    from strongroom.sealing.format import NONCE_PREFIX_SIZE, SALT_SIZE, build_header

    header = build_header(
        key_id=key_arn,
        encrypted_data_key=blob,
        encryption_context={},
        chunk_size=64 * 1024,
        salt=os.urandom(SALT_SIZE),
        nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
        created=int(time.time()),
    )
    return header.raw + os.urandom(1000)  # the body does not matter to the host


def _legacy_package(blob: bytes, data_key: bytes) -> bytes:
    """The AWS sample's format: length-prefixed KMS blob, then Fernet(zip); no key id."""
    from cryptography.fernet import Fernet

    token = Fernet(base64.urlsafe_b64encode(data_key)).encrypt(b"PK\x05\x06" + bytes(18))
    return struct.pack(">I", len(blob)) + blob + token


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    from strongroom.cli import client as cli_client
    from strongroom.client.enclave import EnclaveClient
    from strongroom.transport.base import UnixAddress

    socket_path = Path("/tmp") / f"sr-standin-{os.getpid()}-{time.monotonic_ns()}.sock"
    enclaves: list[StandInEnclave] = []

    def start(files: dict[str, bytes]) -> StandInEnclave:
        enclave = StandInEnclave(socket_path, files).__enter__()
        enclaves.append(enclave)
        return enclave

    monkeypatch.setattr(
        cli_client, "connect_enclave", lambda ws, name: EnclaveClient(UnixAddress(str(socket_path)))
    )
    try:
        yield start
    finally:
        for enclave in enclaves:
            enclave.__exit__()
        socket_path.unlink(missing_ok=True)


def _workspace_secrets(ws: Workspace) -> list[str]:
    return [p.read_text().strip() for p in (ws.root / "identities").glob("*.secret")]


@pytest.mark.parametrize("where", ["local-file", "shared-folder", "legacy-in-shared-folder"])
def test_run_request_carries_no_long_term_secret(
    workspace: Workspace,
    key_service: str,
    host_keys: dict[str, Any],
    stand_in: Callable[..., StandInEnclave],
    tmp_path: Path,
    where: str,
) -> None:
    from strongroom.cli.main import cli

    key, dk = host_keys["keys"][0], host_keys["blobs"][0]
    if where.startswith("legacy"):
        package = _legacy_package(dk["CiphertextBlob"], dk["Plaintext"])
    else:
        package = _v1_package(key["Arn"], dk["CiphertextBlob"])
    local = tmp_path / "app.sealed"
    local.write_bytes(package)
    enclave = stand_in({"/encrypted/app.sealed": package, "/pkgs/app.sealed": package})
    target = str(local) if where == "local-file" else "/pkgs/app.sealed"
    result = CliRunner().invoke(
        cli, ["--home", str(workspace.root), "run", target, "--entry", "main.py"]
    )
    assert result.exit_code == 0, result.output
    (body,) = enclave.run_bodies
    for secret in _workspace_secrets(workspace):
        assert secret.encode() not in body
    sent = json.loads(body)["credentials"]
    identities = {i.access_key_id for i in workspace.identities()}
    assert sent["access_key_id"].startswith("ASIA") and sent["access_key_id"] not in identities
    assert sent["session_token"]
    # what was sent opens the package's data key, and does nothing else
    kms = client(
        workspace,
        key_service,
        "kms",
        Signer(sent["access_key_id"], sent["secret_access_key"], sent["session_token"]),
    )
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    denied(lambda: kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x"))
    denied(lambda: kms.decrypt(CiphertextBlob=host_keys["blobs"][1]["CiphertextBlob"]))
