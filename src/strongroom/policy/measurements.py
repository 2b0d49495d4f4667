"""Approved enclave-image measurements, kept in the key policy itself.

The key policy is the only record of which images may decrypt: there is no
side list to drift from what KMS enforces, and the same edits work on AWS KMS
and on the local key service through GetKeyPolicy / PutKeyPolicy. Functions
here take policy JSON text and return policy JSON text.

Two statements, found by their Sid, carry the approval (the shape AWS documents
for Nitro Enclaves):

- ``ALLOW_SID`` allows the host principals ``kms:Decrypt``;
- ``DENY_SID`` denies them ``kms:Decrypt`` and ``kms:ReEncrypt*`` (re-wrapping
  under another key would bypass the gate) under ``StringNotEqualsIgnoreCase``
  on ``kms:RecipientAttestation:ImageSha384``. A negated operator is true when
  the key is missing, so a request without an attestation is denied too.

``runbook_policy`` adds explicit Denies for the host principals (``HOST_DENY_SIDS``)
so that the host's power over the key does not rest on the absence of an Allow:
a later, broader Allow (a grant, a copied statement) cannot hand the host
ReEncrypt, CreateGrant, Encrypt or a data key. ``approve``/``revoke`` never touch
them, nor any other statement they did not write.

With no approved measurement the Deny has no Condition at all, so it denies the
host every Decrypt: an empty value list is not valid policy JSON, and any
"never matches" value would be a magic string a reader must recognise.

Edits work on the parsed JSON data, not on :class:`PolicyDocument`, so every
other statement is written back exactly as it was read (same elements, order
and spelling); only a lone ``Statement`` object becomes a one-item list. Input
and output are both validated as policies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from strongroom.errors import NotFoundError, UsageError
from strongroom.policy.document import PolicyDocument, PolicyError

Json = dict[str, Any]

ALLOW_SID = "AllowEnclaveDecrypt"
DENY_SID = "DenyDecryptUnlessApprovedImage"
OWNER_SID = "EnableOwnerAccess"
IMAGE_SHA384_KEY = "kms:RecipientAttestation:ImageSha384"
GATE_OPERATOR = "StringNotEqualsIgnoreCase"
GATED_ACTIONS = ("kms:Decrypt", "kms:ReEncrypt*")
POLICY_VERSION = "2012-10-17"

#: The host's explicit Denies, by Sid. GenerateDataKey* is denied only without an
#: attestation (a Null condition) so the rule reads as "no data keys outside an
#: enclave"; the NotAction Deny then also closes it, and everything else but
#: Decrypt and the read-only DescribeKey (which tools use to check the key).
HOST_DENIES: tuple[tuple[str, str, list[str], Json | None], ...] = (
    ("DenyHostReEncrypt", "Action", ["kms:ReEncrypt*"], None),
    ("DenyHostCreateGrant", "Action", ["kms:CreateGrant"], None),
    (
        "DenyHostGenerateDataKey",
        "Action",
        ["kms:GenerateDataKey*"],
        {"Null": {IMAGE_SHA384_KEY: "true"}},
    ),
    ("DenyHostEncrypt", "Action", ["kms:Encrypt"], None),
    ("DenyHostAllButDecrypt", "NotAction", ["kms:Decrypt", "kms:DescribeKey"], None),
)
HOST_DENY_SIDS = tuple(sid for sid, *_ in HOST_DENIES)

_SHA384_HEX = re.compile(r"[0-9a-fA-F]{96}")
_HOSTS_HINT = "name the host principals (account id, role or user ARN) that run the enclave"


def runbook_policy(owner_account: str, host_principals: list[str], approved: list[str]) -> str:
    """A complete key policy: the owner account administers, the hosts decrypt if approved.

    The accounts come from :func:`strongroom.keys.key_policy.key_policy_accounts`.
    """
    if not host_principals:
        raise PolicyError("no host principal given", hint=_HOSTS_HINT)
    deny = _deny_statement(host_principals)
    _set_approved(deny, _unique(_checked(measurement) for measurement in approved))
    owner = {
        "Sid": OWNER_SID,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{owner_account}:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    policy = {
        "Version": POLICY_VERSION,
        "Statement": [
            owner,
            _allow_statement(host_principals),
            deny,
            *_host_denies(host_principals),
        ],
    }
    return _dump(policy)


def approved_measurements(policy_text: str) -> list[str]:
    """The approved ImageSha384 (PCR0) values, lower-case, in policy order.

    Empty when the policy has no ``DENY_SID`` statement or it denies every image.
    """
    _, policy = _load(policy_text)
    statements = _statements(policy)
    index = _find(statements, DENY_SID)
    return [] if index is None else _approved(statements[index])


def approve(
    policy_text: str,
    pcr0: str,
    *,
    host_principals: list[str] | None = None,
    replace: bool = False,
) -> str:
    """Add ``pcr0`` to the approved measurements (``replace`` drops all others).

    The two statements are created when absent, which needs ``host_principals``.
    When they exist, ``host_principals`` may be omitted; if given it must name
    the hosts already there, since silently keeping or changing who may
    decrypt would both surprise.
    """
    measurement = _checked(pcr0)
    document, policy = _load(policy_text)
    statements = _statements(policy)
    _ensure(statements, document, ALLOW_SID, _allow_statement, host_principals)
    deny = _ensure(statements, document, DENY_SID, _deny_statement, host_principals)
    approved = [] if replace else _approved(deny)
    if measurement not in approved:
        approved.append(measurement)
    _set_approved(deny, approved)
    return _dump(policy)


def revoke(policy_text: str, pcr0: str) -> str:
    """Remove ``pcr0``; removing the last one leaves the host denied every Decrypt."""
    measurement = _checked(pcr0)
    _, policy = _load(policy_text)
    statements = _statements(policy)
    index = _find(statements, DENY_SID)
    approved = [] if index is None else _approved(statements[index])
    if index is None or measurement not in approved:
        raise NotFoundError(
            f"image measurement {measurement} is not approved by this key policy",
            hint="run `strongroom image approved` to list the approved measurements",
        )
    approved.remove(measurement)
    _set_approved(statements[index], approved)
    return _dump(policy)


def _ensure(
    statements: list[Json],
    document: PolicyDocument,
    sid: str,
    make: Callable[[list[str]], Json],
    host_principals: list[str] | None,
) -> Json:
    """The statement with ``sid``, appended by ``make`` when the policy lacks it."""
    index = _find(statements, sid)
    if index is None:
        if not host_principals:
            raise PolicyError(f"key policy has no {sid!r} statement", hint=_HOSTS_HINT)
        statements.append(make(host_principals))
        return statements[-1]
    if host_principals and set(host_principals) != set(document.statements[index].principals.aws):
        raise PolicyError(
            f"key policy statement {sid!r} names other hosts than {', '.join(host_principals)}",
            hint="omit the host principals to keep the current hosts, "
            "or edit the key policy to change them",
        )
    return statements[index]


def _allow_statement(host_principals: list[str]) -> Json:
    return {
        "Sid": ALLOW_SID,
        "Effect": "Allow",
        "Principal": {"AWS": list(host_principals)},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }


def _host_denies(host_principals: list[str]) -> list[Json]:
    statements: list[Json] = []
    for sid, element, actions, condition in HOST_DENIES:
        statement: Json = {
            "Sid": sid,
            "Effect": "Deny",
            "Principal": {"AWS": list(host_principals)},
            element: list(actions),
            "Resource": "*",
        }
        if condition is not None:
            statement["Condition"] = json.loads(json.dumps(condition))  # a copy per policy
        statements.append(statement)
    return statements


def _deny_statement(host_principals: list[str]) -> Json:
    return {
        "Sid": DENY_SID,
        "Effect": "Deny",
        "Principal": {"AWS": list(host_principals)},
        "Action": list(GATED_ACTIONS),
        "Resource": "*",
    }


def _approved(deny: Json) -> list[str]:
    gate: Json = deny.get("Condition", {}).get(GATE_OPERATOR, {})
    values: object = next((v for k, v in gate.items() if k.lower() == IMAGE_SHA384_KEY.lower()), [])
    return _unique(str(v).lower() for v in (values if isinstance(values, list) else [values]))


def _set_approved(deny: Json, measurements: list[str]) -> None:
    """Write the gate's values, dropping the emptied parts so the Deny becomes unconditional."""
    condition = deny.setdefault("Condition", {})
    gate = condition.setdefault(GATE_OPERATOR, {})
    key = next((k for k in gate if k.lower() == IMAGE_SHA384_KEY.lower()), IMAGE_SHA384_KEY)
    if measurements:
        gate[key] = measurements
    else:
        gate.pop(key, None)
    if not gate:
        del condition[GATE_OPERATOR]
    if not condition:
        del deny["Condition"]


def _checked(pcr0: str) -> str:
    if not _SHA384_HEX.fullmatch(pcr0):
        raise UsageError(
            f"{pcr0!r} is not an image measurement",
            hint="give the 96 hex characters of the image's PCR0 (SHA-384), "
            "as `strongroom image build` prints it",
        )
    return pcr0.lower()


def _load(policy_text: str) -> tuple[PolicyDocument, Json]:
    document = PolicyDocument.parse(policy_text)  # validates; the data below is then well-formed
    policy: Json = json.loads(policy_text)
    return document, policy


def _dump(policy: Json) -> str:
    text = json.dumps(policy, indent=2)
    PolicyDocument.parse(text)  # e.g. too many measurements for KMS's size limit
    return text


def _statements(policy: Json) -> list[Json]:
    if isinstance(policy["Statement"], dict):
        policy["Statement"] = [policy["Statement"]]
    statements: list[Json] = policy["Statement"]
    return statements


def _find(statements: list[Json], sid: str) -> int | None:
    found = [index for index, statement in enumerate(statements) if statement.get("Sid") == sid]
    if len(found) > 1:
        raise PolicyError(
            f"key policy has {len(found)} statements with Sid {sid!r}",
            hint="merge them into one so that approvals have a single place",
        )
    return found[0] if found else None


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
