"""``strongroom share ...`` (host admin), ``publish`` (vendor) and ``fetch`` (host operator).

Runbook steps 1.1 (the host creates a share for one vendor), 2.3.1 / 2.3.2
(the vendor uploads the sealed app and the image into it), 4.1 (the host
downloads them, checked against the share's index) and 6.1 (the host revokes
the vendor's access and keeps the files). Which backend and who the caller is
are :mod:`strongroom.storage.backends`' decision; what a share allows is its
bucket policy's (:mod:`strongroom.storage.policies`).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from strongroom.cli._common import AppContext, byte_progress, emit, emit_table, out, pass_app
from strongroom.errors import StrongroomError, UsageError
from strongroom.workspace import IDENTITY_NAMES

if TYPE_CHECKING:
    from strongroom.storage.base import Share, Storage
    from strongroom.storage.index import IndexEntry
    from strongroom.workspace import Workspace


class StorageOptions:
    """The options every storage command takes, and the command's default identity."""

    def __init__(
        self,
        default: str,
        backend: str | None,
        endpoint_url: str | None,
        profile: str | None,
        region: str | None,
        identity: str | None,
    ) -> None:
        self.default = default
        self.backend = backend
        self.endpoint_url = endpoint_url
        self.profile = profile
        self.region = region
        self.identity = identity

    def open(self, ws: Workspace) -> Storage:
        from strongroom.storage.backends import open_storage

        return open_storage(
            ws,
            backend=self.backend,
            caller_identity="host" if self.default == "host" else "vendor",
            identity=self.identity,
            profile=self.profile,
            region=self.region,
            endpoint_url=self.endpoint_url,
            on_note=lambda line: click.echo(line, err=True),
        )


def storage_options(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--backend``, ``--endpoint-url``, ``--profile``, ``--region``, ``--as``, as ``where``."""
    options = [
        click.option(
            "--backend",
            type=click.Choice(["local", "s3"]),
            help="Where shares are: local (a directory in the workspace) or s3. [default: "
            "config.toml's [storage] backend; else local on the local target, s3 on aws]",
        ),
        click.option("--endpoint-url", metavar="URL", help="S3 endpoint (s3 backend; any S3 API)."),
        click.option(
            "--profile", metavar="NAME", help="AWS profile (s3 backend) [default: the chain's]."
        ),
        click.option(
            "--region",
            metavar="R",
            help="AWS region (s3 backend) [default: the chain's, else the workspace's].",
        ),
        click.option(
            "--as",
            "identity",
            type=click.Choice(IDENTITY_NAMES),
            default=None,
            help="Workspace identity that makes the requests (local backend). [default: the "
            "identity whose keys the AWS credential chain holds; else "
            f"{default}]",
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(
            *args: Any,
            backend: str | None,
            endpoint_url: str | None,
            profile: str | None,
            region: str | None,
            identity: str | None,
            **kwargs: Any,
        ) -> Any:
            where = StorageOptions(default, backend, endpoint_url, profile, region, identity)
            return command(*args, where=where, **kwargs)

        decorated: Callable[..., Any] = wrapper
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate


def _shown(value: object) -> str:
    """A value from a share (a vendor's object name, say) as the terminal should show it."""
    text = "" if value is None else str(value)
    if not text.isprintable():
        text = repr(text)
    return escape(text)


# --- share (host admin) ----------------------------------------------------------------------


@click.group("share")
def share_group() -> None:
    """Shared storage for one vendor: create it, look at it, revoke it (host admin).

    \b
    A share is a bucket the host owns and the vendor may only put objects
    into (runbook 1.1): the vendor publishes sealed apps and images with
    `strongroom publish`, the host fetches them with `strongroom fetch`, each
    checked against the share's index. `share revoke` removes the vendor's
    access (runbook 6.1) and keeps the files. Locally a share is a directory
    of the workspace whose bucket policy is enforced on every request; on s3
    it is a bucket as the runbook's CloudFormation template makes it.

    \b
    Example:
      strongroom share create acme --vendor-account 111122223333
    """


@share_group.command("create")
@click.argument("vendor")
@click.option(
    "--vendor-account",
    metavar="ID",
    required=True,
    help="The vendor's AWS account id (12 digits): the account that may put objects.",
)
@click.option(
    "--print-template",
    is_flag=True,
    help="Print the CloudFormation template (infra/share-bucket.yaml) filled in for VENDOR "
    "and ID instead, and create nothing.",
)
@storage_options("host")
@pass_app
def share_create_command(
    app: AppContext,
    vendor: str,
    vendor_account: str,
    print_template: bool,
    where: StorageOptions,
) -> None:
    """Create the share for VENDOR (runbook 1.1), and say what to hand the vendor.

    \b
    The vendor's account may put objects, with SSE aws:kms, the
    bucket-owner-full-control ACL and over HTTPS only (EnableThirdPartyAccess,
    DenyIncorrectEncryption, DenyUnencrypted, DenyNonHTTPSReqs); it may not
    read or list. Locally the share is a directory of the workspace owned by
    the host identity, in the workspace's region, with no server-side
    encryption (sealed apps are encrypted already); on s3 it is a bucket with
    versioning, public access blocked, BucketOwnerEnforced, SSE-KMS with a
    host key the vendor may use, and access logs. VENDOR becomes part of the
    bucket's name: 1-20 lower-case letters, digits and inner hyphens.

    \b
    Examples:
      strongroom share create acme --vendor-account 111122223333
      strongroom share create acme --vendor-account 111122223333 --print-template > acme.yaml
    """
    from strongroom.storage.backends import remember_share
    from strongroom.storage.base import check_account, check_vendor

    check_vendor(vendor)
    check_account(vendor_account, what="--vendor-account")
    if print_template:
        text = _template(vendor, vendor_account)
        emit(app, {"template": text}, lambda: click.echo(text, nl=False))
        return
    ws = app.workspace()
    storage = where.open(ws)
    names = storage.names(vendor)
    if vendor_account == names.host_account:
        raise UsageError(
            f"--vendor-account {vendor_account} is the host's own account",
            hint="give the vendor's account id (`strongroom init` printed the workspace's "
            "vendor identity's)",
        )
    share = storage.create_share(names, vendor_account)
    remember_share(ws, share)
    line = _publish_line(share, names.region)
    data = {**share.to_dict(), "region": names.region, "publish": line}

    def render() -> None:
        out.print(f"created the share for vendor {share.vendor} ({share.backend} backend)")
        emit_table(["field", "value"], _share_rows(share))
        out.print("hand the vendor this line (the vendor runs it to publish):")
        out.print(f"  {escape(line)}", soft_wrap=True)

    emit(app, data, render)


def _template(vendor: str, vendor_account: str) -> str:
    try:
        from strongroom.storage import template
    except ImportError:
        raise StrongroomError(
            "the CloudFormation template is not part of this Strongroom build",
            hint="use `strongroom share create` without --print-template",
        ) from None
    text: str = template.filled_in(vendor, vendor_account)
    return text if text.endswith("\n") else text + "\n"


def _publish_line(share: Share, region: str) -> str:
    if share.backend == "local":
        return f"strongroom publish --share {share.bucket} app.sealed app.eif"
    key = f" --kms-key {share.key_arn}" if share.key_arn else ""
    return (
        f"strongroom publish --backend s3 --region {region} --share {share.bucket}{key} "
        "app.sealed app.eif"
    )


def _key_text(share: Share) -> str:
    if share.key_arn:
        alias = f" ({share.key_alias})" if share.key_alias else ""
        return f"{share.key_arn}{alias}"
    return "none: the local backend has no server-side encryption (sealed apps are encrypted)"


def _access_text(share: Share) -> str:
    if share.access == "open":
        return (
            f"open: account {share.vendor_account} may put objects "
            "(EnableThirdPartyAccess); it may not read or list them"
        )
    return (
        f"revoked: account {share.vendor_account} may not put objects (no "
        "EnableThirdPartyAccess statement); the objects are kept"
    )


def _share_rows(share: Share) -> list[tuple[str, str]]:
    return [
        ("vendor", f"{share.vendor} (account {share.vendor_account})"),
        ("bucket", share.bucket),
        ("location", share.location),
        ("key", _key_text(share)),
        ("access", _access_text(share)),
    ]


@share_group.command("list")
@storage_options("host")
@pass_app
def share_list_command(app: AppContext, where: StorageOptions) -> None:
    """List this account's shares: vendor, bucket, whether the vendor's access is open.

    \b
    OBJECTS counts what the vendor published (index documents left out; "?"
    when the share's policy does not let this caller list it).

    \b
    Example:
      strongroom share list
    """
    from strongroom.errors import AccessDeniedError
    from strongroom.storage.base import INDEX_PREFIX

    storage = where.open(app.workspace())
    rows = []
    for share in storage.list_shares():
        count: int | None
        try:
            objects = storage.list_objects(share.bucket)
            count = sum(1 for o in objects if not o.name.startswith(INDEX_PREFIX))
        except AccessDeniedError:  # a policy edited to deny even the host: still listed
            count = None
        rows.append({**share.to_dict(), "objects": count})
    emit(
        app,
        rows,
        lambda: emit_table(
            ["vendor", "vendor account", "bucket", "access", "objects"],
            [
                (
                    r["vendor"],
                    r["vendor_account"],
                    r["bucket"],
                    r["access"],
                    "?" if r["objects"] is None else r["objects"],
                )
                for r in rows
            ],
            optional=("objects", "vendor account"),
        ),
    )


@share_group.command("show")
@click.argument("vendor")
@storage_options("host")
@pass_app
def share_show_command(app: AppContext, vendor: str, where: StorageOptions) -> None:
    """Show VENDOR's share: its settings, what its policy grants, the policy, the objects.

    \b
    The grants are decided, request by request, by the same evaluator that
    enforces the policy locally: what the vendor, the host and any other
    account may do, and the statement that decides it. Each object shows
    what the share's index says it is (or that no index lists it, so `fetch`
    will not take it).

    \b
    Example:
      strongroom share show acme
      strongroom share show acme --json | jq .bucket_policy
    """
    from strongroom.storage.access import grants
    from strongroom.storage.base import INDEX_PREFIX
    from strongroom.storage.transfer import read_index

    storage = where.open(app.workspace())
    details = storage.show_share(vendor)
    share = details.share
    names = storage.names(vendor)
    granted = grants(details.bucket_policy, names.host_account, share.bucket, share.vendor_account)
    index_problem = None
    try:
        index = read_index(storage, share.bucket)
    except StrongroomError as e:
        index, index_problem = {}, e.message
    documents = [o for o in details.objects if o.name.startswith(INDEX_PREFIX)]
    objects = []
    for found in details.objects:
        if found.name.startswith(INDEX_PREFIX):
            continue
        indexed = index.get(found.name)
        objects.append(
            {
                **found.to_dict(),
                "indexed": None if indexed is None else _entry_dict(indexed.entry),
            }
        )
    data = {
        **share.to_dict(),
        "settings": details.settings,
        "grants": [g.to_dict() for g in granted],
        "bucket_policy": details.bucket_policy,
        "key_policy": details.key_policy,
        "objects": objects,
        "index_documents": [o.name for o in documents],
        "index_problem": index_problem,
    }

    def render() -> None:
        emit_table(["share", share.vendor], _share_rows(share)[1:])
        emit_table(["setting", "value"], [(k, str(v)) for k, v in details.settings.items()])
        emit_table(
            ["who", "may", "decision", "decided by"],
            [
                (
                    g.who,
                    g.request,
                    "allowed" if g.decision.allowed else "denied",
                    g.decision.statement_sid or g.decision.reason,
                )
                for g in granted
            ],
            title="grants (decided by the bucket policy)",
        )
        out.print("bucket policy:")
        out.print(escape(json.dumps(details.bucket_policy, indent=2)), soft_wrap=True)
        if details.key_policy is not None:
            out.print("key policy:")
            out.print(escape(json.dumps(details.key_policy, indent=2)), soft_wrap=True)
        if index_problem:
            out.print(f"index: unreadable: {_shown(index_problem)}")
        else:
            out.print(f"index: {len(documents)} document(s)")
        emit_table(
            ["object", "size", "modified", "kind (index)", "sha256 (index)"],
            [
                (
                    _shown(o["name"]),
                    o["size"],
                    o["modified"][:19],
                    o["indexed"]["kind"] if o["indexed"] else "not indexed",
                    o["indexed"]["sha256"] if o["indexed"] else "",
                )
                for o in objects
            ],
            title=f"{len(objects)} object(s)",
            optional=("sha256 (index)", "modified"),
        )

    emit(app, data, render)


@share_group.command("revoke")
@click.argument("vendor")
@storage_options("host")
@pass_app
def share_revoke_command(app: AppContext, vendor: str, where: StorageOptions) -> None:
    """Revoke VENDOR's access to its share; keep the files (runbook 6.1).

    \b
    Removes exactly the EnableThirdPartyAccess statement from the bucket
    policy, nothing else: the vendor can no longer put objects, and every
    object already in the share stays. `share restore` gives the access back.

    \b
    Example:
      strongroom share revoke acme
    """
    _change_access(app, vendor, where, revoke=True)


@share_group.command("restore")
@click.argument("vendor")
@storage_options("host")
@pass_app
def share_restore_command(app: AppContext, vendor: str, where: StorageOptions) -> None:
    """Give VENDOR its access back: the EnableThirdPartyAccess statement, as created.

    \b
    Example:
      strongroom share restore acme
    """
    _change_access(app, vendor, where, revoke=False)


def _change_access(app: AppContext, vendor: str, where: StorageOptions, *, revoke: bool) -> None:
    from strongroom.storage.base import INDEX_PREFIX
    from strongroom.storage.policies import VENDOR_ACCESS_SID

    storage = where.open(app.workspace())
    before = storage.show_share(vendor)
    share = storage.revoke_share(vendor) if revoke else storage.restore_share(vendor)
    changed = before.share.access != share.access
    kept = sum(1 for o in before.objects if not o.name.startswith(INDEX_PREFIX))
    data = {**share.to_dict(), "changed": changed, "statement": VENDOR_ACCESS_SID, "objects": kept}

    def render() -> None:
        if revoke and changed:
            out.print(
                f"revoked vendor {share.vendor}'s access to {share.bucket}: removed the "
                f"{VENDOR_ACCESS_SID} statement from the bucket policy (nothing else changed)"
            )
            out.print(
                f"the {kept} object(s) in the share are kept; `strongroom share delete "
                f"{share.vendor} --purge` removes them"
            )
        elif revoke:
            out.print(
                f"vendor {share.vendor}'s access to {share.bucket} was already revoked: "
                "nothing changed"
            )
        elif changed:
            out.print(
                f"restored vendor {share.vendor}'s access to {share.bucket}: the "
                f"{VENDOR_ACCESS_SID} statement is back in the bucket policy"
            )
        else:
            out.print(
                f"vendor {share.vendor}'s access to {share.bucket} was open: the "
                f"{VENDOR_ACCESS_SID} statement is as created"
            )

    emit(app, data, render)


@share_group.command("delete")
@click.argument("vendor")
@click.option("--purge", is_flag=True, help="Delete the share's objects too.")
@click.option("--yes", is_flag=True, help="Do not ask before --purge deletes objects.")
@storage_options("host")
@pass_app
def share_delete_command(
    app: AppContext, vendor: str, purge: bool, yes: bool, where: StorageOptions
) -> None:
    """Delete VENDOR's share. A share that holds objects needs --purge.

    \b
    --purge deletes the objects with it, after asking (unless --yes; without
    a terminal to ask on, --yes is required). To stop the vendor and keep
    the files, `share revoke` instead.

    \b
    Example:
      strongroom share delete acme --purge --yes
    """
    from strongroom.storage.backends import forget_share
    from strongroom.storage.base import INDEX_PREFIX

    ws = app.workspace()
    storage = where.open(ws)
    details = storage.show_share(vendor)
    share, count = details.share, len(details.objects)
    documents = sum(1 for o in details.objects if o.name.startswith(INDEX_PREFIX))
    if count and not purge:
        raise UsageError(
            f"the share {share.bucket} holds {count} object(s) ({count - documents} published, "
            f"{documents} index documents): it is not deleted",
            hint=f"`strongroom share delete {vendor} --purge` deletes them with it; "
            f"`strongroom share revoke {vendor}` stops the vendor and keeps them",
        )
    if count and not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"--purge would delete the {count} object(s) of {share.bucket}, and there is no "
                "terminal to ask on",
                hint="add --yes to delete them",
            )
        click.confirm(
            f"delete the share {share.bucket} and its {count} object(s)?", abort=True, err=True
        )
    storage.delete_share(vendor, purge=purge)
    forget_share(ws, share.bucket)
    emit(
        app,
        {**share.to_dict(), "deleted": True, "objects_deleted": count},
        lambda: out.print(
            f"deleted the share {share.bucket}"
            + (f" and its {count} object(s)" if count else " (it was empty)")
        ),
    )


# --- publish (vendor) and fetch (host operator) ---------------------------------------------


def _entry_dict(entry: IndexEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json")


def _entry_row(entry: IndexEntry) -> tuple[str, int, str, str, str]:
    pcr0 = (entry.measurements or {}).get("PCR0", "")
    return (_shown(entry.object), entry.size, entry.sha256, entry.kind, pcr0)


ENTRY_COLUMNS = ["object", "size", "sha256", "kind", "pcr0"]


@click.command("publish")
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--share",
    "share_name",
    required=True,
    metavar="BUCKET|VENDOR",
    help="The share: its bucket name (as `share create` printed it), or a vendor name this "
    "workspace has a share for.",
)
@click.option(
    "--kms-key",
    metavar="ARN",
    help="The host key's ARN, for SSE-KMS (s3 backend; required there unless this workspace "
    "created the share).",
)
@click.option("--prefix", default="", metavar="P", help="Put before each object name (e.g. v2/).")
@storage_options("vendor")
@pass_app
def publish_command(
    app: AppContext,
    files: tuple[Path, ...],
    share_name: str,
    kms_key: str | None,
    prefix: str,
    where: StorageOptions,
) -> None:
    """Upload FILE... into a share, then an index of them for the host (runbook 2.3.1, 2.3.2).

    \b
    Each file becomes the object PREFIX + its name. Its size, SHA-256, kind
    (sealed package, enclave image or file: read from its content) and, for
    an image, its measurements go into an index document of this publish,
    written after the files, so that `strongroom fetch` can check what it
    downloads. Every file is described before anything is uploaded. The
    uploads carry what the share's policy demands (SSE aws:kms, the
    bucket-owner-full-control ACL, HTTPS); after `share revoke` the share
    refuses them (exit 5). On s3 a large file goes up in parts, and the same
    publish run again after a failure resumes where it stopped.

    \b
    Example:
      strongroom publish --share acme-code-bucket-111122223333-us-east-1 app.sealed app.eif
    """
    from strongroom.storage.backends import choose_backend, resolve_share
    from strongroom.storage.transfer import plan_publish, publish

    ws = app.workspace()
    if kms_key is not None and choose_backend(ws, where.backend) == "local":
        raise UsageError(
            "--kms-key is for the s3 backend; the local backend has no server-side encryption",
            hint="drop --kms-key",
        )
    storage = where.open(ws)
    ref = resolve_share(ws, storage, share_name)
    key = kms_key or ref.key_arn
    if storage.backend != "local" and key is None:
        raise UsageError(
            f"the share {ref.bucket} encrypts with the host's KMS key, and its ARN is not known "
            "here",
            hint="add --kms-key ARN: the key ARN that `strongroom share create` printed for the "
            "host",
        )
    items = plan_publish(list(files), prefix=prefix)
    total = sum(item.entry.size for item in items)
    with byte_progress(f"publish to {ref.bucket}", total, enabled=not app.json) as advance:
        published = publish(
            storage,
            ref.bucket,
            items,
            kms_key=key if storage.backend != "local" else None,
            publisher=storage.caller_account(),
            advance=advance,
        )
    entries = [item.entry for item in published.items]
    data = {
        "share": ref.bucket,
        "index": published.document_name,
        "objects": [_entry_dict(e) for e in entries],
    }

    def render() -> None:
        emit_table(ENTRY_COLUMNS, [_entry_row(e) for e in entries], optional=("pcr0",))
        out.print(
            f"published {len(entries)} file(s) to {ref.bucket}, indexed in "
            f"{published.document_name}"
        )

    emit(app, data, render)


@click.command("fetch")
@click.argument("objects", nargs=-1)
@click.option(
    "--share",
    "share_name",
    required=True,
    metavar="BUCKET|VENDOR",
    help="The share: a vendor name this workspace has a share for, or its bucket name.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write into (created if need be).",
)
@click.option("--force", is_flag=True, help="Replace files that already exist in DIR.")
@storage_options("host")
@pass_app
def fetch_command(
    app: AppContext,
    objects: tuple[str, ...],
    share_name: str,
    out_dir: Path,
    force: bool,
    where: StorageOptions,
) -> None:
    """Download OBJECT... (all the index lists, if none) into DIR, verified (host; runbook 4.1).

    \b
    Each object is checked against the newest index entry the vendor
    published for it: its size, its SHA-256 and, for an enclave image, the
    measurements `image describe` computes from the downloaded file (for a
    sealed package, that its header reads). It reaches DIR only once it
    matched; a mismatch or any failure is one error naming the object and
    what differed, and leaves no partial file (objects verified earlier in
    the same fetch stay, and the error says which). An object no index
    lists is not fetched. Existing files are not replaced without --force.

    \b
    Example:
      strongroom fetch --share acme -o vendor-files
      strongroom enclave start vendor-files/app.eif
    """
    from strongroom.storage.backends import resolve_share
    from strongroom.storage.transfer import fetch, plan_fetch

    ws = app.workspace()
    storage = where.open(ws)
    ref = resolve_share(ws, storage, share_name)
    plan = plan_fetch(storage, ref.bucket, list(objects), out_dir, force=force)
    total = sum(item.indexed.entry.size for item in plan)
    with byte_progress(f"fetch from {ref.bucket}", total, enabled=not app.json) as advance:
        done = fetch(storage, ref.bucket, plan, out_dir, force=force, advance=advance)
    data = {
        "share": ref.bucket,
        "output": str(out_dir),
        "objects": [
            {
                **_entry_dict(item.indexed.entry),
                "path": str(item.destination),
                "index": item.indexed.document,
            }
            for item in done
        ],
    }

    def render() -> None:
        emit_table(
            ENTRY_COLUMNS, [_entry_row(item.indexed.entry) for item in done], optional=("pcr0",)
        )
        out.print(
            f"fetched {len(done)} object(s) from {ref.bucket} into {_shown(out_dir)}: each "
            "matched its index entry (size, SHA-256, and an image's measurements)"
        )

    emit(app, data, render)
