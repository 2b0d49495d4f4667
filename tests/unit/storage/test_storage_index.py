"""A share's index documents (storage/index.py): their model, checksum, limits and merge."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tests.storage_samples import tiny_image, tiny_sealed

from strongroom.errors import InvalidInputError, TamperedError
from strongroom.storage import index
from strongroom.storage.base import INDEX_PREFIX
from strongroom.storage.index import (
    INDEX_FORMAT,
    IndexDocument,
    IndexEntry,
    checksum,
    detect_kind,
    document_name,
    file_digest,
    is_document_name,
    merge,
)

PUBLISHER = "119826263842"
WHEN = datetime(2026, 12, 2, 7, 14, 45, 123456, tzinfo=UTC)
PCR = "ab" * 48


def entry(name: str = "app.sealed", *, size: int = 10, data: bytes = b"x") -> IndexEntry:
    return IndexEntry(
        object=name,
        size=size,
        sha256=hashlib.sha256(data).hexdigest(),
        kind="sealed",
        measurements=None,
    )


def image_entry(name: str = "app.eif", pcr0: str = PCR) -> IndexEntry:
    return IndexEntry(
        object=name,
        size=100,
        sha256="0" * 64,
        kind="image",
        measurements={"PCR0": pcr0, "PCR1": PCR, "PCR2": PCR},
    )


def document(*entries: IndexEntry, published: datetime = WHEN) -> IndexDocument:
    return IndexDocument.create(PUBLISHER, entries or (entry(),), published=published)


def resealed(raw: dict[str, Any]) -> bytes:
    """``raw`` with its checksum recomputed: a well-formed document, whatever it says."""
    content = {k: v for k, v in raw.items() if k != "checksum"}
    return json.dumps({**content, "checksum": checksum(content)}).encode()


# --- round trip and checksum -----------------------------------------------------------


def test_a_document_round_trips_and_says_what_was_published() -> None:
    made = document(entry(), image_entry())
    data = made.to_bytes()
    parsed = IndexDocument.parse(data)
    assert parsed == made
    raw = json.loads(data)
    assert raw["format"] == INDEX_FORMAT == "strongroom-share-index/1"
    assert raw["published"] == "2026-12-02T07:14:45.123456Z"
    assert raw["publisher"] == PUBLISHER
    assert [o["object"] for o in raw["objects"]] == ["app.sealed", "app.eif"]
    assert raw["objects"][1]["measurements"]["PCR0"] == PCR
    # the checksum is the SHA-256 of the canonical JSON of everything else
    content = {k: v for k, v in raw.items() if k != "checksum"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    assert raw["checksum"] == hashlib.sha256(canonical).hexdigest()


def test_the_checksum_does_not_depend_on_formatting() -> None:
    made = document()
    compact = json.dumps(made.model_dump(mode="json"), separators=(",", ":")).encode()
    assert IndexDocument.parse(compact) == made


def test_a_changed_value_is_refused_by_the_checksum() -> None:
    raw = json.loads(document().to_bytes())
    raw["objects"][0]["size"] = 11
    with pytest.raises(TamperedError, match="corrupted: its checksum does not match"):
        IndexDocument.parse(json.dumps(raw).encode(), name="strongroom-index/x.json")


def test_a_truncated_document_is_refused() -> None:
    data = document().to_bytes()
    with pytest.raises(TamperedError, match="not a JSON document"):
        IndexDocument.parse(data[: len(data) // 2])
    with pytest.raises(TamperedError, match="not a JSON document"):
        IndexDocument.parse(b"")


def test_a_document_without_a_checksum_is_refused() -> None:
    raw = json.loads(document().to_bytes())
    del raw["checksum"]
    with pytest.raises(TamperedError, match="no checksum"):
        IndexDocument.parse(json.dumps(raw).encode())


# --- limits and unknown fields ------------------------------------------------------------


def test_an_oversized_document_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(TamperedError, match=f"larger than {index.MAX_INDEX_BYTES} bytes"):
        IndexDocument.parse(b" " * (index.MAX_INDEX_BYTES + 1))


def test_too_many_entries_are_refused_on_both_sides() -> None:
    many = [entry(f"f{i}") for i in range(index.MAX_INDEX_ENTRIES + 1)]
    with pytest.raises(InvalidInputError, match="at most 10000 items") as refused:
        IndexDocument.create(PUBLISHER, many)
    assert "publish fewer at a time" in refused.value.hint
    raw = json.loads(document().to_bytes())
    raw["objects"] = [e.model_dump(mode="json") for e in many]
    with pytest.raises(TamperedError, match="objects: "):
        IndexDocument.parse(resealed(raw))


@pytest.mark.parametrize("where", ["document", "entry"])
def test_unknown_fields_are_refused_even_with_a_right_checksum(where: str) -> None:
    raw = json.loads(document().to_bytes())
    (raw if where == "document" else raw["objects"][0])["signature"] = "trust me"
    with pytest.raises(TamperedError, match="Extra inputs are not permitted"):
        IndexDocument.parse(resealed(raw))


def test_another_format_is_not_read() -> None:
    raw = json.loads(document().to_bytes())
    raw["format"] = "strongroom-share-index/2"
    with pytest.raises(InvalidInputError, match="this Strongroom reads strongroom-share-index/1"):
        IndexDocument.parse(resealed(raw))


def test_duplicate_keys_and_floats_are_refused() -> None:
    data = document().to_bytes().decode()
    doubled = data.replace('"publisher":', '"publisher": "000000000000", "publisher":', 1)
    with pytest.raises(TamperedError, match="duplicate key 'publisher'"):
        IndexDocument.parse(doubled.encode())
    raw = json.loads(data)
    raw["objects"][0]["size"] = 1.5
    with pytest.raises(TamperedError, match="not an integer"):
        IndexDocument.parse(resealed(raw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"object": "../etc/passwd"}, "not a valid object name"),
        ({"object": f"{INDEX_PREFIX}x.json"}, "an index document's name"),
        ({"sha256": "XYZ"}, "sha256"),
        ({"size": -1}, "size"),
        ({"kind": "script"}, "kind"),
        ({"kind": "image"}, "measurements are given for images, and only for images"),
        ({"measurements": {"PCR0": PCR}}, "measurements are given for images"),
    ],
)
def test_an_entry_must_be_what_publish_writes(change: dict[str, Any], message: str) -> None:
    raw = json.loads(document().to_bytes())
    raw["objects"][0].update(change)
    with pytest.raises(TamperedError, match=message):
        IndexDocument.parse(resealed(raw))


def test_image_measurements_are_pcrs_and_include_pcr0() -> None:
    with pytest.raises(ValidationError, match="include PCR0"):
        IndexEntry(
            object="a.eif", size=1, sha256="0" * 64, kind="image", measurements={"PCR1": PCR}
        )
    with pytest.raises(ValidationError, match="not a PCR measurement"):
        IndexEntry(
            object="a.eif", size=1, sha256="0" * 64, kind="image", measurements={"PCR0": "ab"}
        )


def test_an_object_is_listed_once_per_document() -> None:
    with pytest.raises(InvalidInputError, match="listed twice"):
        IndexDocument.create(PUBLISHER, [entry(), entry()])


# --- names and merge ----------------------------------------------------------------------


def test_each_publish_has_a_name_of_its_own() -> None:
    first, second = document_name(WHEN), document_name(WHEN)
    assert first != second
    assert first.startswith(f"{INDEX_PREFIX}20261202T071445.123456Z-")
    assert first.endswith(".json")
    assert is_document_name(first) and is_document_name(second)
    assert not is_document_name(f"{INDEX_PREFIX}index.json")
    assert not is_document_name("app.sealed")


def test_the_newest_entry_of_each_object_wins() -> None:
    old = document(entry("app.sealed", data=b"v1"), entry("notes.txt"), published=WHEN)
    new = document(entry("app.sealed", data=b"v2"), published=WHEN + timedelta(seconds=1))
    for order in ([("b", old), ("a", new)], [("a", new), ("b", old)]):
        merged = merge(order)
        assert list(merged) == ["app.sealed", "notes.txt"]
        assert merged["app.sealed"].entry.sha256 == hashlib.sha256(b"v2").hexdigest()
        assert merged["app.sealed"].document == "a"
        assert merged["notes.txt"].document == "b"


def test_between_equal_times_the_last_name_wins() -> None:
    one = document(entry(data=b"one"))
    two = document(entry(data=b"two"))
    merged = merge([("strongroom-index/T-ffff.json", two), ("strongroom-index/T-0000.json", one)])
    assert merged["app.sealed"].entry.sha256 == hashlib.sha256(b"two").hexdigest()


# --- what a file is -------------------------------------------------------------------------


def test_kinds_are_read_from_content_not_names(tmp_path: Path) -> None:
    image = tiny_image(tmp_path / "image.bin")
    kind, measurements = detect_kind(image)
    assert kind == "image" and measurements is not None
    assert set(measurements) == {"PCR0", "PCR1", "PCR2"}
    assert detect_kind(tiny_sealed(tmp_path / "package.dat")) == ("sealed", None)
    text = tmp_path / "app.eif"
    text.write_text("a text file named like an image")
    assert detect_kind(text) == ("file", None)
    empty = tmp_path / "empty.sealed"
    empty.write_bytes(b"")
    assert detect_kind(empty) == ("file", None)


def test_different_images_have_different_measurements(tmp_path: Path) -> None:
    _, one = detect_kind(tiny_image(tmp_path / "one.eif", b"kernel one"))
    _, two = detect_kind(tiny_image(tmp_path / "two.eif", b"kernel two"))
    assert one is not None and two is not None and one["PCR0"] != two["PCR0"]


def test_a_broken_package_or_image_is_refused_not_published_as_a_file(tmp_path: Path) -> None:
    package = tiny_sealed(tmp_path / "app.sealed")
    broken = tmp_path / "broken.sealed"
    broken.write_bytes(package.read_bytes()[:20])
    with pytest.raises(InvalidInputError):
        detect_kind(broken)
    image = tiny_image(tmp_path / "app.eif")
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF  # inside the ramdisk: the CRC no longer matches
    damaged = tmp_path / "damaged.eif"
    damaged.write_bytes(bytes(data))
    with pytest.raises(TamperedError, match="damaged image: its CRC check fails"):
        detect_kind(damaged)


def test_the_digest_is_streamed_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "HASH_CHUNK", 1000)
    data = bytes(range(256)) * 40  # 10 KiB: ten chunks and a bit
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    reads: list[int] = []
    real_open = Path.open

    def spying_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, *args, **kwargs)
        real_read = f.read

        def read(n: int = -1) -> bytes:
            reads.append(n)
            return real_read(n)

        f.read = read
        return f

    monkeypatch.setattr(Path, "open", spying_open)
    assert file_digest(path) == (len(data), hashlib.sha256(data).hexdigest())
    assert reads and all(0 < n <= 1000 for n in reads)
