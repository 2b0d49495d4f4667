"""Time helpers: every attestation decision is taken at an explicit, timezone-aware UTC time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def utc(at: datetime | None) -> datetime:
    """``at`` as an aware UTC datetime; ``None`` means now, a naive datetime is read as UTC."""
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


def to_ms(at: datetime) -> int:
    """Milliseconds since the Unix epoch, exactly (no float rounding)."""
    return (utc(at) - _EPOCH) // _ONE_MS
