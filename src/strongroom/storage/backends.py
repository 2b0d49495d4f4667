"""Choosing and opening a storage backend, and naming a share: the one place that does.

The backend, in order: ``--backend local|s3``; else the workspace's
``[storage] backend`` (``config.toml``; unknown keys and values are refused,
the file named); else the target's: ``local`` on the local target, ``s3`` on
the aws target.

Who makes the requests:

- **local**: a workspace identity, chosen by the one identity rule of
  :mod:`strongroom.keys.signer` (``--as NAME``; else the identity whose key
  pair the AWS credential chain holds; else the command's default: the host
  for ``share`` and ``fetch``, the vendor for ``publish``). The same rule as
  the key commands, so after ``eval "$(strongroom env --as vendor)"`` a
  ``fetch`` acts as the vendor — and is refused by the share's policy, as
  S3 would refuse the vendor's credentials — and the stderr note says when
  the identity is not the environment's.
- **s3**: the standard credential chain (``--profile``, ``AWS_*``, config
  files, SSO, instance roles); ``--as`` names a local identity and is refused.
  The region: ``--region``, else the chain's (``AWS_DEFAULT_REGION``, the
  profile's), else the workspace's (``config.toml``), as the key commands use.
  ``--profile``, ``--region`` and ``--endpoint-url`` are for s3 only and are
  refused on local (they would change nothing there).

Naming a share (``--share``): a vendor name this workspace knows, else a
bucket name. Locally the workspace knows the shares in its ``storage/``
(read from their records, not asked for: the vendor may not list); on s3 it
knows those ``share create`` made from it, recorded in
``storage/s3/BUCKET.json`` (bucket and key ARN; ``s3`` is no bucket name, so
the record never meets a local share).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from strongroom._internal.files import atomic_write
from strongroom.errors import NotFoundError, StrongroomError, UsageError
from strongroom.storage.base import BUCKET_PATTERN, Share, Storage

if TYPE_CHECKING:
    from strongroom.workspace import Workspace

Backend = Literal["local", "s3"]
BACKENDS: tuple[Backend, ...] = ("local", "s3")
IdentityName = Literal["host", "vendor"]
#: Where the s3 backend keeps the state of unfinished multipart uploads (0700).
UPLOADS_DIR = "uploads"
#: Where ``share create`` on s3 records the shares it made (under ``storage/``).
S3_RECORDS_DIR = "s3"
S3_MODULE = "strongroom.storage.s3"


def choose_backend(ws: Workspace, requested: str | None) -> Backend:
    """``requested``, else the workspace's ``[storage] backend``, else the target's default."""
    if requested is not None:
        if requested not in BACKENDS:
            raise UsageError(
                f"unknown storage backend {requested!r}", hint=f"use one of {', '.join(BACKENDS)}"
            )
        return requested
    config = ws.config
    if config.storage_backend is not None:
        return config.storage_backend
    return "s3" if config.target == "aws" else "local"


def open_storage(
    ws: Workspace,
    *,
    backend: str | None,
    caller_identity: IdentityName,
    identity: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Storage:
    """The storage backend, opened for the caller the rule of the module docstring picks.

    ``caller_identity`` is the command's default identity (local backend);
    ``identity`` is ``--as``. ``on_note`` receives the one line that says the
    requests are made as another identity than the environment's.
    """
    chosen = choose_backend(ws, backend)
    if chosen == "local":
        given = [
            name
            for name, value in (
                ("--profile", profile),
                ("--region", region),
                ("--endpoint-url", endpoint_url),
            )
            if value is not None
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for the s3 backend; "
                "this command uses the local backend (a directory in the workspace)",
                hint="drop them, or add --backend s3",
            )
        return _open_local(ws, caller_identity, identity, on_note)
    if identity is not None:
        raise UsageError(
            f"--as {identity} names a local workspace identity; on the s3 backend the AWS "
            "credential chain makes the requests",
            hint="drop --as, and choose the credentials with --profile, AWS_PROFILE or the "
            "AWS_* variables",
        )
    return _open_s3(ws, profile=profile, region=region, endpoint_url=endpoint_url)


def _open_local(
    ws: Workspace,
    default: IdentityName,
    requested: str | None,
    on_note: Callable[[str], None] | None,
) -> Storage:
    from strongroom.keys.signer import choose
    from strongroom.storage.access import Caller
    from strongroom.storage.local import LocalStorage

    if ws.config.target != "local":
        raise UsageError(
            "the local storage backend acts as a workspace identity, and this workspace's "
            f"target is {ws.config.target!r}",
            hint='use --backend s3 (or `[storage] backend = "s3"` in config.toml)',
        )
    signer = choose(ws, requested, default=default)
    assert signer.identity is not None  # the local target always names one
    if signer.note and on_note is not None:
        on_note(signer.note.replace("signing as", "acting as", 1))
    caller = Caller(signer.identity.account_id, signer.identity.principal_arn)
    return LocalStorage(ws.storage_dir, caller, region=ws.config.region)


def _open_s3(
    ws: Workspace, *, profile: str | None, region: str | None, endpoint_url: str | None
) -> Storage:
    try:
        module: Any = importlib.import_module(S3_MODULE)
    except ModuleNotFoundError as e:
        if e.name != S3_MODULE:
            raise
        raise StrongroomError(
            "the s3 storage backend is not part of this Strongroom build",
            hint="use --backend local (a directory in the workspace)",
        ) from None
    state_dir = ws.run_dir / UPLOADS_DIR
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    storage: Storage = module.S3Storage.open(
        region=region or _chain_region(profile) or ws.config.region,
        profile=profile,
        endpoint_url=endpoint_url,
        state_dir=state_dir,
    )
    return storage


def _chain_region(profile: str | None) -> str | None:
    """The region the standard chain names (AWS_DEFAULT_REGION, the profile's), if any."""
    import botocore.exceptions
    import botocore.session

    try:
        region = botocore.session.Session(profile=profile).get_config_variable("region")
    except botocore.exceptions.BotoCoreError:
        return None  # the backend says what is wrong with the profile
    return region if isinstance(region, str) and region else None


# --- naming a share -----------------------------------------------------------------


@dataclass(frozen=True)
class ShareRef:
    """What ``--share NAME`` names: a bucket, and what the workspace knows of it."""

    bucket: str
    vendor: str | None = None
    #: The host key's ARN, when the workspace recorded it (s3).
    key_arn: str | None = None


def resolve_share(ws: Workspace, storage: Storage, name: str) -> ShareRef:
    """The share ``name`` names: a known vendor's, else the bucket of that name."""
    if storage.backend == "local":
        from strongroom.storage.local import LocalStorage

        assert isinstance(storage, LocalStorage)
        known = [ShareRef(r.bucket, r.vendor) for r in storage.known_shares()]
    else:
        known = _s3_records(ws)
    for ref in known:
        if ref.bucket == name:
            return ref
    matches = [ref for ref in known if ref.vendor == name]
    if len(matches) > 1:
        raise UsageError(
            f"several shares of this workspace are vendor {name!r}'s: "
            f"{', '.join(ref.bucket for ref in matches)}",
            hint="name the bucket with --share BUCKET",
        )
    if matches:
        return matches[0]
    if storage.backend == "local":
        raise NotFoundError(
            f"no share {name!r} in this workspace",
            hint="name a vendor or bucket that `strongroom share list` shows (the host creates "
            "it with `strongroom share create VENDOR --vendor-account ID`)",
        )
    if not BUCKET_PATTERN.fullmatch(name):
        raise UsageError(
            f"{name!r} is neither a vendor this workspace created a share for nor a bucket name",
            hint="give the bucket name `strongroom share create` printed",
        )
    return ShareRef(name)


def remember_share(ws: Workspace, share: Share) -> None:
    """Record an s3 share this workspace created (``--share VENDOR`` and its key ARN)."""
    if share.backend == "local":
        return  # the share's own directory is the record
    record = {"vendor": share.vendor, "bucket": share.bucket, "key_arn": share.key_arn}
    path = ws.storage_dir / S3_RECORDS_DIR / f"{share.bucket}.json"
    atomic_write(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def forget_share(ws: Workspace, bucket: str) -> None:
    if BUCKET_PATTERN.fullmatch(bucket):
        (ws.storage_dir / S3_RECORDS_DIR / f"{bucket}.json").unlink(missing_ok=True)


def _s3_records(ws: Workspace) -> list[ShareRef]:
    found = []
    for path in sorted((ws.storage_dir / S3_RECORDS_DIR).glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            ref = ShareRef(str(raw["bucket"]), str(raw["vendor"]), raw.get("key_arn"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged record names nothing; the bucket name still works
        if BUCKET_PATTERN.fullmatch(ref.bucket) and ref.bucket == path.stem:
            found.append(ref)
    return found
