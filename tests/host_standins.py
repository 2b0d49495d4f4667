"""STAND-INS for ``nitro-cli`` and ``systemctl``, because the real ones cannot run here.

This machine has no Nitro hardware, no Nitro Enclaves driver and no systemd
as init, so the real tools either are not installed or cannot answer. These
stand-ins are installed on a test's PATH (:func:`install`) in their place.
They are not simulations of Nitro: each checks its argv against the tool's
documented command line, refuses anything else as the real tool would
(usage error), and answers **only** with output recorded from the real tool,
from ``tests/assets`` (see its README); a command they have no recording for
fails loudly instead of inventing an answer.

- ``nitro-cli``: subcommands and options as documented in the AWS Nitro
  Enclaves User Guide's CLI reference and defined by aws-nitro-enclaves-cli's
  ``create_app!`` (``run-enclave``, ``describe-enclaves``, ``terminate-enclave``,
  ``console``, ``build-enclave``, ``describe-eif``, ``pcr``, ``explain``).
  Recorded: ``--version`` / ``-V`` (``nitro-cli-version.txt``: ``Nitro CLI 1.2.1``).
- ``systemctl``: only ``is-active UNIT``. ``STANDIN_SYSTEMCTL_STATE`` chooses
  the answer: a unit state systemctl(1) documents (``active``, ``inactive``,
  ``failed``, ...; printed alone, exit 0 for ``active`` and 3 otherwise, as
  systemctl does), or ``no-systemd``: what the real systemctl printed on this
  machine, which is not booted with systemd (``systemctl-no-systemd.txt``,
  exit 1).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
STATE_ENV = "STANDIN_SYSTEMCTL_STATE"

#: nitro-cli's subcommands → {option: takes a value}, from AWS's CLI reference.
NITRO_CLI_OPTIONS: dict[str, dict[str, bool]] = {
    "run-enclave": {
        "--enclave-name": True,
        "--cpu-count": True,
        "--cpu-ids": True,
        "--memory": True,
        "--eif-path": True,
        "--enclave-cid": True,
        "--debug-mode": False,
        "--attach-console": False,
        "--config": True,
    },
    "describe-enclaves": {"--metadata": False},
    "terminate-enclave": {"--enclave-id": True, "--enclave-name": True, "--all": False},
    "console": {"--enclave-id": True, "--enclave-name": True, "--disconnect-timeout": True},
    "build-enclave": {
        "--docker-uri": True,
        "--docker-dir": True,
        "--output-file": True,
        "--private-key": True,
        "--signing-certificate": True,
        "--name": True,
        "--version": True,
        "--metadata": True,
    },
    "describe-eif": {"--eif-path": True},
    "pcr": {"--input": True, "--signing-certificate": True},
    "explain": {"--error-code": True},
}
#: The unit states ``systemctl is-active`` prints (systemctl(1), "is-active PATTERN...").
UNIT_STATES = ("active", "inactive", "failed", "activating", "deactivating", "reloading")


def install(bin_dir: Path) -> Path:
    """Put ``nitro-cli`` and ``systemctl`` stand-ins into ``bin_dir``; return it."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("nitro-cli", "systemctl"):
        launcher = bin_dir / tool
        launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {tool} "$@"\n')
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _usage(tool: str, message: str) -> int:
    sys.stderr.write(f"{tool} (test stand-in): {message}\n")
    return 2


def nitro_cli(argv: list[str]) -> int:
    if argv in (["--version"], ["-V"]):
        sys.stdout.write((ASSETS / "nitro-cli-version.txt").read_text())
        return 0
    if not argv or argv[0] not in NITRO_CLI_OPTIONS:
        return _usage("nitro-cli", f"unknown subcommand {argv[:1]}")
    options = NITRO_CLI_OPTIONS[argv[0]]
    rest = argv[1:]
    while rest:
        option = rest.pop(0)
        if option not in options:
            return _usage("nitro-cli", f"{argv[0]} has no option {option!r}")
        if options[option] and (not rest or rest.pop(0).startswith("--")):
            return _usage("nitro-cli", f"{option} needs a value")
    sys.stderr.write(
        f"nitro-cli (test stand-in): no recorded output for `{argv[0]}`; a stand-in does not "
        "make one up\n"
    )
    return 1


def systemctl(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "is-active":
        return _usage("systemctl", f"only `is-active UNIT` is recorded, not {argv}")
    state = os.environ.get(STATE_ENV, "active")
    if state == "no-systemd":
        sys.stderr.write((ASSETS / "systemctl-no-systemd.txt").read_text())
        return 1
    if state not in UNIT_STATES:
        return _usage("systemctl", f"{STATE_ENV}={state!r} is not a unit state")
    sys.stdout.write(state + "\n")
    return 0 if state == "active" else 3


if __name__ == "__main__":
    tool, args = sys.argv[1], sys.argv[2:]
    sys.exit(nitro_cli(args) if tool == "nitro-cli" else systemctl(args))
