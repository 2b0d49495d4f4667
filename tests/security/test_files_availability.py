"""Issue 9, finding 7 (availability), beyond the Files API: processes and a silent server.

- **Fork bomb.** Before, an app's processes counted only against the host: one
  made 1,500 of them. The enclave's cgroup now has a process limit
  (``pids.max``, :data:`~strongroom.enclave._limits.DEFAULT_PIDS` tasks), so a
  fork bomb run inside a real debug enclave (through its exec probe, where an
  app runs) gets ``EAGAIN`` at the enclave's limit, while the host forks as
  usual and the enclave server keeps answering, during and after.
- **A server that no longer answers.** ``enclave status`` trusted the
  supervisor's record: a server stopped with SIGSTOP (as good as wedged, or
  thrashing at its memory limit) was reported RUNNING, fine. Now status
  probes it: ``responding: false`` with a reason, and ``true`` again once it
  is continued, in the library, the CLI table and ``--json``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strongroom.enclave import runtime_for
from strongroom.enclave._limits import DEFAULT_PIDS, Limits
from strongroom.enclave.sandbox import NOT_RESPONDING, STATUS_PROBE_TIMEOUT_S
from strongroom.image import build_image
from strongroom.workspace import Workspace
from tests.e2e.run_helpers import STRONGROOM
from tests.integration.enclave.conftest import (
    client,
    make_workspace,
    record,
    start,
    teardown_workspace,
)

BOMB, FROZEN = "bomb", "frozen"
PROMPT_S = 2.0
#: How long the fork bomb holds every pid it got, while the host looks around.
HOLD_S = 3.0
EXEC_TIMEOUT_S = 90.0

FORK_BOMB = f"""
import errno, json, os, signal, time
children, failure = [], None
started = time.monotonic()
while time.monotonic() - started < 60:
    try:
        pid = os.fork()
    except OSError as e:
        failure = errno.errorcode.get(e.errno, str(e.errno))
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    children.append(pid)
took = time.monotonic() - started
time.sleep({HOLD_S})
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
print(json.dumps({{"forked": len(children), "failure": failure, "seconds": took}}))
"""


@dataclass
class Enclaves:
    ws: Workspace


@pytest.fixture(scope="module")
def enclaves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclaves]:
    image = build_image(tmp_path_factory.mktemp("image") / "enclave.eif")
    ws = make_workspace()
    try:
        # forked children are cheap, but a thousand of them are not free: room to reach the
        # process limit before the memory limit
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            booting = [
                pool.submit(start, ws, image, BOMB, debug=True, memory_mib=1024),
                pool.submit(start, ws, image, FROZEN),
            ]
            for future in booting:
                future.result()
        yield Enclaves(ws)
    finally:
        teardown_workspace(ws)


def _limits(ws: Workspace, name: str) -> Limits:
    return Limits.from_json(record(ws, name).extra["limits"])


def _server_pid(ws: Workspace, name: str) -> int:
    """The enclave server: in the enclave's cgroup, the process (not bubblewrap) that listens.

    bubblewrap (outside, and as the sandbox's init) carries the same command line.
    """
    procs = Path(_limits(ws, name).cgroups[0], "cgroup.procs").read_text().split()
    servers = [
        int(pid)
        for pid in procs
        if b"--listen" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        and Path(f"/proc/{pid}/comm").read_text().strip() != "bwrap"
    ]
    assert len(servers) == 1, servers
    return servers[0]


def _cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [STRONGROOM, "--home", str(ws.root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},  # the table, unwrapped
    )
    assert result.returncode == 0, result.stderr
    return result


def test_a_fork_bomb_stops_at_the_enclave_s_process_limit(enclaves: Enclaves) -> None:
    ws = enclaves.ws
    limits = _limits(ws, BOMB)
    assert limits.pids_limited and limits.pids == DEFAULT_PIDS, limits
    assert f"{DEFAULT_PIDS} tasks" in (runtime_for(ws).status(BOMB)[0].limits or "")
    current = Path(str(limits.pids_cgroup), "pids.current")
    with client(ws, BOMB) as api, concurrent.futures.ThreadPoolExecutor(1) as pool:
        body = {"argv": ["python3", "-c", FORK_BOMB], "timeout_s": EXEC_TIMEOUT_S}
        bomb = pool.submit(api.post, "/v1/debug/exec", json=body, timeout=EXEC_TIMEOUT_S + 10)
        deadline = time.monotonic() + 60
        while int(current.read_text()) < DEFAULT_PIDS - 1:
            assert time.monotonic() < deadline and not bomb.done(), current.read_text()
            time.sleep(0.05)
        # the limit is held: the host forks as usual, and the enclave server answers
        assert subprocess.run(["true"], check=False).returncode == 0
        with client(ws, BOMB) as other:
            started = time.monotonic()
            assert other.get("/v1/describe", timeout=30).status_code == 200
            answered = time.monotonic() - started
        assert answered < PROMPT_S, answered
        [during] = runtime_for(ws).status(BOMB)
        assert during.state == "RUNNING" and during.responding is True
        response = bomb.result()
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["exit_code"] == 0, result
        outcome: dict[str, Any] = json.loads(result["stdout"])
        assert outcome["failure"] == "EAGAIN", outcome
        assert DEFAULT_PIDS - 100 < outcome["forked"] < DEFAULT_PIDS, outcome
        # after: every pid is back, the enclave runs new processes and says what happened
        again = api.post("/v1/debug/exec", json={"argv": ["python3", "-c", "print(6 * 7)"]})
        assert again.json()["stdout"].strip() == "42"
        assert api.get("/v1/files/stat", params={"path": "/"}).status_code == 200
    [after] = runtime_for(ws).status(BOMB)
    assert after.state == "RUNNING" and after.responding is True
    assert after.reason is not None and f"limit of {DEFAULT_PIDS} tasks" in after.reason
    print(
        f"\nfork bomb: {outcome['forked']} processes in {outcome['seconds']:.2f} s, then "
        f"{outcome['failure']}; describe during it: {answered * 1000:.0f} ms"
    )


def test_status_notices_a_server_that_no_longer_answers(enclaves: Enclaves) -> None:
    ws = enclaves.ws
    runtime = runtime_for(ws)
    [before] = runtime.status(FROZEN)
    assert before.responding is True and before.reason is None
    server = _server_pid(ws, FROZEN)
    os.kill(server, signal.SIGSTOP)
    try:
        started = time.monotonic()
        statuses = {s.name: s for s in runtime.status()}
        took = time.monotonic() - started
        frozen = statuses[FROZEN]
        assert frozen.state == "RUNNING" and frozen.responding is False
        assert frozen.reason == NOT_RESPONDING
        assert statuses[BOMB].responding is True
        # both probed at once: one timeout, not one per enclave
        assert took < STATUS_PROBE_TIMEOUT_S + 1.0, took
        # as the operator sees it
        [shown] = json.loads(_cli(ws, "enclave", "status", FROZEN, "--json").stdout)
        assert shown["State"] == "RUNNING" and shown["EnclaveName"] == FROZEN
        assert shown["Strongroom"]["responding"] is False
        assert shown["Strongroom"]["reason"] == NOT_RESPONDING
        detail = _cli(ws, "enclave", "status", FROZEN).stdout
        assert "responding       NO" in detail and "does not answer" in detail, detail
        table = _cli(ws, "enclave", "status").stdout
        [row] = [line.split("\t") for line in table.splitlines() if line.startswith(FROZEN)]
        assert row[1:3] == ["RUNNING", "NO"], table  # a pipe: tab-separated, whole values
        assert NOT_RESPONDING in row
    finally:
        os.kill(server, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while (status := runtime.status(FROZEN)[0]).responding is not True:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status.reason is None
    with client(ws, FROZEN) as api:
        assert api.get("/v1/describe").status_code == 200
    [shown] = json.loads(_cli(ws, "enclave", "status", FROZEN, "--json").stdout)
    assert shown["Strongroom"]["responding"] is True


def test_status_stays_fast_when_enclaves_answer(enclaves: Enclaves) -> None:
    runtime = runtime_for(enclaves.ws)
    runtime.status()  # warm
    started = time.monotonic()
    for _ in range(5):
        assert all(s.responding is True for s in runtime.status())
    took = (time.monotonic() - started) / 5
    assert took < 0.5, took
    print(f"\nstatus of 2 running enclaves (one probe each): {took * 1000:.0f} ms")
