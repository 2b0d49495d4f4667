"""``strongroom completion bash|zsh|fish``: the shell's completion script."""

from __future__ import annotations

import click

#: The environment variable click's completion protocol uses for our program name.
COMPLETE_VAR = "_STRONGROOM_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the completion script for SHELL: commands, options, enclave names.

    \b
    Examples:
      eval "$(strongroom completion bash)"            # this shell; add it to ~/.bashrc
      strongroom completion zsh > ~/.zfunc/_strongroom
      strongroom completion fish > ~/.config/fish/completions/strongroom.fish
    """
    from click.shell_completion import get_completion_class

    from strongroom.cli.main import cli

    completion = get_completion_class(shell)
    assert completion is not None  # the Choice admits only the shells click knows
    click.echo(completion(cli, {}, "strongroom", COMPLETE_VAR).source())
