"""Reading a package's header, whatever its format, without any key.

Kept apart from :mod:`.package` (which seals and opens, with the AEAD, tar and
zip machinery): a command that only needs to know which key a package is
sealed under — ``strongroom run`` asks for credentials for exactly that key —
should not pay for the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, TypeAlias

from strongroom.errors import InvalidInputError
from strongroom.sealing.format import (
    MAGIC,
    NOT_A_PACKAGE_HINT,
    SealedHeader,
    read_sealed_header,
    read_up_to,
)

if TYPE_CHECKING:
    from strongroom.sealing.legacy import LegacyHeader

#: What :func:`read_header` returns: either kind carries ``encrypted_data_key``,
#: ``key_id`` and ``encryption_context``, the arguments of KMS Decrypt.
Header: TypeAlias = "SealedHeader | LegacyHeader"


def read_header(stream: BinaryIO, *, name: str = "the package") -> Header:
    """Read a v1, v2 or legacy header, leaving ``stream`` where :func:`open_package` continues.

    ``name`` is how error messages call the stream (a file name, say).
    """
    head = read_up_to(stream, len(MAGIC))
    if not head:
        raise InvalidInputError(
            f"{name} is empty (0 bytes): not a sealed package", hint=NOT_A_PACKAGE_HINT
        )
    if head == MAGIC:
        return read_sealed_header(stream, name=name, head=head)
    # the sample's format only (its zip and tree machinery is for it alone)
    from strongroom.sealing.legacy import looks_legacy, read_legacy_header

    if looks_legacy(head):
        return read_legacy_header(stream, name=name, head=head)
    raise InvalidInputError(f"{name} is not a Strongroom sealed package", hint=NOT_A_PACKAGE_HINT)


__all__ = ["Header", "read_header"]
