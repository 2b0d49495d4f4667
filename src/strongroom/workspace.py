"""The workspace: where every Strongroom command finds its configuration and state.

A workspace is a directory (default ``./.strongroom``, or ``$STRONGROOM_HOME``,
or ``--home``) holding:

- ``config.toml`` — target, region, key-service endpoint, identities (no secrets);
  on the aws target, optionally ``[aws] run_role_arn``: the IAM role the host
  assumes (with a session policy allowing only ``kms:Decrypt`` on the
  package's key) to make each run's short-lived credentials, and
  ``[aws] host_account`` / ``vendor_account``: the two real 12-digit AWS
  accounts every key policy Strongroom writes names (no policy is written on
  aws without them); optionally
  ``[storage] backend = "local" | "s3"``: where ``share``, ``publish`` and
  ``fetch`` keep shares [default: ``local`` on the local target, ``s3`` on aws];
- ``identities/<name>.secret`` — the secret access key of each identity (0600);
- ``keys/`` — the local key store (key material 0600);
- ``audit.log`` — the key service's audit trail (JSON lines);
- ``ca/`` — the local attestation authority;
- ``storage/`` — shared storage: a directory per local share (``storage/BUCKET/``),
  and ``storage/s3/`` records of the s3 shares made from this workspace;
- ``run/`` — sockets, pids and logs of running services.

Every command resolves the workspace the same way (:func:`Workspace.locate`).
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tomli_w

from strongroom._internal.files import atomic_write, write_secret
from strongroom.errors import ConfigError, UsageError, WorkspaceNotFoundError

DEFAULT_DIRNAME = ".strongroom"
HOME_ENV = "STRONGROOM_HOME"
CONFIG_NAME = "config.toml"
DEFAULT_REGION = "us-east-1"
IDENTITY_NAMES = ("host", "vendor")
IdentityName = Literal["host", "vendor"]
_ACCOUNT_ID = re.compile(r"\d{12}", re.ASCII)
_ROLE_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]+", re.ASCII)


@dataclass(frozen=True)
class Identity:
    """An account and principal that signs requests to the key service."""

    name: str
    account_id: str
    principal_arn: str
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # never show the secret
        return f"Identity(name={self.name!r}, principal_arn={self.principal_arn!r})"


@dataclass(frozen=True)
class Config:
    target: Literal["local", "aws"]
    region: str
    kms_listen: str
    identities: dict[str, dict[str, str]]
    #: trust anchors the key service accepts Recipient documents from: "local", "aws"
    trust: tuple[str, ...] = ("local",)
    #: aws target: the role `run` assumes for its scoped session credentials (``[aws]
    #: run_role_arn``); None: GetFederationToken with the host's IAM-user credentials
    aws_run_role_arn: str | None = None
    #: ``[storage] backend``: "local" or "s3"; None: the target's default
    storage_backend: Literal["local", "s3"] | None = None
    #: aws target: the real host and vendor accounts (``[aws] host_account``,
    #: ``vendor_account``); None when the file names neither
    accounts: Accounts | None = None


@dataclass(frozen=True)
class Accounts:
    """The two real AWS accounts of the aws target (12 digits each)."""

    host: str
    vendor: str


class Workspace:
    """A located workspace directory. Construct with :meth:`locate` or :meth:`create`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- locating ---------------------------------------------------------

    @staticmethod
    def resolve_root(home: str | os.PathLike[str] | None = None) -> Path:
        if home is not None:
            return Path(home).expanduser().absolute()
        env = os.environ.get(HOME_ENV)
        if env:
            return Path(env).expanduser().absolute()
        return Path.cwd() / DEFAULT_DIRNAME

    @classmethod
    def locate(cls, home: str | os.PathLike[str] | None = None) -> Workspace:
        root = cls.resolve_root(home)
        if not (root / CONFIG_NAME).is_file():
            raise WorkspaceNotFoundError(f"no Strongroom workspace at {root}")
        return cls(root)

    @classmethod
    def exists_at(cls, root: Path) -> bool:
        return (root / CONFIG_NAME).is_file()

    # --- creating ---------------------------------------------------------

    @classmethod
    def create(cls, root: Path, *, force: bool = False, region: str = DEFAULT_REGION) -> Workspace:
        """Create a fresh workspace at ``root``.

        Refuses to touch an existing workspace unless ``force`` is set, in
        which case the old one is removed first (its keys are lost).
        """
        if cls.exists_at(root):
            if not force:
                raise UsageError(
                    f"a workspace already exists at {root}",
                    hint="use --force to recreate it (its keys will be lost)",
                )
            import shutil

            shutil.rmtree(root)
        elif root.exists() and any(root.iterdir()):
            raise UsageError(
                f"{root} exists and is not an empty directory",
                hint="choose another --home, or empty that directory",
            )
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        ws = cls(root)
        for sub in ("identities", "keys", "ca", "storage", "run"):
            (root / sub).mkdir(mode=0o700, exist_ok=True)
        identities: dict[str, dict[str, str]] = {}
        used_accounts: set[str] = set()
        for name in IDENTITY_NAMES:
            account = _new_account_id(used_accounts)
            used_accounts.add(account)
            role = "role/strongroom-host" if name == "host" else "user/strongroom-vendor"
            identities[name] = {
                "account_id": account,
                "principal_arn": f"arn:aws:iam::{account}:{role}",
                "access_key_id": _new_access_key_id(),
            }
            write_secret(ws.root / "identities" / f"{name}.secret", _new_secret_key().encode())
        config = {
            "target": "local",
            "region": region,
            "keys": {"listen": f"127.0.0.1:{_free_tcp_port()}", "trust": ["local"]},
            "identities": identities,
        }
        atomic_write(root / CONFIG_NAME, tomli_w.dumps(config).encode())
        return ws

    # --- reading ----------------------------------------------------------

    @property
    def config(self) -> Config:
        try:
            text = (self.root / CONFIG_NAME).read_text()
            raw = tomllib.loads(text)
            return Config(
                target=_target(raw["target"]),
                region=raw["region"],
                kms_listen=raw["keys"]["listen"],
                identities=raw["identities"],
                trust=tuple(raw["keys"].get("trust", ["local"])),
                aws_run_role_arn=_role_arn(raw.get("aws", {}).get("run_role_arn")),
                storage_backend=_storage_backend(raw.get("storage")),
                accounts=_accounts(raw.get("aws", {})),
            )
        except (
            OSError,
            tomllib.TOMLDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
        ) as e:
            where = str(self.root / CONFIG_NAME)
            if isinstance(e, BadValueError):
                where += f":{_line_of(text, e.key)}"
            raise ConfigError(
                f"cannot read {where}: {e}",
                hint="fix the file, or recreate the workspace with `strongroom init --force`",
            ) from e

    def identity(self, name: str) -> Identity:
        ids = self.config.identities
        if name not in ids:
            raise UsageError(
                f"unknown identity {name!r}", hint=f"choose one of: {', '.join(sorted(ids))}"
            )
        entry = ids[name]
        try:
            secret = (self.root / "identities" / f"{name}.secret").read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the secret of identity {name!r}: {e.strerror}") from e
        return Identity(
            name=name,
            account_id=entry["account_id"],
            principal_arn=entry["principal_arn"],
            access_key_id=entry["access_key_id"],
            secret_access_key=secret,
        )

    def identities(self) -> list[Identity]:
        return [self.identity(name) for name in sorted(self.config.identities)]

    # --- well-known paths -------------------------------------------------

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"


class BadValueError(ValueError):
    """A value of config.toml that is wrong; ``key`` finds its line for the message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _line_of(text: str, key: str) -> int:
    """The line that sets ``key`` (its first), for a message; 1 if none does."""
    setting = re.compile(rf"\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if setting.match(line):
            return number
    return 1


def _target(value: object) -> Literal["local", "aws"]:
    # exact: "AWS" must not quietly act as the local target
    if value == "local":
        return "local"
    if value == "aws":
        return "aws"
    raise BadValueError("target", f'target must be "local" or "aws", not {value!r}')


def _role_arn(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ROLE_ARN.fullmatch(value):
        raise BadValueError(
            "run_role_arn", f"[aws] run_role_arn must be an IAM role ARN, not {value!r}"
        )
    return value


def _accounts(table: dict[str, object]) -> Accounts | None:
    host, vendor = table.get("host_account"), table.get("vendor_account")
    if host is None and vendor is None:
        return None
    for name, value in (("host_account", host), ("vendor_account", vendor)):
        if not (isinstance(value, str) and _ACCOUNT_ID.fullmatch(value)):
            raise BadValueError(
                name, f"[aws] {name} must be a 12-digit AWS account id, not {value!r}"
            )
    assert isinstance(host, str) and isinstance(vendor, str)  # checked just above
    return Accounts(host=host, vendor=vendor)


#: What ``[storage]`` may hold, and the backends ``backend`` may name.
STORAGE_KEYS = ("backend",)
STORAGE_BACKENDS = ("local", "s3")


def _storage_backend(table: object) -> Literal["local", "s3"] | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError("[storage] must be a table")
    unknown = sorted(set(table) - set(STORAGE_KEYS))
    if unknown:
        raise ValueError(
            f"[storage] has unknown key(s) {', '.join(unknown)} (known: {', '.join(STORAGE_KEYS)})"
        )
    backend = table.get("backend")
    if backend is None:
        return None
    if backend == "local":
        return "local"
    if backend == "s3":
        return "s3"
    raise ValueError(
        f"[storage] backend must be one of {', '.join(STORAGE_BACKENDS)}, not {backend!r}"
    )


def _new_account_id(avoid: set[str]) -> str:
    while True:
        import secrets  # only when a workspace is made

        account = str(secrets.randbelow(9 * 10**11) + 10**11)
        if account not in avoid:
            return account


def _new_access_key_id() -> str:
    import secrets

    alphabet = string.ascii_uppercase + "234567"
    return "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))


def _new_secret_key() -> str:
    import secrets

    alphabet = string.ascii_letters + string.digits + "+/"
    return "".join(secrets.choice(alphabet) for _ in range(40))


def _free_tcp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
