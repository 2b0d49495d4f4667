"""Issue 6's "done when": seal, inspect and unseal through the console script."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

from tests.e2e.conftest import Cli

EXAMPLE = Path(__file__).parents[2] / "examples" / "classifier"


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_seal_inspect_unseal_as_vendor_and_denied_to_host(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    cli("keys", "serve", "--detach")
    cli("keys", "create", "--alias", "classifier")
    sealed = tmp_path / "app.sealed"
    cli(
        "seal",
        str(EXAMPLE),
        "--key",
        "alias/classifier",
        "--context",
        "vendor=acme",
        "--context",
        "app=classifier",
        "-o",
        str(sealed),
    )
    info = json.loads(cli("--json", "inspect", str(sealed)).stdout)
    assert info["format"] == "strongroom-v1"
    assert info["encryption_context"] == {"vendor": "acme", "app": "classifier"}
    assert info["chunk_count"] >= 1 and info["key_id"]
    assert "strongroom-v1" in cli("inspect", str(sealed)).stdout

    out = tmp_path / "out"
    cli("unseal", str(sealed), "-o", str(out))
    assert same_tree(EXAMPLE, out)

    policy = tmp_path / "policy.json"
    policy.write_text(cli("keys", "policy", "template").stdout)
    cli("keys", "policy", "put", "alias/classifier", str(policy))
    host_out = tmp_path / "host-out"
    arn = info["key_id"]
    denied = cli("unseal", str(sealed), "-o", str(host_out), "--as", "host", check=False)
    assert denied.returncode == 5, denied.stderr
    assert "not authorized" in denied.stderr and arn.rsplit("/", 1)[-1] in denied.stderr
    assert not host_out.exists()


def test_bad_packages_give_one_line_and_leave_nothing(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    cli("keys", "serve", "--detach")
    cli("keys", "create", "--alias", "k")
    sealed = tmp_path / "app.sealed"
    cli("seal", str(EXAMPLE), "--key", "alias/k", "-o", str(sealed))
    data = sealed.read_bytes()
    cases = {
        "empty": b"",
        "not-a-package": b"hello, this is not a package at all" * 10,
        "truncated": data[:-20],
        "flipped": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:],
        "appended": data + b"extra",
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.sealed"
        bad.write_bytes(content)
        out = tmp_path / f"out-{name}"
        result = cli("unseal", str(bad), "-o", str(out), check=False)
        assert result.returncode in (3, 4), (name, result.stderr)
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr, name
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".out-{name}")], name
    missing = cli(
        "seal", str(EXAMPLE), "--key", "alias/nope", "-o", str(tmp_path / "x.sealed"), check=False
    )
    assert missing.returncode == 7 and not (tmp_path / "x.sealed").exists()
