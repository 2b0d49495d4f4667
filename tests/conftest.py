"""Fixtures shared by every test layer: a fresh workspace, a real key service process, and a
real S3 API server (moto in server mode) with two AWS accounts on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from strongroom.keys import service as keyservice
from strongroom.workspace import Workspace
from tests import moto_s3


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.create(tmp_path / "ws")
    from strongroom.attestation.authority import LocalAuthority

    LocalAuthority.open_or_create(ws.ca_dir)
    return ws


@pytest.fixture
def key_service(workspace: Workspace) -> Iterator[str]:
    """A real `strongroom keys serve` process for the workspace; yields its endpoint."""
    rec = keyservice.start_detached(workspace)
    try:
        yield rec.addresses["endpoint"]
    finally:
        keyservice.stop(workspace)


@pytest.fixture
def kms_client(workspace: Workspace, key_service: str) -> Callable[[str], Any]:
    """boto3 KMS clients for the workspace identities, against the real server."""

    def make(identity: str = "vendor") -> Any:
        ident = workspace.identity(identity)
        return boto3.session.Session().client(
            "kms",
            region_name=workspace.config.region,  # the key service refuses any other
            endpoint_url=key_service,
            aws_access_key_id=ident.access_key_id,
            aws_secret_access_key=ident.secret_access_key,
            config=botocore.config.Config(retries={"max_attempts": 1}),
        )

    return make


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API server process (moto, see ``tests/moto_s3.py``); yields its endpoint.

    What moto does and does not check (so what a test against it can show):

    - Accounts: a request is in the account of the access key moto issued it
      (STS AssumeRole of ``arn:aws:iam::ACCOUNT:role/...`` issues keys in ACCOUNT);
      any other key is in moto's default account, 123456789012. Bucket names
      are global, as on S3.
    - Signatures and credentials: not checked here (any key is accepted); a
      server started with ``INITIAL_NO_AUTH_ACTION_COUNT`` checks them.
    - Bucket policies: no cross-account grant or refusal (another account may
      do anything to a bucket, revoked or not), no condition but
      ``StringEquals``, so none of the runbook's Deny statements; and
      ``aws:SecureTransport`` is never evaluated, so plain HTTP is served as
      TLS would be. Strongroom's own evaluator decides those in the tests.
    - Checksums: a SHA-256 sent with a request is stored and returned
      (``ChecksumMode=ENABLED``) but not verified against the bytes.
    - SSE-KMS: the headers are stored and returned; the key is not looked up.
    """
    server = moto_s3.start(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server.endpoint
    finally:
        server.stop()


#: The environment variables that could point boto3 anywhere else.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_ENDPOINT_URL_STS",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)


@dataclass(frozen=True)
class AwsProfiles:
    """Two AWS accounts on the S3 server, as profiles of an AWS config file."""

    endpoint: str
    region: str
    host_account: str
    vendor_account: str
    #: What a subprocess needs to see these profiles (and no other AWS configuration).
    env: dict[str, str]
    host: str = "host"
    vendor: str = "vendor"


def moto_account_credentials(endpoint: str, account: str, region: str) -> dict[str, str]:
    """Credentials of ``account`` on a moto server (an assumed role moto issues in it)."""
    sts = boto3.session.Session().client(
        "sts",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="AKIASTRONGROOMTEST00",
        aws_secret_access_key="unused",
    )
    issued = sts.assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/strongroom-tests", RoleSessionName="strongroom"
    )["Credentials"]
    return {
        "aws_access_key_id": issued["AccessKeyId"],
        "aws_secret_access_key": issued["SecretAccessKey"],
        "aws_session_token": issued["SessionToken"],
    }


@pytest.fixture
def aws_profiles(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AwsProfiles:
    """Profiles ``host`` (moto's default account) and ``vendor`` (another) for ``s3_server``.

    The process's AWS environment is replaced by these files (and no metadata
    service is asked), so nothing reaches a real AWS account.
    """
    region = "eu-west-1"
    vendor_account = "210987654321"
    host_keys = {"aws_access_key_id": "AKIAHOSTTESTKEY00000", "aws_secret_access_key": "host"}
    vendor_keys = moto_account_credentials(s3_server, vendor_account, region)
    config = tmp_path / "aws" / "config"
    credentials = tmp_path / "aws" / "credentials"
    config.parent.mkdir()
    config.write_text(f"[profile host]\nregion = {region}\n[profile vendor]\nregion = {region}\n")
    credentials.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
            for name, keys in (("host", host_keys), ("vendor", vendor_keys))
        )
    )
    env = {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return AwsProfiles(
        endpoint=s3_server,
        region=region,
        host_account=moto_s3.DEFAULT_ACCOUNT,
        vendor_account=vendor_account,
        env=env,
    )
