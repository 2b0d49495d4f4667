"""Start moto's server (``python -m moto.server``) for the tests, with one S3 mistake corrected.

moto checks a bucket's policy on every object request (GET, PUT, DELETE of a
key), but it evaluates only the ``StringEquals`` condition operator and takes
a statement with any other operator as matching. Under the runbook's bucket
policy that turns ``DenyIncorrectEncryption`` (``StringNotEquals``) and
``DenyNonHTTPSReqs`` (``Bool``) into unconditional denials: unpatched moto
refuses every object request to a share, the host's correctly encrypted ones
included, which real S3 does not.

The one change here: a bucket-policy statement with a condition operator moto
cannot evaluate is left out of that check (it does not apply), instead of
applying without its condition. This removes a wrong refusal and adds no
enforcement: moto still decides nothing by the runbook's Deny statements or by
who the principal is (see ``tests/conftest.py``), and what the policies allow
is Strongroom's evaluator's to check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The condition operators moto's policy conditions implement (moto/iam/policy_conditions.py).
MOTO_CONDITION_OPERATORS = frozenset({"StringEquals"})
#: moto's account for any access key it did not issue.
DEFAULT_ACCOUNT = "123456789012"
READY_TIMEOUT = 30.0


def _evaluable(statement: dict[str, Any]) -> bool:
    return set(statement.get("Condition", {})) <= MOTO_CONDITION_OPERATORS


def _patch_bucket_policy_check() -> None:
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    def get_permission(self: FakeBucket, action: str, resource: str) -> PermissionResult:
        if self.policy is None:
            return PermissionResult.NEUTRAL
        policy = json.loads(self.policy)
        statements = policy.get("Statement", [])
        if isinstance(statements, dict):
            statements = [statements]
        policy["Statement"] = [s for s in statements if _evaluable(s)]
        result: PermissionResult = IAMPolicy(json.dumps(policy)).is_action_permitted(
            action, resource
        )
        return result

    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]


@dataclass
class MotoServer:
    process: subprocess.Popen[bytes]
    endpoint: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):  # noqa: S310
            return True
    except (urllib.error.URLError, OSError):
        return False


def start(log: Path, env: Mapping[str, str] | None = None) -> MotoServer:
    """Start this module as a moto server on a free port of 127.0.0.1; return once it answers.

    ``env`` adds to the environment (``INITIAL_NO_AUTH_ACTION_COUNT`` turns on
    moto's signature and IAM checks); ``MOTO_ACCOUNT_ID`` is never passed on,
    since it would put every request in one account.
    """
    environ = {k: v for k, v in os.environ.items() if k != "MOTO_ACCOUNT_ID"}
    environ.update(env or {})
    with log.open("ab") as out:
        for _ in range(3):  # another process may take the free port first
            port = _free_port()
            process = subprocess.Popen(
                [sys.executable, __file__, "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
            )
            endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + READY_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                if _answers(endpoint):
                    return MotoServer(process, endpoint)
                time.sleep(0.05)
            MotoServer(process, endpoint).stop()
    raise RuntimeError(f"moto did not start; its log: {log.read_text()[-2000:]}")


if __name__ == "__main__":
    from moto import server

    _patch_bucket_policy_check()
    server.main(sys.argv[1:])
