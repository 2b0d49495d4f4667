"""Key service throughput and latency: GenerateDataKey and Decrypt over HTTP with boto3.

Usage: .venv/bin/python bench/bench_keys.py [--seconds 5] [--clients 1,8]

Each client is a separate process with its own boto3 client (so the clients
are not limited by one GIL), against a real `strongroom keys serve` process.
Baseline, measured in the same run with the same clients: the same boto3 call
against a bare uvicorn ASGI app that returns a canned reply — the cost of
boto3 + HTTP + uvicorn alone. The ratio shows what the key service adds.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from strongroom.keys import service as keyservice
from strongroom.workspace import Workspace


def _canned_app() -> Any:
    body = json.dumps(
        {
            "KeyId": "arn:aws:kms:us-east-1:111122223333:key/x",
            "CiphertextBlob": base64.b64encode(b"b" * 84).decode(),
            "Plaintext": base64.b64encode(b"p" * 32).decode(),
        }
    ).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-amz-json-1.1")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def _serve_canned(port_out: Any) -> None:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port_out.put(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(_canned_app(), log_level="error", lifespan="off")).run(
        sockets=[sock]
    )


def _client(
    endpoint: str,
    region: str,
    creds: tuple[str, str],
    op: str,
    key: str,
    blob: bytes,
    seconds: float,
    start: float,
    out: Any,
) -> None:
    kms = boto3.session.Session().client(
        "kms",
        region_name=region,  # the key service refuses a credential scoped elsewhere
        endpoint_url=endpoint,
        aws_access_key_id=creds[0],
        aws_secret_access_key=creds[1],
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    call = (
        (lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"))
        if op == "GenerateDataKey"
        else (lambda: kms.decrypt(CiphertextBlob=blob))
    )
    call()  # warm the connection
    while time.time() < start:
        time.sleep(0.001)
    latencies = []
    end = start + seconds
    while (t0 := time.perf_counter()) and time.time() < end:
        call()
        latencies.append(time.perf_counter() - t0)
    out.put(latencies)


def measure(
    endpoint: str,
    region: str,
    creds: tuple[str, str],
    op: str,
    key: str,
    blob: bytes,
    clients: int,
    seconds: float,
) -> dict[str, float]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 1.5
    procs = [
        ctx.Process(
            target=_client, args=(endpoint, region, creds, op, key, blob, seconds, start, out)
        )
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    for _ in procs:
        latencies += out.get()
    for p in procs:
        p.join()
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,8")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench-keys-")) / "ws"
    ws = Workspace.create(root)
    rec = keyservice.start_detached(ws)
    endpoint = rec.addresses["endpoint"]
    port_q: Any = mp.get_context("fork").Queue()
    canned = mp.get_context("fork").Process(target=_serve_canned, args=(port_q,), daemon=True)
    canned.start()
    canned_endpoint = f"http://127.0.0.1:{port_q.get()}"
    time.sleep(0.5)
    try:
        vendor = ws.identity("vendor")
        creds = (vendor.access_key_id, vendor.secret_access_key)
        region = ws.config.region
        kms = keyservice.connect(ws)
        key = kms.create_key().key_id
        blob = kms.generate_data_key(key).ciphertext_blob
        print(
            f"{'operation':<16}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'base req/s':>12}{'ratio':>8}"
        )
        for op in ("GenerateDataKey", "Decrypt"):
            for n in counts:
                ours = measure(endpoint, region, creds, op, key, blob, n, args.seconds)
                base = measure(canned_endpoint, region, creds, op, key, blob, n, args.seconds)
                print(
                    f"{op:<16}{n:>8}{ours['rps']:>10.0f}{ours['p50_ms']:>9.1f}"
                    f"{ours['p99_ms']:>9.1f}{base['rps']:>12.0f}{ours['rps'] / base['rps']:>8.2f}"
                )
        print(f"machine: {os.cpu_count()} cores; {args.seconds:g}s per measurement")
    finally:
        keyservice.stop(ws)
        canned.terminate()


if __name__ == "__main__":
    main()
