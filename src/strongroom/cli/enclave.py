"""``strongroom enclave start|status|stop|logs`` and ``strongroom proxy start|status|stop``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from strongroom.cli._common import (
    AppContext,
    complete_enclave_name,
    emit,
    emit_table,
    err,
    out,
    pass_app,
)
from strongroom.cli._common import status as show_status
from strongroom.enclave import EnclaveSpec, EnclaveStatus, runtime_for
from strongroom.enclave.base import DEFAULT_NAME
from strongroom.errors import NotFoundError, UsageError
from strongroom.image.eif import EifReader
from strongroom.transport import proxy
from strongroom.transport.forward import KMS_LOCAL_PORT
from strongroom.workspace import Workspace


def _when(status: EnclaveStatus) -> str:
    return "" if status.started_at is None else status.started_at.strftime("%Y-%m-%d %H:%M:%S")


def _responding(status: EnclaveStatus) -> str:
    """``yes``/``NO`` for a probed (RUNNING) enclave, empty for the others."""
    if status.responding is None:
        return ""
    return "yes" if status.responding else "NO"


def _render_detail(status: EnclaveStatus) -> None:
    rows: list[tuple[str, Any]] = [
        ("state", status.state),
        ("responding", _responding(status)),
        ("id", status.enclave_id),
        ("image", status.image),
        ("resources", f"{status.cpus} CPU(s), {status.memory_mib} MiB"),
        ("limits", status.limits),
        ("debug", "yes (attests all-zero PCR0-2)" if status.debug else "no"),
    ]
    if status.measurements is not None:
        rows += [
            ("PCR0", status.measurements.pcr0),
            ("PCR1", status.measurements.pcr1),
            ("PCR2", status.measurements.pcr2),
        ]
    rows += [(f"{name} socket", address) for name, address in sorted(status.addresses.items())]
    rows += [("pid", status.pid), ("started", _when(status))]
    if status.exit_code is not None:
        rows.append(("exit code", status.exit_code))
    if status.oom_killed:
        rows.append(("out of memory", "yes"))
    if status.reason:
        rows.append(("reason", status.reason))
    for label, value in rows:
        if value not in (None, ""):
            out.print(f"  {label:<16} {value}", markup=False)


# --- enclave ------------------------------------------------------------------------


@click.group("enclave")
def enclave_group() -> None:
    """Run enclaves: start an image, see how it is doing, read its console, stop it.

    \b
    On the local target an enclave is a bubblewrap sandbox: no network, a
    private memory-backed file system, and exactly three channels (control,
    attestor, egress). It is not a security boundary against root on this
    machine. Egress goes only through `strongroom proxy start`.

    \b
    Example:
      strongroom enclave start app.eif --memory 2048
      strongroom enclave status
      strongroom enclave stop enclave
    """


@enclave_group.command("start")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="Name of the enclave.")
@click.option("--cpus", type=int, help="CPUs [default: the image's default].")
@click.option(
    "--memory", "memory_mib", type=int, metavar="MiB", help="Memory [default: the image's default]."
)
@click.option(
    "--debug",
    is_flag=True,
    help="Debug mode: capture the console (`enclave logs`); attests all-zero PCR0-2.",
)
@pass_app
def start_command(
    app: AppContext,
    image: Path,
    name: str,
    cpus: int | None,
    memory_mib: int | None,
    debug: bool,
) -> None:
    """Start IMAGE and wait until the enclave server answers.

    The image is measured while it is unpacked, so the PCRs shown are those of
    exactly what runs. The unpacked copy is kept (run/image-cache, a few
    images): a later start of the same image measures it, checks the copy
    file by file and uses it, in about a second. Give an enclave at least 4x
    its image size in memory (a warning says when you do not). An app that
    outgrows the memory is killed and `enclave status` says so; the host is
    not affected. On a terminal, stderr shows what the start is doing.

    \b
    Examples:
      strongroom enclave start app.eif
      strongroom enclave start app.eif --name vendor-a --cpus 2 --memory 2048
      strongroom enclave start app.eif --debug && strongroom enclave logs enclave -f
    """
    ws = app.workspace()
    if cpus is None or memory_mib is None:
        with EifReader(image) as reader:
            cpus = reader.header.default_cpus if cpus is None else cpus
            memory_mib = reader.header.default_mem_mib if memory_mib is None else memory_mib
    started = time.monotonic()
    spec = EnclaveSpec(name=name, image=image, cpus=cpus, memory_mib=memory_mib, debug=debug)
    with show_status(f"starting enclave {name}", enabled=not app.json) as progress:
        result = runtime_for(ws).start(spec, progress=progress)
    elapsed = time.monotonic() - started
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)

    egress = (
        "the egress proxy runs"
        if proxy.running(ws.run_dir) is not None
        else "no egress until `strongroom proxy start`"
    )

    def render() -> None:
        out.print(f"enclave {name} is RUNNING (answered after {elapsed:.1f} s)")
        _render_detail(result.status)
        out.print(
            f"inside, the key service is http://127.0.0.1:{KMS_LOCAL_PORT} ({egress})",
            markup=False,
        )

    described = result.status.to_json()
    described["Strongroom"].update(warnings=list(result.warnings), start_s=elapsed)
    emit(app, described, render)


@enclave_group.command("status")
@click.argument("name", required=False, shell_complete=complete_enclave_name)
@pass_app
def status_command(app: AppContext, name: str | None) -> None:
    """Show the enclaves of this workspace, running or dead, and why a dead one died.

    \b
    States: STARTING, RUNNING, STOPPED (ended with code 0), FAILED (exit code,
    signal, or out of memory: see the reason). A RUNNING enclave's server is
    asked to answer on its control socket: "answers NO" (JSON:
    "Strongroom": {"responding": false}) means it is stopped, wedged or out of
    memory; stop and restart it. --json prints what `nitro-cli
    describe-enclaves` does (EnclaveName, EnclaveID, State, Flags, ...).

    \b
    Examples:
      strongroom enclave status
      strongroom enclave status vendor-a --json
    """
    statuses = runtime_for(app.workspace()).status(name)

    def render() -> None:
        if not statuses:
            out.print("no enclaves (start one with `strongroom enclave start IMAGE`)")
            return
        if name is not None:
            out.print(f"enclave {name}")
            _render_detail(statuses[0])
            return
        emit_table(
            ["name", "state", "answers", "pid", "cpus", "memory", "debug", "started", "reason"],
            [
                (
                    s.name,
                    s.state,
                    _responding(s),
                    s.pid,
                    s.cpus,
                    f"{s.memory_mib} MiB",
                    "yes" if s.debug else "no",
                    _when(s),
                    s.reason,
                )
                for s in statuses
            ],
            optional=("started", "debug", "memory", "cpus", "pid"),
        )

    emit(app, [s.to_json() for s in statuses], render)


@enclave_group.command("stop")
@click.argument("name", required=False, shell_complete=complete_enclave_name)
@click.option("--all", "stop_all", is_flag=True, help="Stop every enclave of this workspace.")
@pass_app
def stop_command(app: AppContext, name: str | None, stop_all: bool) -> None:
    """Stop an enclave (or --all): nothing of it keeps running, its record is removed.

    Stopping an enclave that already died removes its record (and whatever it
    left behind). The shared folder goes with the enclave: files in /output
    that no `strongroom pull` fetched (or that changed since) are named in a
    warning on stderr; the enclave is stopped all the same. Folders that
    `strongroom mount` mounted from it are unmounted first. An enclave that
    does not list /output within 2 s is stopped without the check. --json
    prints each enclave as `enclave status --json` does, with "Terminated":
    true (as `nitro-cli terminate-enclave`).

    \b
    Examples:
      strongroom enclave stop            # the only enclave
      strongroom enclave stop vendor-a
      strongroom enclave stop --all
    """
    if name is not None and stop_all:
        raise UsageError("name one enclave, or use --all, not both")
    runtime = runtime_for(app.workspace())
    if name is None and not stop_all:
        # like `run` and `push`: with a single enclave, there is nothing to choose
        known = [s.name for s in runtime.status()]
        if len(known) > 1:
            raise UsageError(
                f"several enclaves exist ({', '.join(known)})",
                hint="name one, or use --all",
            )
        name = known[0] if known else None
        if name is None:
            raise NotFoundError("no enclave to stop", hint="see `strongroom enclave status`")
    statuses = runtime.status(name, probe=False)
    _warn_unpulled(app.workspace(), statuses)
    _unmount_folders(app.workspace(), [s.name for s in statuses])
    stopped = runtime.stop(name)

    def render() -> None:
        if not stopped:
            out.print("no enclave to stop")
        for status in stopped:
            ended = status.reason if status.state == "FAILED" else None
            out.print(
                f"stopped enclave {status.name}" + (f" (it had failed: {ended})" if ended else ""),
                markup=False,
            )

    emit(app, [{**s.to_json(), "Terminated": True} for s in stopped], render)


def _unmount_folders(ws: Workspace, names: list[str]) -> None:
    """Unmount the synced folders of enclaves about to stop (their files go with them)."""
    from strongroom.client.mount import mounts

    for name in names:
        for mount in mounts.unmount_enclave(ws, name):
            err.print(f"unmounted {mount.directory} (enclave {name} stops)", markup=False)


def _warn_unpulled(ws: Workspace, statuses: list[EnclaveStatus]) -> None:
    """One warning line per enclave whose /output holds files never pulled."""
    from rich.markup import escape

    from strongroom.client import ledger

    for enclave, paths in sorted(ledger.check_before_stop(ws, statuses).items()):
        err.print(f"[yellow]warning:[/] {escape(ledger.warning_line(enclave, paths))}")


@enclave_group.command("logs")
@click.argument("name", shell_complete=complete_enclave_name)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the enclave stops.")
@pass_app
def logs_command(app: AppContext, name: str, follow: bool) -> None:
    """Print the console (stdout and stderr) of a debug-mode enclave.

    Like `nitro-cli console`, only enclaves started with --debug have a
    console: a production enclave's output never reaches the host.

    \b
    Example:
      strongroom enclave logs enclave --follow
    """
    stream = sys.stdout.buffer
    for chunk in runtime_for(app.workspace()).logs(name, follow=follow):
        stream.write(chunk)
        stream.flush()


# --- proxy --------------------------------------------------------------------------


def _named_destinations(ws: Workspace) -> dict[str, proxy.AllowRule]:
    """``kms``: where the key service runs now (``keys serve --listen``), else its
    configured address."""
    from strongroom.keys.service import listen_address

    listen = listen_address(ws)
    if listen.startswith("unix:"):
        return {}
    return {"kms": proxy.parse_allow(listen, named={})}


@click.group("proxy")
def proxy_group() -> None:
    """The egress proxy: the only way out of the enclaves, to allowlisted destinations.

    \b
    One proxy serves every enclave of the workspace. Without it, enclaves
    reach nothing; `proxy stop` cuts them all off at once. Every decision
    (allow, deny, error) is logged as a JSON line in run/proxy/egress.log.

    \b
    Example:
      strongroom proxy start                  # allow the workspace key service ("kms")
      strongroom proxy start --allow kms --allow s3.eu-west-1.amazonaws.com:443
      strongroom proxy stop
    """


@proxy_group.command("start")
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="kms|HOST:PORT",
    help="Allow a destination; repeatable. 'kms' is the workspace key service.",
)
@click.option(
    "--allowlist",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file: `allowlist: [{address: HOST, port: N}, ...]` (as vsock-proxy's).",
)
@pass_app
def proxy_start_command(app: AppContext, allow: tuple[str, ...], allowlist: Path | None) -> None:
    """Start the egress proxy in the background.

    With neither --allow nor --allowlist, only the workspace key service
    ("kms": where `keys serve` listens now, else the workspace's keys.listen)
    is allowed. Inside an enclave it is
    reached at http://127.0.0.1:8000. Hosts must resolve now; they match only
    as written (allowing localhost does not allow 127.0.0.1).

    \b
    Examples:
      strongroom proxy start
      strongroom proxy start --allow kms --allow 10.0.0.5:9000
      strongroom proxy start --allowlist egress.yaml
    """
    ws = app.workspace()
    named = _named_destinations(ws)
    rules = proxy.Allowlist(tuple(proxy.parse_allow(spec, named=named) for spec in allow))
    if allowlist is not None:
        rules = rules + proxy.Allowlist.load(allowlist)
    if not allow and allowlist is None:
        if "kms" not in named:
            raise UsageError(
                "the key service listens on a unix socket; there is no default destination",
                hint="name destinations with --allow HOST:PORT or --allowlist FILE",
            )
        rules = proxy.Allowlist((named["kms"],))
    rec = proxy.start_detached(ws.run_dir, rules)
    allowed = [str(rule) for rule in rules.rules]

    def render() -> None:
        out.print(f"egress proxy running (pid {rec.pid})")
        out.print(f"  allowed  {', '.join(allowed) or '(nothing)'}", markup=False)
        out.print(f"  log      {rec.log}", markup=False)

    emit(app, {"running": True, "pid": rec.pid, "allowlist": allowed, "log": rec.log}, render)


@proxy_group.command("status")
@pass_app
def proxy_status_command(app: AppContext) -> None:
    """Say whether the egress proxy runs, and what it allows.

    \b
    Example:
      strongroom proxy status --json
    """
    rec = proxy.running(app.workspace().run_dir)
    if rec is None:
        emit(
            app,
            {"running": False},
            lambda: out.print("egress proxy: not running (enclaves have no egress)"),
        )
        return
    allowed = rec.extra.get("allowlist", [])
    info = {"running": True, "pid": rec.pid, "allowlist": allowed, "log": rec.log}

    def render() -> None:
        out.print(f"egress proxy: running (pid {rec.pid})")
        out.print(f"  allowed  {', '.join(allowed) or '(nothing)'}", markup=False)
        out.print(f"  log      {rec.log}", markup=False)

    emit(app, info, render)


@proxy_group.command("stop")
@pass_app
def proxy_stop_command(app: AppContext) -> None:
    """Stop the egress proxy: every enclave loses its egress at once.

    \b
    Example:
      strongroom proxy stop
    """
    rec = proxy.stop(app.workspace().run_dir)
    emit(app, {"stopped": True, "pid": rec.pid}, lambda: out.print("egress proxy stopped"))
