"""The AWS clients the checks use: one boto3 session, from the standard credential chain.

``--profile``, ``--region`` and ``--endpoint-url`` choose them as on every
command that calls AWS (the endpoint serves STS, IAM and KMS alike, as moto
or LocalStack do; without it botocore's own choice, ``AWS_ENDPOINT_URL_*``
included). Every botocore failure leaves here as a Strongroom error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import boto3
import botocore.config
import botocore.exceptions

from strongroom.errors import (
    AccessDeniedError,
    ConfigError,
    CredentialError,
    NotFoundError,
    ServiceError,
    StrongroomError,
    UsageError,
)
from strongroom.keys.aws import CREDENTIAL_ERROR_CODES, KmsKeyService, botocore_failure

_CONFIG = botocore.config.Config(
    retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30
)
_ASSUMED_ROLE = re.compile(
    r"arn:(aws(?:-[a-z]+)*):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/[\w+=,.@-]+", re.ASCII
)
_USER = re.compile(r"arn:(aws(?:-[a-z]+)*):iam::(\d{12}):user/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)")


@dataclass(frozen=True)
class Caller:
    """Who the credentials are (STS GetCallerIdentity), and the IAM identity behind them."""

    arn: str
    account: str
    #: "role" (an assumed role: an instance role, on EC2), "user", or "other" (root, federated)
    kind: str
    #: the role or user name (IAM's, without its path), for kind "role" and "user"
    name: str | None

    @classmethod
    def of(cls, arn: str, account: str) -> Caller:
        if role := _ASSUMED_ROLE.fullmatch(arn):
            return cls(arn, account, "role", role.group(3))
        if user := _USER.fullmatch(arn):
            return cls(arn, account, "user", user.group(3))
        return cls(arn, account, "other", None)


class AwsAccess:
    """STS, IAM and KMS clients of one session, made on first use."""

    def __init__(
        self,
        *,
        profile: str | None,
        region: str | None,
        endpoint_url: str | None,
        fallback_region: str | None = None,
    ) -> None:
        self._profile = profile
        self._region = region
        self._endpoint_url = endpoint_url
        #: the region when neither ``region`` nor the chain names one (the workspace's)
        self._fallback_region = fallback_region

    @cached_property
    def _session(self) -> boto3.session.Session:
        try:
            return boto3.session.Session(profile_name=self._profile, region_name=self._region)
        except botocore.exceptions.ProfileNotFound as e:
            if self._profile is not None:
                raise UsageError(
                    f"the AWS profile {self._profile!r} is not defined in the AWS config or "
                    "credentials files",
                    hint="check its name (`aws configure list-profiles`)",
                ) from e
            raise botocore_failure(e, "AWS", not_running_hint=None) from e
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(e, "AWS", not_running_hint=None) from e

    @property
    def region(self) -> str:
        region = self._session.region_name or self._fallback_region
        if not region:
            raise ConfigError(
                "no AWS region is configured",
                hint="give --region, or set AWS_REGION or the profile's region",
            )
        return region

    def client(self, service: Literal["iam", "kms", "sts"]) -> Any:
        try:
            return self._session.client(
                service, region_name=self.region, endpoint_url=self._endpoint_url, config=_CONFIG
            )
        except botocore.exceptions.BotoCoreError as e:
            raise botocore_failure(e, service.upper(), not_running_hint=None) from e

    @cached_property
    def kms_client(self) -> Any:
        return self.client("kms")

    @cached_property
    def kms(self) -> KmsKeyService:
        return KmsKeyService(self.kms_client, credentials_label="the AWS credentials")

    @cached_property
    def iam(self) -> Any:
        return self.client("iam")

    @cached_property
    def caller(self) -> Caller:
        with errors("STS", "sts:GetCallerIdentity"):
            answer = self.client("sts").get_caller_identity()
        return Caller.of(str(answer["Arn"]), str(answer["Account"]))


@contextmanager
def errors(service: str, action: str) -> Iterator[None]:
    """Translate what botocore raises during ``action`` (``iam:GetRole``) into our errors."""
    try:
        yield
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        message = e.response.get("Error", {}).get("Message", "") or str(e)
        text = f"{service} refused {action}: {message} ({code})"
        error: StrongroomError
        if code in CREDENTIAL_ERROR_CODES:
            error = CredentialError(text)
        elif code in ("AccessDenied", "AccessDeniedException"):
            error = AccessDeniedError(text, hint=f"these credentials need {action}")
        elif code in ("NoSuchEntity", "NotFoundException"):
            error = NotFoundError(text)
        else:
            error = ServiceError(text)
        raise error from e
    except botocore.exceptions.BotoCoreError as e:
        raise botocore_failure(e, service, not_running_hint=None) from e
