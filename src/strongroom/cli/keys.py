"""``strongroom init``, ``strongroom env`` and ``strongroom keys ...``."""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from strongroom.cli._common import AppContext, emit, emit_json, emit_table, err, out, pass_app
from strongroom.errors import (
    InvalidInputError,
    NotFoundError,
    ServiceNotRunningError,
    StrongroomError,
    UsageError,
)
from strongroom.keys import service as keyservice
from strongroom.keys.audit import AuditQuery, read_events
from strongroom.keys.base import KeyMetadata
from strongroom.workspace import IDENTITY_NAMES, Workspace

if TYPE_CHECKING:
    from strongroom.keys.aws import KmsKeyService

#: Who signs a command's requests when neither --as nor the environment names an identity.
DEFAULT_IDENTITY = "vendor"

identity_option = click.option(
    "--as",
    "identity",
    type=click.Choice(IDENTITY_NAMES),
    default=None,
    help="Workspace identity that signs the requests (local target). [default: the identity "
    "whose keys the AWS credential chain holds, e.g. after `strongroom env --as host`; else "
    f"{DEFAULT_IDENTITY}] A line on stderr says when another identity signs than the "
    "environment's.",
)


def key_service(ws: Workspace, identity: str | None) -> KmsKeyService:
    """The key service, signed for by whom the one identity rule picks
    (:mod:`strongroom.keys.signer`); one stderr line when that is not the
    principal the environment's credentials name."""
    from strongroom.keys.signer import choose

    signer = choose(ws, identity, default=DEFAULT_IDENTITY)
    if signer.note:
        click.echo(signer.note, err=True)
    return keyservice.connect(ws, signer)


@click.command("init")
@click.option("--force", is_flag=True, help="Recreate an existing workspace (its keys are lost).")
@click.option("--region", default="us-east-1", show_default=True, help="Region name to report.")
@pass_app
def init_command(app: AppContext, force: bool, region: str) -> None:
    """Create a workspace: config, key store, local CA and two identities.

    \b
    The workspace is ./.strongroom unless --home or $STRONGROOM_HOME says otherwise.
    It holds a *host* and a *vendor* identity (account id, principal ARN and an
    access key pair; secrets in 0600 files). Running it again changes nothing.

    \b
    Example:
      strongroom init && strongroom keys serve --detach
    """
    root = Workspace.resolve_root(app.home)
    if Workspace.exists_at(root) and not force:
        emit(
            app,
            {"home": str(root), "created": False},
            lambda: out.print(
                f"workspace already exists at {root}; nothing changed (use --force to recreate it)"
            ),
        )
        return
    ws = Workspace.create(root, force=force, region=region)
    from strongroom.attestation.authority import LocalAuthority

    LocalAuthority.open_or_create(ws.ca_dir)
    ids = ws.identities()

    def render() -> None:
        out.print(f"created workspace {root}")
        emit_table(
            ["identity", "account", "principal"],
            [(i.name, i.account_id, i.principal_arn) for i in ids],
        )
        out.print("next: strongroom keys serve --detach")

    emit(
        app,
        {
            "home": str(root),
            "created": True,
            "identities": {
                i.name: {"account_id": i.account_id, "principal_arn": i.principal_arn} for i in ids
            },
        },
        render,
    )


#: What `env` exports, and so exactly what `env --unset` unsets.
ENV_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_ENDPOINT_URL_STS",
)
#: What `env` unsets before exporting: the key service would refuse a stale session token,
#: and a profile would compete with the exported keys.
ENV_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE")


@click.command("env")
@click.option(
    "--as",
    "identity",
    type=click.Choice(IDENTITY_NAMES),
    help="Which workspace identity the exports act as.",
)
@click.option("--unset", is_flag=True, help="Print the lines that undo `env --as`.")
@pass_app
def env_command(app: AppContext, identity: str | None, unset: bool) -> None:
    """Print shell exports that point AWS tools at the local key service.

    \b
    The aws CLI, boto3 and strongroom's own commands then act as that
    identity (an explicit --as on a strongroom command still wins). The key
    service also serves STS (AssumeRole, GetFederationToken,
    GetCallerIdentity) on the same endpoint, for short-lived scoped session
    credentials. --unset prints the `unset` line for exactly the variables
    `env --as` exports.

    \b
    Examples:
      eval "$(strongroom env --as vendor)"
      aws kms create-key
      eval "$(strongroom env --unset)"
    """
    if unset == (identity is not None):
        raise UsageError(
            "give either --as host|vendor or --unset",
            hint='e.g. eval "$(strongroom env --as vendor)"; eval "$(strongroom env --unset)"',
        )
    if identity is None:
        if app.json:
            emit_json({"unset": list(ENV_VARIABLES)})
        else:
            click.echo(f"unset {' '.join(ENV_VARIABLES)}")
        return
    ws = app.workspace()
    keyservice.require_local(ws, "env")
    ident = ws.identity(identity)
    endpoint = keyservice.endpoint_url(ws)
    values = (
        ident.access_key_id,
        ident.secret_access_key,
        ws.config.region,
        ws.config.region,
        endpoint,
        endpoint,
    )
    env = dict(zip(ENV_VARIABLES, values, strict=True))
    if app.json:
        emit_json(
            {"account_id": ident.account_id, "principal_arn": ident.principal_arn, "env": env}
        )
        return
    click.echo(f"unset {' '.join(ENV_CLEARED)}")
    for name, value in env.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@click.group("keys")
def keys_group() -> None:
    """The key service: run it, create keys, edit policies, read the audit.

    \b
    On the local target the key service is `strongroom keys serve`, which
    speaks the AWS KMS API (boto3 and the aws CLI work against it; see
    `strongroom env`). On the aws target it is AWS KMS.
    """


@keys_group.command("serve")
@click.option(
    "--listen",
    metavar="HOST:PORT|unix:PATH",
    help="Address to listen on [default: the workspace's keys.listen].",
)
@click.option("--detach", is_flag=True, help="Run in the background and return once it answers.")
@pass_app
def serve_command(app: AppContext, listen: str | None, detach: bool) -> None:
    """Run the local KMS-compatible key service.

    \b
    Examples:
      strongroom keys serve &                 # foreground process, in the background
      strongroom keys serve --detach          # daemon; `strongroom keys stop` ends it
      strongroom keys serve --listen 127.0.0.1:4000
    """
    ws = app.workspace()
    if detach:
        rec = keyservice.start_detached(ws, listen)
        endpoint = rec.addresses["endpoint"]
        emit(
            app,
            {"pid": rec.pid, "endpoint": endpoint},
            lambda: out.print(f"key service running at {endpoint} (pid {rec.pid})"),
        )
        return

    def ready(endpoint: str) -> None:
        err.print(f"key service listening on {endpoint} (Ctrl-C to stop)")

    keyservice.serve(ws, listen, on_ready=ready)


@keys_group.command("status")
@pass_app
def status_command(app: AppContext) -> None:
    """Say whether the local key service runs, where, and since when.

    \b
    Exits 0 when it runs, 6 (service unavailable) when it does not, so
    scripts can wait for it or start it.

    \b
    Example:
      strongroom keys status || strongroom keys serve --detach
    """
    ws = app.workspace()
    keyservice.require_local(ws, "keys status")
    rec = keyservice.running(ws)
    if rec is None:
        emit(
            app,
            {"running": False},
            lambda: out.print(
                "key service: not running (start it with `strongroom keys serve --detach`)"
            ),
        )
        sys.exit(ServiceNotRunningError.exit_code)
    since = datetime.fromtimestamp(rec.started_at, UTC).isoformat(timespec="seconds")
    info = {"running": True, "pid": rec.pid, "endpoint": rec.addresses["endpoint"], "since": since}
    emit(
        app,
        info,
        lambda: out.print(
            f"key service: running at {info['endpoint']} (pid {rec.pid}, since {since})"
        ),
    )


@keys_group.command("stop")
@pass_app
def stop_command(app: AppContext) -> None:
    """Stop the local key service (from any shell).

    \b
    Example:
      strongroom keys stop
    """
    ws = app.workspace()
    keyservice.require_local(ws, "keys stop")
    stopped = keyservice.stop(ws)
    emit(
        app,
        {"stopped": stopped},
        lambda: out.print("key service stopped" if stopped else "key service was not running"),
    )


def _metadata_dict(m: KeyMetadata) -> dict[str, Any]:
    return {
        "KeyId": m.key_id,
        "Arn": m.arn,
        "AccountId": m.account_id,
        "Description": m.description,
        "KeyState": m.state,
        "CreationDate": m.creation_date,
        "DeletionDate": m.deletion_date,
    }


@keys_group.command("create")
@click.option("--description", default="", help="Free text stored with the key.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Key policy JSON file [default: the owner account may do everything].",
)
@click.option(
    "--runbook",
    is_flag=True,
    help="Use the runbook's key policy (`keys policy template`, nothing approved yet) "
    "[default on the aws target, unless --policy is given].",
)
@click.option("--alias", help="Also create this alias (e.g. alias/my-app).")
@identity_option
@pass_app
def create_command(
    app: AppContext,
    description: str,
    policy_file: Path | None,
    runbook: bool,
    alias: str | None,
    identity: str | None,
) -> None:
    """Create a symmetric AES-256 key owned by the identity's account.

    \b
    With --alias, the alias is checked first (its name, and that the account
    has no such alias yet: exit 2), so a taken alias leaves no key behind; if
    creating the alias still fails, the new key is scheduled for deletion
    (7 days, the shortest KMS allows) and the error says so.

    \b
    Example:
      strongroom keys create --alias alias/classifier --description "model key"
    """
    from strongroom.keys.base import check_alias_name

    if runbook and policy_file:
        raise UsageError("give either --policy or --runbook, not both")
    policy = _read_policy(policy_file) if policy_file else None
    ws = app.workspace()
    if runbook or (policy is None and ws.config.target == "aws"):
        # on aws never KMS's default policy: the host's explicit denies are the point
        from strongroom.keys.key_policy import key_policy_accounts
        from strongroom.policy.measurements import runbook_policy

        owner, hosts = key_policy_accounts(ws)
        policy = runbook_policy(owner, hosts, [])
    alias_name = None
    if alias:
        alias_name = alias if alias.startswith("alias/") else f"alias/{alias}"
        check_alias_name(alias_name)
    kms = key_service(ws, identity)
    if alias_name:
        _require_free_alias(kms, alias_name)
    meta = kms.create_key(description=description, policy=policy)
    if alias_name:
        try:
            kms.create_alias(alias_name, meta.key_id)
        except StrongroomError as e:
            raise _without_orphan(kms, meta, alias_name, e) from e
    emit(app, _metadata_dict(meta), lambda: out.print(f"{meta.arn}"))


def _require_free_alias(kms: KmsKeyService, alias_name: str) -> None:
    from strongroom.errors import AlreadyExistsError

    taken = next((a for a in kms.list_aliases() if a.name == alias_name), None)
    if taken is not None:
        raise AlreadyExistsError(
            f"alias {alias_name} already exists (it names key {taken.target_key_id})",
            hint="choose another --alias; no key was created",
        )


#: KMS's shortest deletion window: a key made for an alias that could not be made goes.
ORPHAN_DELETION_DAYS = 7


def _without_orphan(
    kms: KmsKeyService, meta: KeyMetadata, alias_name: str, error: StrongroomError
) -> StrongroomError:
    """``error`` (creating the alias), once the key made for it is scheduled for deletion."""
    try:
        kms.schedule_key_deletion(meta.key_id, pending_window_days=ORPHAN_DELETION_DAYS)
        fate = f"the new key {meta.key_id} is scheduled for deletion in {ORPHAN_DELETION_DAYS} days"
    except StrongroomError as cleanup:
        fate = (
            f"the new key {meta.key_id} is left without an alias (scheduling its deletion "
            f"failed too: {cleanup.message})"
        )
    cls = type(error)
    try:
        return cls(f"cannot create {alias_name}: {error.message}; {fate}", hint=error.hint)
    except TypeError:  # an error class with other constructor arguments
        return StrongroomError(f"cannot create {alias_name}: {error.message}; {fate}")


@keys_group.command("list")
@identity_option
@pass_app
def list_command(app: AppContext, identity: str | None) -> None:
    """List the keys of the identity's account, with their aliases.

    \b
    Example:
      strongroom keys list | cut -f1     # key IDs, one per line (plus the heading)
    """
    kms = key_service(app.workspace(), identity)
    keys = kms.list_keys()
    aliases: dict[str, list[str]] = {}
    for a in kms.list_aliases():
        if a.target_key_id:
            aliases.setdefault(a.target_key_id, []).append(a.name)
    rows = [{**_metadata_dict(k), "Aliases": aliases.get(k.key_id, [])} for k in keys]
    emit(
        app,
        rows,
        lambda: emit_table(
            ["key id", "aliases", "state", "description"],
            [(r["KeyId"], ", ".join(r["Aliases"]), r["KeyState"], r["Description"]) for r in rows],
        ),
    )


@keys_group.command("describe")
@click.argument("key")
@identity_option
@pass_app
def describe_command(app: AppContext, key: str, identity: str | None) -> None:
    """Show a key's metadata. KEY is a key id, ARN or alias.

    \b
    Example:
      strongroom keys describe alias/classifier --json | jq -r .Arn
    """
    meta = key_service(app.workspace(), identity).describe_key(key)
    data = _metadata_dict(meta)
    emit(app, data, lambda: emit_table(["field", "value"], data.items()))


@keys_group.group("policy")
def policy_group() -> None:
    """Read, replace or generate key policies."""


@policy_group.command("get")
@click.argument("key")
@identity_option
@pass_app
def policy_get_command(app: AppContext, key: str, identity: str | None) -> None:
    """Print the key policy of KEY (JSON).

    \b
    Example:
      strongroom keys policy get alias/classifier > policy.json
    """
    click.echo(key_service(app.workspace(), identity).get_key_policy(key))


@policy_group.command("put")
@click.argument("key")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@identity_option
@pass_app
def policy_put_command(app: AppContext, key: str, policy_file: Path, identity: str | None) -> None:
    """Replace the key policy of KEY with POLICY_FILE.

    The key service refuses a policy that would stop you from changing it again.

    \b
    Example:
      strongroom keys policy put alias/classifier policy.json
    """
    key_service(app.workspace(), identity).put_key_policy(key, _read_policy(policy_file))
    emit(app, {"updated": True}, lambda: out.print(f"policy of {key} updated"))


@policy_group.command("template")
@click.option(
    "--approve",
    "measurements",
    multiple=True,
    metavar="PCR0",
    help="An approved enclave image measurement (repeatable).",
)
@pass_app
def policy_template_command(app: AppContext, measurements: tuple[str, ...]) -> None:
    """Print the runbook's key policy for this workspace.

    \b
    The vendor account keeps full control; the host may call kms:Decrypt only
    from an enclave whose image measurement (PCR0) is approved: an explicit
    Deny with StringNotEqualsIgnoreCase on kms:RecipientAttestation:ImageSha384,
    which also denies a host that sends no attestation at all. Explicit Denies
    keep the host from ReEncrypt, CreateGrant, Encrypt, GenerateDataKey without
    an attestation, and every action but Decrypt and DescribeKey.

    \b
    Example:
      strongroom keys policy template > policy.json
      strongroom keys policy put alias/classifier policy.json
    """
    from strongroom.keys.key_policy import key_policy_accounts
    from strongroom.policy.measurements import runbook_policy

    owner, hosts = key_policy_accounts(app.workspace())
    click.echo(runbook_policy(owner, hosts, list(measurements)))


@keys_group.command("audit")
@click.option("--key", help="Only events on this key (id, ARN, alias or alias ARN).")
@click.option("--since", help="Only events at or after this ISO-8601 time.")
@identity_option
@pass_app
def audit_command(
    app: AppContext, key: str | None, since: str | None, identity: str | None
) -> None:
    """Show the key service's audit log: who asked what, and the decision.

    \b
    Requests made with session credentials name their session; an STS call
    that issued one shows it as "→ NAME". An alias given to --key is resolved
    to its key through the key service (as --as; aliases are per account),
    so the key's events are found whatever name they were made with; a key
    id or key ARN needs no key service.

    \b
    Example:
      strongroom keys audit --key alias/classifier --since 2026-01-01T00:00:00Z
    """
    when = None
    if since:
        try:
            when = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"--since {since!r} is not an ISO-8601 time", hint="e.g. 2026-11-29T10:00:00Z"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    ws = app.workspace()
    key_id = None if key is None else _key_id(ws, key, identity)
    events = list(read_events(ws.audit_log, AuditQuery(key_id=key_id, since=when)))

    def render() -> None:
        emit_table(
            ["time", "caller", "session", "operation", "key", "outcome", "statement", "image"],
            [
                (
                    e.get("time", "")[:19],
                    e.get("caller", "-"),
                    # the session a request was made with, or the one an STS call issued
                    e.get("session")
                    or (f"→ {e['issued_session']}" if "issued_session" in e else ""),
                    e.get("operation"),
                    (e.get("key") or "").rsplit("/", 1)[-1],
                    e.get("outcome"),
                    e.get("statement") or "",
                    (e.get("attestation") or {}).get("image_sha384") or "",
                )
                for e in events
            ],
            # at 80 columns these go first: what was asked, by whom, and the answer stay
            optional=("session", "statement", "image"),
        )

    emit(app, events, render)


def _key_id(ws: Workspace, key: str, identity: str | None) -> str:
    """The key id ``key`` names: read from a key id or key ARN, resolved for an alias."""
    from strongroom.keys.audit import key_id_of

    direct = key_id_of(key)
    if direct is not None:
        return direct
    try:
        return key_service(ws, identity).describe_key(key).key_id
    except NotFoundError:
        raise NotFoundError(
            f"no key is named {key} in this identity's account",
            hint="name a key id, key ARN, alias/NAME or alias ARN; see `strongroom keys list` "
            "(aliases are per account: --as host looks in the host's)",
        ) from None


def _read_policy(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read policy file {path}: {e}") from e
