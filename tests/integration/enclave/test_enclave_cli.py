"""``strongroom enclave ...`` and ``strongroom proxy ...`` as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strongroom.cli.enclave import enclave_group, proxy_group
from strongroom.cli.main import cli, main
from strongroom.image import BuildResult
from strongroom.workspace import Workspace

for _group in (enclave_group, proxy_group):
    if _group.name not in cli.commands:
        cli.add_command(_group)


def run(capsys: pytest.CaptureFixture[str], ws: Workspace, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(["--home", str(ws.root), *args])
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_enclave_and_proxy_commands(
    ws: Workspace, image: BuildResult, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image_path = str(image.path)
    code, out, err = run(capsys, ws, "enclave", "start", image_path, "--name", "c1", "--json")
    assert code == 0, err
    started = json.loads(out)
    ours = started["Strongroom"]
    assert started["State"] == "RUNNING" and ours["measurements"]["PCR0"] == image.measurements.pcr0
    assert started["MemoryMiB"] == 1024 and started["NumberOfCPUs"] == 2  # the image's defaults
    assert ours["addresses"]["control"].endswith("/run/enclaves/c1/control.sock")

    code, out, _ = run(capsys, ws, "enclave", "status")
    assert code == 0 and "c1" in out and "RUNNING" in out
    code, out, _ = run(capsys, ws, "enclave", "status", "c1")
    assert code == 0 and image.measurements.pcr0 in out and "control socket" in out

    code, _, err = run(capsys, ws, "enclave", "start", image_path, "--name", "c1")
    assert code == 2 and "already running" in err and "hint:" in err
    code, _, err = run(capsys, ws, "enclave", "logs", "c1")
    assert code == 2 and "not started with --debug" in err
    code, _, err = run(capsys, ws, "enclave", "start", image_path, "--name", "Bad_Name")
    assert code == 2 and "invalid enclave name" in err

    allowlist = tmp_path / "egress.yaml"
    allowlist.write_text("allowlist:\n  - {address: 127.0.0.1, port: 9}\n")
    code, out, err = run(
        capsys, ws, "proxy", "start", "--allow", "kms", "--allowlist", str(allowlist), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["allowlist"] == [ws.config.kms_listen, "127.0.0.1:9"]
    code, _, err = run(capsys, ws, "proxy", "start")
    assert code == 2 and "already runs" in err
    code, out, _ = run(capsys, ws, "proxy", "status")
    assert code == 0 and "running" in out and "127.0.0.1:9" in out
    code, _, _ = run(capsys, ws, "proxy", "stop")
    assert code == 0
    code, _, err = run(capsys, ws, "proxy", "stop")
    assert code == 7 and "not running" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("allowlist: [{address: 127.0.0.1, prot: 9}]\n")
    code, _, err = run(capsys, ws, "proxy", "start", "--allowlist", str(bad))
    assert code == 3 and "unknown field(s) prot" in err and len(err.strip().splitlines()) == 1

    code, out, _ = run(capsys, ws, "enclave", "stop")  # the only one: no name needed
    assert code == 0 and "stopped enclave c1" in out
    code, _, err = run(capsys, ws, "enclave", "stop", "c1")
    assert code == 7 and "no enclave named 'c1'" in err
    code, out, _ = run(capsys, ws, "enclave", "stop", "--all")
    assert code == 0 and "no enclave to stop" in out
    code, _, err = run(capsys, ws, "enclave", "stop")
    assert code == 7 and "no enclave to stop" in err


def test_help_texts_teach_by_example(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["enclave", "--help"],
        ["enclave", "start", "--help"],
        ["enclave", "status", "--help"],
        ["enclave", "stop", "--help"],
        ["enclave", "logs", "--help"],
        ["proxy", "--help"],
        ["proxy", "start", "--help"],
        ["proxy", "status", "--help"],
        ["proxy", "stop", "--help"],
    ):
        with pytest.raises(SystemExit) as excinfo:
            main(args)
        assert excinfo.value.code == 0
        assert "strongroom " + args[0] in capsys.readouterr().out
