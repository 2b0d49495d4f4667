"""The key's checks (runbook 2.2.1, 2.3.2, 6.2): what its key policy lets the host do.

Every question is put to Strongroom's own policy evaluator
(:func:`strongroom.policy.evaluate`, IAM's rules: an explicit Deny wins, a
negated condition matches a request that lacks the key) over the key policy
as KMS returns it, so the answers hold for any policy — the one ``image
approve`` edits, the runbook's with explicit denies, or one written by hand —
and name the statement that decided them.

*The host* is each principal the policy lets call ``kms:Decrypt`` other than
the key's own account (the vendor, who administers it): the principals of
``AllowEnclaveDecrypt`` when the policy has it, else of every Allow statement
whose actions include ``kms:Decrypt``. An account stands for every principal
in it (asked as ``arn:aws:iam::ACCOUNT:root``); a role or user for itself.
The requests are the ones the host can really make: ``Decrypt`` with and
without a ``Recipient`` attestation (whose PCRs become the
``kms:RecipientAttestation:*`` keys), and ``ReEncrypt*`` and ``CreateGrant``,
which take no attestation at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from strongroom.doctor.base import Finding, fail, listed, ok, warn
from strongroom.doctor.host import ImageFacts
from strongroom.errors import AccessDeniedError, NotFoundError
from strongroom.keys.aws import KmsKeyService
from strongroom.policy import (
    ALLOW_SID,
    Decision,
    PolicyDocument,
    RequestContext,
    approved_measurements,
    evaluate,
)
from strongroom.policy.document import PolicyError

GROUP = "key"
#: What a debug-mode enclave reports as PCR0, PCR1 and PCR2.
DEBUG_PCR = "0" * 96
ATTESTATION_PREFIX = "kms:RecipientAttestation:"
#: The actions that could move the key's protection elsewhere without an attestation.
REENCRYPT_ACTIONS = ("kms:ReEncryptFrom", "kms:ReEncryptTo")
GRANT_ACTIONS = ("kms:CreateGrant",)
_ACCOUNT = re.compile(r"\d{12}", re.ASCII)
_ACCOUNT_ROOT = re.compile(r"arn:aws(?:-[a-z]+)*:iam::(\d{12}):root", re.ASCII)
_ACCOUNT_OF_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:(?:iam|sts)::(\d{12}):", re.ASCII)
#: Who "*" in a Principal is asked as: an account no party here owns.
_ANYONE_ACCOUNT = "999999999999"


@dataclass(frozen=True)
class Host:
    """One principal the key policy gives Decrypt to, and how it is asked as a caller."""

    named: str
    arn: str
    account: str


@dataclass(frozen=True)
class KeyFacts:
    """The key's ARN, owner and policy, fetched once for all the key's checks."""

    key: str
    arn: str
    account: str
    policy: PolicyDocument
    approved: tuple[str, ...]
    hosts: tuple[Host, ...]
    #: ``aws:SecureTransport`` of the host's requests (KMS: TLS; the local key service: not)
    secure_transport: bool

    @classmethod
    def fetch(cls, kms: KmsKeyService, key: str, *, secure_transport: bool) -> KeyFacts:
        metadata = kms.describe_key(key)
        text = kms.get_key_policy(metadata.arn)
        policy = PolicyDocument.parse(text)
        try:
            approved = tuple(approved_measurements(text))
        except PolicyError:  # two gate statements: the evaluator still decides
            approved = ()
        return cls(
            key,
            metadata.arn,
            metadata.account_id,
            policy,
            approved,
            host_principals(policy, metadata.account_id),
            secure_transport,
        )

    def decide(self, action: str, host: Host, pcrs: Mapping[int, str] | None) -> Decision:
        """The key policy's decision on ``action`` by ``host``, with an attestation of ``pcrs``."""
        values: dict[str, str | bool] = {
            "aws:PrincipalArn": host.arn,
            "aws:PrincipalAccount": host.account,
            "kms:CallerAccount": host.account,
            "aws:SecureTransport": self.secure_transport,
            "aws:CurrentTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if pcrs is not None:
            values.update(attestation_values(pcrs))
        request = RequestContext(action, self.arn, host.arn, host.account, values)
        return evaluate(self.policy, request)


def attestation_values(pcrs: Mapping[int, str]) -> dict[str, str]:
    """The condition keys KMS sets from a Recipient attestation with these PCRs."""
    values = {f"{ATTESTATION_PREFIX}ImageSha384": pcrs[0]}
    values.update({f"{ATTESTATION_PREFIX}PCR{index}": value for index, value in pcrs.items()})
    return values


def host_principals(policy: PolicyDocument, owner_account: str) -> tuple[Host, ...]:
    """The principals the policy gives ``kms:Decrypt`` to, the owner's account left out."""
    gate = [s for s in policy.statements if s.sid == ALLOW_SID and s.effect == "Allow"]
    chosen = gate or [
        s
        for s in policy.statements
        if s.effect == "Allow" and not s.not_principal and s.matches_action("kms:Decrypt")
    ]
    named: dict[str, Host] = {}
    for statement in chosen:
        for value in statement.principals.aws or (("*",) if statement.principals.everyone else ()):
            host = _as_caller(value)
            if host is not None and (gate or host.account != owner_account):
                named.setdefault(value, host)
    return tuple(named.values())


def _as_caller(value: str) -> Host | None:
    if value == "*":
        return Host("*", f"arn:aws:iam::{_ANYONE_ACCOUNT}:role/any-principal", _ANYONE_ACCOUNT)
    if _ACCOUNT.fullmatch(value):
        return Host(value, f"arn:aws:iam::{value}:root", value)
    if root := _ACCOUNT_ROOT.fullmatch(value):
        return Host(value, value, root.group(1))
    if arn := _ACCOUNT_OF_ARN.match(value):
        return Host(value, value, arn.group(1))
    return None


def fetch_failure(
    key: str, error: NotFoundError | AccessDeniedError, caller: str | None
) -> Finding:
    """Why the key policy could not be read, when that is where the caller stands (the host)."""
    who = f" as {caller}" if caller else ""
    return warn(
        GROUP,
        "key-policy",
        f"cannot read the key policy of {key}{who}: {error.message}",
        "KMS gives GetKeyPolicy only to the key's own account: run `strongroom doctor --key "
        f"{key}` with the key owner's (the vendor's) credentials",
    )


def policy_read(facts: KeyFacts) -> Finding:
    hosts = ", ".join(h.named for h in facts.hosts)
    if not facts.hosts:
        return warn(
            GROUP,
            "key-policy",
            f"the key policy of {facts.arn} gives kms:Decrypt to no principal outside the "
            f"key's account {facts.account}: no host can use it, and the checks below have "
            "nobody to ask about",
            f"approve an image for the host: `strongroom image approve IMAGE --key {facts.key}`",
        )
    return ok(
        GROUP,
        "key-policy",
        f"{facts.arn}: {len(facts.policy.statements)} statements; the host is {hosts}; "
        f"{len(facts.approved)} approved measurement(s)",
    )


def _each_host(
    facts: KeyFacts, name: str, ask: Callable[[Host], tuple[str, str, str | None] | None]
) -> Finding | None:
    """The first host for which ``ask`` finds something (status, detail, fix), as a finding."""
    for host in facts.hosts:
        found = ask(host)
        if found is not None:
            status, detail, fix = found
            return (fail if status == "fail" else warn)(GROUP, name, detail, fix)
    return None


def attestation_required(facts: KeyFacts) -> Finding:
    def ask(host: Host) -> tuple[str, str, str | None] | None:
        decision = facts.decide("kms:Decrypt", host, None)
        if decision.allowed:
            return (
                "fail",
                f"{host.named} may kms:Decrypt without any attestation ({decision.reason}): "
                "whoever holds the host's credentials opens every package, outside any enclave",
                "deny kms:Decrypt unless kms:RecipientAttestation:ImageSha384 is approved "
                f"(`strongroom image approve IMAGE --key {facts.key}` writes that Deny)",
            )
        return None

    found = _each_host(facts, "key-attestation", ask)
    if found is not None or not facts.hosts:
        return found or ok(GROUP, "key-attestation", "no host to ask")
    reasons = {facts.decide("kms:Decrypt", h, None).reason for h in facts.hosts}
    return ok(GROUP, "key-attestation", f"Decrypt without an attestation is {_denied(reasons)}")


def debug_not_approved(facts: KeyFacts) -> Finding:
    debug = dict.fromkeys(range(3), DEBUG_PCR)

    def ask(host: Host) -> tuple[str, str, str | None] | None:
        decision = facts.decide("kms:Decrypt", host, debug)
        if decision.allowed:
            return (
                "fail",
                f"the debug-mode (all-zero) PCR0 is approved for {host.named} ({decision.reason}):"
                " any enclave started with --debug-mode, whose memory and console the host can "
                "read, gets the key",
                f"`strongroom image revoke --pcr0 {DEBUG_PCR} --key {facts.key}`",
            )
        return None

    found = _each_host(facts, "key-debug", ask)
    if found is not None or not facts.hosts:
        return found or ok(GROUP, "key-debug", "no host to ask")
    return ok(GROUP, "key-debug", "a debug-mode enclave (all-zero PCR0) is denied")


def _denied_actions(facts: KeyFacts, name: str, actions: tuple[str, ...], what: str) -> Finding:
    """fail if the host may do any of ``actions``; warn if nothing denies them explicitly."""
    implicit: list[str] = []
    explicit: set[str] = set()
    for host in facts.hosts:
        for action in actions:
            decision = facts.decide(action, host, None)
            if decision.allowed:
                return fail(
                    GROUP,
                    name,
                    f"{host.named} may {action} ({decision.reason}): {what}",
                    f"add an explicit Deny of {', '.join(actions)} for {host.named} to the key "
                    "policy (the runbook's key policy has one)",
                )
            if decision.effect == "ImplicitDeny":
                implicit.append(f"{action} by {host.named}")
            else:
                explicit.add(decision.reason)
    if not facts.hosts:
        return ok(GROUP, name, "no host to ask")
    if implicit:
        return warn(
            GROUP,
            name,
            f"{listed(implicit)}: denied only because no statement allows it, not by an explicit "
            "Deny (a statement added later, say kms:* for the host, would allow it)",
            f"add an explicit Deny of {', '.join(actions)} for the host to the key policy",
        )
    return ok(GROUP, name, f"{', '.join(actions)} {_denied(explicit)}")


def reencrypt_denied(facts: KeyFacts) -> Finding:
    return _denied_actions(
        facts,
        "key-reencrypt",
        REENCRYPT_ACTIONS,
        "ReEncrypt re-wraps a package's data key under a key the host controls, with no "
        "attestation",
    )


def grant_denied(facts: KeyFacts) -> Finding:
    return _denied_actions(
        facts,
        "key-grant",
        GRANT_ACTIONS,
        "a grant gives Decrypt without the key policy's attestation conditions",
    )


def image_approved(facts: KeyFacts, image: ImageFacts | None) -> Finding:
    if image is None:
        if not facts.approved:
            return warn(
                GROUP,
                "key-image",
                "the key policy approves no image measurement: no enclave gets the key",
                f"`strongroom image approve IMAGE --key {facts.key}`",
            )
        return ok(
            GROUP,
            "key-image",
            f"approved: {listed([m[:16] + '…' for m in facts.approved])} "
            "(give --image to check an image)",
        )
    pcr0 = image.pcr0
    for host in facts.hosts:
        decision = facts.decide("kms:Decrypt", host, image.pcrs)
        if not decision.allowed:
            return fail(
                GROUP,
                "key-image",
                f"{image.path.name} (PCR0 {pcr0[:16]}…) is not approved for {host.named}: "
                f"{decision.describe()}",
                f"`strongroom image approve {image.path} --key {facts.key}` (as the vendor)",
            )
    if not facts.hosts:
        return warn(GROUP, "key-image", f"{image.path.name}: no host to ask", None)
    return ok(GROUP, "key-image", f"{image.path.name} (PCR0 {pcr0[:16]}…) is approved")


def _denied(reasons: set[str]) -> str:
    return "denied: " + "; ".join(sorted(reasons))
