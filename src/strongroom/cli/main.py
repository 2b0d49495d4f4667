"""Entry point of the ``strongroom`` console script."""

from __future__ import annotations

import sys
import traceback

import click
from rich.markup import escape

from strongroom import __version__
from strongroom.cli._common import AppContext, err
from strongroom.cli.attestation import attestation_group
from strongroom.cli.client import (
    attest_command,
    ls_command,
    pull_command,
    push_command,
    run_command,
)
from strongroom.cli.demo import demo_command
from strongroom.cli.enclave import enclave_group, proxy_group
from strongroom.cli.image import image_group
from strongroom.cli.keys import env_command, init_command, keys_group
from strongroom.cli.sealing import inspect_command, seal_command, unseal_command
from strongroom.errors import StrongroomError

EXIT_INTERRUPTED = 130

HELP = """Seal applications so that only an attested enclave can run them.

\b
Vendor:  keys create, seal, image build, image approve / revoke
Host:    init, share, enclave start, proxy start, push, run, pull
Try:     strongroom demo   (the whole flow, locally, in a scratch workspace)

The workspace is ./.strongroom, $STRONGROOM_HOME, or --home DIR.
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="strongroom")
@click.option(
    "--home",
    envvar="STRONGROOM_HOME",
    metavar="DIR",
    help="Workspace directory [default: ./.strongroom, or $STRONGROOM_HOME].",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug detail.")
@click.pass_context
def cli(ctx: click.Context, home: str | None, as_json: bool, verbose: bool) -> None:
    ctx.obj = AppContext(home=home, json=as_json, verbose=verbose)


cli.add_command(init_command)
cli.add_command(env_command)
cli.add_command(keys_group)
cli.add_command(demo_command)
cli.add_command(image_group)
cli.add_command(attestation_group)
cli.add_command(seal_command)
cli.add_command(inspect_command)
cli.add_command(unseal_command)
cli.add_command(enclave_group)
cli.add_command(proxy_group)
cli.add_command(push_command)
cli.add_command(pull_command)
cli.add_command(ls_command)
cli.add_command(run_command)
cli.add_command(attest_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; render :class:`StrongroomError` once, as one line plus a hint."""
    verbose = "-v" in (argv or sys.argv) or "--verbose" in (argv or sys.argv)
    try:
        rv = cli.main(args=argv, prog_name="strongroom", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except StrongroomError as e:
        if verbose:
            traceback.print_exc()
        err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False)
        if e.hint:
            err.print(f"  hint: {e.hint}", markup=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
