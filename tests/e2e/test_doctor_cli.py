"""``strongroom doctor`` as a user types it: a healthy setup passes, each misconfiguration is found.

Real servers only: moto in server mode (``tests/moto_s3.py``: STS, IAM and KMS,
two accounts) for the aws checks, the workspace's own ``keys serve`` for the
local ones. The Nitro host is a directory (``STRONGROOM_DOCTOR_ROOT``) holding
``dev/nitro_enclaves``, ``etc/nitro_enclaves/allocator.yaml`` and the CPU pool
under ``sys/``; ``nitro-cli`` and ``systemctl`` on PATH are the stand-ins of
``tests/host_standins.py`` (the real ones cannot run here), which answer with
recorded real output only.

Each aws test starts from a healthy host and key and breaks one thing, then
checks that exactly that check fails and that doctor exits 8.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from strongroom.image.measure import measure_image
from tests.conftest import AwsProfiles
from tests.e2e.conftest import STRONGROOM, Cli
from tests.host_standins import STATE_ENV, install
from tests.storage_samples import tiny_image

EXIT_CHECK_FAILED = 8
DEBUG_PCR0 = "0" * 96
HOST_ROLE_PROFILE = "hostrole"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def key_policy(
    vendor: str, host: str, approved: list[str], *, host_actions: object = "kms:Decrypt"
) -> str:
    """The runbook's key policy with explicit denies: what a healthy vendor key looks like."""
    hosts = {"AWS": f"arn:aws:iam::{host}:root"}
    gate = {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": approved}}
    statements = [
        {
            "Sid": "EnableOwnerAccess",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{vendor}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "AllowEnclaveDecrypt",
            "Effect": "Allow",
            "Principal": hosts,
            "Action": host_actions,
            "Resource": "*",
        },
        {
            "Sid": "DenyDecryptUnlessApprovedImage",
            "Effect": "Deny",
            "Principal": hosts,
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": gate,
        },
    ]
    if host_actions == "kms:Decrypt":
        statements.append(
            {
                "Sid": "DenyHostKeyEscapes",
                "Effect": "Deny",
                "Principal": hosts,
                "Action": ["kms:ReEncrypt*", "kms:CreateGrant"],
                "Resource": "*",
            }
        )
    return policy(*statements)


def decrypt_only(resource: str) -> str:
    return policy(
        {"Sid": "EnclaveDecrypt", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": resource}
    )


class NitroHost:
    """A Nitro host's files under one directory, the stand-in tools on PATH."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.device = root / "dev" / "nitro_enclaves"
        self.allocator = root / "etc" / "nitro_enclaves" / "allocator.yaml"
        self.cpu_pool = root / "sys" / "module" / "nitro_enclaves" / "parameters" / "ne_cpus"
        for path in (self.device, self.allocator, self.cpu_pool):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.device.touch()
        self.allocate(memory_mib=2048, cpus=2)
        self.cpu_pool.write_text("1,3\n")
        self.bin = install(root / "bin")
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "STRONGROOM_DOCTOR_ROOT": str(root),
            STATE_ENV: "active",
        }

    def allocate(self, *, memory_mib: int, cpus: int) -> None:
        """The allocator.yaml the runbook's step 3.3 edits (the keys the package's file has)."""
        self.allocator.write_text(
            f"---\n# Enclave configuration file.\nmemory_mib: {memory_mib}\ncpu_count: {cpus}\n"
        )


class Setting:
    """The two accounts on moto, a vendor key, a host instance role, and doctor to run."""

    def __init__(self, profiles: AwsProfiles, tmp_path: Path) -> None:
        self.profiles = profiles
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.host = NitroHost(tmp_path / "nitro-host")
        self.image = tiny_image(self.work / "app.eif")
        self.pcr0 = measure_image(self.image).pcr0
        self.vendor_kms = self.client("kms", profiles.vendor)
        self.credentials = Path(profiles.env["AWS_SHARED_CREDENTIALS_FILE"])
        self.config = Path(profiles.env["AWS_CONFIG_FILE"])
        #: the two accounts' profiles; ``hostrole`` is written after them, anew for each role
        self.base = (self.credentials.read_text(), self.config.read_text())

    def client(self, service: str, profile: str) -> Any:
        session = boto3.session.Session(profile_name=profile, region_name=self.profiles.region)
        return session.client(service, endpoint_url=self.profiles.endpoint)

    def key(self, key_policy_text: str) -> str:
        made = self.vendor_kms.create_key(Policy=key_policy_text, Description="vendor key")
        return str(made["KeyMetadata"]["Arn"])

    def healthy_key(self) -> str:
        p = self.profiles
        return self.key(key_policy(p.vendor_account, p.host_account, [self.pcr0]))

    def host_role(self, inline: dict[str, str], managed: dict[str, str] | None = None) -> str:
        """An instance role with these policies; its session becomes the profile ``hostrole``."""
        iam = self.client("iam", self.profiles.host)
        name = f"enclave-host-{uuid.uuid4().hex[:8]}"
        trust = policy(
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        )
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]
        for policy_name, document in inline.items():
            iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=document)
        for policy_name, document in (managed or {}).items():
            made = iam.create_policy(PolicyName=f"{policy_name}-{name}", PolicyDocument=document)
            iam.attach_role_policy(RoleName=name, PolicyArn=made["Policy"]["Arn"])
        issued = self.client("sts", self.profiles.host).assume_role(
            RoleArn=role["Arn"], RoleSessionName="i-0123456789abcdef0"
        )["Credentials"]
        self.credentials.write_text(
            self.base[0] + f"[{HOST_ROLE_PROFILE}]\naws_access_key_id = {issued['AccessKeyId']}\n"
            f"aws_secret_access_key = {issued['SecretAccessKey']}\n"
            f"aws_session_token = {issued['SessionToken']}\n"
        )
        self.config.write_text(
            self.base[1] + f"[profile {HOST_ROLE_PROFILE}]\nregion = {self.profiles.region}\n"
        )
        return name

    def doctor(
        self, profile: str, *args: str, expect: int, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STRONGROOM"))}
        environ.update(self.profiles.env)
        environ.update(self.host.env)
        environ.update(env or {})
        argv = [STRONGROOM, "doctor", *args, "--profile", profile]
        argv += ["--endpoint-url", self.profiles.endpoint]
        result = subprocess.run(
            argv, capture_output=True, text=True, env=environ, cwd=self.work, timeout=120
        )
        assert result.returncode == expect, f"{args}: {result.stdout}{result.stderr}"
        return result

    def findings(self, profile: str, *args: str, expect: int, **kw: Any) -> dict[str, Any]:
        report = json.loads(self.doctor(profile, *args, "--json", expect=expect, **kw).stdout)
        return {f["check"]: f for f in report["findings"]}

    def host_findings(self, key: str, *extra: str, expect: int, **kw: Any) -> dict[str, Any]:
        """doctor on the enclave host, as the instance role, as runbook 3.3-4.3 would run it."""
        args = ["--host", "--key", key, "--image", str(self.image), "--memory", "512"]
        return self.findings(HOST_ROLE_PROFILE, *args, "--cpus", "2", *extra, expect=expect, **kw)


@pytest.fixture
def setting(aws_profiles: AwsProfiles, tmp_path: Path) -> Setting:
    return Setting(aws_profiles, tmp_path)


def statuses(findings: dict[str, Any]) -> dict[str, str]:
    return {name: finding["status"] for name, finding in findings.items()}


HEALTHY_HOST = {
    "workspace": "warn",  # no workspace here: the host checks need none
    "nitro-device": "ok",
    "nitro-cli": "ok",
    "allocator": "ok",
    "allocator-service": "ok",
    "instance-role": "ok",
    # the host cannot read the vendor's key policy: KMS serves it to the key's account only
    "key-policy": "warn",
}
HEALTHY_KEY = {
    "workspace": "warn",
    "key-policy": "ok",
    "key-attestation": "ok",
    "key-debug": "ok",
    "key-reencrypt": "ok",
    "key-grant": "ok",
    "key-image": "ok",
}


def test_a_healthy_host_and_key_pass_on_both_sides(setting: Setting) -> None:
    key = setting.healthy_key()
    setting.host_role({"ThirdPartyKMSKeyAccessPolicy": decrypt_only(key)})

    host = setting.host_findings(key, expect=0)
    assert statuses(host) == HEALTHY_HOST
    assert "Nitro CLI 1.2.1" in host["nitro-cli"]["detail"]
    assert "4 x app.eif" in host["allocator"]["detail"]
    assert "inline policy ThirdPartyKMSKeyAccessPolicy" in host["instance-role"]["detail"]
    assert "the vendor's" in host["key-policy"]["fix"]

    vendor = setting.findings(
        setting.profiles.vendor, "--key", key, "--image", str(setting.image), expect=0
    )
    assert statuses(vendor) == HEALTHY_KEY
    assert f"arn:aws:iam::{setting.profiles.host_account}:root" in vendor["key-policy"]["detail"]

    # as people read it: one line per finding, the fix on the same line, a summary last
    shown = setting.doctor(HOST_ROLE_PROFILE, "--host", "--key", key, expect=0).stdout
    lines = shown.splitlines()
    assert lines[-1].endswith("nothing failed")
    for line in lines[:-1]:
        assert line.split()[0] in ("ok", "WARN"), line
        assert ("; fix: " in line) == line.startswith("WARN"), line


def test_doctor_finds_no_nitro_enclaves_device(setting: Setting) -> None:
    key = setting.healthy_key()
    setting.host_role({"decrypt": decrypt_only(key)})
    setting.host.device.unlink()
    found = setting.host_findings(key, expect=EXIT_CHECK_FAILED)
    assert statuses(found) == {**HEALTHY_HOST, "nitro-device": "fail"}
    assert "/dev/nitro_enclaves does not exist" in found["nitro-device"]["detail"]
    assert "Enabled=true" in found["nitro-device"]["fix"]


def test_doctor_finds_no_nitro_cli(setting: Setting) -> None:
    key = setting.healthy_key()
    setting.host_role({"decrypt": decrypt_only(key)})
    (setting.host.bin / "nitro-cli").unlink()
    found = setting.host_findings(key, expect=EXIT_CHECK_FAILED)
    assert statuses(found) == {**HEALTHY_HOST, "nitro-cli": "fail"}
    assert found["nitro-cli"]["detail"] == "nitro-cli is not on PATH"
    assert "aws-nitro-enclaves-cli" in found["nitro-cli"]["fix"]


def test_doctor_finds_allocator_memory_below_four_times_the_eif(setting: Setting) -> None:
    key = setting.healthy_key()
    setting.host_role({"decrypt": decrypt_only(key)})
    big = tiny_image(setting.work / "big.eif", kernel=os.urandom(3 * 1024 * 1024))
    setting.host.allocate(memory_mib=8, cpus=2)
    found = setting.findings(
        HOST_ROLE_PROFILE, "--host", "--image", str(big), expect=EXIT_CHECK_FAILED
    )
    assert found["allocator"]["status"] == "fail"
    assert (
        "memory_mib 8 MiB is below 4 x the EIF's 3.0 MiB = 13 MiB" in (found["allocator"]["detail"])
    )
    assert found["allocator"]["fix"].startswith("set memory_mib: 13 (or more)")
    assert "systemctl restart nitro-enclaves-allocator.service" in found["allocator"]["fix"]
    # and an enclave asked for more than the allocator reserves, or too little for the EIF
    setting.host.allocate(memory_mib=4096, cpus=2)
    asked = setting.findings(
        HOST_ROLE_PROFILE,
        "--host",
        "--image",
        str(big),
        "--memory",
        "12",
        "--cpus",
        "4",
        expect=EXIT_CHECK_FAILED,
    )["allocator"]
    assert "--memory 12 MiB is below 4 x" in asked["detail"]
    assert "the enclave asks 4 CPUs, the allocator reserves 2" in asked["detail"]
    assert "--memory 13" in asked["fix"] and "cpu_count: 4" in asked["fix"]


def test_doctor_finds_the_allocator_service_not_running(setting: Setting) -> None:
    key = setting.healthy_key()
    setting.host_role({"decrypt": decrypt_only(key)})
    found = setting.host_findings(key, expect=EXIT_CHECK_FAILED, env={STATE_ENV: "inactive"})
    assert statuses(found) == {**HEALTHY_HOST, "allocator-service": "fail"}
    # no systemd to ask (as on this machine): the CPU pool the allocator writes decides
    setting.host.cpu_pool.write_text("\n")
    pooled = setting.host_findings(key, expect=EXIT_CHECK_FAILED, env={STATE_ENV: "no-systemd"})
    assert "the enclave CPU pool" in pooled["allocator-service"]["detail"]
    setting.host.cpu_pool.write_text("1,3\n")
    assert setting.host_findings(key, expect=0, env={STATE_ENV: "no-systemd"})["allocator-service"][
        "detail"
    ].startswith("the enclave CPU pool is 1,3")


def test_doctor_finds_a_role_policy_broader_than_decrypt_on_the_key(setting: Setting) -> None:
    key = setting.healthy_key()
    # the runbook's own example policy: kms:Decrypt on every key
    setting.host_role({"ThirdPartyKMSKeyAccessPolicy": decrypt_only("*")})
    found = setting.host_findings(key, expect=EXIT_CHECK_FAILED)
    assert statuses(found) == {**HEALTHY_HOST, "instance-role": "fail"}
    role = found["instance-role"]
    assert "kms:Decrypt on another key" in role["detail"]
    assert "strongroom iam host-policy --key " + key in role["fix"]

    # an attached managed policy that allows more KMS actions on the key itself
    wide = policy({"Effect": "Allow", "Action": ["kms:Decrypt", "kms:ReEncrypt*"], "Resource": key})
    setting.host_role({"decrypt": decrypt_only(key)}, managed={"KmsWide": wide})
    role = setting.host_findings(key, expect=EXIT_CHECK_FAILED)["instance-role"]
    assert "kms:ReEncryptFrom (managed policy KmsWide-" in role["detail"]
    assert "kms:Decrypt on another key" not in role["detail"]

    # and a role that may not decrypt with the key at all
    setting.host_role({"other": decrypt_only(key.rsplit("/", 1)[0] + "/not-this-one")})
    role = setting.host_findings(key, expect=EXIT_CHECK_FAILED)["instance-role"]
    assert role["detail"].endswith(f"do not allow kms:Decrypt on {key}")


def test_doctor_finds_the_debug_pcr0_approved(setting: Setting) -> None:
    p = setting.profiles
    key = setting.key(key_policy(p.vendor_account, p.host_account, [setting.pcr0, DEBUG_PCR0]))
    found = setting.findings(p.vendor, "--key", key, "--image", str(setting.image), expect=8)
    assert statuses(found) == {**HEALTHY_KEY, "key-debug": "fail"}
    assert "debug-mode (all-zero) PCR0 is approved" in found["key-debug"]["detail"]
    assert found["key-debug"]["fix"] == (
        f"`strongroom image revoke --pcr0 {DEBUG_PCR0} --key {key}`"
    )


def test_doctor_finds_the_host_not_denied_reencrypt_or_create_grant(setting: Setting) -> None:
    p = setting.profiles
    # a common slip: the host account gets kms:*, and only Decrypt is gated on the image
    text = key_policy(p.vendor_account, p.host_account, [setting.pcr0], host_actions="kms:*")
    key = setting.key(text)
    found = setting.findings(p.vendor, "--key", key, expect=EXIT_CHECK_FAILED)
    assert found["key-reencrypt"]["status"] == found["key-grant"]["status"] == "fail"
    assert (
        'may kms:ReEncryptFrom (allowed by statement "AllowEnclaveDecrypt")'
        in (found["key-reencrypt"]["detail"])
    )
    assert "kms:CreateGrant" in found["key-grant"]["detail"]
    assert found["key-attestation"]["status"] == "ok"  # Decrypt itself is still gated


def test_doctor_finds_the_image_not_approved(setting: Setting) -> None:
    key = setting.healthy_key()
    other = tiny_image(setting.work / "other.eif", kernel=b"another kernel")
    found = setting.findings(
        setting.profiles.vendor, "--key", key, "--image", str(other), expect=EXIT_CHECK_FAILED
    )
    assert statuses(found) == {**HEALTHY_KEY, "key-image": "fail"}
    image = found["key-image"]
    assert "other.eif" in image["detail"] and "is not approved" in image["detail"]
    assert 'explicit deny by statement "DenyDecryptUnlessApprovedImage"' in image["detail"]
    assert image["fix"].startswith(f"`strongroom image approve {other} --key {key}`")


# --- the local target ----------------------------------------------------------------------


def local_findings(cli: Cli, *args: str, expect: int) -> dict[str, Any]:
    result = cli("doctor", *args, "--json", check=False)
    assert result.returncode == expect, result.stdout + result.stderr
    return {f["check"]: f for f in json.loads(result.stdout)["findings"]}


def test_a_local_workspace_checks_its_key_service_sandbox_and_key(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    assert statuses(local_findings(cli, expect=EXIT_CHECK_FAILED)) == {
        "key-service": "fail",
        "sandbox": "ok",
    }
    cli("keys", "serve", "--detach")
    cli("keys", "create", "--alias", "classifier")
    app = tiny_image(tmp_path / "app.eif")
    cli("image", "approve", str(app), "--key", "alias/classifier")
    found = local_findings(cli, "--key", "alias/classifier", "--image", str(app), expect=0)
    # main's `image approve` gates Decrypt and ReEncrypt*; CreateGrant is denied only implicitly
    assert statuses(found) == {
        "key-service": "ok",
        "sandbox": "ok",
        "key-policy": "ok",
        "key-attestation": "ok",
        "key-debug": "ok",
        "key-reencrypt": "ok",
        "key-grant": "warn",
        "key-image": "ok",
    }

    cli("image", "approve", "--pcr0", DEBUG_PCR0, "--key", "alias/classifier")
    other = tiny_image(tmp_path / "other.eif", kernel=b"not approved")
    found = local_findings(
        cli, "--key", "alias/classifier", "--image", str(other), expect=EXIT_CHECK_FAILED
    )
    assert found["key-debug"]["status"] == found["key-image"]["status"] == "fail"

    # no bubblewrap on PATH: the sandbox check says what to install
    hidden = cli("doctor", "--json", check=False, env={"PATH": str(tmp_path / "empty")})
    assert hidden.returncode == EXIT_CHECK_FAILED
    sandbox = {f["check"]: f for f in json.loads(hidden.stdout)["findings"]}["sandbox"]
    assert (
        sandbox["status"] == "fail" and "bubblewrap (bwrap) is not installed" in sandbox["detail"]
    )
    assert sandbox["fix"].startswith("install it")
