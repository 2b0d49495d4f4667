"""``strongroom doctor``: check what the runbook asks by hand, and what users get wrong.

Three groups of checks, each a small function returning one
:class:`~strongroom.doctor.base.Finding` (ok / warn / fail, one line of
detail, one line of fix):

- ``local`` (the local target): the workspace's key service runs, and the
  local enclave's sandbox (bubblewrap) can start (:mod:`.local`);
- ``host`` (the aws target, or asked for with ``--host``): Nitro Enclaves
  enabled, ``nitro-cli`` and its version, the allocator's reservation against
  the image and the enclave asked for, the allocator service, and the
  instance role's IAM policy (:mod:`.host`, :mod:`.identity`);
- ``key`` (when a key is named, either target): what the key policy lets the
  host do — Decrypt only with an attestation, never for a debug-mode
  enclave, no ReEncrypt or CreateGrant — and whether the image at hand is
  approved, all decided by Strongroom's policy evaluator (:mod:`.key`).

Which groups run is decided once, by :func:`plan`, from the workspace's target
and the options; where the key is read from (the workspace's key service, or
AWS KMS) likewise, in :func:`run`. A check never raises: what stops it from
looking is its finding.

``STRONGROOM_DOCTOR_ROOT`` (internal, for tests) names a directory to read the
host's ``dev/``, ``etc/nitro_enclaves/`` and ``sys/`` under instead of ``/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from strongroom.doctor import host as host_checks
from strongroom.doctor import key as key_checks
from strongroom.doctor import local as local_checks
from strongroom.doctor.aws import AwsAccess
from strongroom.doctor.base import Finding, Report, Status, fail, guarded, warn
from strongroom.doctor.host import Enclave, HostPaths, ImageFacts
from strongroom.doctor.identity import instance_role
from strongroom.errors import AccessDeniedError, NotFoundError, StrongroomError
from strongroom.keys.aws import KmsKeyService
from strongroom.workspace import Workspace

#: Internal: the directory the host checks read ``/dev``, ``/etc`` and ``/sys`` under.
ROOT_ENV = "STRONGROOM_DOCTOR_ROOT"
#: The groups each target checks without being asked (``--host``, ``--key`` add theirs).
GROUPS_BY_TARGET: dict[str, tuple[str, ...]] = {"local": ("local",), "aws": ("host",)}
#: Targets whose key service is the workspace's own (the rest use AWS KMS).
WORKSPACE_KEY_SERVICE = frozenset({"local"})

__all__ = [
    "ROOT_ENV",
    "Enclave",
    "Finding",
    "HostPaths",
    "ImageFacts",
    "Plan",
    "Report",
    "Status",
    "host_paths",
    "plan",
    "run",
]


@dataclass(frozen=True)
class Plan:
    """What one ``doctor`` run checks."""

    #: the workspace's target; None: there is no workspace
    target: str | None
    groups: tuple[str, ...]
    key: str | None
    image: ImageFacts | None
    enclave: Enclave
    paths: HostPaths


def host_paths() -> HostPaths:
    """``/``, or the directory :data:`ROOT_ENV` names."""
    return HostPaths(Path(os.environ.get(ROOT_ENV) or "/"))


def plan(
    target: str | None,
    *,
    host: bool,
    key: str | None,
    image: ImageFacts | None,
    enclave: Enclave,
    paths: HostPaths,
) -> Plan:
    groups = list(GROUPS_BY_TARGET.get(target or "", ()))
    if host and "host" not in groups:
        groups.append("host")
    if key is not None:
        groups.append("key")
    return Plan(target, tuple(groups), key, image, enclave, paths)


def run(
    plan: Plan,
    *,
    workspace: Workspace | None,
    missing_workspace: str | None,
    aws: AwsAccess,
    workspace_kms: Callable[[Workspace], KmsKeyService],
) -> Report:
    """Run the plan's checks; ``workspace_kms`` connects to the workspace's key service."""
    findings: list[Finding] = []
    if workspace is None:
        detail = f"no Strongroom workspace at {missing_workspace}"
        fix = "`strongroom init` (local) or `strongroom init --target aws` in this directory"
        findings.append(
            warn("workspace", "workspace", f"{detail}; checking what was asked", fix)
            if plan.groups
            else fail("workspace", "workspace", detail + ": nothing to check", fix)
        )
    if "local" in plan.groups and workspace is not None:
        findings.append(
            guarded("local", "key-service", lambda: local_checks.key_service(workspace))
        )
        findings.append(guarded("local", "sandbox", local_checks.sandbox))

    facts: key_checks.KeyFacts | None = None
    key_failure: Finding | None = None
    if plan.key is not None:
        facts, key_failure = _key_facts(plan, workspace, aws, workspace_kms)

    if "host" in plan.groups:
        paths, image = plan.paths, plan.image
        findings += [
            guarded("host", "nitro-device", lambda: host_checks.nitro_device(paths)),
            guarded("host", "nitro-cli", host_checks.nitro_cli),
            guarded("host", "allocator", lambda: host_checks.allocator(paths, image, plan.enclave)),
            guarded("host", "allocator-service", lambda: host_checks.allocator_service(paths)),
        ]
        key_arn = facts.arn if facts is not None else plan.key
        findings.append(
            guarded("host", "instance-role", lambda: instance_role(aws, key_arn, image))
        )

    if key_failure is not None:
        findings.append(key_failure)
    if facts is not None:
        known = facts
        checks: list[tuple[str, Callable[[], Finding]]] = [
            ("key-policy", lambda: key_checks.policy_read(known)),
            ("key-attestation", lambda: key_checks.attestation_required(known)),
            ("key-debug", lambda: key_checks.debug_not_approved(known)),
            ("key-reencrypt", lambda: key_checks.reencrypt_denied(known)),
            ("key-grant", lambda: key_checks.grant_denied(known)),
            ("key-image", lambda: key_checks.image_approved(known, plan.image)),
        ]
        # with no host in the policy, only its own finding says so: the others have nobody to ask
        findings += [
            guarded("key", name, check) for name, check in checks[: 6 if facts.hosts else 1]
        ]
    return Report(plan.target, tuple(findings))


def _key_facts(
    plan: Plan,
    workspace: Workspace | None,
    aws: AwsAccess,
    workspace_kms: Callable[[Workspace], KmsKeyService],
) -> tuple[key_checks.KeyFacts | None, Finding | None]:
    """The key's facts, or the finding that says why they could not be read."""
    assert plan.key is not None
    own = workspace is not None and plan.target in WORKSPACE_KEY_SERVICE
    try:
        kms = workspace_kms(workspace) if own and workspace is not None else aws.kms
        facts = key_checks.KeyFacts.fetch(kms, plan.key, secure_transport=not own)
    except (NotFoundError, AccessDeniedError) as e:
        caller = None if own else _caller_arn(aws)
        if not own and _other_account(plan.key, aws):
            return None, key_checks.fetch_failure(plan.key, e, caller)
        hint = e.hint
        if not own and not plan.key.startswith("arn:"):
            hint = "an alias names a key of the caller's own account: give the key's ARN"
        return None, fail("key", "key-policy", f"cannot read {plan.key}: {e.message}", hint)
    except StrongroomError as e:
        return None, fail("key", "key-policy", f"cannot read {plan.key}: {e.message}", e.hint)
    return facts, None


def _caller_arn(aws: AwsAccess) -> str | None:
    try:
        return aws.caller.arn
    except StrongroomError:
        return None


def _other_account(key: str, aws: AwsAccess) -> bool:
    """Whether ``key`` is an ARN in another account than the caller's."""
    parts = key.split(":")
    if len(parts) < 6 or not key.startswith("arn:"):
        return False
    try:
        return parts[4] != aws.caller.account
    except StrongroomError:
        return False
