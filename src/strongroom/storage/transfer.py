"""Publishing files into a share (the vendor) and fetching them back verified (the host).

``publish``: every file is described before anything is uploaded — size and
SHA-256 in one streaming read, its kind from its content, an image's
measurements — so a file that cannot be published refuses the whole publish
up front. Then the files go up, one object each, and last the index
document that lists them (:mod:`.index`): a publish that fails half-way
leaves objects no index lists, which ``fetch`` does not take. A file that
changes between being hashed and uploaded is refused before the index is
written, so the index never describes bytes other than those uploaded.

``fetch``: the share's index is read whole first (every document; any bad
one refuses the fetch), every requested object must have an entry, and no
destination may exist (unless ``force``), all before a byte is downloaded.
Each object is then written to a temporary file beside its destination,
hashed as it arrives (a download longer than the index says is cut off
there), and checked — size, SHA-256, and for an image the measurements
``describe_image`` computes from the downloaded file, for a sealed package
that its header reads — and only then renamed into place. On any failure the
temporary is removed; objects verified earlier in the same fetch stay, and
the error says which.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from strongroom.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    PathEscapeError,
    StrongroomError,
    TamperedError,
    UsageError,
    VerificationError,
)
from strongroom.storage.base import INDEX_PREFIX, Storage, check_object_name
from strongroom.storage.index import (
    MAX_INDEX_BYTES,
    MAX_INDEX_DOCUMENTS,
    IndexDocument,
    Indexed,
    IndexEntry,
    detect_kind,
    document_name,
    file_digest,
    image_measurements,
    is_document_name,
    merge,
)

#: ``advance(n)``: n more bytes are done (the shape of the CLI's progress bars).
Advance = Callable[[int], None]
#: Marks a fetch's temporaries in the destination directory.
FETCH_TEMP_SUFFIX = ".strongroom-fetch"


@dataclass(frozen=True)
class PublishItem:
    source: Path
    entry: IndexEntry
    #: (size, mtime_ns, inode) when the file was hashed
    fingerprint: tuple[int, int, int]


@dataclass(frozen=True)
class Published:
    items: tuple[PublishItem, ...]
    document_name: str
    document: IndexDocument


def plan_publish(files: Sequence[Path], *, prefix: str = "") -> list[PublishItem]:
    """Describe each file as it will be published (object name: ``prefix`` + its name)."""
    seen: dict[str, Path] = {}
    items: list[PublishItem] = []
    for source in files:
        name = f"{prefix}{source.name}"
        check_object_name(name)
        if name.startswith(INDEX_PREFIX):
            raise UsageError(
                f"{name} would be under {INDEX_PREFIX}, where the share's index lives",
                hint="choose another --prefix",
            )
        if name in seen:
            raise UsageError(
                f"{seen[name]} and {source} would both be published as {name}",
                hint="publish them separately, with different --prefix values",
            )
        seen[name] = source
        try:
            st = source.stat()
        except OSError as e:
            raise NotFoundError(f"cannot publish {source}: {e.strerror}") from e
        if not source.is_file():
            raise UsageError(f"{source} is not a regular file", hint="publish files, not folders")
        try:
            kind, measurements = detect_kind(source)
            size, sha256 = file_digest(source)
        except OSError as e:
            raise InvalidInputError(f"cannot read {source}: {e.strerror}") from e
        entry = IndexEntry(
            object=name, size=size, sha256=sha256, kind=kind, measurements=measurements
        )
        items.append(PublishItem(source, entry, (st.st_size, st.st_mtime_ns, st.st_ino)))
    return items


def publish(
    storage: Storage,
    bucket: str,
    items: Sequence[PublishItem],
    *,
    kms_key: str | None,
    publisher: str,
    advance: Advance | None = None,
) -> Published:
    """Upload each item, then the index document that lists them all."""
    for item in items:
        storage.put_object(
            bucket,
            item.entry.object,
            item.source,
            kms_key=kms_key,
            progress=None if advance is None else _deltas(advance),
        )
        try:
            st = item.source.stat()
        except OSError as e:
            raise InvalidInputError(f"{item.source} went away while it was published") from e
        if (st.st_size, st.st_mtime_ns, st.st_ino) != item.fingerprint:
            raise InvalidInputError(
                f"{item.source} changed while it was published: no index was written",
                hint="publish it again once nothing writes to it",
            )
    document = IndexDocument.create(publisher, [item.entry for item in items])
    name = document_name(document.published)
    with tempfile.TemporaryDirectory(prefix="strongroom-index-") as scratch:
        path = Path(scratch) / "index.json"
        path.write_bytes(document.to_bytes())
        storage.put_object(bucket, name, path, kms_key=kms_key)
    return Published(tuple(items), name, document)


# --- fetch --------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchItem:
    indexed: Indexed
    destination: Path


def read_index(storage: Storage, bucket: str) -> dict[str, Indexed]:
    """Every index document of the share, merged (the newest entry of each object wins)."""
    listed = [o for o in storage.list_objects(bucket, INDEX_PREFIX) if is_document_name(o.name)]
    if len(listed) > MAX_INDEX_DOCUMENTS:
        raise TamperedError(
            f"the share {bucket} holds {len(listed)} index documents, more than "
            f"{MAX_INDEX_DOCUMENTS}",
            hint="the host may remove old index documents from the share",
        )
    documents = []
    for found in listed:
        if found.size > MAX_INDEX_BYTES:
            raise TamperedError(
                f"the index document {found.name} is larger than {MAX_INDEX_BYTES} bytes"
            )
        buffer = _Capped(MAX_INDEX_BYTES, found.name)
        storage.get_object(bucket, found.name, cast(BinaryIO, buffer))
        documents.append((found.name, IndexDocument.parse(buffer.getvalue(), name=found.name)))
    return merge(documents)


def plan_fetch(
    storage: Storage,
    bucket: str,
    names: Sequence[str],
    out_dir: Path,
    *,
    force: bool,
) -> list[FetchItem]:
    """What to fetch, and where: every check that needs no download, before any download."""
    index = read_index(storage, bucket)
    if not names:
        if not index:
            raise NotFoundError(
                f"the share {bucket} has no index: nothing was published to it with "
                "`strongroom publish`",
                hint="the vendor publishes with `strongroom publish --share BUCKET FILE...`",
            )
        wanted = list(index)
    else:
        wanted = list(dict.fromkeys(names))
    plan: list[FetchItem] = []
    for name in wanted:
        check_object_name(name)
        if name not in index:
            listed = {o.name for o in storage.list_objects(bucket, name)}
            if name in listed:
                raise VerificationError(
                    f"{name} is in the share {bucket}, but no index document lists it: it "
                    "cannot be verified, so it is not fetched",
                    hint="ask the vendor to publish it again with `strongroom publish`",
                )
            raise NotFoundError(
                f"no object {name} in the share {bucket}'s index",
                hint=f"the index lists: {', '.join(index) or 'nothing'}",
            )
        destination = out_dir / name
        _check_destination(out_dir, name, force=force)
        plan.append(FetchItem(index[name], destination))
    return plan


def fetch(
    storage: Storage,
    bucket: str,
    plan: Sequence[FetchItem],
    out_dir: Path,
    *,
    force: bool,
    advance: Advance | None = None,
    on_verified: Callable[[FetchItem], None] | None = None,
) -> list[FetchItem]:
    """Download, verify and place each item (see the module docstring)."""
    done: list[FetchItem] = []
    for item in plan:
        try:
            _fetch_one(storage, bucket, item, out_dir, force=force, advance=advance)
        except StrongroomError as e:
            raise _after(e, done, out_dir) from e
        done.append(item)
        if on_verified is not None:
            on_verified(item)
    return done


def _fetch_one(
    storage: Storage,
    bucket: str,
    item: FetchItem,
    out_dir: Path,
    *,
    force: bool,
    advance: Advance | None,
) -> None:
    entry = item.indexed.entry
    parent = _make_parents(out_dir, entry.object)
    temp = parent / f".{item.destination.name}.{secrets.token_hex(6)}{FETCH_TEMP_SUFFIX}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise StrongroomError(f"cannot write in {parent}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as sink:
            verifier = _Verifier(sink, entry)
            storage.get_object(
                bucket,
                entry.object,
                cast(BinaryIO, verifier),
                progress=None if advance is None else _deltas(advance),
            )
            sink.flush()
            os.fsync(sink.fileno())
        verifier.check()
        _check_content(temp, entry)
        _place(temp, item.destination, force=force)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


class _Verifier:
    """A sink that writes, hashes and counts, and stops a download longer than the index says."""

    def __init__(self, sink: BinaryIO, entry: IndexEntry) -> None:
        self.sink = sink
        self.entry = entry
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.entry.size:
            raise TamperedError(
                f"{self.entry.object}: the object is larger than the {self.entry.size} bytes "
                "its index entry says",
                hint=_TAMPERED_HINT,
            )
        self.digest.update(data)
        return self.sink.write(data)

    def check(self) -> None:
        name = self.entry.object
        if self.size != self.entry.size:
            raise TamperedError(
                f"{name}: the object is {self.size} bytes, its index entry says {self.entry.size}",
                hint=_TAMPERED_HINT,
            )
        sha256 = self.digest.hexdigest()
        if sha256 != self.entry.sha256:
            raise TamperedError(
                f"{name}: its SHA-256 is {sha256}, its index entry says {self.entry.sha256}",
                hint=_TAMPERED_HINT,
            )


_TAMPERED_HINT = (
    "the object in the share is not what the vendor published (damaged, or changed by someone "
    "else): ask the vendor to publish it again"
)


def _check_content(path: Path, entry: IndexEntry) -> None:
    """What the index says the file is, it is: an image's PCRs, a sealed package's header."""
    if entry.kind == "image":
        assert entry.measurements is not None
        try:
            found = image_measurements(path)
        except StrongroomError as e:
            raise TamperedError(
                f"{entry.object}: its index entry says it is an image, but it is not a "
                f"readable one ({e.message})",
                hint=_TAMPERED_HINT,
            ) from e
        for pcr in sorted(set(found) | set(entry.measurements)):
            if found.get(pcr) != entry.measurements.get(pcr):
                raise TamperedError(
                    f"{entry.object}: the image's {pcr} is {found.get(pcr, 'absent')}, its "
                    f"index entry says {entry.measurements.get(pcr, 'absent')}",
                    hint="the index does not describe this image: do not run it; ask the "
                    "vendor to publish it again",
                )
    elif entry.kind == "sealed":
        from strongroom.sealing import inspect

        try:
            inspect(path)
        except StrongroomError as e:
            raise TamperedError(
                f"{entry.object}: its index entry says it is a sealed package, but {e.message}",
                hint=_TAMPERED_HINT,
            ) from e


def _place(temp: Path, destination: Path, *, force: bool) -> None:
    if force:
        if destination.is_dir() and not destination.is_symlink():
            raise UsageError(f"{destination} is a directory: fetch does not replace it")
        os.replace(temp, destination)
        return
    try:
        os.link(temp, destination)  # never replaces: a file that appeared meanwhile stays
    except FileExistsError:
        raise _exists(destination) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise StrongroomError(f"cannot write {destination}: {e.strerror}") from e
        if destination.exists() or destination.is_symlink():
            raise _exists(destination) from None
        os.rename(temp, destination)
        return
    temp.unlink()


def _check_destination(out_dir: Path, name: str, *, force: bool) -> None:
    path = out_dir
    for segment in name.split("/")[:-1]:
        path = path / segment
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise PathEscapeError(
                f"{path} is not a directory (a symlink or a file): {name} is not fetched "
                "through it",
                hint="fetch into another -o DIR",
            )
    destination = out_dir / name
    if destination.is_dir() and not destination.is_symlink():
        raise UsageError(f"{destination} is a directory: fetch does not replace it")
    if not force and (destination.exists() or destination.is_symlink()):
        raise _exists(destination)


def _make_parents(out_dir: Path, name: str) -> Path:
    path = out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for segment in name.split("/")[:-1]:
            path = path / segment
            if path.is_symlink():
                raise PathEscapeError(f"{path} is a symlink: {name} is not fetched through it")
            path.mkdir(exist_ok=True)
    except FileExistsError:
        raise PathEscapeError(f"{path} is a file: {name} cannot go below it") from None
    except OSError as e:
        raise StrongroomError(f"cannot create {path}: {e.strerror}") from e
    return path


def _exists(path: Path) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"{path} already exists: fetch does not replace it",
        hint="fetch into another -o DIR, or add --force to replace it",
    )


def _after(error: StrongroomError, done: Sequence[FetchItem], out_dir: Path) -> StrongroomError:
    """``error``, with a hint saying what the fetch left in ``out_dir``."""
    if done:
        kept = ", ".join(item.indexed.entry.object for item in done)
        left = f"verified and kept in {out_dir} before the failure: {kept}"
    else:
        left = f"nothing was written to {out_dir}"
    hint = f"{left}; {error.hint}" if error.hint else left
    cls = type(error)
    try:
        return cls(error.message, hint=hint)
    except TypeError:  # an error class with other constructor arguments
        return StrongroomError(error.message, hint=hint)


def _deltas(advance: Advance) -> Callable[[int], None]:
    """A storage progress callback (bytes so far) that drives ``advance`` (bytes more)."""
    last = 0

    def progress(done: int) -> None:
        nonlocal last
        advance(done - last)
        last = done

    return progress


class _Capped(io.BytesIO):
    """An in-memory sink that refuses more than ``limit`` bytes."""

    def __init__(self, limit: int, name: str) -> None:
        super().__init__()
        self.limit = limit
        self.name_ = name

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.limit:
            raise TamperedError(
                f"the index document {self.name_} is larger than {self.limit} bytes"
            )
        return super().write(data)
