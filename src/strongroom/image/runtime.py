"""The runtime descriptor: what the "kernel" section of a local image holds.

A Nitro image boots its own kernel; a local image runs on the host's Python
interpreter and standard library, the way a Nitro enclave runs on the
hypervisor. The interpreter is therefore *outside* the measurement, and the
kernel section instead holds a small canonical JSON document naming the
interpreter ABI the measured packages were built for. The sandbox refuses an
image whose ABI differs from the host's (compiled extensions would not load, or
worse, would load against the wrong interpreter).

The command line section holds :data:`ENTRYPOINT`, the command the sandbox runs.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from dataclasses import dataclass

import strongroom
from strongroom.image.errors import ImageFormatError

LOCAL_RUNTIME_KIND = "strongroom-local-runtime"
ENTRYPOINT = "python -m strongroom.server"
#: A descriptor is a few dozen bytes; anything much larger is not one of ours.
MAX_DESCRIPTOR_SIZE = 4096
_FIELDS = frozenset({"kind", "python", "abi", "strongroom"})
_IMPLEMENTATION_TAGS = {"cpython": "cp", "pypy": "pp"}


def host_python() -> str:
    """``major.minor`` of the running interpreter, e.g. ``"3.11"``."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def host_abi() -> str:
    """Interpreter and platform tag of this host, e.g. ``"cp311-linux_x86_64"``.

    Built like a wheel's ``{python tag}{abi flags}-{platform tag}``: the pair
    that decides whether installed compiled extensions can be imported.
    """
    implementation = sys.implementation.name
    tag = _IMPLEMENTATION_TAGS.get(implementation, implementation)
    interpreter = f"{tag}{sys.version_info.major}{sys.version_info.minor}{sys.abiflags}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{interpreter}-{platform}"


@dataclass(frozen=True)
class RuntimeDescriptor:
    """The runtime a local image was built for."""

    python: str
    abi: str
    strongroom: str

    @classmethod
    def for_host(cls) -> RuntimeDescriptor:
        return cls(python=host_python(), abi=host_abi(), strongroom=strongroom.__version__)

    def to_json(self) -> dict[str, str]:
        return {
            "kind": LOCAL_RUNTIME_KIND,
            "python": self.python,
            "abi": self.abi,
            "strongroom": self.strongroom,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): the bytes that are measured."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes) -> RuntimeDescriptor | None:
        """The descriptor in a kernel section, or None if it is not one (a real kernel).

        A section that claims to be a local runtime descriptor but is malformed
        is an error, not "some other kernel".
        """
        if not data.startswith(b"{"):
            return None
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(value, dict) or value.get("kind") != LOCAL_RUNTIME_KIND:
            return None
        if set(value) != _FIELDS or not all(isinstance(v, str) for v in value.values()):
            raise ImageFormatError(
                f"malformed runtime descriptor: expected exactly the string fields "
                f"{', '.join(sorted(_FIELDS))}"
            )
        return cls(python=value["python"], abi=value["abi"], strongroom=value["strongroom"])
