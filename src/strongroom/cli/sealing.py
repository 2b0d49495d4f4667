"""``strongroom seal``, ``inspect`` and ``unseal``: the vendor's packaging commands."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from strongroom.cli._common import AppContext, byte_progress, emit, emit_table, out, pass_app
from strongroom.cli.keys import identity_option
from strongroom.errors import UsageError
from strongroom.keys import service as keyservice


def _parse_context(pairs: tuple[str, ...]) -> dict[str, str]:
    context: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--context {pair!r} is not KEY=VALUE", hint="e.g. --context app=demo")
        context[name] = value
    return context


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = Path(root, name)
            if not full.is_symlink():
                total += full.stat().st_size
    return total


def _info_dict(info: Any) -> dict[str, Any]:
    data = dataclasses.asdict(info)
    data.pop("encrypted_data_key", None)
    data["encrypted_data_key_bytes"] = len(info.encrypted_data_key)
    return data


def _render_info(path: Path, data: dict[str, Any]) -> None:
    out.print(f"{path}: {data['format']} (version {data['version']})")
    rows = [(k, v) for k, v in data.items() if k not in {"format", "version"}]
    emit_table(["field", "value"], rows)


@click.command("seal")
@click.argument("app_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", required=True, help="KMS key (id, ARN or alias) that protects the app.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The sealed package to write.",
)
@click.option(
    "--context",
    "contexts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Encryption context entry (repeatable); bound to the data key by KMS.",
)
@identity_option
@pass_app
def seal_command(
    app: AppContext, app_dir: Path, key: str, output: Path, contexts: tuple[str, ...], identity: str
) -> None:
    """Seal APP_DIR into one encrypted, authenticated package.

    \b
    A fresh data key from KMS encrypts a deterministic tar of the directory,
    streamed in 1 MiB AES-256-GCM chunks: constant memory whatever its size,
    and any change to the package is detected when it is opened.

    \b
    Example:
      strongroom seal examples/classifier --key alias/classifier \\
          --context vendor=acme --context app=classifier -o classifier.sealed
    """
    from strongroom.sealing import seal

    context = _parse_context(contexts)
    kms = keyservice.connect(app.workspace(), identity=identity)
    with byte_progress(f"sealing {app_dir.name}", _tree_size(app_dir), enabled=not app.json) as adv:
        info = seal(app_dir, output, kms, key, context=context, progress=adv)
    data = _info_dict(info)
    emit(
        app,
        data,
        lambda: out.print(
            f"sealed {app_dir} → {output} ({info.file_size} bytes, {info.chunk_count} chunks)"
        ),
    )


@click.command("inspect")
@click.argument("package", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def inspect_command(app: AppContext, package: Path) -> None:
    """Show a sealed package's header: key, context, sizes, format. No key needed."""
    from strongroom.sealing import inspect

    data = _info_dict(inspect(package))
    emit(app, data, lambda: _render_info(package, data))


@click.command("unseal")
@click.argument("package", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to create (must not exist, or be empty).",
)
@identity_option
@pass_app
def unseal_command(app: AppContext, package: Path, output: Path, identity: str) -> None:
    """Open a sealed package into a directory (for the vendor's own testing).

    \b
    Works only where the key policy lets the caller decrypt: under the
    runbook's policy the host is denied; only an approved enclave can open it.
    Nothing is written under OUTPUT unless the whole package authenticates.

    \b
    Example:
      strongroom unseal classifier.sealed -o out && diff -r examples/classifier out
    """
    from strongroom.sealing import inspect, unseal

    info = inspect(package)
    kms = keyservice.connect(app.workspace(), identity=identity)
    with byte_progress(f"unsealing {package.name}", info.payload_size, enabled=not app.json) as adv:
        info = unseal(package, output, kms, progress=adv)
    emit(app, _info_dict(info), lambda: out.print(f"unsealed {package} → {output}"))
