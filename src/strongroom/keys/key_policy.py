"""Which accounts a key policy names: the one place Strongroom decides that.

Every policy Strongroom writes must name only real accounts, so the owner and
the host principals come from here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strongroom.errors import ConfigError

if TYPE_CHECKING:
    from strongroom.workspace import Workspace

_ACCOUNT_HINT = "set the host and vendor account ids with `strongroom init`"


def key_policy_accounts(ws: Workspace) -> tuple[str, list[str]]:
    """(owner account = the vendor's, host principals) for this workspace's key policies.

    On aws the host principal is the host account's root: the key policy then
    trusts the host account, and the host's own IAM (see ``strongroom iam
    host-policy``) decides which of its roles may use that trust.
    """
    if ws.config.target == "aws":
        # `accounts` (.host, .vendor) is added to the config by issue 14 part A.
        accounts = getattr(ws.config, "accounts")  # noqa: B009 - absent before part A
        owner, host = _checked(accounts.vendor, "vendor"), _checked(accounts.host, "host")
        return owner, [f"arn:aws:iam::{host}:root"]
    vendor, host_identity = ws.identity("vendor"), ws.identity("host")
    return vendor.account_id, [f"arn:aws:iam::{host_identity.account_id}:root"]


def _checked(account: object, role: str) -> str:
    if not (isinstance(account, str) and len(account) == 12 and account.isdigit()):
        raise ConfigError(f"the {role} account id {account!r} is not 12 digits", hint=_ACCOUNT_HINT)
    return account
