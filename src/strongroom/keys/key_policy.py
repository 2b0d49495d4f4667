"""Which accounts a key policy names: the one place Strongroom decides that.

Every policy Strongroom writes must name only real accounts, so the owner and
the host principals come from here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strongroom.errors import ConfigError

if TYPE_CHECKING:
    from strongroom.workspace import Workspace

_ACCOUNTS_HINT = (
    "name the two real accounts in the workspace's config.toml: "
    '[aws] host_account = "HOST_ID" and vendor_account = "VENDOR_ID" (12 digits each)'
)


def key_policy_accounts(ws: Workspace) -> tuple[str, list[str]]:
    """(owner account = the vendor's, host principals) for this workspace's key policies.

    On aws the host principal is the host account's root: the key policy then
    trusts the host account, and the host's own IAM (see ``strongroom iam
    host-policy``) decides which of its roles may use that trust.
    """
    config = ws.config
    if config.target == "aws":
        # Never the workspace's identities: on aws they are invented, and a real key
        # policy naming an invented account would trust whoever owns that number.
        if config.accounts is None:
            raise ConfigError(
                "this aws workspace names no host and vendor accounts, and Strongroom "
                "writes no key policy without the real ones",
                hint=_ACCOUNTS_HINT,
            )
        return config.accounts.vendor, [host_root(config.accounts.host)]
    vendor, host_identity = ws.identity("vendor"), ws.identity("host")
    return vendor.account_id, [host_root(host_identity.account_id)]


def host_root(account: str) -> str:
    """The principal that delegates to the host account's own IAM."""
    return f"arn:aws:iam::{account}:root"
