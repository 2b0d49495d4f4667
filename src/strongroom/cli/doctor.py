"""``strongroom doctor``: one line per check, with its fix; the exit code says if any failed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from strongroom.cli._common import AppContext, emit, pass_app
from strongroom.errors import WorkspaceNotFoundError

if TYPE_CHECKING:
    from strongroom.doctor import Report
    from strongroom.keys.aws import KmsKeyService
    from strongroom.workspace import Workspace

#: ``doctor``'s exit code when at least one check failed (warnings alone exit 0).
EXIT_CHECK_FAILED = 8

_LABELS = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red"}


@click.command("doctor")
@click.option("--host", is_flag=True, help="Check this machine as an enclave host (aws: always).")
@click.option("--key", metavar="ARN|ALIAS", help="Check this key's policy (either target).")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="EIF",
    help="The enclave image at hand: is it approved, does the allocator fit 4 x its size?",
)
@click.option(
    "--memory", "memory_mib", type=click.IntRange(min=1), metavar="MiB", help="Enclave memory."
)
@click.option("--cpus", type=click.IntRange(min=1), metavar="N", help="Enclave CPUs.")
@click.option("--profile", metavar="NAME", help="AWS profile [default: the chain's].")
@click.option(
    "--region", metavar="R", help="AWS region [default: the chain's, else the workspace's]."
)
@click.option("--endpoint-url", metavar="URL", help="An endpoint serving STS, IAM and KMS.")
@pass_app
def doctor_command(
    app: AppContext,
    host: bool,
    key: str | None,
    image: Path | None,
    memory_mib: int | None,
    cpus: int | None,
    profile: str | None,
    region: str | None,
    endpoint_url: str | None,
) -> int:
    """Check the workspace, the enclave host and a key's policy; print one line per check.

    \b
    local target: the key service runs, the sandbox (bubblewrap) works.
    aws target, or --host: /dev/nitro_enclaves, nitro-cli --version, the
    allocator (/etc/nitro_enclaves/allocator.yaml) against --image (memory
    >= 4 x the EIF), --memory and --cpus, the allocator service, and the
    instance role's IAM policy (kms:Decrypt on --key, nothing broader).
    --key (either target): the host may Decrypt only with an approved
    attestation, never as a debug-mode enclave (all-zero PCR0), and may not
    ReEncrypt or CreateGrant; --image is approved.

    \b
    Each line: ok, WARN or FAIL, the check, what it saw, and the fix.
    Exit 0 when nothing failed (warnings included), 8 when a check failed.

    \b
    Example:
      strongroom doctor --key alias/classifier --image app.eif
      strongroom doctor --host --key arn:aws:kms:eu-west-1:111122223333:key/ID \\
          --image app.eif --memory 4096 --cpus 2
    """
    from strongroom import doctor
    from strongroom.doctor.aws import AwsAccess

    ws: Workspace | None
    try:
        ws = app.workspace()
        missing = None
    except WorkspaceNotFoundError as e:
        ws, missing = None, e.message.removeprefix("no Strongroom workspace at ")
    target = ws.config.target if ws is not None else None
    facts = doctor.ImageFacts.of(image) if image is not None else None
    checks = doctor.plan(
        target,
        host=host,
        key=key,
        image=facts,
        enclave=doctor.Enclave(memory_mib, cpus),
        paths=doctor.host_paths(),
    )
    aws = AwsAccess(
        profile=profile,
        region=region,
        endpoint_url=endpoint_url,
        fallback_region=ws.config.region if ws is not None else None,
    )
    report = doctor.run(
        checks, workspace=ws, missing_workspace=missing, aws=aws, workspace_kms=_workspace_kms
    )
    emit(app, report.to_json(), lambda: _render(report))
    return EXIT_CHECK_FAILED if report.failed else 0


def _workspace_kms(ws: Workspace) -> KmsKeyService:
    """The workspace's key service, signed for by the key's owner (the vendor) by default."""
    from strongroom.keys import service
    from strongroom.keys.signer import choose

    signer = choose(ws, None, default="vendor")
    return service.connect(ws, signer)


def _render(report: Report) -> None:
    from strongroom.doctor import Status

    width = max((len(f.name) for f in report.findings), default=0)
    for finding in report.findings:
        status = finding.status.value
        label = click.style(f"{_LABELS[status]:<4}", fg=_COLOURS[status], bold=status != "ok")
        line = f"{label}  {finding.name:<{width}}  {finding.detail}"
        if finding.fix and finding.status is not Status.OK:
            line += f"; fix: {finding.fix}"
        click.echo(line)
    failed, warned = report.count(Status.FAIL), report.count(Status.WARN)
    click.echo(
        f"{len(report.findings)} checks: {failed} failed, {warned} warning(s)"
        + ("" if failed else "; nothing failed")
    )
