"""``strongroom image ...``: build and describe enclave images; approve or revoke them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import click

from strongroom.cli._common import AppContext, emit, emit_table, out, pass_app, status
from strongroom.cli.keys import identity_option, key_service
from strongroom.errors import UsageError
from strongroom.keys.key_policy import key_policy_accounts
from strongroom.policy import DENY_SID, PolicyDocument, approve, approved_measurements, revoke


@click.group("image")
def image_group() -> None:
    """Enclave images: build, describe, and approve their measurements.

    \b
    The vendor builds an image, approves its measurement (PCR0) in the key
    policy, and ships it to the host. Only an enclave started from an
    approved image can have the app's key released to it.
    """


@image_group.command("build")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the image (.eif).",
)
@click.option(
    "--requirements",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="pip requirements of the sealed apps (wheels resolved now, not at run time).",
)
@click.option("--name", default="strongroom-enclave", show_default=True, help="Image name.")
@click.option("--version", "image_version", default="1.0", show_default=True, help="Image version.")
@click.option(
    "--memory",
    "memory_mib",
    type=click.IntRange(64),
    default=1024,
    show_default=True,
    help="Default enclave memory, MiB.",
)
@click.option(
    "--cpus", type=click.IntRange(1), default=2, show_default=True, help="Default enclave CPUs."
)
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    metavar="KEY",
    help="A key (alias, id or ARN) the image may release data keys for (repeatable).",
)
@click.option(
    "--signer",
    "signers",
    multiple=True,
    metavar="PUB",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also require packages signed by this Ed25519 public key (repeatable).",
)
@identity_option
@pass_app
def build_command(
    app: AppContext,
    output: Path,
    requirements: Path | None,
    name: str,
    image_version: str,
    memory_mib: int,
    cpus: int,
    keys: tuple[str, ...],
    signers: tuple[Path, ...],
    identity: str | None,
) -> None:
    """Build a local enclave image (EIF format) and print its measurements.

    \b
    The image holds the Strongroom enclave server at this version, the
    packages your sealed apps need, and the keys it may release data keys
    for (--key; aliases are resolved to key ARNs now, through the key
    service). Its enclave refuses any package sealed under another key, or
    not signed by a --signer when you give one. Building twice from the same
    inputs gives a bit-identical image with the same PCR0.

    \b
    Example:
      strongroom image build --key alias/classifier \\
          --requirements examples/classifier/requirements.txt -o app.eif
    """
    from strongroom.image import build_image
    from strongroom.image.pins import VendorPins
    from strongroom.sealing import load_signer_public_key

    pins = VendorPins(
        tuple(_unique(_key_arn(app, key, identity) for key in keys)),
        tuple(_unique(load_signer_public_key(path) for path in signers)),
    )
    with status(f"building {output}", enabled=not app.json, lines=True) as progress:
        result = build_image(
            output,
            pins=pins,
            requirements=requirements,
            name=name,
            version=image_version,
            default_mem_mib=memory_mib,
            default_cpus=cpus,
            progress=progress,
        )
    data = {
        **result.measurements.to_nitro_json(),
        "Path": str(result.path),
        "Size": result.size,
        "Pins": pins.describe(),
    }
    emit(app, data, lambda: _print_measurements(data))


T = TypeVar("T")


def _unique(values: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(values))


def _key_arn(app: AppContext, key: str, identity: str | None) -> str:
    """The ARN of ``key``: as given when it is a key ARN, else resolved by the key service."""
    from strongroom.image.pins import check_key_arn

    if key.startswith("arn:") and ":key/" in key:
        return check_key_arn(key)
    return check_key_arn(key_service(app.workspace(), identity).describe_key(key).arn)


def _print_measurements(data: dict[str, object]) -> None:
    measurements = data["Measurements"]
    assert isinstance(measurements, dict)
    if "Path" in data:
        out.print(f"{data['Path']} ({int(str(data.get('Size', 0))) / 1e6:.1f} MB)")
    for name, value in measurements.items():
        if name.startswith("PCR"):  # full values: they are compared by eye and pasted
            out.print(f"{name:<5} {value}")
    pins = data.get("Pins")
    if isinstance(pins, dict):
        for arn in pins.get("Keys", []) or ["(none: this image runs no sealed app)"]:
            out.print(f"key   {arn}")
        for fingerprint in pins.get("Signers", []):
            out.print(f"signer {fingerprint}")


@image_group.command("describe")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_app
def describe_command(app: AppContext, image: Path) -> None:
    """Describe an image (local or built by nitro-cli), like `nitro-cli describe-eif`.

    \b
    Example:
      strongroom image describe classifier.eif --json | jq -r .Measurements.PCR0
    """
    from strongroom.image import describe_image

    data = describe_image(image)

    def render() -> None:
        _print_measurements(data)
        rows = [
            (k, v)
            for k, v in data.items()
            if k
            in {
                "EifVersion",
                "Arch",
                "IsSigned",
                "CheckCRC",
                "ImageName",
                "ImageVersion",
                "Size",
                "DefaultMemoryMiB",
                "DefaultCPUs",
            }
        ]
        emit_table(["field", "value"], rows)

    emit(app, data, render)


def _pcr0_of(image: Path | None, pcr0: str | None) -> str:
    if (image is None) == (pcr0 is None):
        raise UsageError("name either an IMAGE or --pcr0 HEX", hint="e.g. image approve app.eif")
    if pcr0 is not None:
        return pcr0.lower()
    from strongroom.image import measure_image

    assert image is not None
    return measure_image(image).pcr0


key_option = click.option("--key", required=True, help="The key (id, ARN or alias) to edit.")


@image_group.command("approve")
@click.argument(
    "image", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--pcr0", help="The measurement to approve, instead of an IMAGE.")
@key_option
@click.option("--replace", is_flag=True, help="Revoke every other approved measurement.")
@identity_option
@pass_app
def approve_command(
    app: AppContext,
    image: Path | None,
    pcr0: str | None,
    key: str,
    replace: bool,
    identity: str | None,
) -> None:
    """Allow enclaves started from IMAGE to have KEY's data keys released to them.

    \b
    Adds the image's PCR0 to the key policy's approved set (creating the
    runbook's Allow + Deny statements for the host account if the policy has
    none); other statements stay as they are. Works against AWS KMS too.

    \b
    Example:
      strongroom image approve app.eif --key alias/classifier
    """
    ws = app.workspace()
    measurement = _pcr0_of(image, pcr0)
    kms = key_service(ws, identity)
    policy = kms.get_key_policy(key)
    has_gate = any(s.sid == DENY_SID for s in PolicyDocument.parse(policy).statements)
    # first approval: gate the host account (the one place that names it: key_policy)
    hosts = None if has_gate else key_policy_accounts(ws)[1]
    kms.put_key_policy(key, approve(policy, measurement, host_principals=hosts, replace=replace))
    approved = approved_measurements(kms.get_key_policy(key))
    emit(
        app,
        {"approved": approved},
        lambda: out.print(f"approved {measurement} for {key} ({len(approved)} approved)"),
    )


@image_group.command("revoke")
@click.argument(
    "image", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--pcr0", help="The measurement to revoke, instead of an IMAGE.")
@key_option
@identity_option
@pass_app
def revoke_command(
    app: AppContext, image: Path | None, pcr0: str | None, key: str, identity: str | None
) -> None:
    """Stop releasing KEY's data keys to enclaves started from IMAGE.

    The next run of such an enclave is denied by the key service.

    \b
    Example:
      strongroom image revoke classifier.eif --key alias/classifier
    """
    measurement = _pcr0_of(image, pcr0)
    kms = key_service(app.workspace(), identity)
    kms.put_key_policy(key, revoke(kms.get_key_policy(key), measurement))
    approved = approved_measurements(kms.get_key_policy(key))
    emit(
        app,
        {"approved": approved},
        lambda: out.print(f"revoked {measurement} for {key} ({len(approved)} still approved)"),
    )


@image_group.command("approved")
@key_option
@identity_option
@pass_app
def approved_command(app: AppContext, key: str, identity: str | None) -> None:
    """List the image measurements (PCR0) approved for KEY.

    \b
    Example:
      strongroom image approved --key alias/classifier
    """
    kms = key_service(app.workspace(), identity)
    approved = approved_measurements(kms.get_key_policy(key))
    emit(
        app, {"approved": approved}, lambda: emit_table(["approved PCR0"], [(m,) for m in approved])
    )
