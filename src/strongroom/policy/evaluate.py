"""Evaluate a key policy for one request, the way AWS KMS evaluates key policies.

The result is a :class:`Decision` that names the statement that decided it, so
that a denial can be explained ("explicit deny by statement
"DenyDecryptUnlessApprovedImage"") without re-running anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from strongroom.policy._conditions import Lookup
from strongroom.policy.document import PolicyDocument, Statement

ContextValue = str | bool | Sequence[str]


@dataclass(frozen=True)
class RequestContext:
    """Who asks for what, plus the condition keys the request carries.

    ``values`` holds condition context keys (``aws:PrincipalArn``,
    ``kms:EncryptionContext:app``, ``kms:RecipientAttestation:ImageSha384``,
    ``aws:CurrentTime`` as ISO-8601, ``aws:SecureTransport`` as a bool, ...). A
    key the request does not carry must be left out, not set to ``""``: the
    difference decides negated operators. An empty sequence counts as missing.
    """

    action: str
    resource: str
    principal_arn: str
    account_id: str
    values: Mapping[str, ContextValue] = field(default_factory=dict)

    @cached_property
    def condition_values(self) -> Lookup:
        """``values`` by lower-cased key (condition keys are case-insensitive), as strings."""
        lookup: dict[str, tuple[str, ...]] = {}
        for key, value in self.values.items():
            if isinstance(value, bool):
                lookup[key.lower()] = ("true" if value else "false",)
            elif isinstance(value, str):
                lookup[key.lower()] = (value,)
            elif value:
                lookup[key.lower()] = tuple(value)
        return lookup


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`evaluate`, naming the statement that decided it."""

    allowed: bool
    effect: Literal["Allow", "Deny", "ImplicitDeny"]
    statement_sid: str | None
    statement_index: int | None
    reason: str

    def describe(self) -> str:
        """One line for a log or an AccessDenied message."""
        return f"{'allowed' if self.allowed else 'denied'}: {self.reason}"


def evaluate(policy: PolicyDocument, request: RequestContext) -> Decision:
    """Decide ``request`` against ``policy``.

    An explicit Deny wins over any Allow, so every Deny statement is checked
    even once an Allow has matched; Allow statements after the first matching
    one are skipped.
    """
    allowing: int | None = None
    for index, statement in enumerate(policy.statements):
        if statement.effect == "Allow" and allowing is not None:
            continue
        if not _applies(statement, request):
            continue
        if statement.effect == "Deny":
            return Decision(
                False, "Deny", statement.sid, index, f"explicit deny by {_label(statement, index)}"
            )
        allowing = index
    if allowing is None:
        return Decision(
            False,
            "ImplicitDeny",
            None,
            None,
            f"no statement allows {request.action} to {request.principal_arn}",
        )
    statement = policy.statements[allowing]
    return Decision(
        True, "Allow", statement.sid, allowing, f"allowed by {_label(statement, allowing)}"
    )


def _applies(statement: Statement, request: RequestContext) -> bool:
    # Cheapest tests first: conditions are the only ones that may look at many values.
    return (
        statement.matches_action(request.action)
        and statement.matches_principal(request.principal_arn, request.account_id)
        and statement.matches_resource(request.resource)
        and statement.conditions_hold(request.condition_values)
    )


def _label(statement: Statement, index: int) -> str:
    return f'statement "{statement.sid}"' if statement.sid else f"Statement[{index}]"
