"""The instance role's check (runbook 3.2): ``kms:Decrypt`` on the vendor's key, nothing broader.

The role is the one behind the current credentials (STS GetCallerIdentity:
on an EC2 host, the instance profile's role). Its identity policies are read
from IAM — every inline policy and the default version of every attached
managed policy (an IAM user's, and its groups', likewise) — and put to
Strongroom's evaluator, one request at a time: an action is allowed when some
policy allows it and none denies it. Permission boundaries and organisation
SCPs can only narrow that and are not read, so "allows" here may overstate
what the role can do, never understate it.

"Nothing broader" is asked of KMS: ``kms:Decrypt`` on another key of the
same account and region, and on a key of another account (what ``Resource:
"*"`` or ``key/*`` would allow, as the runbook's example policy does), and
every other KMS action (from botocore's KMS model; ``ReEncrypt`` as
``ReEncryptFrom``/``ReEncryptTo``) on the key itself. Actions of other
services (``sts:AssumeRole`` for run credentials, S3 for ``fetch``) are the
host's own business and are not judged.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from strongroom.doctor.aws import AwsAccess, Caller, errors
from strongroom.doctor.base import Finding, fail, listed, ok, warn
from strongroom.doctor.host import ImageFacts
from strongroom.doctor.key import attestation_values
from strongroom.policy import PolicyDocument, RequestContext, evaluate
from strongroom.policy.document import PolicyError

GROUP = "host"
NAME = "instance-role"
#: A key id that names no real key: Decrypt allowed on it means Decrypt on keys other than KEY.
PROBE_KEY_ID = "00000000-0000-4000-8000-00000000d0c7"
#: An account no party here owns, for "Decrypt on another account's key".
PROBE_ACCOUNT = "999999999999"
_KEY_ARN = re.compile(
    r"(arn:aws(?:-[a-z]+)*):kms:([a-z0-9-]+):(\d{12}):key/[A-Za-z0-9-]+", re.ASCII
)
HOST_POLICY_FIX = (
    "`strongroom iam host-policy --key {key}` prints the least-privilege policy (kms:Decrypt "
    "on that key only); `--apply {role}` puts it"
)


@dataclass(frozen=True)
class NamedPolicy:
    label: str
    document: PolicyDocument


def instance_role(access: AwsAccess, key_arn: str | None, image: ImageFacts | None) -> Finding:
    caller = access.caller
    if caller.kind == "other" or caller.name is None:
        return warn(
            GROUP,
            NAME,
            f"the credentials are {caller.arn}, neither a role nor an IAM user: no instance "
            "role to check",
            "run doctor on the enclave host with its instance profile's credentials",
        )
    policies, unreadable = _policies(access.iam, caller)
    who = f"role {caller.name}" if caller.kind == "role" else f"user {caller.name}"
    if key_arn is not None and not _KEY_ARN.fullmatch(key_arn):
        return warn(
            GROUP,
            NAME,
            f"{key_arn} is not a key ARN, and the vendor's key cannot be looked up from here",
            "give --key as the key's ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)",
        )
    probe = _Probe(policies, caller, image)
    fix = HOST_POLICY_FIX.format(key=key_arn or "ARN", role=caller.name)
    broader = probe.broader(key_arn, access)
    if broader:
        return fail(
            GROUP,
            NAME,
            f"{who}'s policies allow more than kms:Decrypt on the key: {listed(broader)}",
            f"remove those permissions; {fix}",
        )
    if key_arn is not None:
        allowed, by = probe.allowed("kms:Decrypt", key_arn)
        if not allowed:
            return fail(
                GROUP,
                NAME,
                f"{who}'s policies do not allow kms:Decrypt on {key_arn}"
                + (f" ({len(unreadable)} could not be read)" if unreadable else ""),
                fix,
            )
    if unreadable:
        return warn(
            GROUP,
            NAME,
            f"{who}: {listed(unreadable, most=2)}; the rest allow nothing broader",
            f"check that policy by hand, or replace it: {fix}",
        )
    if key_arn is None:
        return warn(
            GROUP,
            NAME,
            f"{who} is allowed nothing in KMS beyond kms:Decrypt on named keys; "
            "which key was not checked",
            "give --key ARN (the vendor's key) to check the role may decrypt with it",
        )
    return ok(GROUP, NAME, f"{who} may kms:Decrypt {key_arn} ({by}), and nothing broader in KMS")


class _Probe:
    """The role's identity policies, asked one request at a time."""

    def __init__(
        self, policies: list[NamedPolicy], caller: Caller, image: ImageFacts | None
    ) -> None:
        self._policies = policies
        self._caller = caller
        role_arn = caller.arn
        if caller.kind == "role":
            partition = caller.arn.split(":")[1]
            role_arn = f"arn:{partition}:iam::{caller.account}:role/{caller.name}"
        self._values: dict[str, str | bool] = {
            "aws:PrincipalArn": role_arn,
            "aws:PrincipalAccount": caller.account,
            "kms:CallerAccount": caller.account,
            "aws:SecureTransport": True,
            "aws:CurrentTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        #: the contexts a host's request can have: no attestation, or the image's
        self._contexts: list[Mapping[str, str | bool]] = [self._values]
        if image is not None:
            self._contexts.append({**self._values, **attestation_values(image.pcrs)})

    def allowed(self, action: str, resource: str) -> tuple[bool, str | None]:
        """Whether any context allows ``action`` on ``resource``, and by which policy."""
        for values in self._contexts:
            request = RequestContext(
                action, resource, self._caller.arn, self._caller.account, values
            )
            decisions = [(p, evaluate(p.document, request)) for p in self._policies]
            if any(d.effect == "Deny" for _, d in decisions):
                continue
            allowing = next(((p, d) for p, d in decisions if d.allowed), None)
            if allowing is not None:
                policy, decision = allowing
                return True, f"{policy.label}, {decision.reason.removeprefix('allowed by ')}"
        return False, None

    def broader(self, key_arn: str | None, access: AwsAccess) -> list[str]:
        """What the policies allow in KMS beyond kms:Decrypt on ``key_arn``."""
        if key_arn is not None:
            match = _KEY_ARN.fullmatch(key_arn)
            assert match is not None
            partition, region, account = match.groups()
        else:
            partition, region, account = "aws", access.region, self._caller.account
        other_key = f"{partition}:kms:{region}:{account}:key/{PROBE_KEY_ID}"
        foreign_key = f"{partition}:kms:{region}:{PROBE_ACCOUNT}:key/{PROBE_KEY_ID}"
        found: list[str] = []
        for resource, label in ((other_key, "another key"), (foreign_key, "another account's key")):
            allowed, by = self.allowed("kms:Decrypt", f"arn:{resource}")
            if allowed:
                found.append(f"kms:Decrypt on {label} ({by})")
        target = key_arn or f"arn:{other_key}"
        for action in kms_actions(access):
            allowed, by = self.allowed(action, target)
            if allowed:
                found.append(f"{action} ({by})")
        return found


def kms_actions(access: AwsAccess) -> list[str]:
    """Every KMS action but Decrypt, from botocore's model of the KMS API."""
    names = access.kms_client.meta.service_model.operation_names
    actions: list[str] = []
    for name in names:
        if name == "ReEncrypt":
            actions += ["kms:ReEncryptFrom", "kms:ReEncryptTo"]
        elif name != "Decrypt":
            actions.append(f"kms:{name}")
    return actions


def _policies(iam: Any, caller: Caller) -> tuple[list[NamedPolicy], list[str]]:
    """The identity policies of ``caller``'s role or user, and those that could not be parsed."""
    found: list[NamedPolicy] = []
    unreadable: list[str] = []
    for label, document in _documents(iam, caller):
        text = document if isinstance(document, str) else json.dumps(document)
        if isinstance(document, str) and document.lstrip().startswith("%7B"):
            text = urllib.parse.unquote(document)
        try:
            found.append(NamedPolicy(label, PolicyDocument.parse(text, kind="session")))
        except PolicyError as e:
            unreadable.append(f"{label} cannot be evaluated ({e.message})")
    return found, unreadable


def _documents(iam: Any, caller: Caller) -> Iterator[tuple[str, object]]:
    name = caller.name
    if caller.kind == "role":
        for policy in _paged(iam, "list_role_policies", "PolicyNames", RoleName=name):
            with errors("IAM", "iam:GetRolePolicy"):
                answer = iam.get_role_policy(RoleName=name, PolicyName=policy)
            yield f"inline policy {policy}", answer["PolicyDocument"]
        attached = _paged(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=name)
    else:
        for policy in _paged(iam, "list_user_policies", "PolicyNames", UserName=name):
            with errors("IAM", "iam:GetUserPolicy"):
                answer = iam.get_user_policy(UserName=name, PolicyName=policy)
            yield f"inline policy {policy}", answer["PolicyDocument"]
        attached = _paged(iam, "list_attached_user_policies", "AttachedPolicies", UserName=name)
        for group in _paged(iam, "list_groups_for_user", "Groups", UserName=name):
            group_name = group["GroupName"]
            for policy in _paged(iam, "list_group_policies", "PolicyNames", GroupName=group_name):
                with errors("IAM", "iam:GetGroupPolicy"):
                    answer = iam.get_group_policy(GroupName=group_name, PolicyName=policy)
                yield f"group {group_name} inline policy {policy}", answer["PolicyDocument"]
            attached += _paged(
                iam, "list_attached_group_policies", "AttachedPolicies", GroupName=group_name
            )
    for policy in attached:
        yield f"managed policy {policy['PolicyName']}", _managed(iam, policy["PolicyArn"])


def _managed(iam: Any, arn: str) -> object:
    with errors("IAM", "iam:GetPolicy"):
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    with errors("IAM", "iam:GetPolicyVersion"):
        document: object = iam.get_policy_version(PolicyArn=arn, VersionId=version)[
            "PolicyVersion"
        ]["Document"]
    return document


def _paged(iam: Any, operation: str, field: str, **params: str | None) -> list[Any]:
    items: list[Any] = []
    call: Callable[..., dict[str, Any]] = getattr(iam, operation)
    marker: str | None = None
    action = "iam:" + "".join(part.title() for part in operation.split("_"))
    while True:
        with errors("IAM", action):
            page = call(**params, **({"Marker": marker} if marker else {}))
        items.extend(page.get(field, []))
        if not page.get("IsTruncated"):
            return items
        marker = page.get("Marker")
