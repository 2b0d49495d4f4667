"""Entry point of the ``strongroom`` console script."""

from __future__ import annotations

import importlib
import sys

import click

from strongroom import __version__
from strongroom.cli._common import AppContext, json_option
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
    "rm": "files:rm_command",
    "mkdir": "files:mkdir_command",
    "cat": "files:cat_command",
    "stat": "files:stat_command",
    "mount": "mount:mount_command",
    "unmount": "mount:unmount_command",
    "sync": "mount:sync_command",
    "run": "client:run_command",
    "attest": "client:attest_command",
    "share": "share:share_group",
    "iam": "iam:iam_group",
    "publish": "share:publish_command",
    "fetch": "share:fetch_command",
    "doctor": "doctor:doctor_command",
    "demo": "demo:demo_command",
    "completion": "completion:completion_command",
}


#: Commands whose output is not data: they take no ``--json``.
NO_JSON = frozenset({"demo", "completion", "cat", "enclave logs", "keys serve"})


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use.

    Every data-printing command, however deep, also takes ``--json`` after its
    name (``strongroom keys list --json``), the same flag as the global one.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"strongroom.cli.{module_name}")
        command: click.Command = getattr(module, attribute)
        _accept_json(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # click turns EPIPE into a silent exit 1; the reader merely stopped early
            raise _ReaderGone from None


class _ReaderGone(Exception):
    """stdout's reader closed it (``| head -1``)."""


def _accept_json(command: click.Command, path: str) -> None:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            _accept_json(sub, f"{path} {name}")
    elif path not in NO_JSON and not any(p.name == "json" for p in command.params):
        command.params.append(json_option())


HELP = """Seal applications so that only an attested enclave can run them.

\b
Vendor:  keys create, seal, image build, image approve, publish
Host:    init, share create, fetch, enclave start, proxy start, mount (or push), run, pull
Check:   doctor   (the host, a key's policy, an image: one line per finding, with the fix)
Revoke:  image revoke (vendor: no more key releases), share revoke (host: no more uploads)
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
    """Run the CLI; render every failure once, as one ``error:`` line plus a hint."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        rv = cli.main(args=args, prog_name="strongroom", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # `strongroom keys`: its help
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx is not None else "strongroom"
        _error(_sentence(e.format_message()), f"see `{command} --help`")
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _error(_sentence(e.format_message()), None)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _error("aborted", None)
        sys.exit(EXIT_INTERRUPTED)
    except StrongroomError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        _error(e.message, e.hint)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _error("interrupted", None)
        sys.exit(EXIT_INTERRUPTED)
    except (BrokenPipeError, _ReaderGone):
        # the reader went away (`strongroom keys list | head -1`): it had what it wanted
        _silence_stdout()
        sys.exit(0)
    except Exception as e:  # a bug: still one line, with the way to learn more
        if verbose:
            import traceback

            traceback.print_exc()
        _error(
            f"internal error: {type(e).__name__}: {e}",
            "this is a bug in Strongroom; rerun with --verbose for the traceback",
        )
        sys.exit(1)
    code = rv if isinstance(rv, int) else 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(code)


def _error(message: str, hint: str | None) -> None:
    """``error: MESSAGE`` (red on a terminal) and ``  hint: HINT``, on stderr, verbatim."""
    click.echo(click.style("error:", fg="red", bold=True) + " " + message, err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)


def _sentence(message: str) -> str:
    """Click's messages in our voice: one line, lower-case start, no final period."""
    line = " ".join(message.split())
    if line[:1].isupper() and line[1:2].islower():
        line = line[0].lower() + line[1:]
    return line.removesuffix(".")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    main()
