"""``strongroom seal``, ``inspect``, ``unseal``, ``signing-key``: the vendor's packaging commands.

``seal`` and ``inspect`` say what the *host* may do with a package (its
manifest: entries, env, egress, resources) and who signed it, never what the
app holds. Everything they print that came from a package is shown
literally: rich markup and control characters in a vendor's strings cannot
style or rewrite the host's terminal.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from strongroom.cli._common import (
    AppContext,
    byte_progress,
    emit,
    emit_table,
    err,
    out,
    pass_app,
)
from strongroom.cli.keys import identity_option, key_service
from strongroom.errors import AlreadyExistsError, UsageError

if TYPE_CHECKING:
    from strongroom.sealing import AppManifest, PackageInfo


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


def _info_dict(info: PackageInfo) -> dict[str, Any]:
    from strongroom.sealing import signer_fingerprint

    data = dataclasses.asdict(info)
    data.pop("encrypted_data_key", None)
    data["encrypted_data_key_bytes"] = len(info.encrypted_data_key)
    data["manifest"] = None if info.manifest is None else info.manifest.to_json()
    data["signer"] = None if info.signer is None else signer_fingerprint(info.signer)
    data["signer_public_key"] = None if info.signer is None else info.signer.hex()
    return data


def _shown(value: object) -> str:
    """``value`` as the terminal should show it: no markup, no control characters."""
    text = "" if value is None else str(value)
    if not text.isprintable():
        text = repr(text)
    return escape(text)


def _listed(items: list[str], empty: str) -> str:
    return ", ".join(_shown(item) for item in items) if items else empty


def _host_rows(manifest: AppManifest | None) -> list[tuple[str, str]]:
    """What the host may do with the package, as (what, value) rows."""
    from strongroom.sealing import DEFAULT_PROCESSES, MANIFEST_NAME

    if manifest is None:
        return [
            ("manifest", f"none (the app had no {MANIFEST_NAME}): safe defaults"),
            ("run (--entry)", "any file of the app the host names"),
            ("set (--env)", "nothing"),
            ("egress", "none"),
            ("processes", f"default ({DEFAULT_PROCESSES})"),
        ]
    data = manifest.to_json()
    memory = manifest.memory_mib
    processes = manifest.processes
    return [
        ("run (--entry)", _listed(data["entries"], "nothing")),
        ("set (--env)", _listed(data["env"], "nothing")),
        ("egress", _listed(data["egress"], "none")),
        ("memory", "not stated" if memory is None else f"{memory} MiB"),
        (
            "processes",
            f"default ({DEFAULT_PROCESSES})" if processes is None else str(processes),
        ),
    ]


def _summary(manifest: AppManifest | None) -> str:
    """One line: what the host may do."""
    from strongroom.sealing import MANIFEST_NAME

    if manifest is None:
        return (
            f"no {MANIFEST_NAME}: the host may run any file of the app as --entry "
            "and set no --env; no egress"
        )
    data = manifest.to_json()
    return (
        f"the host may run {_listed(data['entries'], 'nothing')}; "
        f"set {_listed(data['env'], 'no --env')}; "
        f"egress {_listed(data['egress'], 'none')}"
    )


def _signer_line(signer: bytes | None) -> str:
    from strongroom.sealing import signer_fingerprint

    return "unsigned" if signer is None else f"signed by {signer_fingerprint(signer)}"


def _render_info(path: Path, info: PackageInfo, data: dict[str, Any]) -> None:
    out.print(f"{_shown(path)}: {data['format']} (version {data['version']})")
    hidden = {"format", "version", "manifest", "signer", "signer_public_key"}
    rows = [(k, _shown(v)) for k, v in data.items() if k not in hidden]
    emit_table(["field", "value"], rows)
    emit_table(
        ["the host may", ""], [*_host_rows(info.manifest), ("signer", _signer_line(info.signer))]
    )


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
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Sign the package with this Ed25519 private key (PEM, from `signing-key create`).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@identity_option
@pass_app
def seal_command(
    app: AppContext,
    app_dir: Path,
    key: str,
    output: Path,
    contexts: tuple[str, ...],
    sign_key: Path | None,
    force: bool,
    identity: str | None,
) -> None:
    """Seal APP_DIR into one encrypted, authenticated package.

    \b
    A fresh data key from KMS encrypts a deterministic tar of the directory,
    streamed in 1 MiB AES-256-GCM chunks: constant memory whatever its size,
    and any change to the package is detected when it is opened.

    \b
    APP_DIR/strongroom.toml, if present, says what the host may do: the
    entries it may run, the env vars it may set, the egress the app needs,
    its resources. It is validated and sealed in the header. Without it the
    host may run any file as --entry and set no --env. --sign-key signs the
    header, so an image that pins the key runs only this vendor's packages.

    \b
    Left out, and listed on stderr: .git/, __pycache__/, *.pyc, .env, .env.*
    and what APP_DIR/.strongroomignore lists (gitignore syntax; `!pattern`
    keeps what a default would skip). An existing OUT is never replaced
    without --force.

    \b
    Example:
      strongroom seal examples/classifier --key alias/classifier \\
          --context vendor=acme --context app=classifier \\
          --sign-key vendor.key -o classifier.sealed
    """
    from strongroom.sealing import AppManifest, load_signing_key, seal
    from strongroom.sealing.ignore import IgnoreRules

    context = _parse_context(contexts)
    if not force and (output.exists() or output.is_symlink()):
        raise AlreadyExistsError(
            f"{output} already exists: seal does not replace it",
            hint="choose another -o, or add --force to replace it",
        )
    # Refuse a bad manifest or key before anything else, even a stopped key service.
    manifest = AppManifest.load(app_dir)
    ignore = IgnoreRules.for_app(app_dir)
    if manifest is not None:
        ignore.check_kept(manifest.entries)
    if sign_key is not None and sign_key.resolve().is_relative_to(app_dir.resolve()):
        raise UsageError(
            f"the signing key {sign_key} is inside {app_dir}: it would be sealed with the app",
            hint="keep the signing key outside the application directory",
        )
    signing_key = None if sign_key is None else load_signing_key(sign_key)
    kms = key_service(app.workspace(), identity)
    with byte_progress(f"sealing {app_dir.name}", _tree_size(app_dir), enabled=not app.json) as adv:
        info = seal(
            app_dir,
            output,
            kms,
            key,
            context=context,
            progress=adv,
            signing_key=signing_key,
            ignore=ignore,
            overwrite=force,
        )
    data = {**_info_dict(info), "skipped": list(ignore.skipped)}
    if ignore.skipped and not app.json:
        names = ", ".join(n if n.isprintable() else repr(n) for n in ignore.skipped)
        err.print(f"skipped (not sealed): {names}", markup=False)

    def render() -> None:
        out.print(
            f"sealed {_shown(app_dir)} → {_shown(output)} "
            f"({info.file_size} bytes, {info.chunk_count} chunks, {_signer_line(info.signer)})"
        )
        out.print(_summary(info.manifest))

    emit(app, data, render)


@click.command("inspect")
@click.argument("package", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def inspect_command(app: AppContext, package: Path) -> None:
    """Show a sealed package's header and what the host may do with it. No key needed.

    \b
    The header: key, context, sizes, format. The manifest: the entries the
    host may run, the env vars it may set, the egress and resources the app
    needs (or the safe defaults when there is none), and the signer's
    fingerprint (or "unsigned"). Never the app's files.

    \b
    Example:
      strongroom inspect classifier.sealed
      strongroom --json inspect classifier.sealed | jq .manifest
    """
    from strongroom.sealing import inspect

    info = inspect(package)
    data = _info_dict(info)
    emit(app, data, lambda: _render_info(package, info, data))


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
def unseal_command(app: AppContext, package: Path, output: Path, identity: str | None) -> None:
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
    kms = key_service(app.workspace(), identity)
    with byte_progress(f"unsealing {package.name}", info.payload_size, enabled=not app.json) as adv:
        info = unseal(package, output, kms, progress=adv)
    emit(app, _info_dict(info), lambda: out.print(f"unsealed {package} → {output}"))


@click.group("signing-key")
def signing_key_group() -> None:
    """Vendor package-signing keys (Ed25519): create one, show its fingerprint.

    \b
    The vendor signs packages with `strongroom seal --sign-key FILE`, and pins
    FILE.pub in its enclave images (`strongroom image build --signer
    FILE.pub`): such an image refuses, before any key release, a package that
    this key did not sign.

    \b
    Example:
      strongroom signing-key create vendor.key
      strongroom signing-key show vendor.key.pub
    """


@signing_key_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE and FILE.pub if they exist.")
@pass_app
def signing_key_create_command(app: AppContext, file: Path, force: bool) -> None:
    """Create a signing key: FILE (private, mode 0600) and FILE.pub (public).

    \b
    Keep FILE secret; publish FILE.pub or its fingerprint so hosts can check
    who signed a package (`strongroom inspect`). Existing files are never
    replaced without --force; nothing is left half-written.

    \b
    Example:
      strongroom signing-key create vendor.key
      strongroom seal examples/classifier --key alias/classifier \\
          --sign-key vendor.key -o classifier.sealed
    """
    from strongroom.sealing import create_signing_key

    files = create_signing_key(file, force=force)
    data = {
        "private_key": str(files.private_key),
        "public_key": str(files.public_key),
        "fingerprint": files.fingerprint,
    }

    def render() -> None:
        out.print(
            f"wrote the signing key {_shown(files.private_key)} (mode 0600, keep it secret) "
            f"and its public key {_shown(files.public_key)}"
        )
        out.print(f"fingerprint {files.fingerprint}")
        out.print(
            f"sign with `strongroom seal ... --sign-key {_shown(files.private_key)}`; "
            f"pin with `strongroom image build --signer {_shown(files.public_key)}`"
        )

    emit(app, data, render)


@signing_key_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def signing_key_show_command(app: AppContext, file: Path) -> None:
    """Show the fingerprint of a signing key FILE or a public key FILE.pub.

    \b
    Compare it with the signer `strongroom inspect` shows for a package.

    \b
    Example:
      strongroom signing-key show vendor.key.pub
    """
    from strongroom.errors import InvalidInputError
    from strongroom.sealing import load_signer_public_key, load_signing_key, signer_fingerprint
    from strongroom.sealing.signing import public_key_bytes

    try:
        public_key = load_signer_public_key(file)
    except UsageError:  # it holds a private key: show that key's public half
        public_key = public_key_bytes(load_signing_key(file))
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"{file} is not an Ed25519 public or private key PEM", hint=exc.hint
        ) from None
    data = {"public_key": public_key.hex(), "fingerprint": signer_fingerprint(public_key)}
    emit(app, data, lambda: out.print(data["fingerprint"]))
