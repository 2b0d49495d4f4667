"""The enclave API (minimal: enough to prove the three channels).

========================  ===================================================
``GET  /v1/describe``      version, the enclave's measurements and mode, uptime
``POST /v1/attestation``   ``{"nonce": hex}`` → ``{"document": base64}`` from the
                           attestor, over the caller's nonce and the enclave's
                           own identity key (see below)
``POST /v1/egress-check``  ``{"host", "port"}`` → can a tunnel to that
                           destination be opened through the egress path?
``POST /v1/debug/exec``    debug enclaves only: ``{"argv": [...], "timeout_s"?}``
                           → ``{"exit_code", "stdout", "stderr"}``
========================  ===================================================

Who decides "debug": not the host's command line but the enclave's own
attestation. At start the server asks its attestor for a document and reads
its PCRs (:class:`EnclaveIdentity`); PCR0–2 all zero means a debug-mode
enclave, exactly what a verifier will see. A debug enclave's documents are
refused by every key policy that names a real measurement, so its exec
endpoint can never touch a sealed application's plaintext; a host that tried
to switch it on in a production enclave would have to forge the attestor's
PCRs, which Nitro's hypervisor does not allow. The endpoint exists so tests
and vendors can probe the sandbox from inside (network, files, memory).

The attestation endpoint never signs what a caller chose beyond a nonce:
its documents carry the enclave's *identity key* as ``public_key`` — a P-384
key the server generates at start and never lets out — and no ``user_data``.
A caller-chosen RSA key there would be an oracle: the host would send the
document as KMS ``Recipient`` and open the vendor's data key itself. An EC key
cannot be a ``Recipient`` (KMS requires RSA), and only the server holds its
private half (for receipts and channels).

Every request body is JSON of bounded size with exactly the documented
fields (:mod:`.http`: strict models, standard JSON); anything else is a 400
Problem. The whole application sits behind :class:`.http.ErrorGuard`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import strongroom
from strongroom.attestation.base import Attestor
from strongroom.attestation.document import MAX_USER_FIELD_SIZE, AttestationDocument
from strongroom.attestation.verify import is_debug
from strongroom.errors import NotFoundError, StrongroomError, UnavailableError
from strongroom.image.pins import NO_PINS, VendorPins
from strongroom.keys.base import KeyService
from strongroom.server import RUNS_CGROUP
from strongroom.server.api import FilesApi, RunApi, _Body, query
from strongroom.server.files import SharedFolder
from strongroom.server.http import ErrorGuard, RequestError, http_exception, json_body, route
from strongroom.server.isolation import Identities, RunCgroups
from strongroom.server.launchers import Launchers
from strongroom.server.runs import RunEnvironment
from strongroom.transport.base import Address
from strongroom.transport.forward import TunnelRefusedError, close, open_tunnel

#: Bounds of the debug exec endpoint.
EXEC_MAX_ARGS = 64
EXEC_MAX_OUTPUT = 1024 * 1024
EXEC_DEFAULT_TIMEOUT_S = 30.0
EXEC_MAX_TIMEOUT_S = 120.0
#: The PCRs that describe an image (0-2), and its signer (8, only for signed images).
IMAGE_PCRS = (0, 1, 2)
SIGNER_PCR = 8


#: A host name as the egress path takes it (a subset of what
#: :func:`strongroom.transport.connect.check_host` accepts): a DNS name of at most 253
#: characters, or an IPv6 literal (at most 45 characters, with a colon).
HOST_PATTERN = (
    "^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{1,40})$"
)


class AttestationRequest(_Body):
    """A nonce of 1 to 1024 bytes, hex (two digits a byte)."""

    nonce: str = Field(
        min_length=2, max_length=2 * MAX_USER_FIELD_SIZE, pattern="^(?:[0-9a-fA-F]{2})+$"
    )


class EgressCheckRequest(_Body):
    host: str = Field(max_length=253, pattern=HOST_PATTERN)
    port: int = Field(ge=1, le=65535)


class ExecRequest(_Body):
    """Debug enclaves only: a command and how long it may take."""

    argv: list[str] = Field(min_length=1, max_length=EXEC_MAX_ARGS)
    timeout_s: float = Field(default=EXEC_DEFAULT_TIMEOUT_S, gt=0, le=EXEC_MAX_TIMEOUT_S)


@dataclass(frozen=True)
class EnclaveIdentity:
    """What the enclave's own attestation says about it."""

    module_id: str
    pcrs: Mapping[int, bytes]

    @property
    def debug(self) -> bool:
        return is_debug(self.pcrs)

    @classmethod
    def from_attestor(cls, attestor: Attestor) -> EnclaveIdentity:
        document = AttestationDocument.parse(attestor.attest(nonce=os.urandom(32)))
        return cls(module_id=document.module_id, pcrs=document.pcrs)

    def measurements(self) -> dict[str, str]:
        described = {f"pcr{i}": self.pcrs[i].hex() for i in IMAGE_PCRS if i in self.pcrs}
        signer = self.pcrs.get(SIGNER_PCR)
        if signer is not None and any(signer):
            described[f"pcr{SIGNER_PCR}"] = signer.hex()
        return described


@dataclass(frozen=True)
class ServerConfig:
    attestor: Attestor
    identity: EnclaveIdentity
    #: The egress socket, or None where the enclave has no egress.
    egress: Address | None
    started: float
    #: The shared folder (the host's only view) and the private app folder.
    shared: SharedFolder
    apps_root: Path
    #: Where the sealed apps' runtime packages are (the image's second ramdisk).
    app_python_path: tuple[str, ...] = ()
    #: The key service as the enclave reaches it (an in-enclave forwarder), if fixed.
    key_service_endpoint: str | None = None
    #: Where that forwarder leads through the egress path (host, port), to diagnose it.
    key_service_destination: tuple[str, int] | None = None
    #: The keys and signers the image pins (no pins: no run gets a key).
    pins: VendorPins = NO_PINS
    #: The enclave's memory, MiB.
    memory_mib: int = 1024
    #: The enclave's identity key, made at start; its public half is in every
    #: document the attestation endpoint signs.
    identity_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1()), repr=False
    )
    identities: Identities = field(default_factory=Identities)
    launchers: Launchers = field(default_factory=lambda: Launchers(RunCgroups(Path(RUNS_CGROUP))))


#: What to do when the egress path answers a tunnel to the key service with this status.
_KEY_SERVICE_DOWN = "start the key service on the host (`strongroom keys serve --detach`)"
_EGRESS_HINTS = {
    503: "start the egress proxy on the host: `strongroom proxy start`",
    403: "allow the key service: `strongroom proxy stop; strongroom proxy start --allow kms`",
    502: _KEY_SERVICE_DOWN,
    504: _KEY_SERVICE_DOWN,
}


def create_app(config: ServerConfig) -> Starlette:
    """The ASGI app of the enclave API."""

    identity_key = config.identity_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    async def describe(request: Request) -> Response:
        query(request, "/v1/describe")
        return JSONResponse(
            {
                "version": strongroom.__version__,
                "module_id": config.identity.module_id,
                "measurements": config.identity.measurements(),
                "debug": config.identity.debug,
                "identity_key": identity_key.hex(),
                "uptime_s": round(time.monotonic() - config.started, 3),
            }
        )

    async def attestation(request: Request) -> Response:
        query(request, "/v1/attestation")
        nonce = bytes.fromhex((await json_body(request, AttestationRequest)).nonce)
        try:
            document = await run_in_threadpool(
                config.attestor.attest, public_key=identity_key, nonce=nonce
            )
        except StrongroomError as e:
            raise UnavailableError(f"the attestor failed: {e.message}") from e
        return JSONResponse({"document": base64.b64encode(document).decode()})

    async def egress_check(request: Request) -> Response:
        query(request, "/v1/egress-check")
        body = await json_body(request, EgressCheckRequest)
        host, port = body.host, body.port
        if config.egress is None:
            return JSONResponse({"ok": False, "status": None, "detail": "no egress channel"})
        try:
            _, writer = await open_tunnel(config.egress, host, port)
        except TunnelRefusedError as e:
            return JSONResponse({"ok": False, "status": e.status, "detail": e.message})
        except StrongroomError as e:
            return JSONResponse({"ok": False, "status": None, "detail": e.message})
        await close(writer)
        return JSONResponse({"ok": True, "status": 200, "detail": f"tunnel to {host}:{port}"})

    async def debug_exec(request: Request) -> Response:
        if not config.identity.debug:
            raise NotFoundError("no such operation: this is not a debug enclave")
        query(request, "/v1/debug/exec")
        body = await json_body(request, ExecRequest)
        if "\x00" in "".join(body.argv):
            raise RequestError("argv may not contain NUL")
        return JSONResponse(await _run(body.argv, body.timeout_s))

    routes = [
        route("/v1/describe", {"GET": describe}),
        route("/v1/attestation", {"POST": attestation}),
        route("/v1/egress-check", {"POST": egress_check}),
        route("/v1/debug/exec", {"POST": debug_exec}),
    ]
    routes += FilesApi(config.shared).routes()

    async def key_service_egress_problem() -> StrongroomError | None:
        """Why the key service is out of reach through the egress path, or None."""
        if config.egress is None or config.key_service_destination is None:
            return None
        host, port = config.key_service_destination
        try:
            _, writer = await open_tunnel(config.egress, host, port)
        except TunnelRefusedError as e:
            message = f"the enclave cannot reach the key service: {e.message}"
            return UnavailableError(message, hint=_EGRESS_HINTS.get(e.status))
        except StrongroomError as e:
            return UnavailableError(f"the enclave cannot reach the key service: {e.message}")
        await close(writer)
        return None

    def run_environment(key_service: Callable[[], KeyService]) -> RunEnvironment:
        return RunEnvironment(
            shared=config.shared,
            apps_root=config.apps_root,
            python_path=config.app_python_path,
            attestor=config.attestor,
            key_service=key_service,
            pins=config.pins,
            identities=config.identities,
            launchers=config.launchers,
            memory_mib=config.memory_mib,
            egress=config.egress,
            key_service_destination=config.key_service_destination,
            measurement=config.identity.pcrs.get(0, b"").hex(),
            egress_problem=key_service_egress_problem,
        )

    routes += RunApi(config.shared, run_environment, config.key_service_endpoint).routes()

    async def openapi(request: Request) -> Response:
        from strongroom.server.openapi import document  # it imports this module's models

        query(request, "/v1/openapi.json")
        return JSONResponse(document())

    routes.append(route("/v1/openapi.json", {"GET": openapi}))
    return Starlette(
        routes=routes,
        middleware=[Middleware(ErrorGuard)],
        exception_handlers={HTTPException: http_exception},
    )


async def _run(argv: list[str], timeout: float) -> dict[str, Any]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        return {"exit_code": None, "stdout": "", "stderr": f"cannot run {argv[0]}: {e.strerror}"}
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await asyncio.gather(_drain(proc.stdout), _drain(proc.stderr))
            exit_code = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"exit_code": None, "stdout": "", "stderr": f"timed out after {timeout} s"}
    return {
        "exit_code": exit_code,
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
    }


async def _drain(stream: asyncio.StreamReader) -> bytes:
    """Read to EOF, keeping the first :data:`EXEC_MAX_OUTPUT` bytes (the rest is discarded)."""
    kept = bytearray()
    while chunk := await stream.read(64 * 1024):
        kept += chunk[: EXEC_MAX_OUTPUT - len(kept)]
    return bytes(kept)
