"""Errors of the image component, as members of the one Strongroom hierarchy.

They subclass the families in :mod:`strongroom.errors` so that the CLI's single
``except StrongroomError`` handles them with the right exit code.
"""

from __future__ import annotations

from strongroom.errors import InvalidInputError, StrongroomError


class ImageFormatError(InvalidInputError):
    """The file is not a well-formed EIF (or one of its sections is malformed)."""

    default_hint = "rebuild the image; if it was copied, check that the copy is complete"


class IncompatibleImageError(InvalidInputError):
    """The image is well-formed but cannot run on this target or this host."""


class ImageBuildError(StrongroomError):
    """An image could not be built from the given inputs."""
