"""Entry point of the ``strongroom`` console script."""

from __future__ import annotations

import importlib
import sys

import click

from strongroom import __version__
from strongroom.cli._common import AppContext, err
from strongroom.errors import StrongroomError

EXIT_INTERRUPTED = 130

#: command name → "module:attribute". Modules are imported only when their
#: command runs (or for the top-level --help): a command's start-up then pays
#: for its own dependencies only (boto3, uvicorn, ... are slow to import).
COMMANDS = {
    "init": "keys:init_command",
    "env": "keys:env_command",
    "keys": "keys:keys_group",
    "seal": "sealing:seal_command",
    "inspect": "sealing:inspect_command",
    "unseal": "sealing:unseal_command",
    "signing-key": "sealing:signing_key_group",
    "image": "image:image_group",
    "attestation": "attestation:attestation_group",
    "enclave": "enclave:enclave_group",
    "proxy": "enclave:proxy_group",
    "push": "client:push_command",
    "pull": "client:pull_command",
    "ls": "client:ls_command",
    "run": "client:run_command",
    "attest": "client:attest_command",
    "demo": "demo:demo_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"strongroom.cli.{module_name}")
        command: click.Command = getattr(module, attribute)
        return command


HELP = """Seal applications so that only an attested enclave can run them.

\b
Vendor:  keys create, seal, image build, image approve / revoke
Host:    init, share, enclave start, proxy start, push, run, pull
Try:     strongroom demo   (the whole flow, locally, in a scratch workspace)

The workspace is ./.strongroom, $STRONGROOM_HOME, or --home DIR.
"""


@click.group(cls=LazyGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
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
            import traceback

            traceback.print_exc()
        from rich.markup import escape  # on the error path only: ~10 ms of every start

        err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False)
        if e.hint:
            err.print(f"  hint: {e.hint}", markup=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:  # a bug: still one line, with the way to learn more
        if verbose:
            import traceback

            traceback.print_exc()
        from rich.markup import escape

        err.print(
            f"[bold red]error:[/] internal error: {escape(type(e).__name__)}: {escape(str(e))}"
        )
        err.print("  hint: this is a bug in Strongroom; rerun with --verbose for the traceback")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
