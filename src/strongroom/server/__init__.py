"""The enclave side: what runs inside the enclave (the sandbox locally, a Nitro enclave on AWS).

Everything in this package runs inside the enclave and imports nothing
host-only (no workspace, no CLI, no host services): the enclave's code is
what the image measured, plus the interpreter the target provides.

Inside the local sandbox the channels are fixed paths, the same for every
enclave (:data:`ATTESTOR_SOCKET`, :data:`EGRESS_SOCKET`); the listening
control socket is handed over by the runtime as an inherited descriptor
(``--listen fd:N``). On Nitro the server binds its vsock port itself and the
attestor is ``/dev/nsm``.
"""

from __future__ import annotations

#: The local attestor (the NSM protocol, framed; see :mod:`strongroom.transport.framing`).
ATTESTOR_SOCKET = "/run/strongroom/attestor.sock"
#: The egress path: HTTP CONNECT, answered by the host's relay and egress proxy.
EGRESS_SOCKET = "/run/strongroom/egress.sock"
#: Where the runtime delegates the enclave a cgroup for one cgroup per run, when it can.
RUNS_CGROUP = "/run/strongroom/runs-cgroup"
#: Where the image is mounted, read-only; the vendor's packages are under it.
IMAGE_MOUNT = "/image"
APP_PACKAGES = f"{IMAGE_MOUNT}/app-packages"
#: Private, memory-backed: decrypted apps, one directory per run, wiped after it.
APPS_DIR = "/enclave/apps"
#: Memory-backed too: the only folder the host reaches (through the Files API).
SHARED_DIR = "/enclave/shared"
#: Written into the shared folder at start, as the AWS sample's server does.
BANNER_FILE = "from_server.txt"
BANNER_TEXT = "Enclave Server Initialised\n"
