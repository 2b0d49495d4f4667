"""The local target's own basics: its key service runs, and its enclave (bubblewrap) can start.

The sandbox check is the one ``enclave start`` makes before it starts anything
(:func:`strongroom.enclave.sandbox.check_sandbox`: bwrap installed, user
namespaces allowed, a trial sandbox that really runs).
"""

from __future__ import annotations

from strongroom.doctor.base import Finding, fail, ok
from strongroom.workspace import Workspace

GROUP = "local"


def key_service(ws: Workspace) -> Finding:
    from strongroom.keys import service

    record = service.running(ws)
    if record is None:
        return fail(
            GROUP,
            "key-service",
            "the workspace's key service is not running: nothing can be sealed, approved or run",
            f"start it: {service.NOT_RUNNING_HINT.removeprefix('start it with ')}",
        )
    endpoint = record.addresses.get("endpoint", "?")
    return ok(GROUP, "key-service", f"the key service runs at {endpoint} (pid {record.pid})")


def sandbox() -> Finding:
    from strongroom.enclave.sandbox import bwrap_path, check_sandbox

    check_sandbox()  # raises what to install or enable; guarded() makes it the finding
    return ok(GROUP, "sandbox", f"{bwrap_path()} can create the local enclave's sandbox")
