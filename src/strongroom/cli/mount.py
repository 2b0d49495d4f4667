"""``strongroom mount``, ``unmount`` and ``sync -d``: the enclave's shared folder as a local folder.

See :mod:`strongroom.client.mount` for how the folder works and what it promises.
"""

from __future__ import annotations

import logging
import sys

import click

from strongroom.cli._common import AppContext, emit, emit_table, out, pass_app
from strongroom.cli.client import connect_enclave, enclave_option

_DIR = click.Path(file_okay=False, path_type=str)


@click.command("mount")
@click.argument("directory", required=False, type=_DIR)
@enclave_option
@click.option(
    "--foreground", is_flag=True, help="Serve in this process until unmounted (Ctrl-C unmounts)."
)
@click.option("--read-only", is_flag=True, help="Refuse every change through the folder.")
@pass_app
def mount_command(
    app: AppContext,
    directory: str | None,
    enclave_name: str | None,
    foreground: bool,
    read_only: bool,
) -> None:
    """Mount the enclave's shared folder on DIRECTORY (an empty directory), as a FUSE folder.

    \b
    What is copied in lands in the enclave's shared folder, where a run finds
    it by the same path (`/dataset/x.csv` here is `/dataset/x.csv` to `run`);
    what an app writes shows up here within a second. Files are closed into
    the enclave (close-to-open, as on NFS); `sync`/`fsync` waits until they
    are there, and `strongroom run` does that for you. If the enclave stops
    answering, every operation fails at once (ENOTCONN, state LOST) until you
    unmount. With no DIRECTORY: list the workspace's mounts.

    \b
    Example, the runbook's folder (step 4.5):
      mkdir -p ~/synced && strongroom mount ~/synced
      mkdir -p ~/synced/dataset ~/synced/encrypted ~/synced/output
      cp data.csv ~/synced/dataset/ && cp app.sealed ~/synced/encrypted/
      strongroom run /encrypted/app.sealed -- /dataset/data.csv /output
      cat ~/synced/output/result.json
      strongroom unmount ~/synced
    """
    from strongroom.client.mount import mounts

    ws = app.workspace()
    if directory is None:
        if enclave_name is not None or foreground or read_only:
            raise click.UsageError(
                "DIRECTORY is needed with --enclave, --foreground or --read-only"
            )
        found = mounts.active(ws)
        emit(
            app,
            [m.to_json() for m in found],
            lambda: (
                emit_table(
                    ["DIRECTORY", "ENCLAVE", "STATE", "MODE", "PID"],
                    [
                        [
                            m.directory,
                            m.enclave,
                            m.state,
                            "ro" if m.read_only else "rw",
                            m.record.pid,
                        ]
                        for m in found
                    ],
                    optional=["PID"],
                )
                if found
                else out.print("no mounts (mount one with `strongroom mount DIR`)")
            ),
        )
        return
    target = mounts.resolve(directory)
    with connect_enclave(ws, enclave_name) as client:
        name = client.name
        if foreground:
            logging.basicConfig(
                stream=sys.stderr,
                level=logging.INFO,
                format="%(asctime)s %(levelname)s %(message)s",
            )
            from strongroom.client.enclave import EnclaveClient
            from strongroom.client.mount.fs import REQUEST_TIMEOUT_S

            # requests that fail within seconds, so a dead enclave never hangs a reader
            served = EnclaveClient(
                client.address,
                name=client.name,
                enclave_id=client.enclave_id,
                timeout=REQUEST_TIMEOUT_S,
            )
            with served:
                mounts.serve(ws, served, target, read_only=read_only)
            return
    mount = mounts.start(ws, name, target, read_only=read_only)
    emit(
        app,
        mount.to_json(),
        lambda: out.print(
            f"mounted the shared folder of enclave {name} on {target}"
            + (" (read-only)" if read_only else "")
            + f"\nunmount with: strongroom unmount {target}"
        ),
    )


@click.command("unmount")
@click.argument("directory", type=_DIR)
@pass_app
def unmount_command(app: AppContext, directory: str) -> None:
    """Unmount a folder that `strongroom mount` mounted.

    \b
    Waits until what was written is in the enclave. If something still has
    the folder open, it is detached at once (a lazy unmount) and the kernel
    lets go when they do.

    \b
    Example:
      strongroom unmount ~/synced
    """
    from strongroom.client.mount import mounts

    target = mounts.resolve(directory)
    lazy = mounts.unmount(app.workspace(), target)
    emit(
        app,
        {"directory": str(target), "lazy": lazy},
        lambda: out.print(
            f"unmounted {target}"
            + (" (lazily: it was busy; the kernel finishes when it is let go)" if lazy else "")
        ),
    )


@click.command("sync")
@click.option(
    "-d", "--directory", "directory", required=True, type=_DIR, help="The folder to mount."
)
@enclave_option
@click.pass_context
def sync_command(ctx: click.Context, directory: str, enclave_name: str | None) -> None:
    """The runbook's `client.py sync -d DIR`: the same as `strongroom mount DIR`.

    \b
    Example:
      mkdir -p ~/synced && strongroom sync -d ~/synced
    """
    ctx.invoke(mount_command, directory=directory, enclave_name=enclave_name)
