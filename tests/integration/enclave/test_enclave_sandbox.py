"""The local enclave, for real: bubblewrap, the supervisor, the three channels, the limits."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from strongroom._internal import services
from strongroom.attestation.authority import LocalAuthority
from strongroom.attestation.errors import DebugEnclaveError
from strongroom.attestation.verify import verify
from strongroom.enclave import EnclaveSpec, runtime_for
from strongroom.enclave._image_cache import _in_use as in_use
from strongroom.enclave._limits import Limits
from strongroom.enclave.sandbox import EnclavePaths
from strongroom.errors import AlreadyExistsError, NotFoundError, StrongroomError, UsageError
from strongroom.image import BuildResult
from strongroom.transport import proxy
from strongroom.transport.forward import KMS_LOCAL_PORT
from strongroom.workspace import Workspace

from .conftest import (
    KMS_ANSWER,
    Exec,
    client,
    make_workspace,
    python_probe,
    record,
    serve_kms_stand_in,
    start,
    teardown_workspace,
)


@dataclass
class DebugEnclave:
    ws: Workspace
    api: httpx.Client
    probe: Exec
    kms: ThreadingHTTPServer


@pytest.fixture(scope="module")
def debug(image: BuildResult) -> Iterator[DebugEnclave]:
    """One debug enclave ("dbg") with the egress proxy and a key-service stand-in."""
    ws = make_workspace()
    kms = serve_kms_stand_in(ws)
    try:
        start(ws, image, "dbg", debug=True)
        kms_rule = proxy.parse_allow(ws.config.kms_listen, named={})
        proxy.start_detached(ws.run_dir, proxy.Allowlist((kms_rule,)))
        with client(ws, "dbg") as api:
            yield DebugEnclave(ws, api, python_probe(api), kms)
    finally:
        kms.shutdown()
        kms.server_close()
        teardown_workspace(ws)


def _alive(pid: int) -> bool:
    return services.pid_matches(pid, None)


def test_describe_answers_over_the_control_socket(debug: DebugEnclave) -> None:
    body = debug.api.get("/v1/describe").json()
    assert body["debug"] is True and body["uptime_s"] >= 0
    assert body["measurements"] == {f"pcr{i}": "00" * 48 for i in range(3)}
    assert body["module_id"] == record(debug.ws, "dbg").extra["enclave_id"]


def test_no_network_but_its_own_loopback(debug: DebugEnclave) -> None:
    kms_port = debug.kms.server_address[1]
    result = debug.probe(
        "import socket\n"
        "print([name for _, name in socket.if_nameindex()])\n"
        f"socket.create_connection(('127.0.0.1', {kms_port}), timeout=5)\n"
    )
    assert result["stdout"] == "['lo']\n"
    assert result["exit_code"] == 1 and "ConnectionRefusedError" in result["stderr"]
    # ... while the same server answers on the host.
    with socket.create_connection(("127.0.0.1", kms_port), timeout=5):
        pass


def test_no_view_of_the_host_file_system(debug: DebugEnclave) -> None:
    config = debug.ws.root / "config.toml"
    assert config.exists()
    result = debug.probe(
        "import json, os, sys\n"
        f"for path in [{str(config)!r}, '/etc/passwd', '/home', '/var']:\n"
        "    print(path, os.path.exists(path))\n"
        "print(sorted(os.listdir('/')))\n"
        "print(json.dumps(sorted(os.listdir('/run/strongroom'))))\n"
        "print(json.dumps(sorted(os.listdir('/image'))))\n"
    )
    lines = result["stdout"].splitlines()
    assert all(line.endswith(" False") for line in lines[:4]), lines
    root = set(json.loads(lines[4].replace("'", '"')))
    assert root <= {
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "usr",
        "etc",
        "dev",
        "proc",
        "tmp",
        "image",
        "enclave",
        "run",
        "root",
        "opt",
    }
    # the two sockets, the host's init program, the extra read-only /proc the enclave's
    # init mounts so that app jails can have theirs, and (cgroup v1) the runs' cgroup
    run_dir, image = json.loads(lines[5]), json.loads(lines[6])
    assert {"attestor.sock", "egress.sock", "init.py", "proc"} <= set(run_dir)
    assert set(run_dir) <= {"attestor.sock", "egress.sock", "init.py", "proc", "runs-cgroup"}
    assert image == ["app-packages", "runtime", "vendor"]


def test_the_image_and_the_system_are_read_only(debug: DebugEnclave) -> None:
    result = debug.probe(
        "import os\n"
        "paths = ['/image/runtime/x', '/usr/x', '/run/strongroom/x', '/x', '/etc/x']\n"
        "paths += ['/proc/sys/vm/swappiness', '/proc/sysrq-trigger']\n"
        "paths += ['/proc/sys/kernel/core_pattern']\n"
        "paths += ['/run/strongroom/proc/self/oom_score_adj']\n"
        "for path in paths:\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print(path, 'WRITABLE')\n"
        "    except OSError as e:\n"
        "        print(path, e.strerror)\n"
        "open('/enclave/apps/ok', 'w').write('private memory')\n"
        "print(os.getuid(), oct(os.stat('/enclave/apps').st_mode & 0o777))\n"
    )
    assert "WRITABLE" not in result["stdout"], result
    # root of the enclave's own user namespace (as in a Nitro enclave), owning nothing outside
    assert result["stdout"].splitlines()[-1] == "0 0o700"


def test_a_debug_enclave_attests_all_zero_pcrs(debug: DebugEnclave) -> None:
    nonce = os.urandom(16)
    response = debug.api.post("/v1/attestation", json={"nonce": nonce.hex()})
    document = base64.b64decode(response.json()["document"])
    root = LocalAuthority.open_or_create(debug.ws.ca_dir).root_certificate()
    with pytest.raises(DebugEnclaveError):
        verify(document, trust_anchor=root, expect_nonce=nonce)
    with pytest.warns(UserWarning):
        verified = verify(document, trust_anchor=root, expect_nonce=nonce, unsafe_allow_debug=True)
    assert all(verified.pcrs[i] == bytes(48) for i in range(3))


def test_egress_reaches_only_the_allowlist(debug: DebugEnclave) -> None:
    # An unmodified HTTP client reaches the key service at 127.0.0.1:8000 ...
    result = debug.probe(
        "import urllib.request\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{KMS_LOCAL_PORT}/', timeout=10).read())"
    )
    assert result["stdout"].strip() == repr(KMS_ANSWER), result
    # ... anything else is refused by the proxy, and logged.
    kms_port = debug.kms.server_address[1]
    checks = {
        port: debug.api.post("/v1/egress-check", json={"host": "127.0.0.1", "port": port}).json()
        for port in (kms_port, kms_port + 1)
    }
    assert checks[kms_port]["ok"] is True
    assert checks[kms_port + 1]["ok"] is False and checks[kms_port + 1]["status"] == 403
    log = debug.ws.run_dir / "proxy" / "egress.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"enclave": "dbg", "destination": f"127.0.0.1:{kms_port + 1}", "decision": "deny"} in [
        {k: e[k] for k in ("enclave", "destination", "decision")} for e in entries
    ]
    datetime.fromisoformat(entries[-1]["time"])
    # Stopping the proxy cuts the enclave off at once; starting it restores egress.
    rules = proxy.Allowlist.from_mapping(
        json.loads((debug.ws.run_dir / "proxy" / "allowlist.json").read_text()), "allowlist"
    )
    proxy.stop(debug.ws.run_dir)
    cut = debug.api.post("/v1/egress-check", json={"host": "127.0.0.1", "port": kms_port})
    assert cut.json()["status"] == 503
    proxy.start_detached(debug.ws.run_dir, rules)
    again = debug.api.post("/v1/egress-check", json={"host": "127.0.0.1", "port": kms_port})
    assert again.json()["ok"] is True


def test_a_debug_enclave_has_a_console(debug: DebugEnclave) -> None:
    # The server's stdout is the enclave's console; it says it is serving.
    console = b"".join(runtime_for(debug.ws).logs("dbg"))
    assert b"strongroom enclave server: serving" in console
    # Nothing else in the enclave can write there through the server's /proc: it is
    # not dumpable, so even a debug probe cannot open its descriptors.
    argv = ["sh", "-c", "echo injected > /proc/$PPID/fd/1"]
    assert debug.api.post("/v1/debug/exec", json={"argv": argv}).json()["exit_code"] != 0
    assert b"injected" not in b"".join(runtime_for(debug.ws).logs("dbg"))


def test_a_second_enclave_with_the_same_name_is_refused(
    debug: DebugEnclave, image: BuildResult
) -> None:
    with pytest.raises(AlreadyExistsError, match="already running") as excinfo:
        start(debug.ws, image, "dbg")
    assert "enclave stop dbg" in excinfo.value.hint


def test_production_enclave(ws: Workspace, image: BuildResult) -> None:
    t0 = time.monotonic()
    result = start(ws, image, "prod", memory_mib=1024)
    started = time.monotonic() - t0
    assert result.warnings == () and result.status.state == "RUNNING"
    assert result.status.measurements == image.measurements
    with client(ws, "prod") as api:
        assert api.get("/v1/describe").json()["measurements"] == {
            "pcr0": image.measurements.pcr0,
            "pcr1": image.measurements.pcr1,
            "pcr2": image.measurements.pcr2,
        }
        identity_key = bytes.fromhex(api.get("/v1/describe").json()["identity_key"])
        nonce = os.urandom(32)
        body = {"nonce": nonce.hex()}
        document = base64.b64decode(api.post("/v1/attestation", json=body).json()["document"])
        bad = api.post("/v1/attestation", json={"nonce": "zz", "pcrs": {}})
        assert bad.status_code == 400 and "unknown field" in bad.json()["message"]
        for chosen in ("public_key", "user_data"):  # a caller binds nothing but a nonce
            refused = api.post("/v1/attestation", json={**body, chosen: "00" * 32})
            assert refused.status_code == 400 and chosen in refused.json()["message"]
        # The exec probe exists only in debug enclaves.
        assert api.post("/v1/debug/exec", json={"argv": ["true"]}).status_code == 404
    root = LocalAuthority.open_or_create(ws.ca_dir).root_certificate()
    verified = verify(
        document,
        trust_anchor=root,
        at=datetime.now(UTC),
        expect_pcrs=image.measurements.pcrs(),
        expect_nonce=nonce,
    )
    assert verified.user_data is None and not verified.is_debug
    # the enclave's own key, an EC key: never usable as a KMS Recipient
    assert verified.document.public_key == identity_key
    assert isinstance(verified.public_key, ec.EllipticCurvePublicKey)
    assert sorted(verified.pcrs) == list(range(16))

    runtime = runtime_for(ws)
    with pytest.raises(UsageError, match="not started with --debug"):
        runtime.logs("prod")

    # stop leaves nothing running: no process, no socket, no cgroup; the image cache's
    # copy stays for the next start, and no enclave holds it any more
    rec = record(ws, "prod")
    limits = Limits.from_json(rec.extra["limits"])
    pids = {rec.pid, rec.extra["sandbox_pid"]}
    for cgroup in limits.cgroups:
        pids |= {int(p) for p in Path(cgroup, "cgroup.procs").read_text().split()}
    assert len(pids) >= 4 and all(_alive(pid) for pid in pids)  # supervisor, bwrap, init, server
    assert in_use(ws.run_dir / "image-cache" / image.measurements.pcr0)
    t0 = time.monotonic()
    [stopped] = runtime.stop("prod")
    stop_time = time.monotonic() - t0
    assert stopped.state == "STOPPED"
    assert not any(_alive(pid) for pid in pids)
    paths = EnclavePaths.of(ws.run_dir, "prod")
    assert not any(p.exists() for p in paths.sockets())
    assert not in_use(ws.run_dir / "image-cache" / image.measurements.pcr0)
    assert not any(Path(cgroup).exists() for cgroup in limits.cgroups)
    assert runtime.status() == []
    with pytest.raises(NotFoundError, match="no enclave named 'prod'"):
        runtime.stop("prod")
    print(f"\nstart (until /v1/describe answers): {started:.2f} s; stop: {stop_time:.2f} s")


def test_the_memory_limit_kills_the_app_not_the_host(ws: Workspace, image: BuildResult) -> None:
    result = start(ws, image, "small", memory_mib=128, debug=True)
    assert any("rule of thumb" in warning for warning in result.warnings)
    runtime = runtime_for(ws)
    [status] = runtime.status("small")
    if status.limits is not None and status.limits.startswith("rlimit"):
        pytest.fail(f"no cgroup memory controller here: {status.limits}")
    with client(ws, "small") as api:
        allocated = python_probe(api)("b = bytes(range(256)) * (2 << 20); print(len(b))")
        assert allocated["exit_code"] == -9 and allocated["stdout"] == ""
        [status] = runtime.status("small")
        assert status.state == "RUNNING" and status.oom_killed
        assert status.reason is not None and "out of memory (limit 128 MiB)" in status.reason
        assert api.get("/v1/describe").status_code == 200  # the enclave survives its app


def test_status_says_why_an_enclave_died(ws: Workspace, image: BuildResult) -> None:
    start(ws, image, "doomed", debug=True)
    with client(ws, "doomed") as api, pytest.raises(httpx.HTTPError):
        # The probe kills its parent: the enclave server.
        api.post("/v1/debug/exec", json={"argv": ["sh", "-c", "kill -9 $PPID"]})
    runtime = runtime_for(ws)
    deadline = time.monotonic() + 10
    while (status := runtime.status("doomed")[0]).state == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status.state == "FAILED" and status.exit_code == 137
    assert status.reason == "killed by SIGKILL" and status.pid is None
    paths = EnclavePaths.of(ws.run_dir, "doomed")
    deadline = time.monotonic() + 10
    while paths.control_socket.exists():  # the supervisor cleans up after recording
        assert time.monotonic() < deadline
        time.sleep(0.05)
    console = b"".join(runtime.logs("doomed", follow=True))  # follow ends: it is dead
    assert console.startswith(b"strongroom enclave server: serving")
    [stopped] = runtime.stop("doomed")  # forgets the dead enclave
    assert stopped.state == "FAILED" and runtime.status() == []


def test_an_image_that_cannot_be_measured_is_refused(
    ws: Workspace, image: BuildResult, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.eif"
    data = bytearray(image.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    runtime = runtime_for(ws)
    with pytest.raises(StrongroomError, match="CRC mismatch"):
        runtime.start(EnclaveSpec("bad", damaged, cpus=1, memory_mib=256))
    [status] = runtime.status("bad")
    assert status.state == "FAILED" and status.pid is None
    cache = ws.run_dir / "image-cache"  # nothing half-unpacked is left
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
