"""Condition operators and wildcards, compiled once when a policy is parsed.

A key policy is evaluated on every key-service request, so nothing here is
interpreted per request: each ``operator / key / values`` triple of a
``Condition`` block becomes one closure, and each list of wildcard patterns one
regular expression.

The semantics are IAM's (see :mod:`strongroom.policy`): a positive operator is
false on a missing key, a negated one (``...Not...``) true, ``...IfExists``
true; ``ForAllValues:`` is true on a missing key and ``ForAnyValue:`` false.
A negated operator is exactly the negation of its positive twin on a present
key, which is why "must match none of the values" needs no code of its own.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

Lookup = Mapping[str, tuple[str, ...]]
"""Request condition values by lower-cased key; a missing key is absent, never ``()``."""

Predicate = Callable[[Lookup], bool]
_ValueTest = Callable[[str], bool]
_Comparison = Callable[[float, float], bool]

_ANY_VALUE = "ForAnyValue"
_ALL_VALUES = "ForAllValues"
_IF_EXISTS = "IfExists"
_NULL = "Null"

_WILDCARDS = {"*": ".*", "?": "."}
#: An ARN's components: arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE (the last may hold ':').
_ARN_COMPONENTS = 6
#: Wildcards in an ARN's first five components stay inside their component.
_COMPONENT_WILDCARDS = {"*": "[^:]*", "?": "[^:]"}
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_COMPARISONS: dict[str, _Comparison] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "LessThanEquals": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanEquals": operator.ge,
}


class ConditionSyntaxError(ValueError):
    """A condition the parser must reject; the document module adds where it is."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def compile_wildcards(patterns: Iterable[str], *, ignore_case: bool) -> re.Pattern[str]:
    """One regex that full-matches any of ``patterns`` (``*`` any run, ``?`` one character)."""
    alternatives = (_wildcard_regex(p, _WILDCARDS) for p in patterns)
    return re.compile("|".join(alternatives), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _wildcard_regex(pattern: str, wildcards: Mapping[str, str]) -> str:
    return "".join(wildcards.get(c) or re.escape(c) for c in pattern)


def compile_condition(operator_name: str, key: str, values: tuple[str, ...]) -> Predicate:
    """The predicate for one condition key under one operator.

    Raises :class:`ConditionSyntaxError` for an unknown operator or a value the
    operator cannot compare (a bad date, number or boolean), so that a policy
    which could never match as written is refused when it is stored.
    """
    set_operator, base, if_exists = _split(operator_name)
    lookup_key = key.lower()
    if base == _NULL:
        if set_operator or if_exists:
            raise ConditionSyntaxError(
                f"{operator_name} is not an operator", hint="use Null without prefix or suffix"
            )
        wanted = frozenset(_parse_bool(v) == "true" for v in values)
        return lambda context: (lookup_key not in context) in wanted

    negated = base in _NEGATIONS
    test = _VALUE_TESTS[_NEGATIONS.get(base, base)](values)
    if set_operator == _ANY_VALUE:
        return _for_any_value(lookup_key, test, negated=negated, if_exists=if_exists)
    if set_operator == _ALL_VALUES:
        return _for_all_values(lookup_key, test, negated=negated)
    return _single(lookup_key, test, negated=negated, on_missing=if_exists or negated)


def _single(key: str, test: _ValueTest, *, negated: bool, on_missing: bool) -> Predicate:
    def holds(context: Lookup) -> bool:
        found = context.get(key)
        if found is None:
            return on_missing
        return any(map(test, found)) != negated

    return holds


def _for_any_value(key: str, test: _ValueTest, *, negated: bool, if_exists: bool) -> Predicate:
    def holds(context: Lookup) -> bool:
        found = context.get(key)
        if found is None:
            return if_exists
        return any(test(value) != negated for value in found)

    return holds


def _for_all_values(key: str, test: _ValueTest, *, negated: bool) -> Predicate:
    def holds(context: Lookup) -> bool:
        found = context.get(key)
        return found is None or all(test(value) != negated for value in found)

    return holds


def _split(name: str) -> tuple[str, str, bool]:
    """``"ForAnyValue:StringLikeIfExists"`` → ``("ForAnyValue", "StringLike", True)``."""
    set_operator, _, base = name.rpartition(":")
    if_exists = base.endswith(_IF_EXISTS)
    base = base.removesuffix(_IF_EXISTS)
    known = base == _NULL or base in _VALUE_TESTS or base in _NEGATIONS
    if set_operator not in ("", _ANY_VALUE, _ALL_VALUES) or not known:
        raise ConditionSyntaxError(
            f"unknown condition operator {name!r}",
            hint=f"supported: {', '.join(SUPPORTED_OPERATORS)}, each with an optional "
            f"{_ANY_VALUE}: or {_ALL_VALUES}: prefix and {_IF_EXISTS} suffix",
        )
    return set_operator, base, if_exists


# --- value tests: does one request value match any of the policy's values? ----


def _string_equals(values: tuple[str, ...]) -> _ValueTest:
    return frozenset(values).__contains__


def _string_equals_ignore_case(values: tuple[str, ...]) -> _ValueTest:
    folded = frozenset(v.casefold() for v in values)
    return lambda value: value.casefold() in folded


def _string_like(values: tuple[str, ...]) -> _ValueTest:
    pattern = compile_wildcards(values, ignore_case=False)
    return lambda value: pattern.fullmatch(value) is not None


def _arn_like(values: tuple[str, ...]) -> _ValueTest:
    """``ArnEquals`` and ``ArnLike``, which IAM applies alike: component by component.

    Each of an ARN's six ``:``-separated components is matched on its own, with
    ``*`` and ``?`` wildcards that cannot reach into the next component (the
    last, the resource, may itself hold ``:``); case-sensitive. A request
    value that is not an ARN matches nothing.
    """
    alternatives = []
    for value in values:
        components = value.split(":", _ARN_COMPONENTS - 1)
        if len(components) != _ARN_COMPONENTS:
            raise ConditionSyntaxError(
                f"{value!r} is not an ARN pattern",
                hint="an ARN has six ':'-separated components, "
                "arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE (each may use * and ?)",
            )
        *head, resource = components
        regexes = [_wildcard_regex(c, _COMPONENT_WILDCARDS) for c in head]
        alternatives.append(":".join([*regexes, _wildcard_regex(resource, _WILDCARDS)]))
    pattern = re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL)
    return lambda value: pattern.fullmatch(value) is not None


def _bool(values: tuple[str, ...]) -> _ValueTest:
    wanted = frozenset(_parse_bool(v) for v in values)
    return lambda value: value.lower() in wanted


def _ordered(
    parse: Callable[[str], float | None], what: str, compare: _Comparison
) -> Callable[[tuple[str, ...]], _ValueTest]:
    """A value test for Numeric*/Date*: the request value parses and compares true to any."""

    def build(values: tuple[str, ...]) -> _ValueTest:
        limits = [_required(parse, v, what) for v in values]

        def test(value: str) -> bool:
            parsed = parse(value)
            return parsed is not None and any(compare(parsed, limit) for limit in limits)

        return test

    return build


def _required(parse: Callable[[str], float | None], value: str, what: str) -> float:
    parsed = parse(value)
    if parsed is None:
        raise ConditionSyntaxError(
            f"{value!r} is not {what}",
            hint="dates are ISO-8601 (2024-05-01T12:00:00Z) or epoch seconds; "
            "numbers are decimal (42, -1.5)",
        )
    return parsed


def _parse_bool(value: str) -> str:
    if value.lower() not in ("true", "false"):
        raise ConditionSyntaxError(f"{value!r} is not a boolean", hint='use "true" or "false"')
    return value.lower()


def _to_number(value: str) -> float | None:
    return float(value) if _NUMBER.fullmatch(value) else None


def _to_timestamp(value: str) -> float | None:
    """Epoch seconds of an ISO-8601 date or an epoch-seconds number; naive means UTC."""
    if _NUMBER.fullmatch(value):
        return float(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


_VALUE_TESTS: dict[str, Callable[[tuple[str, ...]], _ValueTest]] = {
    "StringEquals": _string_equals,
    "StringEqualsIgnoreCase": _string_equals_ignore_case,
    "StringLike": _string_like,
    "Bool": _bool,
    "ArnEquals": _arn_like,
    "ArnLike": _arn_like,
    **{f"Numeric{n}": _ordered(_to_number, "a number", c) for n, c in _COMPARISONS.items()},
    **{f"Date{n}": _ordered(_to_timestamp, "a date", c) for n, c in _COMPARISONS.items()},
}
_NEGATIONS = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "NumericNotEquals": "NumericEquals",
    "DateNotEquals": "DateEquals",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}
SUPPORTED_OPERATORS = (*_VALUE_TESTS, *_NEGATIONS, _NULL)
