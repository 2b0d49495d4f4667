"""Key service: the root of trust for sealed applications.

See :mod:`strongroom.keys.base` for the interface and its two implementations.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strongroom.keys.base import (
        RECIPIENT_ALGORITHM,
        Alias,
        DataKey,
        Decrypted,
        KeyMetadata,
        KeyService,
        RandomBytes,
        Recipient,
    )


def __getattr__(name: str) -> Any:
    """The interface's names, imported on first use: a command that only needs
    ``keys.sessions`` or ``keys.service`` does not pay for the interface's classes."""
    if name in __all__:
        from strongroom.keys import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RECIPIENT_ALGORITHM",
    "Alias",
    "DataKey",
    "Decrypted",
    "KeyMetadata",
    "KeyService",
    "RandomBytes",
    "Recipient",
]
