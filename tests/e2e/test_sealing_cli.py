"""Issue 6's "done when": seal, inspect and unseal through the console script.

And issue 9's manifest and signature: seal validates and seals strongroom.toml,
inspect shows what the host may do and who signed it, signing-key makes keys.
"""

from __future__ import annotations

import filecmp
import json
import shlex
import shutil
import stat
import subprocess
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
    assert info["format"] == "strongroom-v2"
    assert info["encryption_context"] == {"vendor": "acme", "app": "classifier"}
    assert info["chunk_count"] >= 1 and info["key_id"]
    assert "strongroom-v2" in cli("inspect", str(sealed)).stdout

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


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The error of a failed command: exactly one ``error:`` line and one ``hint:`` line."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: "), result.stderr
    assert lines[1].startswith("  hint: ") and "Traceback" not in result.stderr
    return lines[0]


def service(cli: Cli) -> None:
    cli("init")
    cli("keys", "serve", "--detach")
    cli("keys", "create", "--alias", "classifier")


def test_the_manifest_is_sealed_and_inspect_shows_it(cli: Cli, tmp_path: Path) -> None:
    service(cli)
    sealed = tmp_path / "app.sealed"
    result = cli("seal", str(EXAMPLE), "--key", "alias/classifier", "-o", str(sealed))
    assert "the host may run main.py; set no --env; egress none" in result.stdout
    assert "unsigned" in result.stdout

    shown = cli("inspect", str(sealed)).stdout
    for expected in ["run (--entry)", "main.py", "set (--env)", "512 MiB", "128", "unsigned"]:
        assert expected in shown, expected
    assert "model.npz" not in shown  # what the host may do, never the app's files
    info = json.loads(cli("--json", "inspect", str(sealed)).stdout)
    assert info["manifest"] == {
        "entries": ["main.py"],
        "env": [],
        "egress": [],
        "resources": {"memory_mib": 512, "processes": 128},
    }
    assert info["signer"] is None

    plain = tmp_path / "plain"
    shutil.copytree(EXAMPLE, plain)
    (plain / "strongroom.toml").unlink()
    (plain / "tools").mkdir()
    (plain / "tools" / "x.py").write_text("print('x')\n")
    bare = tmp_path / "bare.sealed"
    result = cli("seal", str(plain), "--key", "alias/classifier", "-o", str(bare))
    assert "no strongroom.toml: the host may run any file of the app as --entry" in result.stdout
    assert "set no --env" in result.stdout
    assert json.loads(cli("--json", "inspect", str(bare)).stdout)["manifest"] is None
    assert "safe defaults" in cli("inspect", str(bare)).stdout

    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app)
    (app / "strongroom.toml").write_text(
        'entries = ["main.py"]\nenv = ["THREADS"]\negress = ["API.example.com:443"]\n'
    )
    # a new release over the previous package: replacing it takes --force
    result = cli("seal", str(app), "--key", "alias/classifier", "-o", str(sealed), "--force")
    assert "set THREADS; egress api.example.com:443" in result.stdout
    assert "api.example.com:443" in cli("inspect", str(sealed)).stdout


def test_a_bad_manifest_is_one_line_exit_3_and_nothing_written(cli: Cli, tmp_path: Path) -> None:
    service(cli)
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app)
    manifest = app / "strongroom.toml"
    out = tmp_path / "app.sealed"
    cases = {
        'entries = ["main.py"]\nenv = ["LD_PRELOAD"]\n': "env[0] 'LD_PRELOAD' is reserved",
        'entries = ["main.py"]\n[resources]\ngpus = 1\n': "unknown field 'resources.gpus'",
        'entries = ["main.py"]\nentry = "x"\n': "unknown field 'entry'",
        'entries = ["../main.py"]\n': "goes outside the tree",
        'entries = ["missing.py"]\n': "'missing.py' does not exist",
        'entries = ["main.py"\n': "is not valid TOML",
    }
    for text, message in cases.items():
        manifest.write_text(text)
        line = one_error(
            cli("seal", str(app), "--key", "alias/classifier", "-o", str(out), check=False), 3
        )
        assert str(manifest) in line and message in line, line
        assert not out.exists() and not list(tmp_path.glob(".app.sealed.*")), text
    # a manifest error comes first, even with the key service stopped
    cli("keys", "stop")
    manifest.write_text('entries = ["main.py"]\nextra = 1\n')
    one_error(cli("seal", str(app), "--key", "alias/classifier", "-o", str(out), check=False), 3)


def test_signing_key_seal_and_inspect(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "vendor.key"
    created = json.loads(cli("--json", "signing-key", "create", str(key)).stdout)
    assert created["private_key"] == str(key) and created["public_key"] == f"{key}.pub"
    fingerprint = created["fingerprint"]
    assert fingerprint.startswith("ed25519:") and len(fingerprint) == len("ed25519:") + 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(f"{key}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert cli("signing-key", "show", f"{key}.pub").stdout.strip() == fingerprint
    assert cli("signing-key", "show", str(key)).stdout.strip() == fingerprint

    before = key.read_bytes()
    again = cli("signing-key", "create", str(key), check=False)
    assert "already exists" in one_error(again, 2) and key.read_bytes() == before
    replaced = json.loads(cli("--json", "signing-key", "create", str(key), "--force").stdout)
    assert replaced["fingerprint"] != fingerprint
    fingerprint = replaced["fingerprint"]

    service(cli)
    sealed = tmp_path / "signed.sealed"
    result = cli(
        "seal", str(EXAMPLE), "--key", "alias/classifier", "-o", str(sealed), "--sign-key", str(key)
    )
    assert f"signed by {fingerprint}" in result.stdout
    assert fingerprint in cli("inspect", str(sealed)).stdout
    info = json.loads(cli("--json", "inspect", str(sealed)).stdout)
    assert info["signer"] == fingerprint and info["manifest"]["entries"] == ["main.py"]

    for bad, code, message in [
        (tmp_path / "missing.key", 7, "does not exist"),
        (Path(f"{key}.pub"), 2, "holds a public key"),
    ]:
        out = tmp_path / "bad.sealed"
        args = ["seal", str(EXAMPLE), "--key", "alias/classifier", "-o", str(out)]
        line = one_error(cli(*args, "--sign-key", str(bad), check=False), code)
        assert message in line and not out.exists()

    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app)
    cli("signing-key", "create", str(app / "inside.key"))
    args = ["seal", str(app), "--key", "alias/classifier", "-o", str(tmp_path / "x.sealed")]
    line = one_error(cli(*args, "--sign-key", str(app / "inside.key"), check=False), 2)
    assert "would be sealed with the app" in line


def test_help_has_examples(cli: Cli) -> None:
    for words in [("seal",), ("inspect",), ("signing-key",), ("signing-key", "create")]:
        result = cli(*words, "--help")
        assert "Usage:" in result.stdout
        if words != ("signing-key",):
            assert "Example" in result.stdout, words
    assert "--sign-key" in cli("seal", "--help").stdout


def test_seal_skips_what_should_not_ship_and_lists_it(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    cli("keys", "serve", "--detach")
    cli("keys", "create", "--alias", "k")
    app = tmp_path / "app"
    for name, text in {
        "main.py": "print('hi')\n",
        "strongroom.toml": 'entries = ["main.py"]\n',
        ".env": "AWS_SECRET_ACCESS_KEY=do-not-ship\n",
        ".env.local": "TOKEN=nor-this\n",
        ".env.example": "TOKEN=\n",
        ".git/config": "[core]\n",
        "pkg/__pycache__/mod.cpython-311.pyc": "bytecode",
        "pkg/mod.py": "X = 1\n",
        "pkg/stale.pyc": "bytecode",
        "data/raw/huge.csv": "1,2\n",
        "data/keep.csv": "3,4\n",
        "notes.tmp": "scratch\n",
        ".strongroomignore": "# vendor's own rules\n/data/raw/\n*.tmp\n!.env.example\n",
    }.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    sealed = tmp_path / "app.sealed"
    human = cli("seal", str(app), "--key", "alias/k", "-o", str(sealed))
    skipped = [".env", ".env.local", ".git/", "data/raw/", "notes.tmp",
               "pkg/__pycache__/", "pkg/stale.pyc"]  # fmt: skip
    assert f"skipped (not sealed): {', '.join(skipped)}" in human.stderr
    assert "skipped" not in human.stdout
    out = tmp_path / "out"
    cli("unseal", str(sealed), "-o", str(out))
    shipped = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert shipped == [".env.example", ".strongroomignore", "data/keep.csv", "main.py",
                       "pkg/mod.py", "strongroom.toml"]  # fmt: skip
    assert b"do-not-ship" not in sealed.read_bytes()  # (it is encrypted anyway)

    again = tmp_path / "again.sealed"
    data = json.loads(cli("--json", "seal", str(app), "--key", "alias/k", "-o", str(again)).stdout)
    assert data["skipped"] == skipped

    # an entry the host may run must be in the package
    (app / ".strongroomignore").write_text("main.py\n")
    refused = cli(
        "seal", str(app), "--key", "alias/k", "-o", str(tmp_path / "x.sealed"), check=False
    )
    assert refused.returncode == 3
    assert "the manifest's entry 'main.py' would not be sealed" in refused.stderr
    assert not (tmp_path / "x.sealed").exists()


def test_seal_refuses_to_overwrite_its_output_without_force(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    cli("keys", "serve", "--detach")
    cli("keys", "create", "--alias", "k")
    sealed = tmp_path / "app.sealed"
    sealed.write_bytes(b"the vendor's previous release")
    refused = cli("seal", str(EXAMPLE), "--key", "alias/k", "-o", str(sealed), check=False)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: {sealed} already exists: seal does not replace it",
        "  hint: choose another -o, or add --force to replace it",
    ]
    assert sealed.read_bytes() == b"the vendor's previous release"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sealed", "home"]
    # nor in JSON mode, through a pipe: nothing on stdout, the same exit code
    argv = [*refused.args[:3], "--json", *refused.args[3:]]
    piped = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{shlex.join(argv)} | cat"],
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 2 and "already exists" in piped.stderr and piped.stdout == ""
    cli("seal", str(EXAMPLE), "--key", "alias/k", "-o", str(sealed), "--force")
    assert json.loads(cli("--json", "inspect", str(sealed)).stdout)["format"] == "strongroom-v2"
