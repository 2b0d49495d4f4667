"""Key policies: IAM policy semantics as AWS KMS applies them to key policies.

The local key service evaluates every request against its key's policy with
:func:`evaluate`; the ``image approve / revoke / approved`` commands edit the
approved enclave measurements in a policy with :mod:`.measurements`, which
works on AWS KMS too (through GetKeyPolicy / PutKeyPolicy).

Evaluation rules (IAM's, for a resource policy with no identity policies):

1. An explicit ``Deny`` that applies wins, whatever else matches.
2. Otherwise any ``Allow`` that applies allows.
3. Otherwise the request is denied implicitly.

A statement applies when its principal, action, resource and every condition
match (``NotPrincipal``, ``NotAction`` and ``NotResource`` invert their match).
Principals: ``"*"`` is anyone; an account id or ``arn:aws:iam::ACCOUNT:root``
is every principal of that account, because locally no identity policies exist
for the account to delegate through; a role or user ARN is exactly that ARN,
and a caller ``arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`` is also the
role ``NAME``. ``Service`` principals never match a caller.

Session policies (STS's inline ``Policy``) are parsed by the same code with
``kind="session"``: no ``Principal``; the key service allows a request made
with session credentials only if the key policy allows it **and** the session
policy does, so a session policy can only narrow.

S3 bucket policies are parsed with ``kind="bucket"`` (S3's 20 KiB limit,
resources must be S3 ARNs): :mod:`strongroom.storage.access` decides S3
requests against the share policies Strongroom writes with this evaluator.

Conditions: operators are ANDed, keys under one operator are ANDed, values of
one key are ORed; a negated operator (``StringNotEquals``, ...) holds when the
request value matches none of them. When the request lacks the key, a positive
operator is false but a **negated operator is true**, ``...IfExists`` is true,
``Null: true`` is true, ``ForAllValues:`` is true and ``ForAnyValue:`` false.
That is what makes the AWS Nitro pattern ``Deny unless StringNotEqualsIgnoreCase
kms:RecipientAttestation:ImageSha384 [approved]`` deny a caller who sends no
attestation at all. Condition keys are case-insensitive, values case-sensitive
except under ``...IgnoreCase`` operators. ``ArnEquals`` and ``ArnLike`` (alike,
as in IAM) and their ``ArnNot...`` negations compare an ARN component by
component: each of the six ``:``-separated parts (``arn:PARTITION:SERVICE:
REGION:ACCOUNT:RESOURCE``) matches on its own, with ``*`` and ``?`` that stay
inside the part (the resource part may hold ``:``), case-sensitively; a policy
value without six parts is refused, a request value that is not an ARN matches
nothing. Policy variables (``${aws:username}``) are not supported and are
refused when a policy is parsed.
"""

from strongroom.policy.document import (
    MAX_BUCKET_POLICY_BYTES,
    MAX_POLICY_BYTES,
    Condition,
    PolicyDocument,
    PolicyError,
    PolicyKind,
    Principals,
    Statement,
)
from strongroom.policy.evaluate import ContextValue, Decision, RequestContext, evaluate
from strongroom.policy.measurements import (
    ALLOW_SID,
    DENY_SID,
    OWNER_SID,
    approve,
    approved_measurements,
    revoke,
    runbook_policy,
)

__all__ = [
    "ALLOW_SID",
    "DENY_SID",
    "MAX_BUCKET_POLICY_BYTES",
    "MAX_POLICY_BYTES",
    "OWNER_SID",
    "Condition",
    "ContextValue",
    "Decision",
    "PolicyDocument",
    "PolicyError",
    "PolicyKind",
    "Principals",
    "RequestContext",
    "Statement",
    "approve",
    "approved_measurements",
    "evaluate",
    "revoke",
    "runbook_policy",
]
