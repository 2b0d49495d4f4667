"""One CLI contract (issue 11), through the console script: output, errors, help.

Run against a real workspace and key service; enclave-backed parts of the
contract (``run --json``, ``ls --json``, ``attest --json``, exit codes of runs)
are in test_run_sealed.py, which has the enclaves.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.e2e.conftest import STRONGROOM
from tests.e2e.run_helpers import error_line

ASSETS = Path(__file__).parents[1] / "assets"


class Workspace:
    def __init__(self, home: Path) -> None:
        self.home = home

    def argv(self, *args: str) -> list[str]:
        return [STRONGROOM, "--home", str(self.home), *args]

    def cli(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True)
        if expect is not None:
            assert result.returncode == expect, f"{args}: {result.stdout}{result.stderr}"
        return result


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    w = Workspace(tmp_path_factory.mktemp("contract") / "home")
    w.cli("init")
    w.cli("keys", "serve", "--detach")
    w.cli("keys", "create", "--alias", "contract", "--description", "a key for the contract")
    yield w
    w.cli("keys", "stop", expect=None)


@pytest.fixture(scope="module")
def sealed(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = tmp_path_factory.mktemp("app")
    (app / "main.py").write_text("print('hi')\n")
    out = app.parent / "contract.sealed"
    ws.cli("seal", str(app), "--key", "alias/contract", "-o", str(out))
    return out


def terminal(argv: list[str], columns: int) -> str:
    """What ``argv`` prints on a real terminal ``columns`` wide (a pty, not a pipe)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    process = subprocess.Popen(argv, stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(10) == 0
    text = b"".join(chunks).decode()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


# --- --json before or after the command --------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "list"),
        ("keys", "audit"),
        ("keys", "status"),
        ("keys", "describe", "alias/contract"),
        ("env", "--as", "vendor"),
        ("image", "approved", "--key", "alias/contract"),
    ],
)
def test_json_is_accepted_before_or_after_the_command_and_is_json_only(
    ws: Workspace, args: tuple[str, ...]
) -> None:
    before = json.loads(ws.cli("--json", *args).stdout)
    after = json.loads(ws.cli(*args, "--json").stdout)
    assert type(before) is type(after) and before  # the same kind of data, not empty


def test_inspect_and_attestation_inspect_take_json_after(ws: Workspace, sealed: Path) -> None:
    header = json.loads(ws.cli("inspect", str(sealed), "--json").stdout)
    assert header["manifest"] is None
    document = ASSETS / "nitro-attestation-production.b64"
    described = json.loads(ws.cli("attestation", "inspect", str(document), "--json").stdout)
    assert described["pcrs"]["0"].startswith("e72a46ca")


# --- tables: whole values on a pipe, never cut on a terminal ---------------------------------


def test_tables_on_a_pipe_are_plain_tab_separated_and_whole(ws: Workspace) -> None:
    listed = ws.cli("keys", "list").stdout.splitlines()
    assert listed[0].split("\t") == ["key id", "aliases", "state", "description"]
    key_id, aliases, state, description = listed[1].split("\t")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", key_id)
    assert (aliases, state, description) == ("alias/contract", "Enabled", "a key for the contract")
    audit = ws.cli("keys", "audit").stdout
    assert not set("│┃━─┏┡…") & set(audit)  # no box drawing, nothing elided
    assert key_id in audit  # the whole key id, not its first 8 characters


def test_keys_audit_is_readable_at_80_columns_and_cuts_no_id(ws: Workspace) -> None:
    shown = terminal(ws.argv("keys", "audit"), 80)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines and max(len(line) for line in lines) <= 80, shown
    assert "…" not in shown
    assert "operation" in shown and "outcome" in shown and "CreateKey" in shown
    # the optional columns made room; the key id is whole once its column's folds are joined
    key_id = ws.cli("keys", "list").stdout.splitlines()[1].split("\t")[0]
    heading = next(line for line in lines if "operation" in line)
    column = [c.strip() for c in re.split(r"[│┃]", heading)].index("key")
    body = [re.split(r"[│┃]", line) for line in lines if line.startswith("│")]
    assert key_id in "".join(cells[column].strip() for cells in body)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (("keys", "lis"), "error: no such command 'lis'", "strongroom keys --help"),
        (("push",), "error: missing argument 'SOURCES...'", "strongroom push --help"),
        (("keys", "list", "--nope"), "error: no such option '--nope'", "strongroom keys list"),
        (("seal", "/nonexistent", "--key", "k", "-o", "x"), "error: invalid value", "seal --help"),
    ],
)
def test_usage_errors_are_one_error_line_and_a_hint(
    ws: Workspace, args: tuple[str, ...], message: str, hint: str
) -> None:
    failed = ws.cli(*args, expect=2)
    line = error_line(failed.stderr)
    assert line.startswith(message), line
    assert hint in failed.stderr and "Usage:" not in failed.stderr
    assert failed.stdout == ""


def test_a_reader_closing_stdout_early_is_not_a_failure(ws: Workspace) -> None:
    argv = " ".join(ws.argv("keys", "audit"))
    for _ in range(3):  # whether or not the output fits in the pipe's buffer
        piped = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {argv} | head -1"], capture_output=True, text=True
        )
        assert piped.returncode == 0 and piped.stderr == "", piped.stderr
        assert piped.stdout.startswith("time\t")


def test_a_file_that_is_not_a_document_says_what_it_is(ws: Workspace, tmp_path: Path) -> None:
    not_cose = tmp_path / "map.cbor"
    not_cose.write_bytes(bytes([0xA1, 0x61, 0x61, 0x01]))  # CBOR {"a": 1}
    refused = ws.cli("attestation", "inspect", str(not_cose), expect=3)
    assert "not a COSE_Sign1 (it starts with byte 0xa1" in error_line(refused.stderr)
    text = tmp_path / "text.b64"
    text.write_text("this is not base64 at all!\n")
    refused = ws.cli("attestation", "inspect", str(text), expect=3)
    assert "text, but not valid base64" in error_line(refused.stderr)


def test_allow_debug_warns_in_one_line(ws: Workspace) -> None:
    document = ASSETS / "nitro-attestation-debug.b64"
    at = ["--root", "aws", "--at", "2024-09-07T14:38:06.508Z"]  # when it was recorded
    ws.cli("attestation", "verify", str(document), *at, expect=4)
    allowed = ws.cli("attestation", "verify", str(document), *at, "--allow-debug", expect=None)
    warnings = [line for line in allowed.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: accepting a debug-mode")
    assert "UnsafeAttestationWarning" not in allowed.stderr


# --- help -------------------------------------------------------------------------------------


def _all_commands() -> list[tuple[str, ...]]:
    from strongroom.cli.main import cli

    found: list[tuple[str, ...]] = []
    ctx = click.Context(cli)

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            names = command.list_commands(ctx)
            for name in names:
                sub = command.get_command(ctx, name)
                assert sub is not None, f"{' '.join((*path, name))} is listed but does not exist"
                walk(sub, (*path, name))
        else:
            found.append(path)

    walk(cli, ())
    return found


def test_every_command_s_help_has_an_example() -> None:
    commands = _all_commands()
    assert ("run",) in commands and ("keys", "policy", "get") in commands
    missing = []
    for words in commands:
        shown = subprocess.run([STRONGROOM, *words, "--help"], capture_output=True, text=True)
        assert shown.returncode == 0, (words, shown.stderr)
        if "Example" not in shown.stdout:
            missing.append(" ".join(words))
    assert missing == []


def test_the_top_level_help_names_only_commands_that_exist() -> None:
    shown = subprocess.run([STRONGROOM, "--help"], capture_output=True, text=True).stdout
    summary = shown.split("Options:")[0]
    named = {
        word.strip()
        for line in summary.splitlines()
        if line.strip().startswith(("Vendor:", "Host:"))
        for part in line.split(":", 1)[1].split(",")
        for word in part.split("/")
    }
    top = {words[0] for words in _all_commands()}
    for phrase in named:
        assert phrase.split()[0] in top, f"the help names {phrase!r}, which does not exist"


def test_shell_completion_completes_commands_and_enclave_names(ws: Workspace) -> None:
    script = ws.cli("completion", "bash").stdout
    assert "_STRONGROOM_COMPLETE" in script and "complete " in script
    env = {**os.environ, "_STRONGROOM_COMPLETE": "bash_complete", "COMP_CWORD": "1"}
    completed = subprocess.run(
        [STRONGROOM], env={**env, "COMP_WORDS": "strongroom ru"}, capture_output=True, text=True
    )
    assert "plain,run" in completed.stdout.splitlines()
