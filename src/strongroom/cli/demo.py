"""``strongroom demo``: the runbook, locally, from nothing, in one command.

Each step prints the runbook checklist line and the command a user would type
for it, then does exactly that through the same library calls the command
uses. The demo works in a fresh scratch workspace, so the user's own is never
touched, and stops every service it started whatever happens.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.markup import escape

from strongroom.cli._common import AppContext, err, out, pass_app
from strongroom.errors import AccessDeniedError, StrongroomError
from strongroom.keys import service as keyservice
from strongroom.keys.audit import read_events
from strongroom.policy.measurements import runbook_policy
from strongroom.workspace import Workspace


class Steps:
    """Prints runbook-style steps: a checklist line, the command, then the outcome."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.count = 0
        self.started = time.monotonic()

    def section(self, title: str) -> None:
        out.print(f"\n[bold]{escape(title)}[/]")

    @contextmanager
    def step(self, title: str, *commands: str) -> Iterator[None]:
        self.count += 1
        out.print(f"[bold cyan]{self.count:>2}.[/] {escape(title)}")
        for command in commands:
            out.print(f"      [dim]$ {escape(command)}[/]")
        t0 = time.monotonic()
        yield
        out.print(f"      [green]✓[/] [dim]{time.monotonic() - t0:.1f}s[/]")

    def note(self, text: str) -> None:
        out.print(f"      {escape(text)}")


@click.command("demo")
@click.option("--keep", is_flag=True, help="Keep the scratch workspace for inspection.")
@pass_app
def demo_command(app: AppContext, keep: bool) -> None:
    """Run the whole runbook locally, in a scratch workspace, in one command.

    \b
    Shows what Strongroom does today, step by step, with the command a user
    would type for each: a fresh workspace, the KMS-compatible key service, a
    vendor key with a data-key round trip, the runbook's key policy, and the
    host being denied the vendor's key outside an approved enclave.
    Your own workspace is never touched; nothing is left running.
    """
    home = Path(tempfile.mkdtemp(prefix="strongroom-demo-")) / "ws"
    steps = Steps(home)
    out.print(f"[bold]Strongroom demo[/] — scratch workspace {home}")
    ws: Workspace | None = None
    try:
        ws = _run(steps, home)
        out.print(f"\n[bold green]demo complete[/] in {time.monotonic() - steps.started:.0f}s")
    finally:
        if ws is not None:
            keyservice.stop(ws)
        if keep:
            err.print(f"workspace kept at {home} (export STRONGROOM_HOME={home})")
        else:
            shutil.rmtree(home.parent, ignore_errors=True)


def _run(steps: Steps, home: Path) -> Workspace:
    from strongroom.attestation.authority import LocalAuthority

    steps.section("1. Host admin: workspace and key service")
    with steps.step("Create a workspace with a host and a vendor identity", "strongroom init"):
        ws = Workspace.create(home)
        LocalAuthority.open_or_create(ws.ca_dir)
        for ident in ws.identities():
            steps.note(f"{ident.name:<6} {ident.principal_arn}")
    with steps.step("Start the KMS-compatible key service", "strongroom keys serve --detach"):
        rec = keyservice.start_detached(ws)
        steps.note(f"listening on {rec.addresses['endpoint']}")

    steps.section("2. Vendor: key and key policy")
    vendor = keyservice.connect(ws, identity="vendor")
    host = keyservice.connect(ws, identity="host")
    with steps.step(
        "Create the vendor's key",
        'eval "$(strongroom env --as vendor)"',
        "strongroom keys create --alias alias/demo-app",
    ):
        key = vendor.create_key(description="Strongroom demo application key")
        vendor.create_alias("alias/demo-app", key.key_id)
        steps.note(key.arn)
    context = {"vendor": "demo", "app": "classifier"}
    with steps.step(
        "Data key round trip (what `strongroom seal` does)",
        "aws kms generate-data-key --key-id alias/demo-app --key-spec AES_256",
        "aws kms decrypt --ciphertext-blob fileb://data-key.bin",
    ):
        data_key = vendor.generate_data_key("alias/demo-app", encryption_context=context)
        again = vendor.decrypt(data_key.ciphertext_blob, encryption_context=context)
        assert again.plaintext == data_key.plaintext
        steps.note(
            f"{len(data_key.ciphertext_blob)}-byte encrypted data key; decrypts to the same "
            f"{len(data_key.plaintext or b'')} bytes"
        )
    with steps.step(
        "Put the runbook's key policy: the host may decrypt only from an approved enclave",
        "strongroom keys policy template > policy.json",
        "strongroom keys policy put alias/demo-app policy.json",
    ):
        host_account = ws.identity("host").account_id
        policy = runbook_policy(
            ws.identity("vendor").account_id, [f"arn:aws:iam::{host_account}:root"], []
        )
        vendor.put_key_policy(key.key_id, policy)
        statements = [s.get("Sid") for s in json.loads(policy)["Statement"]]
        steps.note("statements: " + ", ".join(str(s) for s in statements))

    steps.section("3. Host: try to take the vendor's key outside an enclave")
    with steps.step(
        "Decrypt the data key as the host, with no attestation",
        'eval "$(strongroom env --as host)"',
        "aws kms decrypt --ciphertext-blob fileb://data-key.bin",
    ):
        try:
            host.decrypt(data_key.ciphertext_blob, encryption_context=context)
        except AccessDeniedError as e:
            steps.note(f"denied, as it must be: {e.message.split(' because')[0]}")
        else:
            raise StrongroomError("the host decrypted the vendor's data key: policy not enforced")
    with steps.step("Read the key service's audit log", "strongroom keys audit"):
        for event in read_events(ws.audit_log):
            if event.get("operation") in {"Decrypt", "PutKeyPolicy", "CreateKey"}:
                who = str(event.get("caller", "")).rsplit("/", 1)[-1]
                steps.note(
                    f"{event['operation']:<13} {who:<18} {event['outcome']:<8} "
                    f"{event.get('statement') or ''}"
                )

    steps.section("4. Clean up")
    with steps.step("Stop the key service", "strongroom keys stop"):
        keyservice.stop(ws)
    return ws
