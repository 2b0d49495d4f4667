"""A share's index: what the vendor published, so the host can check what it fetches.

The vendor may put objects into a share and do nothing else (the bucket
policy grants it ``s3:PutObject`` only): it can neither read nor list, so it
cannot update one shared ``index.json``. Each ``publish`` therefore writes an
index document of its own, ``strongroom-index/<UTC time>-<random hex>.json``
(:func:`document_name`), after the objects it lists; ``fetch`` reads every
document under :data:`~strongroom.storage.base.INDEX_PREFIX` and, for each
object, the entry of the newest document wins (:func:`merge`).

A document (an ``index.json``)::

    {"format": "strongroom-share-index/1",
     "published": "2026-12-02T07:14:45.123456Z",
     "publisher": "119826263842",
     "objects": [{"object": "app.eif", "size": 57684156, "sha256": "…",
                  "kind": "image", "measurements": {"PCR0": "…", "PCR1": "…", "PCR2": "…"}},
                 {"object": "app.sealed", "size": 2300, "sha256": "…",
                  "kind": "sealed", "measurements": null}],
     "checksum": "…"}

``checksum`` is the SHA-256 of the canonical JSON (sorted keys, no spaces,
UTF-8) of everything else, so a truncated or corrupted document is detected.
It is signed by nobody: an index is exactly as trustworthy as the vendor's
write access to the share (whoever may put objects may put an index). What it
buys the host is that a fetched file is the one the vendor published — not one
damaged in transit or at rest, or changed by someone who can change objects
but did not write a matching index — and, for images, that the measurements
the vendor announced are the file's (the host still approves nothing: the
vendor's key policy decides which measurements get the key).

Limits (a vendor writes these; the host reads them): a document is at most
:data:`MAX_INDEX_BYTES` and lists at most :data:`MAX_INDEX_ENTRIES` objects;
a share holds at most :data:`MAX_INDEX_DOCUMENTS` of them. A document that
breaks a limit, does not parse, has unknown fields or a wrong checksum is
refused, and so is the fetch: skipping it could let an older entry verify an
older file (a rollback).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from strongroom._internal import strict_json
from strongroom.errors import InvalidInputError, TamperedError
from strongroom.storage.base import INDEX_PREFIX, check_object_name

INDEX_FORMAT = "strongroom-share-index/1"
#: The largest index document read or written.
MAX_INDEX_BYTES = 4 * 1024 * 1024
#: The most objects one document lists (one publish).
MAX_INDEX_ENTRIES = 10_000
#: The most index documents a share may hold for ``fetch`` to read them.
MAX_INDEX_DOCUMENTS = 1_000
#: Bytes read at a time while hashing.
HASH_CHUNK = 1024 * 1024
#: The measurements an image entry may carry (nitro-cli's names).
MAX_MEASUREMENTS = 32

Kind = Literal["sealed", "image", "file"]
_PCR_NAME = re.compile(r"PCR\d{1,2}", re.ASCII)
_PCR_VALUE = re.compile(r"[0-9a-f]{96}", re.ASCII)
_DOCUMENT = re.compile(
    re.escape(INDEX_PREFIX) + r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{16}\.json", re.ASCII
)


class IndexEntry(BaseModel):
    """One published object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    object: str = Field(max_length=1024)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    kind: Kind
    measurements: dict[str, str] | None

    @field_validator("object")
    @classmethod
    def _object_name(cls, name: str) -> str:
        try:
            check_object_name(name)
        except InvalidInputError as e:
            raise ValueError(e.message) from None
        if name.startswith(INDEX_PREFIX):
            raise ValueError(f"{name!r} is an index document's name, not a published object")
        return name

    @field_validator("measurements")
    @classmethod
    def _measurements(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value or len(value) > MAX_MEASUREMENTS:
            raise ValueError(f"an image has 1 to {MAX_MEASUREMENTS} measurements")
        for name, digest in value.items():
            if not _PCR_NAME.fullmatch(name) or not _PCR_VALUE.fullmatch(digest):
                raise ValueError(f"{name!r} is not a PCR measurement (PCRn: 96 hex digits)")
        return value

    @model_validator(mode="after")
    def _image_measurements(self) -> IndexEntry:
        if (self.kind == "image") != (self.measurements is not None):
            raise ValueError("measurements are given for images, and only for images")
        if self.measurements is not None and "PCR0" not in self.measurements:
            raise ValueError("an image's measurements include PCR0")
        return self


class IndexDocument(BaseModel):
    """One publish's index document (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["strongroom-share-index/1"]
    published: AwareDatetime
    publisher: str = Field(pattern=r"^\d{12}$")
    objects: tuple[IndexEntry, ...] = Field(max_length=MAX_INDEX_ENTRIES)
    checksum: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("objects")
    @classmethod
    def _unique(cls, objects: tuple[IndexEntry, ...]) -> tuple[IndexEntry, ...]:
        names = [entry.object for entry in objects]
        if len(set(names)) != len(names):
            raise ValueError("an object is listed twice")
        return objects

    @classmethod
    def create(
        cls, publisher: str, objects: Iterable[IndexEntry], *, published: datetime | None = None
    ) -> IndexDocument:
        """A document for ``objects``, its checksum computed."""
        body = {
            "format": INDEX_FORMAT,
            "published": (published or datetime.now(UTC)).astimezone(UTC),
            "publisher": publisher,
            "objects": tuple(objects),
        }
        try:
            unsigned = cls.model_validate({**body, "checksum": "0" * 64})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            too_many = first["type"] == "too_long"
            raise InvalidInputError(
                f"cannot make an index document: {where}: {first['msg']}",
                hint=f"an index lists at most {MAX_INDEX_ENTRIES} objects: publish fewer at a time"
                if too_many
                else None,
            ) from None
        content = unsigned.model_dump(mode="json", exclude={"checksum"})
        return unsigned.model_copy(update={"checksum": checksum(content)})

    def to_bytes(self) -> bytes:
        data = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        encoded = data.encode()
        if len(encoded) > MAX_INDEX_BYTES:
            raise InvalidInputError(
                f"the index document would be {len(encoded)} bytes, more than {MAX_INDEX_BYTES}",
                hint="publish fewer files at a time",
            )
        return encoded

    @classmethod
    def parse(cls, data: bytes, *, name: str = "the index document") -> IndexDocument:
        """Read a document: anything but a whole, well-formed one is a :class:`TamperedError`."""
        if len(data) > MAX_INDEX_BYTES:
            raise TamperedError(f"{name} is larger than {MAX_INDEX_BYTES} bytes", hint=_HINT)
        try:
            raw = strict_json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise TamperedError(
                f"{name} is not a JSON document (truncated?): {e}", hint=_HINT
            ) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("checksum"), str):
            raise TamperedError(f"{name} is not an index document: no checksum", hint=_HINT)
        if raw.get("format") != INDEX_FORMAT:
            raise InvalidInputError(
                f"{name} is in the format {str(raw.get('format'))[:64]!r}; this Strongroom reads "
                f"{INDEX_FORMAT}",
                hint="upgrade Strongroom, or ask the vendor to publish with the same version",
            )
        content = {key: value for key, value in raw.items() if key != "checksum"}
        if checksum(content) != raw["checksum"]:
            raise TamperedError(
                f"{name} is corrupted: its checksum does not match its content", hint=_HINT
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise TamperedError(
                f"{name} is not a valid index document: {where}: {first['msg']}", hint=_HINT
            ) from None


_HINT = (
    "the share's index cannot be trusted as it is: the host may remove that document "
    "from the share, and the vendor publish again"
)


def checksum(content: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``content``: sorted keys, no spaces, UTF-8."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def document_name(published: datetime, token: str | None = None) -> str:
    """Where a document published at ``published`` goes: its own name, never another's."""
    when = published.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{INDEX_PREFIX}{when}-{token or secrets.token_hex(8)}.json"


def is_document_name(name: str) -> bool:
    return _DOCUMENT.fullmatch(name) is not None


@dataclass(frozen=True)
class Indexed:
    """An object's winning entry, and the document it came from."""

    entry: IndexEntry
    document: str
    published: datetime


def merge(documents: Iterable[tuple[str, IndexDocument]]) -> dict[str, Indexed]:
    """Each object's entry from the newest document that lists it.

    Newest: the latest ``published`` time; between equal times, the
    document name that sorts last (its random part breaks the tie).
    """
    ordered = sorted(documents, key=lambda item: (item[1].published, item[0]))
    merged: dict[str, Indexed] = {}
    for name, document in ordered:
        for entry in document.objects:
            merged[entry.object] = Indexed(entry, name, document.published)
    return dict(sorted(merged.items()))


# --- what a file is -----------------------------------------------------------------


def file_digest(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of the file, read once in :data:`HASH_CHUNK` pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def detect_kind(path: Path) -> tuple[Kind, dict[str, str] | None]:
    """What the file is, from its content: a sealed package, an enclave image, or a file.

    An image is what ``image describe`` reads (and carries its PCRs); a
    damaged one (a bad CRC) is refused rather than published as a file, and
    so is a file with a sealed package's magic whose header is broken.
    """
    from strongroom.image.eif import MAGIC as EIF_MAGIC
    from strongroom.sealing.format import MAGIC as SEALED_MAGIC

    with path.open("rb") as f:
        head = f.read(max(len(EIF_MAGIC), len(SEALED_MAGIC)))
    if head.startswith(EIF_MAGIC):
        return "image", image_measurements(path)
    from strongroom.sealing import inspect

    if head.startswith(SEALED_MAGIC):
        inspect(path)  # a broken package is an error, not a "file"
        return "sealed", None
    try:
        inspect(path)  # the AWS sample's legacy envelope has no magic
    except InvalidInputError:
        return "file", None
    return "sealed", None


def image_measurements(path: Path) -> dict[str, str]:
    """The PCRs ``describe_image`` gives the image; a failed CRC check is an error."""
    from strongroom.image.describe import describe_image

    described = describe_image(path)
    if not described.get("CheckCRC"):
        raise TamperedError(f"{path} is a damaged image: its CRC check fails")
    return {k: v for k, v in described["Measurements"].items() if _PCR_NAME.fullmatch(k)}
