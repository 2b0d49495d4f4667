"""Key service: the root of trust for sealed applications.

See :mod:`strongroom.keys.base` for the interface and its two implementations.
"""

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
