"""Key service: the root of trust for sealed applications.

See :mod:`strongroom.keys.base` for the interface and its two implementations.
"""

from typing import TYPE_CHECKING

from strongroom._internal.lazy import lazy_attributes

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

#: The interface's names, imported on first use: a command that only needs
#: ``keys.sessions`` or ``keys.service`` does not pay for the interface's classes.
__getattr__ = lazy_attributes(__name__, dict.fromkeys(__all__, "base"))
