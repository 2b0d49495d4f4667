"""Enclave runtimes: start, status, stop and console of enclaves, one backend per target.

- :mod:`.base` — the :class:`EnclaveRuntime` interface and its data types;
- :mod:`.sandbox` — the local target: a bubblewrap sandbox owned by a detached
  :mod:`.supervisor` (isolation invariants, and what it does *not* protect
  against, are in its docstring);
- ``nitro`` — the aws target (``nitro-cli``), not written yet.

Callers get the runtime of their workspace from :func:`runtime_for`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strongroom._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from strongroom.enclave.base import (
        EnclaveRuntime,
        EnclaveSpec,
        EnclaveStatus,
        StartResult,
        State,
    )
    from strongroom.workspace import Workspace


#: The interface's names on first use: :mod:`.endpoints` (what ``run`` needs) is
#: imported without them.
_INTERFACE = ("EnclaveRuntime", "EnclaveSpec", "EnclaveStatus", "StartResult", "State")
__getattr__ = lazy_attributes(__name__, dict.fromkeys(_INTERFACE, "base"))


def runtime_for(workspace: Workspace) -> EnclaveRuntime:
    """The enclave runtime of ``workspace``'s target."""
    from strongroom.errors import UsageError

    if workspace.config.target == "local":
        from strongroom.enclave.sandbox import SandboxRuntime

        return SandboxRuntime(workspace)
    raise UsageError(
        f"enclaves on the {workspace.config.target!r} target are not supported yet",
        hint="use a local workspace (`strongroom init`)",
    )


__all__ = [
    "EnclaveRuntime",
    "EnclaveSpec",
    "EnclaveStatus",
    "StartResult",
    "State",
    "runtime_for",
]
