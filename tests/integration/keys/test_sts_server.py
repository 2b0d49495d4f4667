"""boto3's unmodified ``sts`` client against a real `strongroom keys serve` process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from strongroom.keys import service as keyservice
from strongroom.keys.audit import read_events
from strongroom.workspace import Workspace


def sts_client(ws: Workspace, endpoint: str, identity: str = "host", **creds: str) -> Any:
    ident = ws.identity(identity)
    return boto3.session.Session().client(
        "sts",
        region_name=ws.config.region,
        endpoint_url=endpoint,
        aws_access_key_id=creds.get("key", ident.access_key_id),
        aws_secret_access_key=creds.get("secret", ident.secret_access_key),
        aws_session_token=creds.get("token"),
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def test_assume_role_and_caller_identity(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    host = workspace.identity("host")
    sts = sts_client(workspace, key_service)
    me = sts.get_caller_identity()
    assert me["Arn"] == host.principal_arn and me["Account"] == host.account_id
    answer = sts.assume_role(RoleArn=host.principal_arn, RoleSessionName="integration")
    creds = answer["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    session = sts_client(
        workspace,
        key_service,
        key=creds["AccessKeyId"],
        secret=creds["SecretAccessKey"],
        token=creds["SessionToken"],
    )
    who = session.get_caller_identity()
    assert who["Arn"] == answer["AssumedRoleUser"]["Arn"]
    assert who["UserId"] == answer["AssumedRoleUser"]["AssumedRoleId"]

    # the session outlives a restart of the key service (it is in the key store)
    keyservice.stop(workspace)
    keyservice.start_detached(workspace)
    assert session.get_caller_identity()["Arn"] == who["Arn"]
    kms = boto3.session.Session().client(
        "kms",
        region_name=workspace.config.region,
        endpoint_url=key_service,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    key = kms.create_key()["KeyMetadata"]  # no session policy: the role's own rights
    assert key["AWSAccountId"] == host.account_id
    events = [e for e in read_events(workspace.audit_log) if e.get("session") == "integration"]
    assert [e["operation"] for e in events] == [
        "sts:GetCallerIdentity",
        "sts:GetCallerIdentity",
        "CreateKey",
    ]


def test_sts_errors_are_sts_shaped(workspace: Workspace, key_service: str) -> None:
    bad = sts_client(workspace, key_service, secret="wrong" * 8)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bad.get_caller_identity()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = sts_client(workspace, key_service, key="AKIAUNKNOWNUNKNOWN00")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        unknown.get_caller_identity()
    assert e.value.response["Error"]["Code"] == "InvalidClientTokenId"
    elsewhere = boto3.session.Session().client(
        "sts",
        region_name="eu-west-1" if workspace.config.region != "eu-west-1" else "us-west-2",
        endpoint_url=key_service,
        aws_access_key_id=workspace.identity("host").access_key_id,
        aws_secret_access_key=workspace.identity("host").secret_access_key,
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        elsewhere.get_caller_identity()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert "scoped to a valid region" in e.value.response["Error"]["Message"]
    assert sts_client(workspace, key_service).get_caller_identity()["Account"]
