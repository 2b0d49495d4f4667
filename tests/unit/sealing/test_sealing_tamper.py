"""Every way of damaging a package is detected, named, and leaves nothing behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from strongroom.errors import InvalidInputError, NotFoundError, StrongroomError, TamperedError
from strongroom.sealing import inspect, open_package, seal, unseal

from .helpers import CHUNK, leftovers

if TYPE_CHECKING:
    from .conftest import FakeKeyService

SEALED_CHUNK = CHUNK + 16


class Package:
    """The bytes of a sealed package, split into header and chunks."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        self.header_size = inspect(path).header_size
        self.header = bytearray(data[: self.header_size])
        body = data[self.header_size :]
        self.chunks = [
            bytearray(body[i : i + SEALED_CHUNK]) for i in range(0, len(body), SEALED_CHUNK)
        ]

    def write(self, path: Path) -> Path:
        path.write_bytes(bytes(self.header) + b"".join(self.chunks))
        return path


def damaged(sealed: Path, change: Callable[[Package], None]) -> Path:
    package = Package(sealed)
    assert len(package.chunks) > 6
    change(package)
    return package.write(sealed.with_name("damaged.sealed"))


def refused(path: Path, kms: FakeKeyService, error: type[StrongroomError], match: str) -> None:
    out = path.parent / "out"
    with pytest.raises(error, match=match) as caught:
        unseal(path, out, kms)
    assert not out.exists()
    assert leftovers(path.parent) == []
    assert caught.value.hint


def flip(data: bytearray, index: int) -> None:
    data[index] ^= 0x01


# --- the body ------------------------------------------------------------------------


def test_intact_package_opens(sealed: Path, kms: FakeKeyService) -> None:
    unseal(damaged(sealed, lambda p: None), sealed.parent / "out", kms)


@pytest.mark.parametrize(
    ("where", "index"),
    [("first chunk", 0), ("a middle chunk", 3), ("the last full chunk", -2)],
)
def test_flipped_ciphertext_byte(sealed: Path, kms: FakeKeyService, where: str, index: int) -> None:
    path = damaged(sealed, lambda p: flip(p.chunks[index], 5))
    position = index % len(Package(sealed).chunks)
    refused(path, kms, TamperedError, rf"chunk {position} of the package failed authentication")


def test_flipped_tag_byte(sealed: Path, kms: FakeKeyService) -> None:
    path = damaged(sealed, lambda p: flip(p.chunks[2], -3))
    refused(path, kms, TamperedError, "chunk 2 of the package failed authentication: .*corrupted")


def test_flipped_byte_in_the_final_chunk(sealed: Path, kms: FakeKeyService) -> None:
    path = damaged(sealed, lambda p: flip(p.chunks[-1], 0))
    refused(
        path,
        kms,
        TamperedError,
        r"the last chunk \(\d+\) .* truncated inside a chunk, or corrupted",
    )


@pytest.mark.parametrize("drop", [1, 2, 5])
def test_truncated_at_a_chunk_boundary(sealed: Path, kms: FakeKeyService, drop: int) -> None:
    """Dropping the last chunk (drop=1) or more: the stream ends without a final chunk."""
    path = damaged(sealed, lambda p: p.chunks.__delitem__(slice(-drop, None)))
    count = len(Package(sealed).chunks)
    refused(
        path,
        kms,
        TamperedError,
        f"truncated: it ends after chunk {count - drop - 1} without its final chunk",
    )


def test_truncated_inside_a_chunk(sealed: Path, kms: FakeKeyService) -> None:
    def cut(p: Package) -> None:
        del p.chunks[5:]
        del p.chunks[4][30:]

    refused(damaged(sealed, cut), kms, TamperedError, "truncated inside a chunk")


def test_truncated_inside_the_tag_of_the_final_chunk(sealed: Path, kms: FakeKeyService) -> None:
    path = damaged(sealed, lambda p: p.chunks[-1].__delitem__(slice(-10, None)))
    refused(path, kms, TamperedError, "truncated")


def test_swapped_chunks(sealed: Path, kms: FakeKeyService) -> None:
    def swap(p: Package) -> None:
        p.chunks[1], p.chunks[2] = p.chunks[2], p.chunks[1]

    refused(
        damaged(sealed, swap), kms, TamperedError, "chunk 1 of the package is chunk 2: .*reordered"
    )


def test_duplicated_chunk(sealed: Path, kms: FakeKeyService) -> None:
    path = damaged(sealed, lambda p: p.chunks.insert(3, p.chunks[2]))
    refused(path, kms, TamperedError, "chunk 3 of the package repeats chunk 2: .*duplicated")


def test_replayed_earlier_chunk(sealed: Path, kms: FakeKeyService) -> None:
    """The diagnosis looks 64 chunks either way; farther, the chunk is just "corrupted"."""
    count = len(Package(sealed).chunks)
    path = damaged(sealed, lambda p: p.chunks.insert(count - 1, p.chunks[count - 40]))
    refused(
        path, kms, TamperedError, f"chunk {count - 1} of the package repeats chunk {count - 40}"
    )


@pytest.mark.parametrize("extra", [1, 15, 16, 100, 1000])
def test_appended_bytes(sealed: Path, kms: FakeKeyService, extra: int) -> None:
    path = damaged(sealed, lambda p: p.chunks.append(bytearray(os.urandom(extra))))
    refused(path, kms, TamperedError, "data appended after its final chunk")


def test_appended_copy_of_the_final_chunk(sealed: Path, kms: FakeKeyService) -> None:
    path = damaged(sealed, lambda p: p.chunks.append(p.chunks[-1]))
    refused(path, kms, TamperedError, "data appended after its final chunk")


def test_chunks_spliced_from_another_package(
    tmp_path: Path, app_dir: Path, sealed: Path, kms: FakeKeyService, key_arn: str
) -> None:
    seal(app_dir, tmp_path / "other.sealed", kms, key_arn, chunk_size=CHUNK)
    other = Package(tmp_path / "other.sealed")

    def splice(p: Package) -> None:
        p.chunks[2] = other.chunks[2]

    refused(damaged(sealed, splice), kms, TamperedError, "chunk 2 of the package failed")


# --- the header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "offset"),
    [("chunk size", 17), ("salt", 20), ("nonce prefix", 52), ("created", 60)],
)
def test_flipped_header_byte_fails_chunk_0(
    sealed: Path, kms: FakeKeyService, field: str, offset: int
) -> None:
    """The key service still releases the data key; the header AAD catches the change."""
    path = damaged(sealed, lambda p: flip(p.header, offset))
    refused(path, kms, TamperedError, "chunk 0 of the package failed authentication: the header")


def test_edited_context_is_refused_by_the_key_service(sealed: Path, kms: FakeKeyService) -> None:
    def edit(p: Package) -> None:
        at = p.header.rindex(b"acme")
        p.header[at : at + 4] = b"evil"

    path = damaged(sealed, edit)
    assert inspect(path).encryption_context["vendor"] == "evil"
    refused(path, kms, TamperedError, "wrong encryption context")


def test_flipped_encrypted_data_key_is_refused_by_the_key_service(
    sealed: Path, kms: FakeKeyService
) -> None:
    def edit(p: Package) -> None:
        blob = inspect(sealed).encrypted_data_key
        flip(p.header, p.header.index(blob) + len(blob) - 1)

    refused(damaged(sealed, edit), kms, TamperedError, "invalid ciphertext")


def test_edited_key_id_is_refused_by_the_key_service(sealed: Path, kms: FakeKeyService) -> None:
    def edit(p: Package) -> None:
        at = p.header.index(b"vendor-key")
        p.header[at : at + 6] = b"attack"

    refused(damaged(sealed, edit), kms, NotFoundError, "does not exist")


def test_wrong_version_byte(sealed: Path, kms: FakeKeyService) -> None:
    path = damaged(sealed, lambda p: p.header.__setitem__(8, 3))
    refused(
        path,
        kms,
        InvalidInputError,
        "uses sealed-package format version 3; .* reads versions 1 and 2",
    )
    with pytest.raises(InvalidInputError, match="version 3"):
        inspect(path)


def test_v2_header_relabelled_v1_is_refused(sealed: Path, kms: FakeKeyService) -> None:
    """A downgrade cannot drop the manifest: the v2 sections are unexpected v1 bytes."""
    path = damaged(sealed, lambda p: p.header.__setitem__(8, 1))
    refused(path, kms, InvalidInputError, "6 unexpected header bytes")


def test_unknown_payload_type(sealed: Path, kms: FakeKeyService) -> None:
    path = damaged(sealed, lambda p: p.header.__setitem__(13, 9))
    refused(path, kms, InvalidInputError, r"unknown payload type \(9\)")


def test_header_cut_short(sealed: Path, kms: FakeKeyService) -> None:
    path = sealed.with_name("short.sealed")
    path.write_bytes(sealed.read_bytes()[:100])
    refused(path, kms, InvalidInputError, "ends inside its header")


# --- not packages at all ------------------------------------------------------------------


def test_zero_length_file(tmp_path: Path, kms: FakeKeyService) -> None:
    path = tmp_path / "empty.sealed"
    path.touch()
    refused(path, kms, InvalidInputError, r"is empty \(0 bytes\)")
    with pytest.raises(InvalidInputError, match="is empty"):
        inspect(path)


@pytest.mark.parametrize(
    "content",
    [
        b"\x7fELF" + os.urandom(4000),
        b"hello, world\n",
        b"STRONG",
        b"\x00\x00\x00\x10" + os.urandom(100),  # looks legacy, but no Fernet token
        b"\x00\x00\xff\xff" + os.urandom(100),  # a blob length no KMS returns
    ],
    ids=["elf", "text", "short-magic", "fake-legacy", "huge-blob"],
)
def test_not_a_package(tmp_path: Path, kms: FakeKeyService, content: bytes) -> None:
    path = tmp_path / "random.sealed"
    path.write_bytes(content)
    refused(path, kms, InvalidInputError, "is not a Strongroom sealed package")


def test_random_file(tmp_path: Path, kms: FakeKeyService) -> None:
    path = tmp_path / "random.sealed"
    path.write_bytes(b"R" + os.urandom(10_000))
    refused(path, kms, InvalidInputError, "is not a Strongroom sealed package")


def test_a_directory_is_not_a_package(tmp_path: Path, kms: FakeKeyService) -> None:
    with pytest.raises(InvalidInputError, match="is a directory"):
        inspect(tmp_path)


# --- keys ---------------------------------------------------------------------------------


def test_wrong_master_key(sealed: Path) -> None:
    from .conftest import FakeKeyService

    other = FakeKeyService()
    other.create_key("vendor-key")  # same id, different key material
    refused(sealed, other, TamperedError, "invalid ciphertext")  # type: ignore[arg-type]


def test_wrong_data_key_in_open_package(sealed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with (
        sealed.open("rb") as stream,
        pytest.raises(TamperedError, match="data key does not belong"),
    ):
        open_package(stream, os.urandom(32), dest)
    with sealed.open("rb") as stream, pytest.raises(InvalidInputError, match="32-byte keys"):
        open_package(stream, os.urandom(16), dest)


def test_open_package_failure_leaves_only_authentic_entries(
    sealed: Path, tmp_path: Path, kms: FakeKeyService
) -> None:
    """Streamed extraction: a late failure leaves a partial tree for the caller to wipe."""
    info = inspect(sealed)
    assert info.key_id is not None
    data_key = kms.decrypt(
        info.encrypted_data_key, key_id=info.key_id, encryption_context=info.encryption_context
    ).plaintext
    assert data_key is not None
    path = damaged(sealed, lambda p: flip(p.chunks[-3], 0))
    dest = tmp_path / "dest"
    dest.mkdir()
    with path.open("rb") as stream, pytest.raises(TamperedError):
        open_package(stream, data_key, dest)
    assert any(dest.iterdir())  # written before the failing chunk: the caller wipes it


# --- inspect --------------------------------------------------------------------------------


def test_inspect_detects_impossible_body_lengths(sealed: Path) -> None:
    path = damaged(sealed, lambda p: p.chunks.__delitem__(-1))
    with pytest.raises(TamperedError, match="truncated or has extra bytes"):
        inspect(path)


def test_inspect_needs_no_key(sealed: Path) -> None:
    info = inspect(sealed)
    body = info.file_size - info.header_size
    assert info.chunk_count == body // SEALED_CHUNK + 1
    assert info.payload_size == body - 16 * info.chunk_count
