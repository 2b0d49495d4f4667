"""The host's egress proxy: the enclave's only way out, and the allowlist that decides where.

Topology (one proxy per workspace)::

    enclave process ──TCP 127.0.0.1:8000──▶ in-enclave forwarder
        ──unix /run/strongroom/egress.sock──▶ relay (in that enclave's supervisor, host side)
        ──unix run/proxy/proxy.sock──▶ egress proxy (this module, host side)
        ──TCP──▶ allowlisted destination (default: the workspace key service)

The sandbox sees only its own ``egress.sock``, served by its supervisor for
as long as the enclave lives. The supervisor's relay parses the enclave's
``CONNECT`` head and re-writes it from the parsed destination, adding the
:data:`~strongroom.transport.connect.ENCLAVE_HEADER` so that the proxy knows
(and logs) which enclave asked; an enclave cannot forge that header. The relay
opens a fresh connection to the proxy for every tunnel, so:

- ``strongroom proxy stop`` really cuts every enclave off: the proxy's
  process holds every open tunnel and every new CONNECT is answered 503;
- ``strongroom proxy start`` (again, perhaps with another allowlist) takes
  effect for running enclaves without restarting them.

The proxy answers a CONNECT with 200 and then pipes opaque bytes (it never
sees inside TLS), 403 when the destination is not on the allowlist, 502/504
when the destination does not answer. Every decision is one JSON line in
``run/proxy/egress.log``: ``{"time", "enclave", "destination", "decision",
"detail"}``.

The allowlist is YAML in the spirit of Nitro's ``vsock-proxy`` (a destination
is a host as written plus a port; no wildcards, no CIDRs)::

    allowlist:
      - {address: kms.eu-west-1.amazonaws.com, port: 443}
      - {address: 127.0.0.1, port: 4566}

A host matches only as written: allowing ``localhost`` does not allow
``127.0.0.1``. Hostnames are resolved when the proxy starts (a typo is an
error then, not a silent denial later) and again by the proxy at every
connection, as vsock-proxy does.

Not protected against: root on the same machine (it can reach the sandbox's
sockets or edit the allowlist), and what allowlisted destinations themselves
forward.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from strongroom._internal import services
from strongroom.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    StrongroomError,
    UnavailableError,
    UsageError,
)
from strongroom.transport.base import Address, UnixAddress, bind
from strongroom.transport.connect import (
    ENCLAVE_HEADER,
    ConnectRequest,
    HeadError,
    check_host,
    format_connect,
    format_response,
    parse_connect,
    read_head,
)
from strongroom.transport.forward import STREAM_LIMIT, close, open_stream, splice

KIND = "proxy"
NAME = "egress"
SOCKET_NAME = "proxy.sock"
EGRESS_LOG_NAME = "egress.log"
ALLOWLIST_NAME = "allowlist.json"
SERVICE_LOG_NAME = "service.log"
#: Limits on an allowlist file.
MAX_ALLOWLIST_BYTES = 64 * 1024
MAX_RULES = 256
#: How long the proxy waits for a destination to accept a connection.
CONNECT_TIMEOUT_S = 10.0
#: How long a hop waits for the CONNECT head once a connection is open.
HEAD_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0
_FIELDS = frozenset({"address", "port"})


@dataclass(frozen=True)
class AllowRule:
    """One allowed destination: a host exactly as written, and a port."""

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Allowlist:
    rules: tuple[AllowRule, ...]

    def allows(self, host: str, port: int) -> bool:
        return AllowRule(host.lower(), port) in self.rules

    def __add__(self, other: Allowlist) -> Allowlist:
        return Allowlist(tuple(dict.fromkeys(self.rules + other.rules)))

    def to_json(self) -> dict[str, Any]:
        return {"allowlist": [{"address": r.address, "port": r.port} for r in self.rules]}

    @classmethod
    def from_mapping(cls, raw: object, source: str) -> Allowlist:
        """Validate the parsed document (YAML or JSON); every error names ``source``."""
        if not isinstance(raw, dict) or set(raw) != {"allowlist"}:
            raise InvalidInputError(
                f"{source}: expected a mapping with exactly one key, 'allowlist'",
                hint="write `allowlist: [{address: HOST, port: N}, ...]`",
            )
        entries = raw["allowlist"]
        if not isinstance(entries, list):
            raise InvalidInputError(f"{source}: 'allowlist' must be a list")
        if len(entries) > MAX_RULES:
            raise InvalidInputError(f"{source}: more than {MAX_RULES} destinations")
        rules = [_rule(entry, f"{source}: allowlist[{i}]") for i, entry in enumerate(entries)]
        return cls(tuple(dict.fromkeys(rules)))

    @classmethod
    def parse_yaml(cls, text: str, source: str) -> Allowlist:
        if len(text.encode()) > MAX_ALLOWLIST_BYTES:
            raise InvalidInputError(f"{source}: larger than {MAX_ALLOWLIST_BYTES} bytes")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise InvalidInputError(f"{source}: not valid YAML{line}") from e
        return cls.from_mapping(raw, source)

    @classmethod
    def load(cls, path: Path) -> Allowlist:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_ALLOWLIST_BYTES + 1)
        except OSError as e:
            raise UsageError(f"cannot read the allowlist {path}: {e.strerror}") from e
        try:
            text = data.decode()
        except UnicodeDecodeError as e:
            raise InvalidInputError(f"{path}: not UTF-8 text") from e
        return cls.parse_yaml(text, str(path))

    def check_resolvable(self) -> None:
        """Raise :class:`UsageError` for the first hostname that does not resolve."""
        for rule in self.rules:
            try:
                socket.getaddrinfo(rule.address, rule.port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise UsageError(
                    f"allowlisted host {rule.address!r} does not resolve: {e}",
                    hint="fix the name, or use an IP address",
                ) from e


def _rule(entry: object, where: str) -> AllowRule:
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{where}: expected a mapping {{address: HOST, port: N}}")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise InvalidInputError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    missing = _FIELDS - set(entry)
    if missing:
        raise InvalidInputError(f"{where}: missing field(s) {', '.join(sorted(missing))}")
    address, port = entry["address"], entry["port"]
    if not isinstance(address, str):
        raise InvalidInputError(f"{where}: address must be a host name or an IP address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise InvalidInputError(f"{where}: port must be an integer from 1 to 65535")
    try:
        host = check_host(address)
    except HeadError as e:
        raise InvalidInputError(f"{where}: {e.message}") from e
    return AllowRule(host, port)


def parse_allow(spec: str, *, named: Mapping[str, AllowRule]) -> AllowRule:
    """``HOST:PORT``, ``[v6]:PORT`` or a name from ``named`` (such as ``kms``)."""
    if spec in named:
        return named[spec]
    try:
        host, sep, port = spec.rpartition(":")
        if not sep:
            raise HeadError("no port")
        raw_host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return _rule({"address": raw_host, "port": int(port)}, f"--allow {spec}")
    except (HeadError, ValueError, InvalidInputError) as e:
        raise UsageError(
            f"invalid destination {spec!r}",
            hint=f"write HOST:PORT, or one of: {', '.join(sorted(named))}",
        ) from e


# --- the proxy ---------------------------------------------------------------------


async def _read_connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> ConnectRequest | None:
    """The CONNECT request on a new connection; None (after answering and closing) if bad."""
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            return parse_connect(await read_head(reader))
    except (HeadError, TimeoutError, OSError) as e:
        status = e.status if isinstance(e, HeadError) else 400
        with contextlib.suppress(OSError):
            writer.write(format_response(status, str(e)))
        await close(writer)
        return None


class EgressProxy:
    """Answers CONNECT heads: 403 unless allowlisted, else a tunnel to the destination."""

    def __init__(self, allowlist: Allowlist, log: TextIO) -> None:
        self.allowlist = allowlist
        self._log = log

    def _record(self, enclave: str, destination: str, decision: str, detail: str = "") -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "enclave": enclave,
            "destination": destination,
            "decision": decision,
            "detail": detail,
        }
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_connect(reader, writer)
        if request is None:
            return
        enclave = request.headers.get(ENCLAVE_HEADER.lower(), "-")
        destination = request.destination
        if not self.allowlist.allows(request.host, request.port):
            self._record(enclave, destination, "deny", "not on the allowlist")
            writer.write(format_response(403, f"{destination} is not on the egress allowlist"))
            await close(writer)
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                upstream = await asyncio.open_connection(
                    request.host, request.port, limit=STREAM_LIMIT
                )
        except (OSError, TimeoutError) as e:
            status = 504 if isinstance(e, TimeoutError) else 502
            detail = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
            self._record(enclave, destination, "error", detail)
            writer.write(format_response(status, f"cannot reach {destination}: {detail}"))
            await close(writer)
            return
        self._record(enclave, destination, "allow")
        writer.write(format_response(200))
        await splice((reader, writer), upstream)


async def serve_relay(listener: socket.socket, proxy: Address, enclave: str) -> asyncio.Server:
    """Serve one enclave's egress socket: forward each CONNECT to the workspace proxy.

    The enclave's head is parsed and re-written (only the destination passes,
    plus the :data:`ENCLAVE_HEADER` naming ``enclave``). When the proxy is not
    running the enclave gets a 503, and no byte leaves.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_connect(reader, writer)
        if request is None:
            return
        try:
            upstream = await open_stream(proxy)
        except UnavailableError:
            writer.write(
                format_response(503, "the egress proxy is not running (strongroom proxy start)")
            )
            await close(writer)
            return
        upstream[1].write(format_connect(request.host, request.port, {ENCLAVE_HEADER: enclave}))
        await splice((reader, writer), upstream)

    return await asyncio.start_unix_server(handle, sock=listener, limit=STREAM_LIMIT)


# --- the detached service ------------------------------------------------------------


def proxy_dir(run_dir: Path) -> Path:
    return run_dir / KIND


def proxy_address(run_dir: Path) -> UnixAddress:
    """Where the workspace's egress proxy listens (each enclave's relay connects here)."""
    return UnixAddress(str(proxy_dir(run_dir) / SOCKET_NAME))


def running(run_dir: Path) -> services.ServiceRecord | None:
    """The record of the running proxy, or None (a stale record is removed)."""
    rec = services.load(run_dir, KIND, NAME)
    if rec is not None and not rec.is_alive():
        services.remove(run_dir, KIND, NAME)
        with contextlib.suppress(FileNotFoundError):
            Path(proxy_address(run_dir).path).unlink()
        return None
    return rec


def start_detached(run_dir: Path, allowlist: Allowlist) -> services.ServiceRecord:
    """Start the proxy in the background with ``allowlist``; return once it listens."""
    if (rec := running(run_dir)) is not None:
        raise AlreadyExistsError(
            f"the egress proxy already runs (pid {rec.pid})",
            hint="stop it first with `strongroom proxy stop`",
        )
    allowlist.check_resolvable()
    directory = proxy_dir(run_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    allowlist_path = directory / ALLOWLIST_NAME
    allowlist_path.write_text(json.dumps(allowlist.to_json(), indent=2) + "\n")
    service_log = directory / SERVICE_LOG_NAME
    argv = [sys.executable, "-m", "strongroom.transport.proxy", "--run-dir", str(run_dir)]
    proc = services.spawn_detached(argv, log_path=service_log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if (code := proc.poll()) is not None:
            raise UnavailableError(
                f"the egress proxy exited during start (code {code})",
                hint=f"see {service_log}",
            )
        rec = services.load(run_dir, KIND, NAME)
        if rec is not None and rec.pid == proc.pid and rec.extra.get("state") == "RUNNING":
            return rec
        time.sleep(0.02)
    services.stop(proc.pid)
    raise UnavailableError("the egress proxy did not start in time", hint=f"see {service_log}")


def stop(run_dir: Path) -> services.ServiceRecord:
    """Stop the running proxy (every enclave loses its egress at once)."""
    rec = running(run_dir)
    if rec is None:
        raise NotFoundError(
            "the egress proxy is not running", hint="start it with `strongroom proxy start`"
        )
    services.stop(rec)
    services.remove(run_dir, KIND, NAME)
    with contextlib.suppress(FileNotFoundError):
        Path(proxy_address(run_dir).path).unlink()
    return rec


async def _serve(run_dir: Path) -> None:
    directory = proxy_dir(run_dir)
    allowlist = Allowlist.from_mapping(
        json.loads((directory / ALLOWLIST_NAME).read_text()), ALLOWLIST_NAME
    )
    address = proxy_address(run_dir)
    listener = bind(address)
    fd = os.open(directory / EGRESS_LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as log:
        proxy = EgressProxy(allowlist, log)
        server = await asyncio.start_unix_server(proxy.handle, sock=listener, limit=STREAM_LIMIT)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        services.record_self(
            run_dir,
            KIND,
            NAME,
            addresses={"listen": str(address)},
            log=directory / EGRESS_LOG_NAME,
            extra={"state": "RUNNING", "allowlist": [str(r) for r in allowlist.rules]},
        )
        try:
            await stopping.wait()
        finally:
            server.close()
            services.remove(run_dir, KIND, NAME)
            with contextlib.suppress(FileNotFoundError):
                Path(address.path).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the detached proxy (``python -m strongroom.transport.proxy``)."""
    parser = argparse.ArgumentParser(prog="strongroom-egress-proxy")
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.run_dir))
    except StrongroomError as e:
        print(f"error: {e.diagnostics()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
