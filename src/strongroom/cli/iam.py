"""`strongroom iam`: IAM policies for the enclave host's side of the runbook."""

from __future__ import annotations

import click

from strongroom.cli._common import AppContext, emit, out, pass_app
from strongroom.errors import NotFoundError, ServiceError


@click.group("iam")
def iam_group() -> None:
    """IAM policies for the host account's roles."""


@iam_group.command("host-policy")
@click.option("--key", "key_arn", required=True, metavar="ARN", help="The runbook key's ARN.")
@click.option("--run-role", metavar="ARN", help="Also allow sts:AssumeRole on this run role.")
@click.option("--apply", "role_name", metavar="ROLE_NAME", help="Put it on this IAM role.")
@click.option("--policy-name", default="strongroom-enclave-host", show_default=True)
@click.option("--profile", metavar="NAME", help="AWS profile [default: the chain's].")
@click.option("--region", metavar="REGION", help="AWS region [default: the chain's].")
@click.option("--endpoint-url", metavar="URL", help="IAM endpoint (any IAM API).")
@pass_app
def host_policy_command(
    app: AppContext,
    key_arn: str,
    run_role: str | None,
    role_name: str | None,
    policy_name: str,
    profile: str | None,
    region: str | None,
    endpoint_url: str | None,
) -> None:
    """Print (or --apply) the enclave host instance role's least-privilege policy.

    \b
    kms:Decrypt on --key only: the key policy trusts the host account, and this
    policy decides which of the host's roles may use that trust.

    \b
    Example:
      strongroom iam host-policy --key arn:aws:kms:eu-west-1:111122223333:key/... \\
          --apply enclave-host
    """
    from strongroom.keys.iam import host_policy

    document = host_policy(key_arn, run_role)
    if role_name is None:
        click.echo(document)
        return
    _put_role_policy(role_name, policy_name, document, profile, region, endpoint_url)
    emit(
        app,
        {"role": role_name, "policy_name": policy_name, "applied": True},
        lambda: out.print(f"policy {policy_name} put on role {role_name}"),
    )


def _put_role_policy(
    role: str, name: str, document: str, profile: str | None, region: str | None, url: str | None
) -> None:
    import boto3
    import botocore.exceptions

    from strongroom.keys.aws import botocore_failure

    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        iam = session.client("iam", endpoint_url=url)
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=document)
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        message = e.response.get("Error", {}).get("Message", str(e))
        if code == "NoSuchEntity":
            raise NotFoundError(f"no IAM role {role!r}: {message}") from e
        raise ServiceError(f"iam:PutRolePolicy failed: {code}: {message}") from e
    except botocore.exceptions.BotoCoreError as e:
        raise botocore_failure(e, "IAM", not_running_hint=None) from e
