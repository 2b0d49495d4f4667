"""Entry point of the enclave server: ``python -m strongroom.server --listen ADDRESS ...``.

Start-up order matters:

0. become non-dumpable, before holding anything secret: no process of the
   enclave's uid (an app, if it ever escaped its jail) may ``ptrace`` the
   server or read its ``/proc/<pid>/mem``; read the vendor's pins from the
   image (an enclave without them would run no app, so it stops here);
1. open the listening socket: an inherited descriptor (``fd:N``, the local
   sandbox: the runtime bound it on the host, so the enclave needs no writable
   path on the host) or an address it binds itself (``vsock:-1:5005`` on Nitro);
2. ask the attestor who we are (PCRs, module id; see :class:`EnclaveIdentity`);
   an enclave that cannot attest cannot get a key, so it stops here;
3. start the in-enclave forwarders (``--forward 8000=HOST:PORT`` exposes
   ``HOST:PORT`` through the egress socket at ``127.0.0.1:8000``);
4. serve the API with uvicorn on the socket from step 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from strongroom.errors import StrongroomError, UsageError
from strongroom.image.pins import PINS_PATH, VendorPins
from strongroom.server import (
    APP_PACKAGES,
    APPS_DIR,
    ATTESTOR_SOCKET,
    BANNER_FILE,
    BANNER_TEXT,
    EGRESS_SOCKET,
    SHARED_DIR,
)
from strongroom.server.app import EnclaveIdentity, ServerConfig, create_app
from strongroom.server.attestor import default_attestor
from strongroom.server.files import SharedFolder
from strongroom.server.jail import SetupError, make_undumpable
from strongroom.transport.base import Address, TcpAddress, bind, parse_address
from strongroom.transport.connect import HeadError, parse_authority
from strongroom.transport.forward import KMS_LOCAL_PORT, serve_forward


def listening_socket(spec: str) -> socket.socket:
    """``fd:N`` (an inherited listening socket) or an address to bind."""
    if spec.startswith("fd:"):
        number = spec[len("fd:") :]
        if not number.isdigit():
            raise UsageError(f"invalid descriptor in {spec!r}")
        sock = socket.socket(fileno=int(number))
        if sock.type != socket.SOCK_STREAM:
            raise UsageError(f"descriptor {number} is not a stream socket")
        return sock
    return bind(parse_address(spec))


def parse_forward(spec: str) -> tuple[int, tuple[str, int]]:
    """``LOCAL_PORT=HOST:PORT`` → (local port, (host, port))."""
    local, sep, destination = spec.partition("=")
    if not sep or not local.isdigit() or not 0 < int(local) <= 65535:
        raise UsageError(f"invalid forward {spec!r}", hint="write LOCAL_PORT=HOST:PORT")
    try:
        return int(local), parse_authority(destination)
    except HeadError as e:
        raise UsageError(f"invalid forward {spec!r}: {e.message}") from e


async def serve(
    sock: socket.socket,
    attestor_path: str,
    egress: Address | None,
    forwards: Sequence[str],
    *,
    pins: VendorPins,
    memory_mib: int,
    shared_dir: str = SHARED_DIR,
    apps_dir: str = APPS_DIR,
) -> None:
    started = time.monotonic()
    attestor = default_attestor(attestor_path)
    identity = EnclaveIdentity.from_attestor(attestor)
    servers = []
    if egress is not None:
        for spec in forwards:
            port, destination = parse_forward(spec)
            servers.append(await serve_forward(TcpAddress("127.0.0.1", port), egress, destination))
    shared = SharedFolder(Path(shared_dir))
    shared.root.joinpath(BANNER_FILE).write_text(BANNER_TEXT)
    kms_destinations = [d for p, d in map(parse_forward, forwards) if p == KMS_LOCAL_PORT]
    kms_forwarded = bool(kms_destinations)
    config = ServerConfig(
        attestor,
        identity,
        egress,
        started,
        shared=shared,
        apps_root=Path(apps_dir),
        app_python_path=(APP_PACKAGES,),
        key_service_endpoint=f"http://127.0.0.1:{KMS_LOCAL_PORT}" if kms_forwarded else None,
        key_service_destination=kms_destinations[0] if kms_destinations else None,
        pins=pins,
        memory_mib=memory_mib,
    )
    app = create_app(config)
    config.launchers.prime()
    server_config = uvicorn.Config(
        app,
        loop="asyncio",
        http=http_protocol(),
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    # the enclave's console (debug enclaves only; a production enclave has none)
    print(f"strongroom enclave server: serving {identity.module_id}", flush=True)
    try:
        await uvicorn.Server(server_config).serve(sockets=[sock])
    finally:
        for server in servers:
            server.close()


def http_protocol() -> str:
    """uvicorn's httptools protocol when the image has it, else h11.

    httptools (llhttp, in C) hands a request body on with one copy and little
    Python per chunk; with h11 the event loop alone costs a large upload about
    half its speed. Its head size is unbounded, which only lets the host --
    which can stop this enclave anyway -- waste the enclave's memory.
    """
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def _memory_mib() -> int:
    """The enclave's memory: all of the machine's in a Nitro enclave (it is the enclave)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "MemTotal":
            return int(value.split()[0]) // 1024
    raise UsageError(
        "cannot tell the enclave's memory from /proc/meminfo", hint="pass --memory-mib"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="strongroom.server", description=__doc__)
    parser.add_argument("--listen", required=True, help="fd:N, unix:/path or vsock:CID:PORT")
    parser.add_argument("--attestor", default=ATTESTOR_SOCKET, help="the attestor socket path")
    parser.add_argument(
        "--egress", default=f"unix:{EGRESS_SOCKET}", help="the egress socket, or 'none'"
    )
    parser.add_argument(
        "--forward", action="append", default=[], help="LOCAL_PORT=HOST:PORT (repeatable)"
    )
    parser.add_argument("--shared", default=SHARED_DIR, help="the shared folder")
    parser.add_argument("--apps", default=APPS_DIR, help="the private folder for decrypted apps")
    parser.add_argument("--pins", default=PINS_PATH, help="the vendor's pins in the image")
    parser.add_argument(
        "--memory-mib", type=int, default=None, help="the enclave's memory (default: all of it)"
    )
    args = parser.parse_args(argv)
    # the enclave's log (its console: debug enclaves only) gets the tracebacks of our
    # own faults, from the API's error guard; callers never see them
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        make_undumpable()
        pins = VendorPins.load(Path(args.pins))
        sock = listening_socket(args.listen)
        egress = None if args.egress == "none" else parse_address(args.egress)
        asyncio.run(
            serve(
                sock,
                args.attestor,
                egress,
                args.forward,
                pins=pins,
                memory_mib=args.memory_mib or _memory_mib(),
                shared_dir=args.shared,
                apps_dir=args.apps,
            )
        )
    except StrongroomError as e:
        print(f"strongroom.server: {e.diagnostics()}", file=sys.stderr)
        return 1
    except SetupError as e:
        print(f"strongroom.server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
