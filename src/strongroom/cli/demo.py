"""``strongroom demo``: the runbook, locally, from nothing, in one command.

Each step prints the runbook's checklist line and the exact ``strongroom``
command for it, then runs that very command (a child process of the installed
CLI), so what the demo shows is what a user would see. It works in a fresh
scratch workspace — the user's own is never touched — and stops every service
it started, whatever happens.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from strongroom.cli._common import AppContext, err, out, pass_app
from strongroom.errors import StrongroomError

#: The example app and dataset, shipped as package data.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


#: Where the host operator fetches the vendor's files from the share (runbook 4.1).
FETCHED = "fetched"
#: The share the host admin creates for the demo's vendor (runbook 1.1).
SHARE_VENDOR = "demo"

#: The host operator's run of the sealed classifier it fetched (runbook 4.5).
RUN_CLASSIFIER = (
    "run",
    f"{FETCHED}/classifier.sealed",
    "--entry",
    "main.py",
    "--",
    "--input",
    "/dataset/digits.csv",
    "--output",
    "/output/",
)


#: The same run, of the package copied into the synced folder.
RUN_FROM_FOLDER = ("run", "/encrypted/classifier.sealed", *RUN_CLASSIFIER[2:])


class DemoError(StrongroomError):
    pass


def _scratch_env() -> dict[str, str]:
    """Our environment without the shell's AWS credentials: in the scratch workspace
    they are nobody's, and each step signs as the identity it names (or its default)."""
    from strongroom.cli.keys import ENV_CLEARED, ENV_VARIABLES

    dropped = {*ENV_VARIABLES, *ENV_CLEARED, "AWS_DEFAULT_PROFILE"}
    return {name: value for name, value in os.environ.items() if name not in dropped}


class Demo:
    """Runs and prints the steps; remembers nothing but the scratch directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "ws"
        self.count = 0
        self.started = time.monotonic()

    def section(self, title: str) -> None:
        out.print(f"\n[bold]{escape(title)}[/]")

    def step(self, title: str) -> None:
        self.count += 1
        out.print(f"[bold cyan]{self.count:>2}.[/] {escape(title)}")

    def cli(self, *args: str, expect: int = 0, show: bool = True, live: bool = False) -> str:
        """Run ``strongroom ARGS`` in the scratch workspace; print its output indented."""
        out.print(f"      [dim]$ strongroom {escape(shlex.join(args))}[/]")
        command = [sys.executable, "-m", "strongroom", "--home", str(self.home), *args]
        if live:  # let the app's output stream straight to the terminal
            code = subprocess.run(command, cwd=self.workdir, env=_scratch_env()).returncode
            text = ""
        else:
            result = subprocess.run(
                command, cwd=self.workdir, env=_scratch_env(), capture_output=True, text=True
            )
            code, text = result.returncode, result.stdout + result.stderr
            if show and text.strip():
                for line in text.rstrip().splitlines():
                    out.print(f"      {escape(line)}")
        if code != expect:
            raise DemoError(
                f"`strongroom {shlex.join(args)}` exited with {code}, expected {expect}",
                hint=f"run `strongroom demo --keep` and look in {self.home}",
            )
        return text

    def shell(self, *argv: str) -> None:
        """Run a plain shell command in the scratch directory, printing it and its output."""
        out.print(f"      [dim]$ {escape(shlex.join(argv))}[/]")
        result = subprocess.run(argv, cwd=self.workdir, capture_output=True, text=True)
        for line in (result.stdout + result.stderr).rstrip().splitlines():
            out.print(f"      {escape(line)}")
        if result.returncode != 0:
            raise DemoError(f"`{shlex.join(argv)}` exited with {result.returncode}")


@click.command("demo")
@click.option("--keep", is_flag=True, help="Keep the scratch workspace for inspection.")
@pass_app
def demo_command(app: AppContext, keep: bool) -> None:
    """Run the whole runbook locally, in a scratch workspace, in one command.

    \b
    Host admin: a share for the vendor. Vendor: a key, an enclave image
    approved in the key policy, a sealed app (a digits classifier whose
    weights are the vendor's secret), both published into the share. Host:
    both fetched from the share and checked against the vendor's index, the
    enclave started from the fetched image, the egress proxy, the shared
    folder mounted (push/pull where there is no FUSE), the dataset copied
    in, the fetched app run, the results read back; the host cannot unseal
    the app itself; after the vendor revokes the image, the next run is
    denied; after the host revokes the share, the vendor's next publish is
    refused. Every step prints the command it runs. Your own workspace is
    untouched; nothing is left running.

    \b
    Example:
      strongroom demo --keep    # keep the scratch directory to look around
    """
    if not (EXAMPLES / "classifier" / "main.py").is_file():
        raise DemoError(
            f"the example app is missing from {EXAMPLES}",
            hint="reinstall Strongroom: pip install --force-reinstall strongroom",
        )
    workdir = Path(tempfile.mkdtemp(prefix="strongroom-demo-"))
    demo = Demo(workdir)
    out.print(f"[bold]Strongroom demo[/] — scratch workspace {demo.home}")
    try:
        _run(demo)
        out.print(f"\n[bold green]demo complete[/] in {time.monotonic() - demo.started:.0f}s")
    finally:
        _stop_everything(demo)
        if keep:
            err.print(f"kept {workdir} (export STRONGROOM_HOME={demo.home})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _stop_everything(demo: Demo) -> None:
    for args in (("enclave", "stop", "--all"), ("proxy", "stop"), ("keys", "stop")):
        subprocess.run(
            [sys.executable, "-m", "strongroom", "--home", str(demo.home), *args],
            capture_output=True,
        )


def _fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def _through_the_synced_folder(demo: Demo, dataset: Path) -> Any:
    """Runbook 4.5 as written: a folder synced with the enclave, plain cp in and out."""
    synced = demo.workdir / "synced"
    synced.mkdir()
    demo.step("Mount the enclave's shared folder (the runbook's synced folder)")
    demo.cli("mount", "synced")
    demo.step("Copy the dataset and the sealed app in, as into any folder")
    demo.shell("mkdir", "-p", "synced/dataset", "synced/encrypted", "synced/output")
    demo.shell("cp", str(dataset), "synced/dataset/")
    demo.shell("cp", f"{FETCHED}/classifier.sealed", "synced/encrypted/")
    demo.step("Run the sealed app on it (live output; the app never leaves the enclave)")
    demo.cli(*RUN_FROM_FOLDER, live=True)
    demo.step("Read the results where the app wrote them")
    demo.shell("ls", "synced/output")
    metrics = _json((synced / "output" / "metrics.json").read_text())
    demo.cli("unmount", "synced")
    return metrics


def _json(text: str) -> Any:
    return json.loads(text)


def _run(demo: Demo) -> None:
    app_dir = EXAMPLES / "classifier"
    dataset = EXAMPLES / "host-dataset" / "digits.csv"

    demo.section("1. Host admin: workspace, key service, the vendor's share")
    demo.step("Create the workspace: a host and a vendor identity, the local CA")
    demo.cli("init")
    demo.step("Start the KMS-compatible key service")
    demo.cli("keys", "serve", "--detach")
    demo.step(
        "Create the vendor's share (runbook 1.1): the vendor's account may put files "
        "into it, and neither read nor list them"
    )
    from strongroom.workspace import Workspace

    vendor_account = Workspace.locate(demo.home).config.identities["vendor"]["account_id"]
    demo.cli("share", "create", SHARE_VENDOR, "--vendor-account", vendor_account)

    demo.section("2. Vendor: key, enclave image, sealed app, published to the share")
    demo.step("Create the vendor's key")
    demo.cli("keys", "create", "--alias", "classifier", "--description", "demo classifier")
    demo.step(
        "Build the enclave image with the app's runtime requirements (numpy), "
        "pinned to the vendor's key: it runs nothing sealed under any other"
    )
    demo.cli(
        "image",
        "build",
        "--key",
        "alias/classifier",
        "--requirements",
        str(app_dir / "requirements.txt"),
        "-o",
        "classifier.eif",
    )
    demo.step("Approve the image: only its measurement (PCR0) may have the key released")
    demo.cli("image", "approve", "classifier.eif", "--key", "alias/classifier")
    demo.step("Seal the app (code + secret weights) under the key")
    demo.cli(
        "seal",
        str(app_dir),
        "--key",
        "alias/classifier",
        "--context",
        "vendor=demo",
        "--context",
        "app=classifier",
        "-o",
        "classifier.sealed",
    )
    demo.step(
        "Publish the sealed app and the image into the host's share (runbook 2.3.1, "
        "2.3.2), with an index of their checksums and the image's measurements"
    )
    demo.cli("publish", "--share", SHARE_VENDOR, "classifier.sealed", "classifier.eif")

    demo.section("3. Host operator: fetch, enclave, proxy, data, run")
    demo.step(
        "Fetch them from the share (runbook 4.1): each is checked against the vendor's "
        "index (size, SHA-256, the image's measurements) before it is kept"
    )
    demo.cli("fetch", "--share", SHARE_VENDOR, "-o", FETCHED)
    image = f"{FETCHED}/classifier.eif"
    demo.step("Start the enclave from the fetched image")
    demo.cli("enclave", "start", image, "--memory", "1024", show=False)
    demo.cli("enclave", "status")
    demo.step("Start the egress proxy (the enclave may reach the key service only)")
    demo.cli("proxy", "start")
    demo.step("Check what the enclave runs: its attestation, verified against the image")
    demo.cli("attest", "--image", image)
    if _fuse_available():
        metrics = _through_the_synced_folder(demo, dataset)
    else:
        demo.step("Push the host's dataset into the enclave's shared folder (no FUSE here)")
        demo.cli("push", str(dataset), "/dataset/")
        demo.step("Run the sealed app on it (live output; the app never leaves the enclave)")
        demo.cli(*RUN_CLASSIFIER, live=True)
        demo.step("Pull the results out")
        demo.cli("pull", "/output", "results")
        metrics = _json((demo.workdir / "results" / "metrics.json").read_text())
    out.print(f"      accuracy {metrics['accuracy']:.4f} on {metrics['samples']} samples")

    demo.section("4. What the host cannot do")
    demo.step("Unseal the vendor's app outside an enclave, as the host")
    demo.cli("unseal", RUN_CLASSIFIER[1], "-o", "stolen", "--as", "host", expect=5)
    demo.step("See what the host may ask of the app (its sealed manifest), never its files")
    demo.cli("inspect", RUN_CLASSIFIER[1])
    demo.step("Inject code into the vendor's run through its environment")
    demo.cli(
        "run", RUN_CLASSIFIER[1], "--env", "LD_PRELOAD=/dataset/evil.so", "--", "--help",
        expect=2,
    )  # fmt: skip
    demo.step("Run an app of the host's own in the vendor's image")
    host_app = demo.workdir / "host-app"
    host_app.mkdir(exist_ok=True)
    (host_app / "main.py").write_text("print('host code')\n")
    demo.cli("keys", "create", "--alias", "host-app", "--as", "host", show=False)
    demo.cli("image", "approve", image, "--key", "alias/host-app", "--as", "host")
    demo.cli("seal", "host-app", "--key", "alias/host-app", "--as", "host", "-o", "host.sealed")
    demo.cli("run", "host.sealed", "--entry", "main.py", expect=5)

    demo.section("5. Revoke")
    demo.step("The vendor revokes the image's measurement")
    demo.cli("image", "revoke", "classifier.eif", "--key", "alias/classifier")
    demo.step("The next run is denied by the key service")
    demo.cli(*RUN_CLASSIFIER, expect=5)
    demo.step("Read the key service's audit log")
    events = _json(demo.cli("--json", "keys", "audit", show=False))
    for event in events:
        if event.get("operation") == "Decrypt":
            who = str(event.get("caller", "")).rsplit("/", 1)[-1]
            image = (event.get("attestation") or {}).get("image_sha384", "")[:16]
            out.print(
                f"      Decrypt  {who:<18} {event['outcome']:<8} "
                f"{event.get('statement') or '':<32} {image}"
            )

    demo.step("The host revokes the vendor's access to the share (runbook 6.1); the files stay")
    demo.cli("share", "revoke", SHARE_VENDOR)
    demo.step("The vendor's next publish is refused by the share's bucket policy")
    demo.cli("publish", "--share", SHARE_VENDOR, "classifier.sealed", expect=5)

    demo.section("6. Clean up")
    demo.step("Stop the enclave, the proxy and the key service")
    demo.cli("enclave", "stop", "--all")
    demo.cli("proxy", "stop")
    demo.cli("keys", "stop")
