"""`keys serve --listen` on another address than the configured one, with a real enclave.

The enclave reaches the key service only through its in-enclave forwarder and
the host's egress proxy, both pointed at the key service when they start. They
must be pointed where the key service really runs (its record: here a
*foreground* `keys serve --listen`), not at the workspace's ``keys.listen``;
and a run in an enclave started before the key service moved is refused on
the host with what to do, not with a 502 from inside the enclave.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.run_helpers import Stack, error_line

HELLO = 'import sys\nprint("hello from the enclave", *sys.argv[1:])\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve_in_foreground(stack: Stack, listen: str) -> subprocess.Popen[str]:
    serving = subprocess.Popen(
        stack.argv("keys", "serve", "--listen", listen),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert serving.stderr is not None
    line = serving.stderr.readline()
    assert line.startswith(f"key service listening on http://{listen}"), line
    return serving


def test_run_reaches_a_key_service_on_a_non_default_port() -> None:
    root = Path(tempfile.mkdtemp(prefix="sr-addr-", dir="/tmp"))  # short: socket paths
    stack = Stack(root)
    serving: subprocess.Popen[str] | None = None
    try:
        stack.cli("init")
        configured = stack.json("env", "--as", "host")["env"]["AWS_ENDPOINT_URL_KMS"]
        first = f"127.0.0.1:{_free_port()}"
        assert f"http://{first}" != configured
        serving = _serve_in_foreground(stack, first)

        # env, and everything below, find the foreground service
        assert stack.json("env", "--as", "vendor")["env"]["AWS_ENDPOINT_URL_KMS"] == (
            f"http://{first}"
        )
        assert stack.json("keys", "status")["endpoint"] == f"http://{first}"
        stack.cli("keys", "create", "--alias", "apps")
        image = root / "plain.eif"
        stack.cli("image", "build", "--key", "alias/apps", "-o", str(image))
        stack.cli("image", "approve", str(image), "--key", "alias/apps")
        app = root / "app"
        app.mkdir()
        (app / "hello.py").write_text(HELLO)
        sealed = root / "hello.sealed"
        stack.cli("seal", str(app), "--key", "alias/apps", "-o", str(sealed))

        stack.cli("enclave", "start", str(image), "--name", "addr")
        (status,) = stack.json("enclave", "status", "addr")
        assert status["Strongroom"]["addresses"]["key_service"] == first
        assert stack.json("proxy", "start")["allowlist"] == [first]
        run = ["run", "--enclave", "addr", str(sealed), "--entry", "hello.py", "--", "x"]
        assert stack.cli(*run).stdout == "hello from the enclave x\n"

        # the key service moves: the enclave (and the proxy) still point at the old address
        serving.terminate()
        serving.wait(10)
        serving = None
        moved = f"127.0.0.1:{_free_port()}"
        stack.cli("keys", "serve", "--detach", "--listen", moved)
        refused = stack.cli(*run, expect=6)
        assert error_line(refused.stderr) == (
            f"error: enclave 'addr' reaches the key service at {first}, but it runs at {moved}"
        )
        assert "strongroom enclave stop addr" in refused.stderr
        assert "strongroom proxy stop" in refused.stderr
        assert "hello" not in refused.stdout

        # what the hint says works: restart the enclave and the proxy
        stack.cli("enclave", "stop", "addr")
        stack.cli("proxy", "stop")
        stack.cli("enclave", "start", str(image), "--name", "addr")
        assert stack.json("proxy", "start")["allowlist"] == [moved]
        assert stack.cli(*run).stdout == "hello from the enclave x\n"
    finally:
        stack.close()
        stack.cli("enclave", "stop", "--all", expect=None)
        stack.cli("proxy", "stop", expect=None)
        stack.cli("keys", "stop", expect=None)
        if serving is not None:
            serving.terminate()
            serving.wait(10)
        shutil.rmtree(root, ignore_errors=True)
