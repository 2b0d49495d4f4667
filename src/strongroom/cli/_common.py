"""What every command module shares: the run context, output and progress helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from strongroom.workspace import Workspace


@dataclass
class AppContext:
    """Global options, carried on ``click.Context.obj``."""

    home: str | None
    json: bool
    verbose: bool

    def workspace(self) -> Workspace:
        from strongroom.workspace import Workspace  # not for --version and --help

        return Workspace.locate(self.home)


pass_app = click.make_pass_decorator(AppContext)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    app = ctx.find_object(AppContext)
    if value and app is not None:
        app.json = True


def json_option() -> click.Option:
    """``--json`` after a command's name: the global flag, where users also type it."""
    return click.Option(
        ["--json"],
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print machine-readable JSON (same as the global --json).",
    )


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
    from datetime import datetime  # here: --version and --help need neither
    from pathlib import PurePath

    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=json_default) + "\n")


def emit_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    optional: Collection[str] = (),
) -> None:
    """Print rows under column headings, never cutting a value.

    On a pipe: plain tab-separated lines (headings first; no box drawing, no
    wrapping), so ``cut -f``, ``awk -F'\t'`` and copy-paste get whole key IDs,
    ARNs and PCRs. On a terminal: a table whose cells wrap (a long ID folds
    onto the next line, never ends in ``…``); when even that is too wide, the
    ``optional`` columns are dropped, right to left, until it fits.
    """
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not out.is_terminal:
        if title:
            sys.stdout.write(f"# {title}\n")
        for line in [list(columns), *cells]:
            sys.stdout.write("\t".join(_plain_cell(c) for c in line) + "\n")
        return
    from rich.table import Table  # on use: every command pays for what it imports here

    shown = list(range(len(columns)))
    droppable = [i for i in shown if columns[i] in optional]
    while droppable and _table_width(columns, cells, shown) > out.width:
        shown.remove(droppable.pop())
    table = Table(title=title, title_justify="left")
    for i in shown:
        table.add_column(columns[i], overflow="fold")
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    out.print(table)


def _plain_cell(value: str) -> str:
    """One cell of a tab-separated line: tabs and newlines inside it escaped."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _table_width(columns: Sequence[str], cells: list[list[str]], shown: list[int]) -> int:
    """The width a table needs to print every shown cell on one line (3 per column of padding)."""
    return 1 + sum(
        3 + max(len(columns[i]), *(len(row[i]) for row in cells)) if cells else 3 + len(columns[i])
        for i in shown
    )


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


def complete_enclave_name(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[str]:
    """Shell completion of enclave names: those of the workspace that ``--home`` names.

    Completion parses without running the group's callback, so the workspace
    comes from the root context's ``--home`` (or ``$STRONGROOM_HOME``).
    Anything wrong (no workspace yet) completes nothing rather than failing.
    """
    from strongroom.enclave import runtime_for
    from strongroom.errors import StrongroomError
    from strongroom.workspace import Workspace

    try:
        ws = Workspace.locate(ctx.find_root().params.get("home"))
        names = [s.name for s in runtime_for(ws).status(probe=False)]
    except (StrongroomError, OSError):
        return []
    return [name for name in names if name.startswith(incomplete)]


@contextmanager
def status(title: str, *, enabled: bool, lines: bool = False) -> Iterator[Callable[[str], None]]:
    """Yield ``update(message)``, which says on stderr what a long command is doing now.

    On a terminal: one transient spinner line, ``title: message``, gone when
    the block ends. Elsewhere: each message as a plain ``  message`` line if
    ``lines``, else nothing. Never anything when not ``enabled`` (``--json``),
    and never on stdout.
    """
    if not enabled:
        yield lambda _message: None
        return
    if not err.is_terminal:
        if not lines:
            yield lambda _message: None
            return

        def line(message: str) -> None:
            sys.stderr.write(f"  {message}\n")
            sys.stderr.flush()

        yield line
        return
    with err.status(title, spinner="dots") as spinner:
        yield lambda message: spinner.update(f"{title}: {message}")
