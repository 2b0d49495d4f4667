"""``strongroom attestation verify|inspect``: check what an enclave says it runs."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from strongroom.cli._common import AppContext, emit, emit_table, out, pass_app
from strongroom.errors import InvalidInputError, UsageError
from strongroom.workspace import Workspace


def _read_document(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read {path}: {e.strerror}") from e


def _render(description: dict[str, Any], verdict: str | None) -> None:
    if verdict:
        out.print(verdict)
    rows = [
        ("module_id", description["module_id"]),
        ("timestamp", description["timestamp"]),
        ("debug_mode", description["debug_mode"]),
        ("certificate", description["certificate"].get("subject")),
        ("size", description["size"]),
    ]
    emit_table(["field", "value"], rows)
    for index, value in description["pcrs"].items():
        if int(index) <= 8:  # in full: they are compared by eye and pasted
            out.print(f"PCR{index:<3} {value}")


@click.group("attestation")
def attestation_group() -> None:
    """Verify or decode attestation documents (real Nitro or local)."""


@attestation_group.command("inspect")
@click.argument("document", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_app
def inspect_command(app: AppContext, document: Path) -> None:
    """Decode DOCUMENT (raw CBOR or base64) without verifying it.

    \b
    Example:
      strongroom attestation inspect document.b64 --json | jq .pcrs
    """
    from strongroom.attestation.describe import describe
    from strongroom.attestation.document import load_document

    data = describe(load_document(_read_document(document)))
    emit(app, data, lambda: _render(data, "[yellow]not verified[/]: decoded only"))


@attestation_group.command("verify")
@click.argument("document", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--root",
    default="aws",
    show_default=True,
    metavar="aws|local|PEM",
    help="Trust anchor: the AWS Nitro root, the workspace CA, or a PEM file.",
)
@click.option(
    "--at", "at_text", metavar="TIME", help="Verify as of this ISO-8601 time [default: now]."
)
@click.option(
    "--expect-pcr", "pcrs", multiple=True, metavar="N=HEX", help="Required PCR value (repeatable)."
)
@click.option("--nonce", metavar="HEX", help="Required nonce.")
@click.option(
    "--allow-debug", is_flag=True, help="UNSAFE: accept a debug-mode enclave (its PCRs are zero)."
)
@pass_app
def verify_command(
    app: AppContext,
    document: Path,
    root: str,
    at_text: str | None,
    pcrs: tuple[str, ...],
    nonce: str | None,
    allow_debug: bool,
) -> None:
    """Verify DOCUMENT: signature, certificate chain to the root, and expectations.

    \b
    Example (a real Nitro document, at its own time):
      strongroom attestation verify doc.b64 --root aws --at 2024-09-07T14:37:39.545Z
    """
    from strongroom.attestation.describe import describe
    from strongroom.attestation.roots import load_anchor
    from strongroom.attestation.verify import verify

    at = _parse_time(at_text) if at_text else datetime.now(UTC)
    expected = {}
    for pair in pcrs:
        index, sep, value = pair.partition("=")
        try:
            expected[int(index)] = bytes.fromhex(value)
        except ValueError:
            raise UsageError(f"--expect-pcr {pair!r} is not N=HEX") from None
        if not sep:
            raise UsageError(f"--expect-pcr {pair!r} is not N=HEX")
    try:
        expect_nonce = bytes.fromhex(nonce) if nonce else None
    except ValueError:
        raise UsageError(f"--nonce {nonce!r} is not hex") from None
    ca_dir = None
    if root == "local":
        ca_dir = Workspace.locate(app.home).ca_dir
    anchor = load_anchor(root, ca_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verified = verify(
            _read_document(document),
            trust_anchor=anchor,
            at=at,
            expect_pcrs=expected,
            expect_nonce=expect_nonce,
            unsafe_allow_debug=allow_debug,
        )
    for warning in caught:  # one line each, not Python's two-line warning format
        click.secho(f"warning: {warning.message}", fg="yellow", err=True)
    data = {
        "verified": True,
        "trust_anchor": root,
        "at": at.isoformat(),
        **describe(verified.document),
    }
    emit(app, data, lambda: _render(data, f"[green]verified[/] against the {root} root"))


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r} is not an ISO-8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


__all__ = ["attestation_group"]
