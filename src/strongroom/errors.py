"""The one error hierarchy of Strongroom.

Every error a user can meet is a :class:`StrongroomError` with a one-line
``message`` and a ``hint`` that says what to do. Backends translate foreign
exceptions (botocore, httpx, OSError, ...) into these at their edge, with
``raise ... from``. The CLI catches the base class once, prints the message and
the hint, and exits with :attr:`StrongroomError.exit_code`.

Two families matter to callers:

- :class:`EvidenceError` — the evidence is bad: a signature does not verify, a
  package was tampered with, a policy denied the request. Retrying will not help.
- :class:`UnavailableError` — a service could not be reached or is not running.
  Starting it, or retrying later, may help.

Exit codes (documented in ``docs/CLI.md``):

====  ==========================================
1     generic failure
2     usage error (bad command-line input)
3     bad input (a file or document is malformed)
4     evidence error (verification, tampering)
5     access denied by a key policy or a share's bucket policy
6     service unavailable
7     not found
====  ==========================================
"""

from __future__ import annotations


class StrongroomError(Exception):
    """Base of every error Strongroom raises on purpose."""

    exit_code = 1
    default_hint = ""
    #: The POSIX error behind a filesystem failure (``"ENOTEMPTY"``), when there is
    #: one: the Files API sends it so the mount can answer the kernel exactly.
    errno_name: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def diagnostics(self) -> str:
        """The text a user sees: the message, then the hint on its own line."""
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(StrongroomError):
    """The command line asks for something that cannot be done as written."""

    exit_code = 2


class InvalidInputError(StrongroomError):
    """A file, document or request is malformed."""

    exit_code = 3


class PathEscapeError(InvalidInputError):
    """A path tried to leave the shared folder (``..``, a symlink, NUL)."""


class InsufficientSpaceError(InvalidInputError):
    """What is to be written does not fit in the space left (the enclave's shared folder).

    Exit code 3, like any request that cannot be carried out as asked: the
    shared folder is a fixed-size slice of the enclave's memory, so retrying
    the same request will not help; removing files or a larger enclave will.
    """

    default_hint = (
        "remove what is no longer needed (`strongroom rm -r PATH`), "
        "or start the enclave with more --memory"
    )


class ConfigError(InvalidInputError):
    """The workspace configuration is missing or malformed."""


class WorkspaceNotFoundError(ConfigError):
    default_hint = "run `strongroom init` (or set STRONGROOM_HOME to an existing workspace)"


class NotFoundError(StrongroomError):
    """A named thing (key, alias, enclave, file) does not exist."""

    exit_code = 7


class AlreadyExistsError(StrongroomError):
    exit_code = 2


# --- bad evidence -------------------------------------------------------------


class EvidenceError(StrongroomError):
    """The evidence is bad: retrying will not help."""

    exit_code = 4


class VerificationError(EvidenceError):
    """A signature, certificate chain or attestation document did not verify."""


class TamperedError(EvidenceError):
    """Data was modified, truncated or reordered after it was protected."""


class AccessDeniedError(EvidenceError):
    """A key policy or a share's bucket policy (or the absence of one) denied the request."""

    exit_code = 5


class CredentialError(AccessDeniedError):
    """The key service refused the credentials themselves, before any policy was looked at.

    A bad or unsigned signature, an unknown access key, an expired session
    token, a credential scoped to another region or service. Kept apart from a
    policy denial so that a run reports "the credentials were refused", not
    "the image is not approved".
    """

    default_hint = (
        "the key service did not accept the request's signature or credentials; "
        "a run's session credentials last 15 minutes (start the run again), and the "
        "region and key-service endpoint must match the workspace configuration"
    )


# --- unavailable services -----------------------------------------------------


class UnavailableError(StrongroomError):
    """A service could not be reached; starting it or retrying may help."""

    exit_code = 6


class ServiceNotRunningError(UnavailableError):
    """A workspace service (key service, enclave, proxy) is not running."""


class ServiceError(StrongroomError):
    """A service answered with an error we have no more specific class for."""
