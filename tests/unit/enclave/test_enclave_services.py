"""The workspace's registry of running services (records, liveness, stop)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strongroom._internal import services


def test_record_update_load_list_remove(tmp_path: Path) -> None:
    rec = services.record_self(
        tmp_path, "proxy", "egress", addresses={"listen": "unix:/x"}, log=tmp_path / "log"
    )
    assert rec.pid == os.getpid() and rec.proc_start == services.process_start_time(os.getpid())
    assert rec.is_alive()
    updated = services.update(tmp_path, "proxy", "egress", addresses={"b": "c"}, state="RUNNING")
    assert updated.addresses == {"listen": "unix:/x", "b": "c"}
    assert services.load(tmp_path, "proxy", "egress") == updated
    assert updated.extra == {"state": "RUNNING"} and updated.log == str(tmp_path / "log")
    assert [r.name for r in services.list(tmp_path, "proxy")] == ["egress"]
    services.remove(tmp_path, "proxy", "egress")
    assert services.load(tmp_path, "proxy", "egress") is None
    assert services.list(tmp_path, "proxy") == []
    assert services.list(tmp_path, "nothing-here") == []


def test_names_become_file_names_so_they_are_checked(tmp_path: Path) -> None:
    for bad in ("../x", "a/b", "", ".hidden", "A"):
        with pytest.raises(ValueError, match="invalid name"):
            services.record_path(tmp_path, "enclaves", bad)


def test_a_reused_pid_is_not_the_recorded_process(tmp_path: Path) -> None:
    rec = services.record_self(tmp_path, "keys", "keyservice")
    stale = services.ServiceRecord.from_json({**rec.to_json(), "proc_start": rec.proc_start + 1})
    assert not stale.is_alive()
    # stop() must not signal a process that merely has the recorded pid
    assert services.stop(stale) is False


def test_stop_terminates_then_kills(tmp_path: Path) -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    assert services.stop(polite.pid, timeout=5) is False
    started = time.monotonic()
    assert services.stop(stubborn.pid, timeout=0.3) is True
    assert time.monotonic() - started < 5
    # stop() reaps its own children, so check the pids rather than wait()'s codes
    assert not services.pid_matches(polite.pid, None)
    assert not services.pid_matches(stubborn.pid, None)
    polite.wait()
    stubborn.wait()
    stubborn.stdout.close()


def test_spawn_detached_runs_in_its_own_session(tmp_path: Path) -> None:
    log = tmp_path / "run" / "x.log"
    proc = services.spawn_detached(
        [sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid())"], log_path=log
    )
    while (code := proc.poll()) is None:
        time.sleep(0.01)
    assert code == 0
    assert log.read_text() == "True\n" and log.stat().st_mode & 0o777 == 0o600
