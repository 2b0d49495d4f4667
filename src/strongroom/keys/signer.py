"""Who signs a command's key-service requests: the one identity rule.

Every command that talks to the key service (``keys ...``, ``seal``,
``unseal``, ``image build|approve|revoke|approved``) asks :func:`choose`, and
nothing else picks credentials. The rule, in order:

1. an explicit ``--as NAME`` wins (the workspace identity NAME signs);
2. otherwise the standard AWS credential chain decides, as botocore resolves
   it (the ``AWS_*`` variables, ``AWS_PROFILE`` and the config and credentials
   files, ``credential_process``, SSO) — so ``strongroom`` acts as the same
   principal as the aws CLI in the same shell. On the aws target those
   credentials sign. On the local target, when they are a workspace
   identity's key pair, that identity signs;
3. when the chain names no credentials (or, on the local target, credentials
   that are no workspace identity's), the command's documented default
   identity signs.

Whenever the identity that signs is not the one the environment names (an
explicit ``--as`` that differs from it, or credentials that are nobody's in
the workspace), :attr:`Signer.note` says so in one line, which the CLI prints
on stderr: a command never acts as another principal than the shell's
without saying it. Knowing an identity's access key id is not enough to be
taken for it: the secret must match too (else, without ``--as``, the command
is refused, as the key service would refuse those credentials).

On the local target the chain's metadata-service providers (EC2, containers)
are skipped: they time out slowly off AWS and never hold a workspace key.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Literal

from strongroom.errors import CredentialError, UsageError
from strongroom.keys.aws import ChainCredentials, chain_credentials
from strongroom.workspace import Identity, Workspace

#: Why the signer was chosen.
Reason = Literal["--as", "environment", "default"]


@dataclass(frozen=True)
class Signer:
    """The decision: which credentials sign, and why."""

    #: The workspace identity that signs; None on the aws target (the chain's own credentials).
    identity: Identity | None
    reason: Reason
    #: What the credential chain names, if anything (on the aws target: not looked up).
    environment: ChainCredentials | None = None
    #: The workspace identity the environment's credentials are, if any.
    environment_identity: str | None = None

    @property
    def note(self) -> str | None:
        """One line when the signer is not the principal the environment names; else None."""
        if self.identity is None or self.environment is None:
            return None
        name = self.identity.name
        if self.environment_identity == name:
            return None
        why = f"--as {name}" if self.reason == "--as" else "the default of this command"
        source = describe_source(self.environment)
        if self.environment_identity is not None:
            return (
                f"note: signing as {name} ({why}), not as {self.environment_identity}, "
                f"whose credentials the environment holds ({source})"
            )
        return (
            f"note: signing as {name} ({why}): the environment's AWS credentials ({source}) "
            "belong to no identity of this workspace"
        )


def choose(ws: Workspace, requested: str | None, *, default: str) -> Signer:
    """Apply the rule (see the module docstring) for a command whose default is ``default``."""
    if ws.config.target == "aws":
        if requested is not None:
            raise UsageError(
                f"--as {requested} names a local workspace identity; on the aws target the "
                "AWS credential chain signs",
                hint="drop --as, and choose the credentials with AWS_PROFILE or the AWS_* "
                "variables",
            )
        return Signer(identity=None, reason="environment")
    found = chain_credentials(metadata_services=False)
    named = None if found is None else _identity_of(ws, found, refuse_impostor=not requested)
    reason: Reason = "--as" if requested else "environment" if named else "default"
    identity = ws.identity(requested or named or default)
    return Signer(identity, reason, environment=found, environment_identity=named)


def _identity_of(ws: Workspace, found: ChainCredentials, *, refuse_impostor: bool) -> str | None:
    """The workspace identity whose key pair ``found`` is (None: nobody's).

    An identity's access key id with another secret is nobody's credentials.
    When they would decide who signs (no ``--as``), they are refused: signing
    for them with the identity's real secret would act as a principal the
    environment cannot prove to be, where the aws CLI would be refused.
    """
    for identity in ws.identities():
        if identity.access_key_id != found.access_key_id:
            continue
        if hmac.compare_digest(
            identity.secret_access_key.encode(), found.secret_access_key.encode()
        ):
            return identity.name
        if refuse_impostor:
            raise CredentialError(
                f"the environment's AWS access key ({describe_source(found)}) is the "
                f"{identity.name}'s, but its secret key is not",
                hint=f'set both from `eval "$(strongroom env --as {identity.name})"`, or '
                'clear them with `eval "$(strongroom env --unset)"`',
            )
    return None


def describe_source(found: ChainCredentials) -> str:
    """Where the chain found ``found``, for messages: never the secret, never the token."""
    key = found.access_key_id
    shown = key if len(key) <= 8 else f"{key[:4]}…{key[-4:]}"
    if found.method == "env":
        return f"AWS_ACCESS_KEY_ID={shown}"
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    return f"profile {profile}, {shown}"
