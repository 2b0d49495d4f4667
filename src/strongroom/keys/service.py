"""Running the local key service, and connecting to whichever key service a workspace uses.

``serve`` binds the listening socket itself (so the port is known and taken
before anything is recorded), records the service in the workspace, and runs
the KMS- and STS-compatible ASGI app under uvicorn, with the bounded protocol
of :mod:`strongroom.keys._protocol` (request-read deadline, connection cap,
head size), until stopped. ``connect`` returns the KeyService a command should
use: boto3 against the workspace endpoint on the local target, boto3 against
AWS KMS on the aws target.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from strongroom._internal import services
from strongroom.errors import (
    ServiceNotRunningError,
    StrongroomError,
    UnavailableError,
    UsageError,
)
from strongroom.transport import base as transport
from strongroom.workspace import Workspace

if TYPE_CHECKING:  # the server and boto3 are imported where used: `run` needs neither
    from strongroom.attestation.service import RecipientAttestation
    from strongroom.keys.aws import KmsKeyService
    from strongroom.keys.local import RecipientVerifier
    from strongroom.keys.server import KmsApplication
    from strongroom.keys.signer import Signer

KIND = "keys"
NAME = "keyservice"
START_TIMEOUT_S = 20.0
#: KMS rejects Recipient attestation documents older than this.
RECIPIENT_MAX_AGE = timedelta(minutes=5)
LISTEN_BACKLOG = 512
#: Idle kept-alive connections are closed after this many seconds (SDKs reconnect).
KEEP_ALIVE_S = 15
NOT_RUNNING_HINT = "start it with `strongroom keys serve --detach` (or `strongroom keys serve &`)"


def _bind(listen: str) -> tuple[socket.socket, str]:
    """Listen on ``HOST:PORT`` or ``unix:PATH``; return the socket and the client endpoint."""
    address = transport.parse_address(listen)
    if isinstance(address, transport.VsockAddress):
        raise UsageError("the key service listens on HOST:PORT or unix:PATH, not vsock")
    try:
        sock = transport.bind(address, backlog=LISTEN_BACKLOG)
    except UnavailableError as e:
        raise UsageError(
            e.message, hint="is another key service running? check `strongroom keys status`"
        ) from e
    if isinstance(address, transport.UnixAddress):
        return sock, f"unix:{address.path}"
    host, port = sock.getsockname()[:2]
    return sock, f"http://{host}:{port}"


def recipient_verifier(ws: Workspace) -> RecipientVerifier:
    """Verify Recipient documents against the workspace's trust anchors."""
    from strongroom.attestation.authority import LocalAuthority
    from strongroom.attestation.roots import aws_root
    from strongroom.attestation.service import verify_recipient

    anchors = [LocalAuthority.open_or_create(ws.ca_dir).root_certificate()]
    if "aws" in ws.config.trust:
        anchors.append(aws_root())

    def verify(document: bytes) -> RecipientAttestation:
        return verify_recipient(
            document, anchors=anchors, now=datetime.now(UTC), max_age=RECIPIENT_MAX_AGE
        )

    return verify


def build_app(ws: Workspace) -> KmsApplication:
    from strongroom.keys.audit import AuditLog
    from strongroom.keys.local import Caller
    from strongroom.keys.server import KmsApplication
    from strongroom.keys.store import KeyStore
    from strongroom.keys.sts import SessionStore

    callers = {
        ident.access_key_id: (
            ident.secret_access_key,
            Caller(ident.principal_arn, ident.account_id, ident.access_key_id),
        )
        for ident in ws.identities()
    }
    return KmsApplication(
        KeyStore(ws.keys_dir),
        callers,
        AuditLog(ws.audit_log),
        region=ws.config.region,
        verify_recipient=recipient_verifier(ws),
        sessions=SessionStore(sessions_dir(ws)),
    )


def sessions_dir(ws: Workspace) -> Path:
    """Where the key service keeps the STS sessions it issued (files 0600)."""
    return ws.keys_dir / "sessions"


def running(ws: Workspace) -> services.ServiceRecord | None:
    rec = services.load(ws.run_dir, KIND, NAME)
    if rec is not None and not rec.is_alive():
        services.remove(ws.run_dir, KIND, NAME)
        return None
    return rec


def serve(ws: Workspace, listen: str | None = None, *, on_ready: Callable[[str], None]) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    import uvicorn

    from strongroom.keys._protocol import BoundedHttpProtocol, connection_cap

    require_local(ws)
    existing = running(ws)
    if existing is not None:
        raise UsageError(
            f"the key service already runs (pid {existing.pid}, "
            f"{existing.addresses.get('endpoint')})",
            hint="stop it with `strongroom keys stop`",
        )
    app = build_app(ws)
    sock, endpoint = _bind(listen or ws.config.kms_listen)
    log_path = ws.run_dir / KIND / "server.log"
    services.record_self(
        ws.run_dir, KIND, NAME, addresses={"endpoint": endpoint}, log=str(log_path)
    )
    try:
        BoundedHttpProtocol.max_connections = connection_cap()
        config = uvicorn.Config(
            app,
            http=BoundedHttpProtocol,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        on_ready(endpoint)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        services.remove(ws.run_dir, KIND, NAME)
        app.audit.close()


def start_detached(ws: Workspace, listen: str | None = None) -> services.ServiceRecord:
    """Start ``strongroom keys serve`` in the background; return once it answers."""
    require_local(ws)
    if (rec := running(ws)) is not None:
        return rec
    log_path = ws.run_dir / KIND / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cmd = [sys.executable, "-m", "strongroom", "--home", str(ws.root), "keys", "serve"]
    if listen:
        cmd += ["--listen", listen]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UnavailableError(
                f"the key service exited during start (code {proc.returncode})",
                hint=f"see {log_path}",
            )
        rec = running(ws)
        if rec is not None and rec.pid == proc.pid and _answers(rec.addresses["endpoint"]):
            return rec
        time.sleep(0.05)
    proc.kill()
    raise UnavailableError("the key service did not start in time", hint=f"see {log_path}")


def stop(ws: Workspace) -> bool:
    rec = running(ws)
    if rec is None:
        return False
    services.stop(rec)
    services.remove(ws.run_dir, KIND, NAME)
    return True


def _answers(endpoint: str) -> bool:
    try:
        address = transport.parse_address(endpoint.removeprefix("http://"))
        transport.connect(address, timeout=1).close()
    except StrongroomError:
        return False
    return True


#: What to use instead of a local-only command on the aws target.
AWS_INSTEAD = {
    "keys serve": "the key service is AWS KMS itself: nothing to start",
    "keys stop": "the key service is AWS KMS itself: nothing to stop",
    "keys status": "check the key and the credentials with `strongroom doctor --key KEY`",
    "env": "choose the AWS credentials with AWS_PROFILE=NAME (or the AWS_* variables); "
    "aws and strongroom then both use them",
}


def require_local(ws: Workspace, command: str = "keys serve") -> None:
    """Refuse a command that only the local target's key service gives meaning to."""
    if ws.config.target != "local":
        raise UsageError(
            f"`strongroom {command}` does not apply to the aws target: it is for the local "
            "key service",
            hint=AWS_INSTEAD[command],
        )


def listen_address(ws: Workspace) -> str:
    """Where the key service listens (``HOST:PORT`` or ``unix:PATH``): where the running
    service says it does (``keys serve --listen``, in the foreground or detached), else
    the workspace's ``keys.listen``.

    Everything that points something at the key service asks this, and nothing
    reads ``keys.listen`` itself: ``env``'s exports, the egress proxy's ``kms``
    destination, the enclave's key-service forwarder and ``run``.
    """
    rec = running(ws)
    if rec is not None:
        return rec.addresses["endpoint"].removeprefix("http://")
    return ws.config.kms_listen


def endpoint_url(ws: Workspace) -> str:
    """Where clients reach the workspace's key service (running or configured)."""
    address = listen_address(ws)
    return address if address.startswith("unix:") else f"http://{address}"


def local_endpoint(ws: Workspace) -> str:
    """The running local key service's HTTP endpoint (which boto3 clients need)."""
    if running(ws) is None:
        raise ServiceNotRunningError("the local key service is not running", hint=NOT_RUNNING_HINT)
    endpoint = endpoint_url(ws)
    if endpoint.startswith("unix:"):
        raise UsageError(
            "the key service listens on a unix socket; boto3 cannot reach it",
            hint="serve it on HOST:PORT to use it from the CLI",
        )
    return endpoint


def check_enclave_reaches(ws: Workspace, enclave: str, reaches: str | None) -> None:
    """Refuse a run in an enclave whose key-service forwarder leads elsewhere than where
    the key service runs now (it was started before the key service moved).

    The forwarder's destination is fixed when the enclave starts (recorded as
    its ``key_service`` address); without this, the run would fail inside the
    enclave with a 502 from the egress proxy. ``reaches`` None: an enclave that
    recorded nothing (started by an older version), or no forwarder at all.
    """
    if reaches is None or running(ws) is None:
        return
    where = listen_address(ws)
    if reaches != where:
        raise UnavailableError(
            f"enclave {enclave!r} reaches the key service at {reaches}, but it runs at {where}",
            hint=f"an enclave's way to the key service is fixed when it starts: restart it "
            f"(`strongroom enclave stop {enclave}`, `strongroom enclave start IMAGE --name "
            f"{enclave}`) and the egress proxy (`strongroom proxy stop`, `strongroom proxy "
            f"start`), or serve the key service at {reaches} again (`strongroom keys serve "
            f"--listen {reaches}`)",
        )


def connect(ws: Workspace, signer: Signer | None = None) -> KmsKeyService:
    """The KeyService a command of this workspace should use, signed for by ``signer``.

    The CLI's commands get ``signer`` from :func:`strongroom.keys.signer.choose`
    (the one identity rule); without one (library callers, tests), the
    vendor identity signs on the local target.
    """
    from strongroom.keys.aws import KmsKeyService

    config = ws.config
    if config.target == "aws":
        # AWS: the standard credential chain decides who we are.
        return KmsKeyService.connect(region=config.region)
    identity = signer.identity if signer is not None else None
    if identity is None:
        identity = ws.identity("vendor")
    return KmsKeyService.connect(
        region=config.region,
        endpoint_url=local_endpoint(ws),
        access_key_id=identity.access_key_id,
        secret_access_key=identity.secret_access_key,
        not_running_hint=NOT_RUNNING_HINT,
    )
