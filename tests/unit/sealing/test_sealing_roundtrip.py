"""Seal then open: trees, chunk boundaries, the deterministic tar, the public API."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.errors import InvalidInputError, NotFoundError, UsageError
from strongroom.sealing import (
    DEFAULT_CHUNK_SIZE,
    ExtractLimits,
    SealedHeader,
    inspect,
    open_package,
    read_header,
    seal,
    unseal,
)
from strongroom.sealing.archive import write_tar
from strongroom.sealing.ignore import IgnoreRules
from strongroom.sealing.stream import ChunkReader, ChunkWriter, derive_payload_key

from .helpers import CHUNK, CONTEXT, Trickle, leftovers, payload_of, snapshot

if TYPE_CHECKING:
    from .conftest import FakeKeyService


def roundtrip(app: Path, work: Path, kms: FakeKeyService, key: str, chunk_size: int) -> None:
    """What is sealed comes back exactly (with nothing skipped: generated names include
    `.env` and `__pycache__`, which `seal` leaves out by default)."""
    package = work / "app.sealed"
    keep_all = IgnoreRules(patterns=())
    sealed_info = seal(
        app, package, kms, key, context=CONTEXT, chunk_size=chunk_size, ignore=keep_all
    )
    opened_info = unseal(package, work / "out", kms)
    assert snapshot(work / "out") == snapshot(app)
    assert sealed_info == opened_info == inspect(package)
    assert sealed_info.file_size == package.stat().st_size
    assert leftovers(work) == []


# --- generated trees ------------------------------------------------------------

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)
# A file is (content, executable); a directory is a dict of names.
files = st.tuples(st.binary(max_size=1100), st.booleans())
trees = st.dictionaries(
    names,
    st.recursive(files, lambda kids: st.dictionaries(names, kids, max_size=4), max_leaves=10),
    max_size=6,
)
#: Chunk sizes around the tar's 512-byte blocks: an empty tree is a 1024-byte tar,
#: so 1023, 1024 and 1025 give "one chunk minus, exactly, plus one byte".
chunk_sizes = st.sampled_from([64, 65, 511, 512, 513, 1023, 1024, 1025, 4096])


def materialize(root: Path, tree: dict[str, object]) -> list[Path]:
    """Create ``tree`` under ``root``; returns every path created."""
    created = []
    for name, node in tree.items():
        path = root / name
        if isinstance(node, dict):
            path.mkdir()
            created += [path, *materialize(path, node)]
        else:
            assert isinstance(node, tuple)
            content, executable = node
            path.write_bytes(content)
            path.chmod(0o755 if executable else 0o644)
            created.append(path)
    return created


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(tree=trees, chunk_size=chunk_sizes, data=st.data())
def test_generated_trees_roundtrip(
    kms: FakeKeyService, key_arn: str, tree: dict[str, object], chunk_size: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        app = work / "app"
        app.mkdir()
        paths = materialize(app, tree)
        if paths:
            # Relative symlinks to entries of the tree, from anywhere in it.
            for target in data.draw(st.lists(st.sampled_from(paths), max_size=3)):
                where = data.draw(st.sampled_from([app, *[p for p in paths if p.is_dir()]]))
                link = where / f"link-{len(os.listdir(where))}"
                link.symlink_to(os.path.relpath(target, where))
        roundtrip(app, work, kms, key_arn, chunk_size)


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(max_size=700), chunk_size=st.sampled_from([64, 65, 100, 256]))
def test_stream_layer_roundtrips_any_payload(payload: bytes, chunk_size: int) -> None:
    key, prefix, aad = derive_payload_key(bytes(32), bytes(32)), bytes(7), b"aad"
    sink = io.BytesIO()
    writer = ChunkWriter(sink, key, prefix, aad, chunk_size)
    writer.write(payload)
    writer.finish()
    assert writer.chunk_count == len(payload) // chunk_size + 1
    assert writer.body_size == len(sink.getvalue()) == len(payload) + 16 * writer.chunk_count
    reader = ChunkReader(Trickle(sink.getvalue(), step=33), key, prefix, aad, chunk_size)
    assert b"".join(iter(lambda: reader.read(50), b"")) == payload
    assert (reader.chunk_count, reader.payload_size) == (writer.chunk_count, len(payload))


@pytest.mark.parametrize("size", [0, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5000])
def test_file_sizes_around_chunk_boundaries(
    tmp_path: Path, kms: FakeKeyService, key_arn: str, size: int
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "f").write_bytes(os.urandom(size))
    roundtrip(app, tmp_path, kms, key_arn, CHUNK)


def test_empty_directory(tmp_path: Path, kms: FakeKeyService, key_arn: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    roundtrip(app, tmp_path, kms, key_arn, 1024)
    # An empty tree is two zero blocks: exactly one full chunk, then an empty final one.
    assert inspect(tmp_path / "app.sealed").chunk_count == 2


def test_fixture_app_roundtrips_with_default_chunks(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    roundtrip(app_dir, tmp_path, kms, key_arn, DEFAULT_CHUNK_SIZE)
    out = tmp_path / "out"
    assert os.readlink(out / "models" / "latest") == "v1"
    assert (out / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "main.py").stat().st_mode & 0o777 == 0o644
    assert (out / "models").stat().st_mode & 0o777 == 0o755


# --- the deterministic tar -----------------------------------------------------------


def test_same_tree_gives_the_same_tar(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    first = seal(app_dir, tmp_path / "1.sealed", kms, key_arn, chunk_size=CHUNK)
    # Times, owner-only permission bits and group/other bits do not matter.
    for path in app_dir.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (1_000_000, 2_000_000))
    (app_dir / "main.py").chmod(0o600)
    (app_dir / "bin" / "run.sh").chmod(0o700)
    seal(app_dir, tmp_path / "2.sealed", kms, key_arn, chunk_size=CHUNK)
    tar1, tar2 = payload_of(tmp_path / "1.sealed", kms), payload_of(tmp_path / "2.sealed", kms)
    assert tar1 == tar2
    assert len(tar1) == first.payload_size
    # ... while the packages differ (fresh data key, salt and nonce prefix).
    assert (tmp_path / "1.sealed").read_bytes() != (tmp_path / "2.sealed").read_bytes()


def test_tar_is_normalized_and_ordered(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    seal(app_dir, tmp_path / "p.sealed", kms, key_arn, chunk_size=CHUNK)
    with tarfile.open(fileobj=io.BytesIO(payload_of(tmp_path / "p.sealed", kms))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "bin",
        "bin/run.sh",
        "données é.txt",
        "empty",
        "main.py",
        "models",
        "models/latest",
        "models/v1",
        "models/v1/weights.bin",
    ]
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
    modes = {m.name: m.mode for m in members}
    assert modes["bin"] == modes["bin/run.sh"] == 0o755
    assert modes["main.py"] == 0o644
    # A pax record only where ustar cannot say it: the non-ASCII name.
    assert {m.name: m.pax_headers for m in members if m.pax_headers} == {
        "données é.txt": {"path": "données é.txt"}
    }


def test_hard_linked_files_are_stored_as_regular_files(
    tmp_path: Path, kms: FakeKeyService, key_arn: str
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "a").write_text("shared")
    os.link(app / "a", app / "b")
    roundtrip(app, tmp_path, kms, key_arn, CHUNK)
    assert (tmp_path / "out" / "b").stat().st_nlink == 1


# --- API behaviour ---------------------------------------------------------------------


def test_seal_binds_the_context_and_reports_progress(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    steps: list[int] = []
    info = seal(
        app_dir, tmp_path / "p.sealed", kms, key_arn, context=CONTEXT, chunk_size=CHUNK,
        progress=steps.append,
    )  # fmt: skip
    assert kms.calls == [("GenerateDataKey", "vendor-key", CONTEXT)]
    assert sum(steps) == info.payload_size and len(steps) == info.chunk_count
    assert info.encryption_context == CONTEXT
    assert info.key_id == key_arn
    assert info.format == "strongroom-v2" and info.version == 2
    assert info.payload_type == "tar" and info.chunk_size == CHUNK
    assert info.created is not None
    opened: list[int] = []
    unseal(tmp_path / "p.sealed", tmp_path / "out", kms, progress=opened.append)
    assert kms.calls[-1] == ("Decrypt", key_arn, CONTEXT)
    assert sum(opened) == info.payload_size


def test_open_package_after_read_header_on_a_trickling_stream(
    tmp_path: Path, sealed: Path, app_dir: Path, kms: FakeKeyService
) -> None:
    """The enclave server's flow: read the header, ask KMS, then stream the rest."""
    stream = io.BufferedReader(Trickle(sealed.read_bytes()))
    header = read_header(stream)
    assert isinstance(header, SealedHeader)
    data_key = kms.decrypt(
        header.encrypted_data_key,
        key_id=header.key_id,
        encryption_context=header.encryption_context,
    ).plaintext
    assert data_key is not None
    dest = tmp_path / "dest"
    dest.mkdir()
    info = open_package(stream, data_key, dest, header=header)
    assert snapshot(dest) == snapshot(app_dir)
    assert info == inspect(sealed)


def test_open_package_reads_the_header_itself(
    tmp_path: Path, sealed: Path, app_dir: Path, kms: FakeKeyService
) -> None:
    header = inspect(sealed)
    assert header.key_id is not None
    data_key = kms.decrypt(
        header.encrypted_data_key,
        key_id=header.key_id,
        encryption_context=header.encryption_context,
    ).plaintext
    assert data_key is not None
    (tmp_path / "real-dest").mkdir()
    dest = tmp_path / "dest"
    dest.symlink_to("real-dest")  # the caller's directory may be reached through a link
    with sealed.open("rb") as stream:
        open_package(stream, data_key, dest)
    assert snapshot(dest) == snapshot(app_dir)


def test_open_package_wants_an_empty_directory(
    tmp_path: Path, sealed: Path, kms: FakeKeyService
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    with sealed.open("rb") as stream, pytest.raises(UsageError, match="existing empty directory"):
        open_package(stream, bytes(32), tmp_path / "full")


def test_unseal_into_an_existing_empty_directory(
    tmp_path: Path, sealed: Path, app_dir: Path, kms: FakeKeyService
) -> None:
    (tmp_path / "out").mkdir()
    unseal(sealed, tmp_path / "out", kms)
    assert snapshot(tmp_path / "out") == snapshot(app_dir)


def test_unseal_refuses_a_non_empty_output(
    tmp_path: Path, sealed: Path, kms: FakeKeyService
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(UsageError, match="not an empty directory"):
        unseal(sealed, tmp_path / "out", kms)
    assert (tmp_path / "out" / "keep").read_text() == "mine"
    assert kms.calls[-1][0] == "GenerateDataKey"  # refused before asking for the key


def test_unseal_missing_package(tmp_path: Path, kms: FakeKeyService) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        unseal(tmp_path / "nope.sealed", tmp_path / "out", kms)


def test_unseal_honours_limits(tmp_path: Path, sealed: Path, kms: FakeKeyService) -> None:
    with pytest.raises(InvalidInputError, match="more than 3 entries"):
        unseal(sealed, tmp_path / "out", kms, limits=ExtractLimits(max_entries=3))
    with pytest.raises(InvalidInputError, match="unpacks to more than 100 bytes"):
        unseal(sealed, tmp_path / "out", kms, limits=ExtractLimits(max_total_bytes=100))
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_extract_limits_must_be_positive() -> None:
    with pytest.raises(InvalidInputError, match="max_entries must be positive"):
        ExtractLimits(max_entries=0)


# --- what the sealer refuses ---------------------------------------------------------------


def refuse(
    app: Path, tmp_path: Path, kms: FakeKeyService, key: str, error: type, match: str
) -> None:
    out = tmp_path / "p.sealed"
    with pytest.raises(error, match=match):
        seal(app, out, kms, key, chunk_size=CHUNK)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_seal_refuses_a_fifo(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    os.mkfifo(app_dir / "models" / "pipe")
    refuse(app_dir, tmp_path, kms, key_arn, InvalidInputError, "it is a FIFO")


def test_seal_refuses_a_socket(tmp_path: Path, kms: FakeKeyService, key_arn: str) -> None:
    # AF_UNIX paths are short: build the app in a short temporary directory.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        app = Path(tmp) / "a"
        app.mkdir()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(app / "s"))
            refuse(app, tmp_path, kms, key_arn, InvalidInputError, "it is a socket")


@pytest.mark.parametrize(
    ("link", "target", "match"),
    [
        ("up", "../outside", "pointing outside the tree"),
        ("models/up", "../../outside", "pointing outside the tree"),
        ("abs", "/etc/passwd", "absolute path"),
        ("sneaky", "models/../../x", "uses '..' after a name"),
    ],
)
def test_seal_refuses_links_that_leave_the_tree(
    tmp_path: Path,
    app_dir: Path,
    kms: FakeKeyService,
    key_arn: str,
    link: str,
    target: str,
    match: str,
) -> None:
    (app_dir / link).symlink_to(target)
    refuse(app_dir, tmp_path, kms, key_arn, InvalidInputError, match)


def test_seal_keeps_links_that_climb_within_the_tree(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    (app_dir / "models" / "v1" / "up").symlink_to("../../main.py")
    (app_dir / "models" / "root").symlink_to("..")
    (app_dir / "dangling").symlink_to("not/there")
    roundtrip(app_dir, tmp_path, kms, key_arn, CHUNK)


def test_seal_refuses_names_that_are_not_utf8(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    (app_dir / os.fsdecode(b"bad\xff")).write_text("x")
    refuse(app_dir, tmp_path, kms, key_arn, InvalidInputError, "is not valid UTF-8")


def test_seal_usage_errors(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        seal(app_dir / "main.py", tmp_path / "p.sealed", kms, key_arn)
    with pytest.raises(UsageError, match="inside the directory it seals"):
        seal(app_dir, app_dir / "p.sealed", kms, key_arn)
    with pytest.raises(UsageError, match="is not a directory"):
        seal(app_dir, tmp_path / "missing" / "p.sealed", kms, key_arn)
    with pytest.raises(InvalidInputError, match="chunk size 10 is out of range"):
        seal(app_dir, tmp_path / "p.sealed", kms, key_arn, chunk_size=10)
    with pytest.raises(InvalidInputError, match="encryption-context key is empty"):
        seal(app_dir, tmp_path / "p.sealed", kms, key_arn, context={"": "x"})
    assert kms.calls == []  # all refused before asking for a data key


def test_seal_propagates_key_service_errors(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService
) -> None:
    refuse(app_dir, tmp_path, kms, "no-such-key", NotFoundError, "does not exist")


def test_seal_replaces_an_existing_package(
    tmp_path: Path, app_dir: Path, kms: FakeKeyService, key_arn: str
) -> None:
    out = tmp_path / "p.sealed"
    out.write_text("old")
    seal(app_dir, out, kms, key_arn)
    assert inspect(out).format == "strongroom-v2"
    assert out.stat().st_mode & 0o777 == 0o644


def test_sealer_refuses_what_openers_refuse_by_default(app_dir: Path) -> None:
    sink = io.BytesIO()
    writer = ChunkWriter(sink, bytes(32), bytes(7), b"", CHUNK)
    with pytest.raises(InvalidInputError, match="more than 3 entries"):
        write_tar(app_dir, writer, ExtractLimits(max_entries=3))
    with pytest.raises(InvalidInputError, match="more than 100 bytes of files"):
        write_tar(app_dir, writer, ExtractLimits(max_total_bytes=100))
    with pytest.raises(InvalidInputError, match="longer than 10 bytes"):
        write_tar(app_dir, writer, ExtractLimits(max_path_length=10))
