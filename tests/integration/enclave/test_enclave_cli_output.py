"""What `enclave start|status|stop` and `image build` print, through the console script.

- ``--json`` is nitro-cli's ``describe-enclaves`` shape (its field names and
  types), with Strongroom's own fields under ``"Strongroom"``;
- progress goes to stderr only, only on a terminal (a real pty here) for
  ``enclave start``, as plain lines on a pipe for ``image build``, and never
  with ``--json``; stdout stays clean either way;
- the status table never cuts an enclave's name, at 80 columns on a terminal
  or on a pipe.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.run_helpers import STRONGROOM

from strongroom.image import BuildResult
from strongroom.workspace import Workspace

from .conftest import make_workspace, teardown_workspace

#: 32 characters, the longest name an enclave may have.
LONG_NAME = "a-rather-long-enclave-name-32-ch"
KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/0b5e1c2d-cli-output"
DESCRIBE_FIELDS = {
    "EnclaveName": str,
    "EnclaveID": str,
    "ProcessID": int,
    "EnclaveCID": type(None),  # a local enclave has no vsock CID
    "NumberOfCPUs": int,
    "CPUIDs": list,
    "MemoryMiB": int,
    "State": str,
    "Flags": str,
}
ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Shown:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    ws: Workspace
    image: Path

    def argv(self, *args: str) -> list[str]:
        return [STRONGROOM, "--home", str(self.ws.root), *args]

    def run(self, *args: str, env: dict[str, str] | None = None) -> Shown:
        result = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **(env or {})},
            cwd=self.ws.root.parent,
        )
        return Shown(result.returncode, result.stdout, result.stderr)

    def on_terminal(self, *args: str, stdout_too: bool = False, columns: int = 100) -> Shown:
        """Run with stderr (and, if asked, stdout) on a real pseudo-terminal."""
        master, slave = os.openpty()
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
        env.pop("NO_COLOR", None)
        process = subprocess.Popen(
            self.argv(*args),
            stdout=slave if stdout_too else subprocess.PIPE,
            stderr=slave,
            env=env,
            cwd=self.ws.root.parent,
        )
        os.close(slave)
        terminal = b""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side is closed: it exited
                    break
                if not chunk:
                    break
                terminal += chunk
            elif process.poll() is not None:
                break
        os.close(master)
        out = b"" if stdout_too else process.stdout.read() if process.stdout else b""
        code = process.wait(30)
        return Shown(code, out.decode(), terminal.decode(errors="replace"))


@pytest.fixture(scope="module")
def cli(image: BuildResult) -> Iterator[Cli]:
    ws = make_workspace()
    try:
        yield Cli(ws, image.path)
    finally:
        teardown_workspace(ws)


def check_described(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` has exactly describe-enclaves' fields (and types), plus "Strongroom"."""
    assert list(value)[: len(DESCRIBE_FIELDS)] == list(DESCRIBE_FIELDS), list(value)
    for field, kind in DESCRIBE_FIELDS.items():
        if not (field == "ProcessID" and value["State"] in ("STOPPED", "FAILED")):
            assert isinstance(value[field], kind), (field, value[field])
    assert all(isinstance(cpu, int) for cpu in value["CPUIDs"])
    assert value["Flags"] in ("NONE", "DEBUG_MODE")
    ours: dict[str, Any] = value["Strongroom"]
    return ours


def test_start_shows_its_phases_on_a_terminal_and_prints_them_nowhere_else(cli: Cli) -> None:
    shown = cli.on_terminal("enclave", "start", str(cli.image), "--name", LONG_NAME, columns=200)
    assert shown.code == 0, shown
    # the spinner's line, on stderr only, phase by phase (a first start: it unpacks)
    for phase in (
        "unpacking the image (its first start in this workspace)",
        "waiting for the enclave server to answer",
    ):
        assert f"starting enclave {LONG_NAME}: {phase}" in shown.err, shown.err
    assert shown.out.startswith(f"enclave {LONG_NAME} is RUNNING (answered after ")
    assert not ESCAPE.search(shown.out.encode()) and "unpacking" not in shown.out

    # on a pipe: no progress at all, the same lines on stdout
    stop = cli.run("enclave", "stop", LONG_NAME)
    assert stop.code == 0 and stop.out == f"stopped enclave {LONG_NAME}\n"
    piped = cli.run("enclave", "start", str(cli.image), "--name", LONG_NAME)
    assert piped.code == 0 and piped.err == "", piped.err
    assert piped.out.startswith(f"enclave {LONG_NAME} is RUNNING")


def test_json_is_describe_enclaves_shaped_with_strongroom_s_own_fields_apart(
    cli: Cli, image: BuildResult
) -> None:
    started = cli.on_terminal("enclave", "start", str(cli.image), "--name", "j1", "--json")
    assert started.code == 0, started
    assert "starting enclave" not in started.err  # --json: no progress, even on a terminal
    value = json.loads(started.out)
    ours = check_described(value)
    assert (value["EnclaveName"], value["State"], value["Flags"]) == ("j1", "RUNNING", "NONE")
    assert value["EnclaveID"].startswith("i-local-") and "-enc" in value["EnclaveID"]
    assert value["NumberOfCPUs"] == 2 and value["MemoryMiB"] == 1024  # the image's defaults
    assert set(value["CPUIDs"]) <= set(os.sched_getaffinity(0)) and value["CPUIDs"]
    assert ours["measurements"]["PCR0"] == image.measurements.pcr0
    assert ours["image_copy"] == "reused" and ours["responding"] is True
    assert ours["addresses"]["control"].endswith("/run/enclaves/j1/control.sock")
    assert isinstance(ours["start_s"], float) and ours["warnings"] == []

    debug = cli.run("enclave", "start", str(cli.image), "--name", "j2", "--debug", "--json")
    assert debug.code == 0 and debug.err == ""
    assert json.loads(debug.out)["Flags"] == "DEBUG_MODE"

    status = cli.run("enclave", "status", "--json")
    assert status.code == 0 and status.err == ""
    listed = {e["EnclaveName"]: e for e in json.loads(status.out)}
    assert set(listed) >= {"j1", "j2", LONG_NAME}
    for entry in listed.values():
        assert check_described(entry)["responding"] is True
    assert listed["j1"]["EnclaveID"] == value["EnclaveID"]
    assert listed["j1"]["ProcessID"] == value["ProcessID"]
    [one] = json.loads(cli.run("enclave", "status", "j2", "--json").out)
    assert one["EnclaveName"] == "j2" and one["Flags"] == "DEBUG_MODE"

    stopped = cli.run("enclave", "stop", "j2", "--json")
    assert stopped.code == 0
    [gone] = json.loads(stopped.out)
    check_described(gone)
    assert (gone["EnclaveName"], gone["State"], gone["Terminated"]) == ("j2", "STOPPED", True)
    assert gone["EnclaveID"] == one["EnclaveID"] and gone["ProcessID"] is None


@pytest.mark.parametrize("where", ["pipe", "terminal"])
def test_the_status_table_never_cuts_a_name_at_80_columns(cli: Cli, where: str) -> None:
    if where == "pipe":
        shown = cli.run("enclave", "status", env={"COLUMNS": "80"})
        rows = [line.split("\t") for line in shown.out.splitlines()]
        assert rows[0][:3] == ["name", "state", "answers"]
        assert [LONG_NAME, "RUNNING", "yes"] in [row[:3] for row in rows]
    else:
        shown = cli.on_terminal("enclave", "status", stdout_too=True, columns=80)
        text = ESCAPE.sub(b"", shown.err.encode()).decode()
        assert LONG_NAME in text and "RUNNING" in text, text
        assert max(len(line) for line in text.splitlines()) <= 80, text
    assert shown.code == 0


def test_image_build_progress_lines_on_a_pipe_a_spinner_on_a_terminal_none_with_json(
    cli: Cli,
) -> None:
    built = cli.run("image", "build", "--key", KEY_ARN, "-o", "a.eif")
    assert built.code == 0, built.err
    assert "  resolving the runtime distributions\n" in built.err
    assert "PCR0" in built.out and "resolving" not in built.out

    as_json = cli.run("--json", "image", "build", "--key", KEY_ARN, "-o", "b.eif")
    assert as_json.code == 0 and as_json.err == "", as_json.err
    assert (
        json.loads(as_json.out)["Measurements"]["PCR0"]
        == json.loads(cli.run("--json", "image", "describe", "a.eif").out)["Measurements"]["PCR0"]
    )

    shown = cli.on_terminal("image", "build", "--key", KEY_ARN, "-o", "c.eif")
    assert shown.code == 0, shown
    assert "building c.eif: resolving the runtime distributions" in shown.err
    assert "\n  resolving" not in shown.err  # a spinner, not lines
    assert "PCR0" in shown.out and not ESCAPE.search(shown.out.encode())
