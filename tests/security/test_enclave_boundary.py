"""The enclave keeps each party's secrets: the review's attacks, against real enclaves.

One workspace for the module, driven through the console script as a user
types it: a real key service, one image that pins three keys (``alias/vendor``
for the victim vendor's app, ``alias/other`` for a hostile app, ``alias/debug``
for probes in a debug enclave), a production enclave ``e`` and a debug enclave
``d`` started from it, and the egress proxy. Every test plays one attacker —
the host, an app, a second vendor — asserts the attack fails, and checks the
legitimate use right next to it. The hostile apps are ordinary sealed apps,
run the ordinary way: whatever they learn, any vendor's code could learn.

Findings of the review these reproduce (docs/SECURITY.md has the threat model):
1 attestation oracle; 2 host-sealed package in the vendor's image; 3 apps read
the server's memory; 4 environment injection and any-file entries; 5 runs see
each other and outlive their run; 6 apps reach the egress channel; 7 filling
the shared filesystem, a fork bomb.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from strongroom.keys.audit import read_events
from strongroom.sealing import read_header
from strongroom.workspace import Workspace
from tests.e2e.run_helpers import ZERO_PCR0, Stack, error_line, make_tar, write_package

PROD, DEBUG = "e", "d"

#: The victim vendor's app: a secret in its folder, a run that waits to be told to stop.
VICTIM = {
    "hold.py": """\
import os, sys, time
flag = sys.argv[1]
print("ready", os.getcwd(), flush=True)
deadline = time.monotonic() + 600  # a guard against a lost flag, not a timing test
while not os.path.exists(flag):
    if time.monotonic() > deadline:
        sys.exit("never told to stop")
    time.sleep(0.05)
print("victim done", open("secret.txt").read() == os.environ["EXPECTED"], flush=True)
""",
    "hello.py": """\
import os, sys
print("hello", os.environ.get("GREETING", "-"), *sys.argv[1:])
""",
    "strongroom.toml": """\
entries = ["hold.py", "hello.py"]
env = ["GREETING", "EXPECTED"]
[resources]
processes = 32
""",
}

#: Runs inside a jail: everything an app could try against the server, its
#: channels and its neighbours; prints one JSON object.
PROBE = """\
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
me = os.getpid()
out = {"uid": os.getuid(), "pid": me, "root": sorted(os.listdir("/"))}
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["enclave"] = sorted(os.listdir("/enclave"))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
out["caps"] = status["CapEff"].strip(), status["CapBnd"].strip()
out["seccomp"] = status["Seccomp"].strip()
out["no_new_privs"] = status["NoNewPrivs"].strip()
out["oom_score_adj"] = open("/proc/self/oom_score_adj").read().strip()
def err(call):
    try:
        call()
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
out["ptrace"] = {}
for pid in range(1, 400):
    if pid != me and libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
        out["ptrace"][pid] = "ATTACHED"
out["ptrace_errno"] = errno.errorcode.get(ctypes.get_errno())
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(64)
local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 64)
remote = IoVec(ctypes.c_void_p(0x400000), 64)
libc.process_vm_readv.restype = ctypes.c_ssize_t
rv = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
out["process_vm_readv"] = errno.errorcode.get(ctypes.get_errno()) if rv < 0 else "READ"
out["mem"] = {str(p): err(lambda p=p: open(f"/proc/{p}/mem", "rb").read(1))
              for p in out["pids"] if p != me}
families = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "netlink": socket.AF_NETLINK,
            "packet": socket.AF_PACKET, "vsock": 40}
out["sockets"] = {n: err(lambda f=f: socket.socket(f, socket.SOCK_DGRAM if f == 16 else
                  socket.SOCK_STREAM).close()) for n, f in families.items()}
out["unix_pair"] = err(lambda: socket.socketpair())
paths = ["/run/strongroom/attestor.sock", "/run/strongroom/egress.sock", "/dev/nsm",
         "/enclave/apps", "/image/runtime", "/tmp/pycache", "/image/vendor"]
out["paths"] = {p: os.path.exists(p) for p in paths}
out["unshare_user"] = errno.errorcode.get(ctypes.get_errno()) if libc.unshare(0x10000000) else "OK"
out["mount"] = errno.errorcode.get(ctypes.get_errno()) if libc.mount(b"none", b"/tmp", b"tmpfs",
                                                                     0, None) else "OK"
keyctl = 250 if os.uname().machine == "x86_64" else 219
out["keyctl"] = errno.errorcode.get(ctypes.get_errno()) if libc.syscall(keyctl, 0, 0) < 0 else "OK"
out["sysctl"] = err(lambda: open("/proc/sys/kernel/core_pattern", "w").write("|/tmp/x"))
out["sysrq"] = err(lambda: open("/proc/sysrq-trigger", "w").write("h"))
out["env"] = sorted(os.environ)
out["isolated"] = sys.flags.isolated
print(json.dumps(out))
"""

#: Searches everything it can read for the strings it is given; prints where it found them.
SCAN = """\
import json, os, sys
needles = [n.encode() for n in sys.argv[1:]]
found = []
skip = ("/proc", "/sys", "/usr", "/dev")
for top in sorted(os.listdir("/")):
    top = "/" + top
    if top.startswith(skip) or os.path.islink(top):
        continue
    for d, dirs, files in os.walk(top):
        for f in files:
            path = os.path.join(d, f)
            try:
                with open(path, "rb") as fh:
                    data = fh.read(4 << 20)
            except OSError:
                continue
            found += [path for n in needles if n in data]
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        for name in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{pid}/{name}", "rb").read()
            except OSError:
                continue
            found += [f"/proc/{pid}/{name}" for n in needles if n in data]
print(json.dumps({"found": found}))
"""

#: The hostile app: one entry per attack.
HOSTILE = {
    "probe.py": PROBE,
    "scan.py": SCAN,
    # another run's folder, by every name it could have
    "peek.py": """\
import glob, json, os
seen = sorted(glob.glob("/enclave/*")) + sorted(glob.glob("/enclave/*/*"))
print(json.dumps({"seen": seen, "procs": sorted(p for p in os.listdir("/proc") if p.isdigit())}))
""",
    # a daemon that tries to outlive its run and watch the next one
    "daemon.py": """\
import os, sys, time
out = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(2)
        with open(out, "w") as f:
            f.write("the daemon outlived its run")
        os._exit(0)
    os._exit(0)
print("parent leaves", flush=True)
""",
    # fills a folder until the filesystem says no
    "fill.py": """\
import errno, json, os, sys
where = {"shared": "/enclave/shared/fill/big", "tmp": "/tmp/big", "app": "fill/big"}
path, written, chunk = where[sys.argv[1]], 0, b"x" * (1 << 20)
os.makedirs(os.path.dirname(path), exist_ok=True)
try:
    with open(path, "wb") as f:
        while True:
            f.write(chunk)
            f.flush()
            written += len(chunk)
except OSError as e:
    print(json.dumps({"errno": errno.errorcode.get(e.errno), "mib": written >> 20}), flush=True)
os.remove(path)
""",
    # forks until refused, then waits to be killed
    "bomb.py": """\
import json, os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as e:
    print(json.dumps({"children": children, "error": e.strerror}), flush=True)
time.sleep(60)
""",
    "strongroom.toml": """\
entries = ["probe.py", "scan.py", "peek.py", "daemon.py", "fill.py", "bomb.py"]
env = ["ALLOWED"]
[resources]
processes = 48
""",
}


@dataclass
class Hostile:
    stack: Stack
    ws: Workspace
    image: Path
    pcr0: str
    victim: Path  # the victim vendor's package, under alias/vendor
    hostile: Path  # the hostile app, under alias/other
    hostile_debug: Path  # the same, under alias/debug (for the debug enclave)
    secret: str  # in the victim's secret.txt only
    work: Path

    def cli(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        return self.stack.cli(*args, expect=expect)

    def run(
        self,
        package: Path,
        entry: str,
        *args: str,
        enclave: str = PROD,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        expect: int | None = 0,
    ) -> subprocess.CompletedProcess[str]:
        extra = [f"--env={k}={v}" for k, v in (env or {}).items()]
        if timeout is not None:
            extra += ["--timeout", str(timeout)]
        argv = ["run", "--enclave", enclave, str(package), "--entry", entry, *extra, "--", *args]
        return self.cli(*argv, expect=expect)

    def run_json(self, package: Path, entry: str, *args: str, **kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.run(package, entry, *args, **kw).stdout)
        return result


def _seal(stack: Stack, root: Path, name: str, files: dict[str, str], key: str) -> Path:
    app = root / name
    if not app.exists():
        app.mkdir()
        for file, text in files.items():
            (app / file).write_text(text)
    package = root / f"{name}-{key.split('/')[-1]}.sealed"
    stack.cli("seal", str(app), "--key", key, "-o", str(package))
    return package


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    root = Path(tempfile.mkdtemp(prefix="sr-sec-", dir="/tmp"))  # short: socket paths
    stack = Stack(root)
    try:
        stack.cli("init")
        stack.cli("keys", "serve", "--detach")
        for alias in ("vendor", "other", "debug"):  # two vendors' keys, and one for probes
            stack.cli("keys", "create", "--alias", alias)
        image = root / "shared.eif"
        pins = [
            arg for alias in ("vendor", "other", "debug") for arg in ("--key", f"alias/{alias}")
        ]
        built = stack.json("image", "build", *pins, "-o", str(image))
        pcr0 = built["Measurements"]["PCR0"]
        for alias in ("vendor", "other"):
            stack.cli("image", "approve", str(image), "--key", f"alias/{alias}")
        stack.cli("image", "approve", "--pcr0", ZERO_PCR0, "--key", "alias/debug")
        secret = f"vendor-secret-{secrets.token_hex(16)}"
        victim = _seal(stack, root, "victim", {**VICTIM, "secret.txt": secret}, "alias/vendor")
        hostile_app = _seal(stack, root, "hostile", HOSTILE, "alias/other")
        hostile_debug = _seal(stack, root, "hostile", HOSTILE, "alias/debug")
        memory = ["--memory", "512"]
        stack.start_enclaves(image, {PROD: memory, DEBUG: [*memory, "--debug"]})
        stack.cli("proxy", "start")
        work = root / "work"
        work.mkdir()
        yield Hostile(
            stack,
            Workspace.locate(stack.home),
            image,
            pcr0,
            victim,
            hostile_app,
            hostile_debug,
            secret,
            work,
        )
    finally:
        stack.close()
        stack.cli("enclave", "stop", "--all", expect=None)
        stack.cli("proxy", "stop", expect=None)
        stack.cli("keys", "stop", expect=None)
        shutil.rmtree(root, ignore_errors=True)


def _kms(h: Hostile, identity: str) -> Any:
    ident = h.ws.identity(identity)
    endpoint = h.stack.json("keys", "status")["endpoint"]
    return boto3.session.Session().client(
        "kms",
        region_name=h.ws.config.region,
        endpoint_url=endpoint,
        aws_access_key_id=ident.access_key_id,
        aws_secret_access_key=ident.secret_access_key,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


# --- 1. the attestation endpoint is no oracle ------------------------------------------


def test_the_host_cannot_get_an_attestation_over_its_own_key(hostile: Hostile) -> None:
    host_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = host_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    api = hostile.stack.api(PROD)
    nonce = os.urandom(32).hex()
    for field, value in (("public_key", spki.hex()), ("user_data", "00" * 32)):
        refused = api.post("/v1/attestation", json={"nonce": nonce, field: value})
        assert refused.status_code == 400 and field in refused.json()["message"]
    # What it does get binds the enclave's own EC key: KMS will not seal to it.
    document = api.post("/v1/attestation", json={"nonce": nonce}).json()["document"]
    with hostile.victim.open("rb") as stream:
        header = read_header(stream)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        _kms(hostile, "host").decrypt(
            CiphertextBlob=header.encrypted_data_key,
            KeyId=header.key_id,
            Recipient={
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                "AttestationDocument": base64.b64decode(document),
            },
        )
    assert excinfo.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "RSA" in excinfo.value.response["Error"]["Message"]
    # the legitimate use: the host verifies what the enclave runs
    attested = hostile.cli("attest", "--enclave", PROD, "--image", str(hostile.image))
    assert "verified" in attested.stdout


# --- 2. key release is bound to the vendor, not only to the image -----------------------


def test_a_host_sealed_package_never_runs_in_the_vendor_image(hostile: Hostile) -> None:
    """The host makes a key of its own, approves the vendor's image for it (so the key
    service would release it), seals an app under it and runs it in the vendor's image."""
    h = hostile
    h.cli("keys", "create", "--alias", "host-app", "--as", "host")
    h.cli("image", "approve", str(h.image), "--key", "alias/host-app", "--as", "host")
    evil = h.work / "evil"
    evil.mkdir()
    (evil / "evil.py").write_text("print('host code in the vendor image')\n")
    package = h.work / "evil.sealed"
    h.cli("seal", str(evil), "--key", "alias/host-app", "--as", "host", "-o", str(package))
    before = len(list(read_events(h.ws.audit_log)))
    refused = h.run(package, "evil.py", expect=5)
    line = error_line(refused.stderr)
    assert "which this enclave image does not pin" in line
    assert "host code" not in refused.stdout
    # refused before any key release: the key service saw no Decrypt for it
    events = list(read_events(h.ws.audit_log))[before:]
    assert not [e for e in events if e.get("operation") == "Decrypt"], events
    # the vendor's own package runs in the same image
    assert "hello -" in h.run(h.victim, "hello.py").stdout


def test_a_header_that_lies_about_its_key_gets_no_key(hostile: Hostile) -> None:
    """The host copies the vendor's key id into a header whose data key is its own:
    the server names the pinned key in Decrypt, and the key service refuses the blob."""
    h = hostile
    with h.victim.open("rb") as stream:
        vendor_key = read_header(stream).key_id
    kms = _kms(h, "host")
    if "alias/host-lies" not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}:
        h.cli("keys", "create", "--alias", "host-lies", "--as", "host")
    h.cli("image", "approve", str(h.image), "--key", "alias/host-lies", "--as", "host")
    data_key = kms.generate_data_key(KeyId="alias/host-lies", KeySpec="AES_256")
    package = write_package(
        h.work / "lying.sealed",
        vendor_key,
        data_key["CiphertextBlob"],
        data_key["Plaintext"],
        make_tar(("file", "evil.py", b"print('forged')\n")),
    )
    refused = h.run(package, "evil.py", expect=None)
    assert refused.returncode != 0 and "forged" not in refused.stdout
    assert "another key" in error_line(refused.stderr) or "IncorrectKey" in refused.stderr


# --- 3 and 6. an app has no authority -----------------------------------------------------


def test_an_app_reaches_neither_the_server_nor_its_channels(hostile: Hostile) -> None:
    probe = hostile.run_json(hostile.hostile, "probe.py")
    assert probe["uid"] == 1000 and probe["pid"] == 1  # PID 1 of a namespace of its own
    assert probe["pids"] == [1]  # no server, no other run, nothing else to see
    assert probe["ptrace"] == {} and probe["ptrace_errno"] in ("EPERM", "ESRCH")
    assert probe["process_vm_readv"] in ("EPERM", "ESRCH")
    assert probe["mem"] == {}
    assert probe["caps"] == ["0000000000000000", "0000000000000000"]
    assert probe["seccomp"] == "2" and probe["no_new_privs"] == "1"
    assert int(probe["oom_score_adj"]) == 1000  # the kernel kills the app before the server
    assert probe["sockets"] == dict.fromkeys(
        ("inet", "inet6", "netlink", "packet", "vsock"), "EAFNOSUPPORT"
    )
    assert probe["unix_pair"] == "OK"  # what multiprocessing needs still works
    assert not any(probe["paths"].values()), probe["paths"]  # attestor, egress, NSM, server files
    assert probe["enclave"] == ["app", "shared"]
    assert probe["unshare_user"] == "EPERM" and probe["mount"] == "EPERM"
    assert probe["keyctl"] == "EPERM"
    refused = ("EROFS", "EACCES", "ENOENT")
    assert probe["sysctl"] in refused and probe["sysrq"] in refused
    assert probe["isolated"] == 1
    assert set(probe["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG"}


def test_an_app_finds_no_secret_of_the_host_or_of_another_vendor(hostile: Hostile) -> None:
    h = hostile
    host = h.ws.identity("host")
    flag = "/victim/stop"
    # while the victim vendor's app runs, with its secret decrypted in the same enclave
    with h.stack.live(
        "run", "--enclave", PROD, str(h.victim), "--entry", "hold.py",
        f"--env=EXPECTED={h.secret}", "--", flag,
    ) as victim:  # fmt: skip
        victim.wait_for("ready")
        needles = [host.secret_access_key, h.secret, host.access_key_id]
        scan = h.run_json(h.hostile, "scan.py", *needles)
        peek = h.run_json(h.hostile, "peek.py")
        h.cli("push", "--enclave", PROD, str(h.image.parent / "victim" / "hello.py"), flag)
        assert victim.wait(timeout=600) == 0, (victim.out, victim.err)
    # The scan's own arguments hold the needles: its own /proc entries are skipped.
    assert scan["found"] == [], scan
    assert not any(p.startswith("/enclave/apps") for p in peek["seen"]), peek
    assert not any(p.endswith(("hold.py", "secret.txt")) for p in peek["seen"]), peek
    assert "victim done True" in victim.out


# --- 4. the host cannot inject code into the vendor's run --------------------------------


@pytest.mark.parametrize(
    "variable",
    ["LD_PRELOAD=/enclave/shared/evil.so", "PYTHONSTARTUP=/enclave/shared/x.py", "PATH=/x",
     "PYTHONWARNINGS=ignore", "BROWSER=/x", "NOT_DECLARED=1"],
)  # fmt: skip
def test_the_host_sets_only_the_variables_the_manifest_names(
    hostile: Hostile, variable: str
) -> None:
    refused = hostile.run(hostile.victim, "hello.py", env=dict([variable.split("=", 1)]), expect=2)
    assert "manifest does not let the host set" in error_line(refused.stderr)
    assert "hello" not in refused.stdout
    allowed = hostile.run(hostile.victim, "hello.py", env={"GREETING": "hi"})
    assert allowed.stdout.startswith("hello hi")


def test_the_host_runs_only_the_entries_the_manifest_names(hostile: Hostile) -> None:
    h = hostile
    for entry in ("secret.txt", "hold.py/../secret.txt", "../../x.py", "other.py"):
        refused = h.run(h.victim, entry, expect=7)
        assert f"the app has no entry {entry!r}" in error_line(refused.stderr)
    # A module the host plants where a careless interpreter would look is never imported.
    planted = h.work / "sitecustomize.py"
    planted.write_text("print('HOST CODE RAN')\n")
    for folder in ("/", "/usr-lib/"):
        h.cli("push", "--enclave", PROD, str(planted), folder)
    ran = h.run(h.victim, "hello.py", "/sitecustomize.py")
    assert "HOST CODE RAN" not in ran.stdout + ran.stderr
    assert ran.stdout.startswith("hello -")


def test_a_package_without_a_manifest_takes_no_environment(hostile: Hostile) -> None:
    h = hostile
    bare = h.work / "bare"
    bare.mkdir(exist_ok=True)
    (bare / "main.py").write_text("import os; print(sorted(os.environ))\n")
    package = h.work / "bare.sealed"
    h.cli("seal", str(bare), "--key", "alias/vendor", "-o", str(package))
    refused = h.run(package, "main.py", env={"ANYTHING": "1"}, expect=2)
    assert "has no manifest" in error_line(refused.stderr)
    names = json.loads(h.run(package, "main.py").stdout.replace("'", '"'))
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG"}


def test_an_edited_manifest_stops_the_run(hostile: Hostile) -> None:
    """The host rewrites the manifest in the header to allow a variable of its own: the
    edit is well formed, but every chunk authenticates the header, so nothing of the app
    is extracted, let alone run."""
    h = hostile
    data = bytearray(h.victim.read_bytes())
    at = data.index(b'"GREETING"')
    data[at : at + 10] = b'"GREETINX"'
    edited = h.work / "edited.sealed"
    edited.write_bytes(bytes(data))
    refused = h.run(edited, "hello.py", env={"GREETINX": "injected"}, expect=4)
    assert "failed authentication" in error_line(refused.stderr)
    assert "hello" not in refused.stdout


# --- 5. runs are isolated and end completely ---------------------------------------------


def test_a_daemon_does_not_outlive_its_run(hostile: Hostile) -> None:
    h = hostile
    out = "/daemon/outlived"
    h.cli("push", "--enclave", DEBUG, str(h.image.parent / "hostile" / "probe.py"), "/daemon/")
    ran = h.run(h.hostile_debug, "daemon.py", out, enclave=DEBUG)
    assert "parent leaves" in ran.stdout
    time.sleep(3)  # the daemon would have written by now
    listing = h.stack.json("ls", "--enclave", DEBUG, "/daemon")
    assert [e["path"] for e in listing] == ["/daemon/probe.py"]
    wiped = h.stack.wait_wiped(DEBUG)
    assert wiped["apps"] == [] and wiped["procs"] == []


def test_concurrent_runs_do_not_see_each_other(hostile: Hostile) -> None:
    h = hostile
    flag = "/concurrent/stop"
    with h.stack.live(
        "run", "--enclave", PROD, str(h.victim), "--entry", "hold.py",
        f"--env=EXPECTED={h.secret}", "--", flag,
    ) as victim:  # fmt: skip
        victim.wait_for("ready")
        peek = h.run_json(h.hostile, "peek.py")
        probe = h.run_json(h.hostile, "probe.py")
        h.cli("push", "--enclave", PROD, str(h.image.parent / "victim" / "hello.py"), flag)
        assert victim.wait(timeout=600) == 0, (victim.out, victim.err)
    assert not any(p.startswith("/enclave/apps") for p in peek["seen"]), peek
    assert peek["procs"] == ["1"] and probe["pids"] == [1]
    assert "victim done True" in victim.out


# --- 7. bounded resources ------------------------------------------------------------------


def test_filling_a_filesystem_gives_the_writer_enospc_not_the_server(hostile: Hostile) -> None:
    h = hostile
    for target in ("shared", "tmp", "app"):
        filled = h.run_json(h.hostile, "fill.py", target)
        assert filled["errno"] == "ENOSPC" and 0 < filled["mib"] < 512, (target, filled)
        assert h.stack.api(PROD).get("/v1/describe").status_code == 200
    # and the host can still use the shared folder
    h.cli("push", "--enclave", PROD, str(h.image.parent / "victim" / "hello.py"), "/after-fill/")
    assert h.run(h.victim, "hello.py").stdout.startswith("hello -")


def test_a_fork_bomb_is_bounded_and_ends_with_its_run(hostile: Hostile) -> None:
    h = hostile
    bombed = h.run(h.hostile_debug, "bomb.py", enclave=DEBUG, expect=124, timeout=8)
    result = json.loads(bombed.stdout.splitlines()[0])
    # at most what the manifest allows (48 tasks: its own process limit, kept by the
    # run's cgroup, or RLIMIT_NPROC where the host user is not root)
    assert 0 < result["children"] < 48 and "temporarily unavailable" in result["error"]
    assert h.stack.api(DEBUG).get("/v1/describe").status_code == 200
    wiped = h.stack.wait_wiped(DEBUG, timeout=10)
    assert wiped["procs"] == [] and wiped["apps"] == []
    assert h.run(h.hostile_debug, "peek.py", enclave=DEBUG).returncode == 0


# --- the sandbox holds against a hostile image ----------------------------------------------


def test_the_enclave_server_cannot_make_the_host_s_files_writable(hostile: Hostile) -> None:
    """The image's code is the vendor's. With the capabilities it has inside the
    sandbox, it still cannot remount the host's read-only binds, uncover /proc or
    write a sysctl: the enclave's init locked every mount before it started."""
    probe = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "MS_REMOUNT, MS_BIND, MS_RDONLY = 32, 4096, 1\n"
        "for path in ['/usr', '/image', '/proc/sys', '/', '/run/strongroom/proc']:\n"
        "    rc = libc.mount(None, path.encode(), None, MS_REMOUNT | MS_BIND, None)\n"
        "    print(path, 'REMOUNTED' if rc == 0 else os.strerror(ctypes.get_errno()))\n"
        "rc = libc.umount2(b'/proc/sys', 2)\n"
        "print('umount', 'UNMOUNTED' if rc == 0 else os.strerror(ctypes.get_errno()))\n"
        "rc = libc.mount(b'proc', b'/tmp', b'proc', 0, None)\n"
        "print('rw proc', 'MOUNTED' if rc == 0 else os.strerror(ctypes.get_errno()))\n"
    )
    api = hostile.stack.api(DEBUG)
    result = api.post("/v1/debug/exec", json={"argv": ["python3", "-c", probe]}).json()
    assert result["exit_code"] == 0, result
    assert not any(w in result["stdout"] for w in ("REMOUNTED", "UNMOUNTED", "MOUNTED")), result


# --- 6. egress: only what the manifest declares and the host allows -------------------------

FETCH = """\
import http.client, json, os, socket, sys
port, other = int(sys.argv[1]), int(sys.argv[2])
out = {"proxy": os.environ.get("HTTPS_PROXY")}
def fetch(destination):
    conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    conn.set_tunnel("127.0.0.1", destination)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    except OSError as e:
        return f"refused: {e}"
out["declared"] = fetch(port)
out["undeclared"] = fetch(other)
try:  # around the proxy: the jail's loopback is all there is
    socket.create_connection(("127.0.0.1", port), timeout=3)
    out["direct"] = "OPEN"
except OSError as e:
    out["direct"] = type(e).__name__
print(json.dumps(out))
"""


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"reached the host's service"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _sealed_app(h: Hostile, name: str, files: dict[str, str]) -> Path:
    return _seal(h.stack, h.work, name, files, "alias/other")


def test_an_app_reaches_only_the_egress_its_manifest_declares_and_the_host_allows(
    hostile: Hostile,
) -> None:
    h = hostile
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        manifest = f'entries = ["fetch.py"]\negress = ["127.0.0.1:{port}"]\n'
        package = _sealed_app(h, "fetcher", {"fetch.py": FETCH, "strongroom.toml": manifest})
        # the host has not allowed it: the run stops before the key is released
        refused = h.run(package, "fetch.py", str(port), "1", expect=5)
        assert f"needs egress to 127.0.0.1:{port}" in error_line(refused.stderr)
        assert f"--allow 127.0.0.1:{port}" in refused.stderr
        h.cli("proxy", "stop")
        h.cli("proxy", "start", "--allow", "kms", "--allow", f"127.0.0.1:{port}")
        fetched = json.loads(h.run(package, "fetch.py", str(port), str(port + 1)).stdout)
        assert fetched["proxy"] == "http://127.0.0.1:3128"
        assert fetched["declared"] == "reached the host's service"
        assert "403" in fetched["undeclared"]  # not in the manifest, whatever the host allows
        assert fetched["direct"] == "ConnectionRefusedError"
        # an app without declared egress still has no network of any kind
        probe = h.run_json(h.hostile, "probe.py")
        assert probe["sockets"]["inet"] == "EAFNOSUPPORT"
    finally:
        server.shutdown()
        h.cli("proxy", "stop", expect=None)
        h.cli("proxy", "start")


def test_the_key_service_channel_is_never_an_app_s(hostile: Hostile) -> None:
    h = hostile
    kms = h.ws.config.kms_listen
    manifest = f'entries = ["fetch.py"]\negress = ["{kms}"]\n'
    package = _sealed_app(h, "kms-fetcher", {"fetch.py": FETCH, "strongroom.toml": manifest})
    refused = h.run(package, "fetch.py", "1", "1", expect=5)
    assert "the key service's address" in error_line(refused.stderr)


def test_a_run_needs_the_memory_its_manifest_asks_for(hostile: Hostile) -> None:
    h = hostile
    manifest = 'entries = ["main.py"]\n[resources]\nmemory_mib = 4096\n'
    package = _sealed_app(h, "big", {"main.py": "print('ran')\n", "strongroom.toml": manifest})
    refused = h.run(package, "main.py", expect=2)
    assert "needs 4096 MiB" in error_line(refused.stderr) and "ran" not in refused.stdout
    assert "--memory 4096" in refused.stderr
