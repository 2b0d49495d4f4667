"""Policy documents (key, session and bucket policies): parse, validate and serialise.

Three kinds of document share this parser. A *key policy* (a resource policy)
names its principals in every statement. A *session policy* (the inline
``Policy`` of STS ``AssumeRole``/``GetFederationToken``) is an identity
policy: it has no ``Principal`` (it applies to the session it is attached to)
and may only narrow what the session could otherwise do. A *bucket policy* is
S3's resource policy: principals as in a key policy, resources S3 ARNs, and
S3's smaller size limit. Error messages name the kind being parsed.

A policy is refused when it is stored, not when it is used: an unknown element,
operator or value shape raises :class:`PolicyError`, because IAM ignores
nothing silently either and a misspelt ``"Conditon"`` would otherwise turn a
guarded Allow into an unconditional one. Duplicate JSON keys are refused for the
same reason (which of two ``"Effect"`` values counts is not obvious to a reader).

Parsed documents are frozen. Everything the evaluator needs per request
(wildcard regexes, principal sets, condition predicates) is compiled here, once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from strongroom.errors import InvalidInputError
from strongroom.policy._conditions import (
    ConditionSyntaxError,
    Lookup,
    Predicate,
    compile_condition,
    compile_wildcards,
)

#: KMS refuses key policies larger than this (bytes of UTF-8).
MAX_POLICY_BYTES = 32 * 1024
#: S3 refuses bucket policies larger than this (bytes of UTF-8).
MAX_BUCKET_POLICY_BYTES = 20 * 1024
VERSIONS = ("2012-10-17", "2008-10-17")
#: Only this version gives ``${...}`` its policy-variable meaning.
_VARIABLES_VERSION = "2012-10-17"

_POLICY_ELEMENTS = ("Version", "Id", "Statement")
_STATEMENT_ELEMENTS = (
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
)
_PRINCIPAL_TYPES = ("AWS", "Service")
#: Which kind of document :meth:`PolicyDocument.parse` reads.
PolicyKind = Literal["key", "session", "bucket"]

# IAM names and account ids are ASCII; re.ASCII keeps \d and \w from accepting other scripts.
_PARTITION = r"arn:aws(?:-[a-z]+)*"
_NAME = r"[\w+=,.@-]+"
_ACCOUNT = re.compile(r"\d{12}", re.ASCII)
_ACCOUNT_ROOT = re.compile(rf"{_PARTITION}:iam::(\d{{12}}):root", re.ASCII)
_ROLE = re.compile(rf"({_PARTITION}):iam::(\d{{12}}):role/(?:{_NAME}/)*({_NAME})", re.ASCII)
_USER = re.compile(rf"{_PARTITION}:iam::\d{{12}}:user/(?:{_NAME}/)*{_NAME}", re.ASCII)
_SESSION = re.compile(rf"({_PARTITION}):sts::(\d{{12}}):assumed-role/({_NAME})/{_NAME}", re.ASCII)
_ACTION = re.compile(r"\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+")
_S3_ARN = re.compile(rf"{_PARTITION}:s3:::.+", re.ASCII | re.DOTALL)
_AWS_PRINCIPAL_FORMS = (_ACCOUNT, _ACCOUNT_ROOT, _ROLE, _USER, _SESSION)

_AWS_PRINCIPAL_HINT = (
    'use "*", a 12-digit account id, arn:aws:iam::ACCOUNT:root, '
    "arn:aws:iam::ACCOUNT:role/NAME, arn:aws:iam::ACCOUNT:user/NAME "
    "or arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION"
)


class PolicyError(InvalidInputError):
    """A policy is not valid JSON or uses something Strongroom does not support."""


@dataclass(frozen=True)
class _Kind:
    """What differs between the kinds of document: their name, size limit and resources."""

    noun: str
    max_bytes: int
    limit_of: str
    #: Resources are ``*`` or any ARN (None), or must match this.
    resource: re.Pattern[str] | None
    resource_hint: str


_KINDS: dict[PolicyKind, _Kind] = {
    "key": _Kind(
        "key policy", MAX_POLICY_BYTES, "KMS", None, 'a key policy applies to its own key: use "*"'
    ),
    "session": _Kind("session policy", MAX_POLICY_BYTES, "KMS", None, 'e.g. "*" or a key ARN'),
    "bucket": _Kind(
        "bucket policy",
        MAX_BUCKET_POLICY_BYTES,
        "S3",
        _S3_ARN,
        "a bucket policy names its bucket or objects: arn:aws:s3:::BUCKET or "
        "arn:aws:s3:::BUCKET/KEY (with * and ?)",
    ),
}


@dataclass(frozen=True)
class Principals:
    """A ``Principal`` or ``NotPrincipal`` element.

    ``everyone`` is the bare ``"*"`` form (kept apart from ``{"AWS": "*"}`` only
    so that the document serialises as written). ``service`` principals are
    parsed but match no caller: a local request always comes from an IAM
    identity.
    """

    aws: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    everyone: bool = False
    _anyone: bool = field(init=False, repr=False, compare=False)
    _accounts: frozenset[str] = field(init=False, repr=False, compare=False)
    _arns: frozenset[str] = field(init=False, repr=False, compare=False)
    _roles: frozenset[tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        accounts: set[str] = set()
        for value in self.aws:
            root = _ACCOUNT_ROOT.fullmatch(value)
            if root or _ACCOUNT.fullmatch(value):
                accounts.add(root.group(1) if root else value)
        roles = {m.groups() for m in map(_ROLE.fullmatch, self.aws) if m}
        object.__setattr__(self, "_anyone", self.everyone or "*" in self.aws)
        object.__setattr__(self, "_accounts", frozenset(accounts))
        object.__setattr__(self, "_arns", frozenset(self.aws))
        object.__setattr__(self, "_roles", frozenset(roles))

    def matches(self, principal_arn: str, account_id: str) -> bool:
        """Whether the caller is one of these principals.

        An account (id or ``:root`` ARN) stands for every principal of that
        account: locally there are no IAM identity policies for the account to
        delegate through, so the account's grant reaches all its principals. An
        assumed-role session matches its role's ARN (role names are unique in an
        account, whatever their path).
        """
        if self._anyone or account_id in self._accounts or principal_arn in self._arns:
            return True
        session = _SESSION.fullmatch(principal_arn) if self._roles else None
        return session is not None and session.groups() in self._roles

    def to_json_value(self) -> str | dict[str, str | list[str]]:
        if self.everyone:
            return "*"
        typed = {"AWS": self.aws, "Service": self.service}
        return {name: _one_or_list(values) for name, values in typed.items() if values}


@dataclass(frozen=True)
class Condition:
    """One key under one operator of a ``Condition`` block (``StringEquals kms:CallerAccount``)."""

    operator: str
    key: str
    values: tuple[str, ...]
    _holds: Predicate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            holds = compile_condition(self.operator, self.key, self.values)
        except ConditionSyntaxError as error:
            raise PolicyError(
                f"Condition {self.operator!r} {self.key!r}: {error}", hint=error.hint
            ) from None
        object.__setattr__(self, "_holds", holds)

    def holds(self, context: Lookup) -> bool:
        return self._holds(context)


@dataclass(frozen=True)
class Statement:
    """One statement; the ``not_*`` flags mean the element was ``NotPrincipal`` etc."""

    effect: Literal["Allow", "Deny"]
    principals: Principals
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    sid: str | None = None
    not_principal: bool = False
    #: False for a session-policy statement, which has no Principal element at all.
    names_principal: bool = True
    not_action: bool = False
    not_resource: bool = False
    conditions: tuple[Condition, ...] = ()
    _actions: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _resources: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # IAM compares action names case-insensitively and resource ARNs exactly.
        object.__setattr__(self, "_actions", compile_wildcards(self.actions, ignore_case=True))
        object.__setattr__(self, "_resources", compile_wildcards(self.resources, ignore_case=False))

    def matches_principal(self, principal_arn: str, account_id: str) -> bool:
        return self.principals.matches(principal_arn, account_id) != self.not_principal

    def matches_action(self, action: str) -> bool:
        return (self._actions.fullmatch(action) is not None) != self.not_action

    def matches_resource(self, resource: str) -> bool:
        return (self._resources.fullmatch(resource) is not None) != self.not_resource

    def conditions_hold(self, context: Lookup) -> bool:
        return all(condition.holds(context) for condition in self.conditions)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {} if self.sid is None else {"Sid": self.sid}
        result["Effect"] = self.effect
        if self.names_principal:
            result[_name("Principal", self.not_principal)] = self.principals.to_json_value()
        result[_name("Action", self.not_action)] = _one_or_list(self.actions)
        result[_name("Resource", self.not_resource)] = _one_or_list(self.resources)
        if self.conditions:
            block: dict[str, dict[str, str | list[str]]] = {}
            for condition in self.conditions:
                block.setdefault(condition.operator, {})[condition.key] = _one_or_list(
                    condition.values
                )
            result["Condition"] = block
        return result


@dataclass(frozen=True)
class PolicyDocument:
    """A parsed policy; statements keep their order, which decisions refer to by index."""

    statements: tuple[Statement, ...]
    version: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, text: str, *, kind: PolicyKind = "key") -> PolicyDocument:
        """Parse and validate a policy of ``kind``; raises :class:`PolicyError`."""
        spec = _KINDS[kind]
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > spec.max_bytes:
            raise PolicyError(
                f"{spec.noun} is {size} bytes, more than {spec.limit_of}'s limit of "
                f"{spec.max_bytes}",
                hint="merge statements or list fewer principals and measurements",
            )
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, spec))
        except (ValueError, RecursionError) as error:  # ValueError: also over-long integers
            raise PolicyError(
                f"{spec.noun} is not valid JSON: {error}",
                hint="check it with `python -m json.tool`",
            ) from None
        return cls._from_json(data, kind)

    @classmethod
    def _from_json(cls, data: object, kind: PolicyKind = "key") -> PolicyDocument:
        noun = _KINDS[kind].noun
        if not isinstance(data, dict):
            raise PolicyError(f"{noun} must be a JSON object", hint='start with {"Version": ...')
        _reject_unknown(data, _POLICY_ELEMENTS, noun)
        version = _optional_string(data, "Version", noun)
        if version is not None and version not in VERSIONS:
            raise PolicyError(
                f"{noun} Version {version!r} is not supported",
                hint=f"use {VERSIONS[0]!r}",
            )
        if "Statement" not in data:
            raise PolicyError(f"{noun} has no Statement", hint="add a Statement list")
        raw = data["Statement"]
        raw_statements = raw if isinstance(raw, list) else [raw]
        statements = []
        for index, raw_statement in enumerate(raw_statements):
            try:
                statements.append(
                    _statement(raw_statement, variables=version == _VARIABLES_VERSION, kind=kind)
                )
            except PolicyError as error:
                raise PolicyError(
                    f"{noun} Statement[{index}] {error.message}", hint=error.hint
                ) from None
        return cls(tuple(statements), version, _optional_string(data, "Id", noun))

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON-ready data, elements in the conventional order."""
        result: dict[str, Any] = {}
        if self.version is not None:
            result["Version"] = self.version
        if self.id is not None:
            result["Id"] = self.id
        result["Statement"] = [statement.to_dict() for statement in self.statements]
        return result

    def to_json(self) -> str:
        """Indented JSON; the same document always gives the same text."""
        return json.dumps(self.to_dict(), indent=2)


# --- parsing helpers: each raises PolicyError naming the element --------------


def _statement(data: object, *, variables: bool, kind: PolicyKind = "key") -> Statement:
    if not isinstance(data, dict):
        raise PolicyError("must be a JSON object", hint="each statement is {...}")
    _reject_unknown(data, _STATEMENT_ELEMENTS, "")
    effect = data.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(
            f"Effect must be 'Allow' or 'Deny', not {effect!r}", hint="the value is case-sensitive"
        )
    if kind == "session":
        if "Principal" in data or "NotPrincipal" in data:
            raise PolicyError(
                "has a Principal, which a session policy may not have",
                hint="a session policy applies to the session it is passed with: drop Principal",
            )
        principals, not_principal = Principals(everyone=True), False
    else:
        principal, not_principal = _either(data, "Principal")
        principals = _principals(principal, _name("Principal", not_principal))
    action, not_action = _either(data, "Action")
    resource, not_resource = _either(data, "Resource")
    return Statement(
        effect=effect,
        sid=_optional_string(data, "Sid", ""),
        principals=principals,
        not_principal=not_principal,
        names_principal=kind != "session",
        actions=_actions(action, _name("Action", not_action)),
        not_action=not_action,
        resources=_resources(
            resource, _name("Resource", not_resource), variables=variables, kind=_KINDS[kind]
        ),
        not_resource=not_resource,
        conditions=_conditions(data.get("Condition", {}), variables=variables),
    )


def _either(data: dict[str, Any], element: str) -> tuple[object, bool]:
    """The value of ``element`` or ``Not<element>`` (exactly one must be present)."""
    negated = f"Not{element}"
    if (element in data) == (negated in data):
        raise PolicyError(
            f"needs exactly one of {element} and {negated}",
            hint=f'policies name them explicitly, e.g. "{element}": "*"',
        )
    return (data[element], False) if element in data else (data[negated], True)


def _principals(value: object, element: str) -> Principals:
    if value == "*":
        return Principals(everyone=True)
    if not isinstance(value, dict) or not value:
        raise PolicyError(
            f'{element} must be "*" or an object like {{"AWS": [...]}}', hint=_AWS_PRINCIPAL_HINT
        )
    _reject_unknown(value, _PRINCIPAL_TYPES, element)
    aws = _strings(value.get("AWS", []), f"{element}.AWS", allow_empty="AWS" not in value)
    for arn in aws:
        if arn != "*" and not any(form.fullmatch(arn) for form in _AWS_PRINCIPAL_FORMS):
            raise PolicyError(
                f"{element}.AWS {arn!r} is not an account or an IAM principal ARN",
                hint=_AWS_PRINCIPAL_HINT,
            )
    service = _strings(
        value.get("Service", []), f"{element}.Service", allow_empty="Service" not in value
    )
    return Principals(aws=aws, service=service)


def _actions(value: object, element: str) -> tuple[str, ...]:
    actions = _strings(value, element)
    for action in actions:
        if not _ACTION.fullmatch(action):
            raise PolicyError(
                f"{element} {action!r} is not SERVICE:ACTION",
                hint="e.g. kms:Decrypt, kms:ReEncrypt* or kms:*",
            )
    return actions


def _resources(value: object, element: str, *, variables: bool, kind: _Kind) -> tuple[str, ...]:
    resources = _strings(value, element)
    for resource in resources:
        if kind.resource is not None and not kind.resource.fullmatch(resource):
            raise PolicyError(f"{element} {resource!r} is not an S3 ARN", hint=kind.resource_hint)
        if resource != "*" and not resource.startswith("arn:"):
            raise PolicyError(
                f"{element} {resource!r} is neither * nor an ARN", hint=kind.resource_hint
            )
    if variables:
        _check_no_variables(resources, element)
    return resources


def _conditions(block: object, *, variables: bool) -> tuple[Condition, ...]:
    if not isinstance(block, dict):
        raise PolicyError(
            "Condition must be an object of operators",
            hint='e.g. {"StringEquals": {"kms:CallerAccount": "111122223333"}}',
        )
    conditions = []
    for operator_name, keys in block.items():
        if not isinstance(keys, dict) or not keys:
            raise PolicyError(
                f"Condition {operator_name!r} must be a non-empty object of condition keys",
                hint=f'e.g. {{"{operator_name}": {{"aws:PrincipalArn": "..."}}}}',
            )
        for key, raw in keys.items():
            element = f"Condition {operator_name!r} {key!r}"
            if ":" not in key:
                raise PolicyError(
                    f"{element}: a condition key has a service prefix",
                    hint="e.g. kms:CallerAccount or aws:PrincipalArn",
                )
            values = _condition_values(raw, element)
            if variables:
                _check_no_variables(values, element)
            conditions.append(Condition(operator_name, key, values))
    return tuple(conditions)


def _condition_values(value: object, element: str) -> tuple[str, ...]:
    """Condition values as strings: JSON booleans and numbers are spelt as IAM reads them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise PolicyError(f"{element} has no values", hint="give at least one value")
    values = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str | int | float):
            values.append(str(item))
        else:
            raise PolicyError(
                f"{element} values must be strings, not {type(item).__name__}",
                hint='write the value in quotes, e.g. "true" or "111122223333"',
            )
    return tuple(values)


def _strings(value: object, element: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) and item for item in items) or not (items or allow_empty):
        raise PolicyError(
            f"{element} must be a non-empty string or a non-empty list of them",
            hint=f'e.g. "{element.split(".")[-1]}": ["..."]',
        )
    return tuple(items)


def _check_no_variables(values: tuple[str, ...], element: str) -> None:
    if any("${" in value for value in values):
        raise PolicyError(
            f"{element} uses a policy variable (${{...}}), which is not supported",
            hint="write the value out literally",
        )


def _optional_string(data: dict[str, Any], element: str, where: str) -> str | None:
    value = data.get(element)
    if value is not None and not isinstance(value, str):
        raise PolicyError(
            f"{where} {element} must be a string".lstrip(), hint=f'e.g. "{element}": "..."'
        )
    return value


def _reject_unknown(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for element in data:
        if element not in known:
            raise PolicyError(
                f"{where} has an unknown element {element!r}".lstrip(),
                hint=f"allowed: {', '.join(known)} (names are case-sensitive)",
            )


def _unique_keys(pairs: list[tuple[str, Any]], kind: _Kind) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PolicyError(
                f"{kind.noun} repeats the element {key!r} in one object",
                hint="keep one; JSON readers disagree on which duplicate wins",
            )
        result[key] = value
    return result


def _name(element: str, negated: bool) -> str:
    return f"Not{element}" if negated else element


def _one_or_list(values: tuple[str, ...]) -> str | list[str]:
    return values[0] if len(values) == 1 else list(values)
