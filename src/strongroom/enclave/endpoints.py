"""Where to reach the running enclaves of a workspace, read from their records alone.

``strongroom run``, ``push``, ``pull``, ``ls``... only need the control
address (and the enclave's id and key-service forwarder) of a RUNNING
enclave. They read the record its supervisor keeps in ``run/enclaves/``
(:mod:`strongroom._internal.services`) here, without loading an enclave
runtime (its sandbox, limits and image machinery: ~12 ms of every such
command). What *RUNNING* means is the runtime's: the recorded state is
RUNNING and the recorded supervisor is still alive; ``enclave status`` gives
the full picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strongroom._internal import services
from strongroom.workspace import Workspace

#: The kind of service record an enclave's supervisor writes.
RECORD_KIND = "enclaves"


@dataclass(frozen=True)
class Endpoint:
    name: str
    #: Which start of the enclave this is (a restarted enclave has a new one).
    enclave_id: str
    #: ``control`` (the enclave API), ``key_service`` (where its forwarder leads), ...
    addresses: Mapping[str, str]


def running(ws: Workspace) -> list[Endpoint]:
    """The workspace's RUNNING enclaves, by name."""
    found = []
    for rec in services.list(ws.run_dir, RECORD_KIND):
        if rec.extra.get("state") == "RUNNING" and rec.is_alive() and "control" in rec.addresses:
            found.append(Endpoint(rec.name, str(rec.extra.get("enclave_id", "")), rec.addresses))
    return sorted(found, key=lambda e: e.name)
