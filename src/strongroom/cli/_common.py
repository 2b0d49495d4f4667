"""What every command module shares: the run context, output and progress helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from strongroom.workspace import Workspace


@dataclass
class AppContext:
    """Global options, carried on ``click.Context.obj``."""

    home: str | None
    json: bool
    verbose: bool

    def workspace(self) -> Workspace:
        return Workspace.locate(self.home)


pass_app = click.make_pass_decorator(AppContext)


class _LazyConsole:
    """A rich ``Console``, made on first use.

    Importing rich costs ~20 ms; a command that prints nothing through it (the
    happy path of ``run``, whose only own lines go through ``click``) does not pay.
    """

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            # No emoji codes: ``:name:`` in a file or key name stays as typed.
            self._console = Console(
                stderr=self._stderr, highlight=False, soft_wrap=True, emoji=False
            )
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


#: Human output goes to stdout; diagnostics, progress and step banners to stderr,
#: so that ``--json`` output and exported shell lines stay clean for pipes.
out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=json_default) + "\n")


def emit_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
) -> None:
    from rich.table import Table  # on use: every command pays for what it imports here

    table = Table(*columns, title=title, title_justify="left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


def emit(app: AppContext, value: Any, render: Callable[[], None]) -> None:
    """Print ``value`` as JSON when ``--json`` is set, else call ``render``."""
    if app.json:
        emit_json(value)
    else:
        render()


@contextmanager
def byte_progress(
    description: str, total: int | None, *, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n_bytes)`` callback that drives a progress bar on a terminal.

    On a pipe (or with ``--json``) the callback does nothing, so progress never
    pollutes machine-readable output.
    """
    if not enabled or not err.is_terminal:
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err.console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
