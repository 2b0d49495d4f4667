"""What every check returns, and how a run of checks is summed up.

A check is a small function that looks at one thing and returns one
:class:`Finding`: its name, whether it is fine (``ok``), questionable
(``warn``) or wrong (``fail``), one line saying what it saw, and one line
saying what to do about it. A check that cannot look (no credentials, a
service down) says so as a finding too: :func:`guarded` turns a
:class:`~strongroom.errors.StrongroomError` raised inside a check into a
``fail`` with the error's message and hint, so one broken check never hides
the others.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from strongroom.errors import StrongroomError


class Status(enum.Enum):
    """How a finding counts: only ``FAIL`` makes ``doctor`` exit non-zero."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """One check's verdict. ``detail`` and ``fix`` are single lines (whitespace is folded)."""

    group: str
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def __post_init__(self) -> None:
        # one line each, whatever a service's message held
        object.__setattr__(self, "detail", one_line(self.detail))
        if self.fix is not None:
            object.__setattr__(self, "fix", one_line(self.fix))

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "check": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


def ok(group: str, name: str, detail: str) -> Finding:
    return Finding(group, name, Status.OK, detail)


def warn(group: str, name: str, detail: str, fix: str | None) -> Finding:
    return Finding(group, name, Status.WARN, detail, fix)


def fail(group: str, name: str, detail: str, fix: str | None) -> Finding:
    return Finding(group, name, Status.FAIL, detail, fix)


def guarded(group: str, name: str, check: Callable[[], Finding]) -> Finding:
    """``check()``, or a ``fail`` finding carrying the Strongroom error it raised."""
    try:
        return check()
    except StrongroomError as e:
        return fail(group, name, one_line(e.message), one_line(e.hint) if e.hint else None)


def one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Report:
    """The findings of one ``doctor`` run, in the order the checks ran."""

    target: str | None
    findings: tuple[Finding, ...]

    @property
    def failed(self) -> bool:
        return any(f.status is Status.FAIL for f in self.findings)

    def count(self, status: Status) -> int:
        return sum(1 for f in self.findings if f.status is status)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": not self.failed,
            "counts": {status.value: self.count(status) for status in Status},
            "findings": [f.to_json() for f in self.findings],
        }


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def listed(items: Sequence[str], *, most: int = 4) -> str:
    """``a, b, c`` — or the first ``most`` and how many more."""
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"
