"""``strongroom rm``, ``mkdir``, ``cat``, ``stat``: the shared folder, as the usual tools see files.

Each is one call of the enclave's Files API per path, confined there to the
shared folder (no ``..``, no symlink followed; see
:mod:`strongroom.server.files`). What can be checked before anything changes
is checked for every path first (``rm`` refuses a missing path or an
unrequested directory before removing anything), so a mistyped path in a list
does not leave the job half done. Names that came from the enclave are shown
literally: control characters cannot rewrite the terminal.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from strongroom.cli._common import AppContext, byte_progress, emit, out, pass_app
from strongroom.cli.client import connect_enclave, enclave_option
from strongroom.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from strongroom.client.enclave import RemoteEntry


def _shown(text: str) -> str:
    return text if text.isprintable() else repr(text)


@click.command("rm")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Remove directories and their contents.")
@click.option("-f", "--force", is_flag=True, help="Ignore paths that do not exist.")
@enclave_option
@pass_app
def rm_command(
    app: AppContext, paths: tuple[str, ...], recursive: bool, force: bool, enclave_name: str | None
) -> None:
    """Remove files (and with -r, directories) from the enclave's shared folder.

    \b
    Every PATH is checked first: a missing one (unless -f) or a directory
    without -r refuses the whole command before anything is removed. A
    symlink is removed itself, never what it points to. The root / cannot
    be removed.

    \b
    Example:
      strongroom rm /dataset/old.csv
      strongroom rm -r /output/run-1 /output/run-2
    """
    with connect_enclave(app.workspace(), enclave_name) as enclave:
        entries: list[RemoteEntry] = []
        for path in paths:
            try:
                entry = enclave.stat(path)
            except NotFoundError:
                if force:
                    continue
                raise
            if entry.type == "dir" and not recursive:
                raise UsageError(
                    f"{_shown(entry.path)} is a directory", hint="remove it with `rm -r`"
                )
            entries.append(entry)
        for entry in entries:
            enclave.remove(entry.path, recursive=recursive)

    def render() -> None:
        for entry in entries:
            out.print(f"removed {_shown(entry.path)}", markup=False)

    emit(app, {"removed": [{"path": e.path, "type": e.type} for e in entries]}, render)


@click.command("mkdir")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "-p", "--parents", is_flag=True, help="Create missing parents; no error if it exists."
)
@enclave_option
@pass_app
def mkdir_command(
    app: AppContext, paths: tuple[str, ...], parents: bool, enclave_name: str | None
) -> None:
    """Create directories in the enclave's shared folder.

    \b
    Without -p, the parent must exist and the directory must not (exit 7 and
    exit 2 otherwise); with -p, missing parents are created and an existing
    directory is fine.

    \b
    Example:
      strongroom mkdir -p /dataset/2026/q4
    """
    from strongroom.client.transfer import normalised

    with connect_enclave(app.workspace(), enclave_name) as enclave:
        for path in paths:
            enclave.mkdir(path, parents=parents)
    created = [normalised(path) for path in paths]

    def render() -> None:
        for path in created:
            out.print(f"created {_shown(path)}", markup=False)

    emit(app, {"created": created}, render)


@click.command("cat")
@click.argument("paths", nargs=-1, required=True)
@enclave_option
@pass_app
def cat_command(app: AppContext, paths: tuple[str, ...], enclave_name: str | None) -> None:
    """Write files of the enclave's shared folder to standard output, as they stream in.

    \b
    The raw bytes, one file after the other, and nothing else on standard
    output. Each file's SHA-256 is compared with the enclave's once it has
    been written: a mismatch is an error (exit 4) after the bytes, so
    discard them. Only regular files are read.

    \b
    Example:
      strongroom cat /output/metrics.json | jq .accuracy
    """
    if app.json:
        raise UsageError(
            "cat writes the files' bytes to standard output; --json does not apply",
            hint="use `strongroom stat --json PATH` for what describes a file",
        )
    sink = sys.stdout.buffer
    with connect_enclave(app.workspace(), enclave_name) as enclave:
        for path in paths:
            with byte_progress(f"cat {path}", None, enabled=True) as advance:
                enclave.download_to(path, sink, progress=advance)


def _mtime(entry: RemoteEntry) -> str:
    return datetime.fromtimestamp(entry.mtime, UTC).isoformat(timespec="seconds")


def _stat_json(entry: RemoteEntry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "type": entry.type,
        "size": entry.size,
        "mode": entry.mode,
        "mtime": entry.mtime,
    }


@click.command("stat")
@click.argument("paths", nargs=-1, required=True)
@enclave_option
@pass_app
def stat_command(app: AppContext, paths: tuple[str, ...], enclave_name: str | None) -> None:
    """Describe files or directories of the enclave's shared folder.

    \b
    For each PATH: its type (file, dir, symlink -- a link itself, never
    followed -- or other), size in bytes, permission bits and modification
    time. --json prints a list with one object per PATH, with the fields of
    `ls --json` (mode as a number, mtime in seconds since the epoch).
    A missing PATH exits 7 and prints nothing.

    \b
    Example:
      strongroom stat /dataset/digits.csv
      strongroom --json stat /output/metrics.json | jq '.[0].size'
    """
    with connect_enclave(app.workspace(), enclave_name) as enclave:
        entries = [enclave.stat(path) for path in paths]

    def render() -> None:
        for entry in entries:
            out.print(_shown(entry.path), markup=False)
            for label, value in (
                ("type", entry.type),
                ("size", f"{entry.size} bytes"),
                ("mode", oct(entry.mode)[2:]),
                ("modified", _mtime(entry)),
            ):
                out.print(f"  {label:<9} {value}", markup=False)

    emit(app, [_stat_json(e) for e in entries], render)
