"""The sealed app manifest: what the *host* may do with a vendor's app.

A vendor puts ``strongroom.toml`` (:data:`MANIFEST_NAME`) at the top of the
app directory. ``strongroom seal`` validates it and stores its canonical JSON
in the package header, where every chunk of the body authenticates it (and a
package signature covers it). The enclave server enforces it before it runs
anything; ``strongroom inspect`` shows it, so a host can see what it may do
without seeing the app's files::

    entries = ["main.py", "tools/train.py"]   # the scripts the host may run (--entry)
    env = ["CLASSIFIER_THREADS"]              # variable names the host may set (--env)
    egress = ["api.example.com:443"]          # host:port the app needs to reach
    [resources]
    memory_mib = 512                          # enclave memory the app needs
    processes = 64                            # processes + threads at once

Why each rule exists:

- The host must not choose *what code runs*: ``--entry`` may only name a
  declared entry, and no environment variable that steers the loader, the
  interpreter or library lookup (:data:`RESERVED_ENV_NAMES`,
  :data:`RESERVED_ENV_PREFIXES`) can ever be declared, so a host cannot
  inject code into the vendor's process through the manifest either.
- A manifest the server does not understand must fail closed: unknown
  fields are refused at every level, when sealing and when reading a
  header, so an older server never silently ignores a restriction.
- Everything is bounded (counts, lengths, :data:`MAX_MANIFEST_BYTES`), and
  names that would reach a terminal (``inspect``) hold no control characters.

The header's copy is authoritative; the ``strongroom.toml`` file that also
travels in the app's tar is never read by the server. Packages without a
manifest (v1 packages, legacy AWS-sample packages, apps without
``strongroom.toml``) get the safe defaults: the host names the entry, sets no
environment variable, gets no egress, and the app the default resources
(:data:`DEFAULT_PROCESSES`); :func:`check_host_request` applies them.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from strongroom._internal import strict_json
from strongroom.errors import InvalidInputError, NotFoundError, StrongroomError, UsageError
from strongroom.sealing.format import MAX_MANIFEST_BYTES
from strongroom.sealing.tree import ExtractLimits, name_problem

MANIFEST_NAME = "strongroom.toml"
#: The processes+threads limit of an app whose manifest (or package) does not say.
DEFAULT_PROCESSES = 256

#: Bytes of ``strongroom.toml``, and of its canonical JSON in the header.
MAX_ENTRIES = 64
MAX_ENV = 64
MAX_EGRESS = 16
#: Bytes (UTF-8) of one entry path.
MAX_ENTRY_BYTES = 1024
MAX_ENV_NAME_LENGTH = 128
#: Bytes of an egress hostname (DNS limit).
MAX_HOSTNAME_LENGTH = 253
MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 1 << 20
MIN_PROCESSES = 1
MAX_PROCESSES = 4096
ENTRY_SUFFIX = ".py"
#: Characters of a host-supplied name quoted in an error message.
MAX_SHOWN = 200

#: Environment variables the host may never set, whatever a manifest says:
#: each changes what code runs, where it is loaded from, or how the loader,
#: the interpreter, the C library or TLS behave. Compared case-insensitively.
RESERVED_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        # Python's tempfile honours these as it does TMPDIR
        "TMP",
        "TEMP",
        "GLIBC_TUNABLES",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "BASH_ENV",
        "ENV",
        "IFS",
        "SHELL",
        "PWD",
        "LANG",
        # TZ may name a file the C library parses
        "TZ",
        "TZDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    }
)
#: Prefixes of reserved names (compared case-insensitively): the dynamic
#: loader (``LD_``, ``DYLD_``), Python (``PYTHON``), glibc's allocator and
#: iconv modules (``MALLOC_``, ``GCONV_``), locales (``LC_``, as ``LC_ALL``),
#: OpenSSL configuration, engines and providers (``OPENSSL_``), per-user
#: config and cache directories (``XDG_``, as ``HOME``), and Strongroom's own.
RESERVED_ENV_PREFIXES = (
    "LD_",
    "PYTHON",
    "DYLD_",
    "MALLOC_",
    "GCONV_",
    "LC_",
    "OPENSSL_",
    "XDG_",
    "STRONGROOM_",
)

_TOP_FIELDS = ("entries", "env", "egress", "resources")
_RESOURCE_FIELDS = ("memory_mib", "processes")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_PORT = re.compile(r"[1-9][0-9]{0,4}\Z")
_ENTRY_LIMITS = ExtractLimits(max_path_length=MAX_ENTRY_BYTES)

_SCHEMA_HINT = (
    f"{MANIFEST_NAME} may hold entries, env, egress and a [resources] table "
    "(memory_mib, processes); see docs/FORMAT.md"
)
_ENTRY_HINT = "entries are relative paths of .py files inside the app, e.g. entries = ['main.py']"
_ENV_HINT = "env lists variable names the host may set, e.g. env = ['MY_APP_THREADS']"
_RESERVED_HINT = (
    "remove it: the host may never set variables that change what code runs "
    "or how the loader or interpreter behaves"
)
_EGRESS_HINT = (
    "write HOST:PORT, e.g. 'api.example.com:443', '192.0.2.1:8443' or '[2001:db8::1]:443'"
)
_CANONICAL_HINT = "the package is damaged or was not made by Strongroom; obtain a fresh copy"


@dataclass(frozen=True)
class AppManifest:
    """A validated manifest. Constructing one checks every rule, however it is made."""

    entries: tuple[str, ...]
    env: tuple[str, ...] = ()
    #: ``(host, port)``: a lower-case hostname, an IPv4 address, or an IPv6
    #: address in compressed form (no brackets).
    egress: tuple[tuple[str, int], ...] = ()
    memory_mib: int | None = None
    processes: int | None = None

    def __post_init__(self) -> None:
        _check_entries(self.entries)
        _check_env(self.env)
        _check_egress(self.egress)
        _check_int("resources.memory_mib", self.memory_mib, MIN_MEMORY_MIB, MAX_MEMORY_MIB)
        _check_int("resources.processes", self.processes, MIN_PROCESSES, MAX_PROCESSES)
        size = len(self.canonical())
        if size > MAX_MANIFEST_BYTES:
            raise InvalidInputError(
                f"the manifest takes {size} bytes in the header; the limit is {MAX_MANIFEST_BYTES}",
                hint="declare fewer or shorter entries",
            )

    # --- reading ------------------------------------------------------------------

    @classmethod
    def parse_toml(cls, text: str, *, source: str) -> AppManifest:
        """Parse and validate ``strongroom.toml`` text; errors name ``source`` and the field."""
        if len(text.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_BYTES:
            raise InvalidInputError(
                f"{source} is larger than {MAX_MANIFEST_BYTES} bytes", hint=_SCHEMA_HINT
            )
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInputError(
                f"{source} is not valid TOML: {exc}",
                hint="fix the syntax (https://toml.io); strings need quotes",
            ) from None
        return _from_mapping(data, source, complete=False)

    @classmethod
    def load(cls, app_dir: Path) -> AppManifest | None:
        """The manifest of the app in ``app_dir``, or None when it has no ``strongroom.toml``.

        Also checks that every entry is a regular file of the app (not a
        symlink, not through one), so a package never promises an entry it
        does not hold.
        """
        path = app_dir / MANIFEST_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if os.path.islink(path):
                raise InvalidInputError(
                    f"{path} is a symlink", hint=f"make {MANIFEST_NAME} a regular file"
                ) from None
            raise StrongroomError(
                f"cannot read {path}: {exc.strerror}", hint="check the file's permissions"
            ) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidInputError(
                    f"{path} is not a regular file", hint=f"make {MANIFEST_NAME} a regular file"
                )
            data = _read_up_to(fd, MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise StrongroomError(
                f"cannot read {path}: {exc.strerror}", hint="check the file's permissions"
            ) from exc
        finally:
            os.close(fd)
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidInputError(
                f"{path} is larger than {MAX_MANIFEST_BYTES} bytes", hint=_SCHEMA_HINT
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"{path} is not UTF-8 text", hint="save the manifest as UTF-8"
            ) from None
        manifest = cls.parse_toml(text, source=str(path))
        for index, entry in enumerate(manifest.entries):
            problem = _entry_file_problem(app_dir, entry)
            if problem:
                raise InvalidInputError(
                    f"{path}: entries[{index}] {entry!r} {problem}", hint=_ENTRY_HINT
                )
        return manifest

    @classmethod
    def from_canonical(cls, data: bytes, *, source: str = "the sealed manifest") -> AppManifest:
        """Read what :meth:`canonical` wrote; anything else (even equivalent JSON) is refused."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidInputError(
                f"{source} is larger than {MAX_MANIFEST_BYTES} bytes", hint=_CANONICAL_HINT
            )
        try:
            value = strict_json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInputError(
                f"{source} is not valid JSON: {exc}", hint=_CANONICAL_HINT
            ) from None
        manifest = _from_mapping(value, source, complete=True)
        if manifest.canonical() != data:
            raise InvalidInputError(f"{source} is not in canonical form", hint=_CANONICAL_HINT)
        return manifest

    # --- writing ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Every field, ``None`` where the manifest does not say (``inspect --json``, the API)."""
        return {
            "entries": list(self.entries),
            "env": list(self.env),
            "egress": [format_egress(host, port) for host, port in self.egress],
            "resources": {"memory_mib": self.memory_mib, "processes": self.processes},
        }

    def canonical(self) -> bytes:
        """The bytes the header stores: :meth:`to_json`, sorted keys, no spaces, UTF-8."""
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    # --- enforcing ----------------------------------------------------------------

    def allows_entry(self, entry: str) -> bool:
        """Whether the host may run ``entry`` (exactly as declared)."""
        return entry in self.entries

    def check_entry(self, entry: str) -> None:
        """Raise :class:`NotFoundError` unless ``entry`` is one the host may run."""
        if not self.allows_entry(entry):
            raise NotFoundError(
                f"the app has no entry {entry[:MAX_SHOWN]!r} (its manifest lists what the host "
                "may run)",
                hint=f"allowed entries: {', '.join(self.entries)}",
            )

    def check_env(self, names: Iterable[str]) -> None:
        """Raise :class:`UsageError` for the first name the host may not set."""
        for name in names:
            if name not in self.env:
                allowed = (
                    f"the app allows: {', '.join(self.env)}"
                    if self.env
                    else "the app allows no --env at all"
                )
                raise UsageError(
                    f"the app's manifest does not let the host set {name[:MAX_SHOWN]!r}",
                    hint=allowed,
                )


def check_host_request(manifest: AppManifest | None, *, entry: str, env: Iterable[str]) -> None:
    """Apply a package's manifest, or the defaults when it has none, to a host's run request.

    Without a manifest the host names the entry (the server still checks it is
    a file inside the app) and may set no environment variable at all.
    """
    if manifest is not None:
        manifest.check_entry(entry)
        manifest.check_env(env)
        return
    names = list(env)
    if names:
        raise UsageError(
            f"the package has no manifest, so the host may not set {names[0][:MAX_SHOWN]!r}",
            hint=f"drop --env; a vendor allows variables by listing them in {MANIFEST_NAME}",
        )


def env_name_reserved(name: str) -> bool:
    """Whether ``name`` changes what code runs or how the loader or interpreter behaves."""
    upper = name.upper()
    return upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES)


def parse_egress(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` → ``(host, port)`` in canonical form; InvalidInputError."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise InvalidInputError(f"{text!r} has an unclosed '['", hint=_EGRESS_HINT)
        if not rest:
            raise InvalidInputError(f"{text!r} has no port", hint=_EGRESS_HINT)
        if not rest.startswith(":"):
            raise InvalidInputError(f"{text!r} has an invalid port", hint=_EGRESS_HINT)
        port = _port(rest[1:], text)
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError:
            raise InvalidInputError(
                f"{text!r} has an invalid IPv6 address", hint=_EGRESS_HINT
            ) from None
        if address.scope_id is not None:
            raise InvalidInputError(f"{text!r} has an IPv6 zone", hint=_EGRESS_HINT)
        return address.compressed, port
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidInputError(f"{text!r} has no port", hint=_EGRESS_HINT)
    port = _port(port_text, text)
    if ":" in host:
        raise InvalidInputError(f"{text!r}: an IPv6 address needs brackets", hint=_EGRESS_HINT)
    return _canonical_host(host, text), port


def _port(port_text: str, text: str) -> int:
    if not _PORT.match(port_text) or int(port_text) > 65535:
        raise InvalidInputError(f"{text!r} has an invalid port", hint=_EGRESS_HINT)
    return int(port_text)


def format_egress(host: str, port: int) -> str:
    """The ``HOST:PORT`` spelling of an egress destination (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- validation ----------------------------------------------------------------------


def _from_mapping(data: object, source: str, *, complete: bool) -> AppManifest:
    """Check the structure (fields, types, counts), then build (which checks values).

    ``complete``: every field must be present (the canonical JSON), else
    only ``entries`` is required (the TOML file).
    """
    try:
        if not isinstance(data, dict):
            raise InvalidInputError("the manifest must be a table of fields", hint=_SCHEMA_HINT)
        _refuse_unknown(data, _TOP_FIELDS, "")
        if complete:
            _require(data, _TOP_FIELDS, "")
        if "entries" not in data:
            raise InvalidInputError("the field 'entries' is missing", hint=_ENTRY_HINT)
        entries = _strings(data["entries"], "entries", 1, MAX_ENTRIES, _ENTRY_HINT)
        env = _strings(data.get("env", []), "env", 0, MAX_ENV, _ENV_HINT)
        egress_text = _strings(data.get("egress", []), "egress", 0, MAX_EGRESS, _EGRESS_HINT)
        egress = []
        for index, text in enumerate(egress_text):
            try:
                egress.append(parse_egress(text))
            except InvalidInputError as exc:
                raise InvalidInputError(f"egress[{index}]: {exc.message}", hint=exc.hint) from None
        resources = data.get("resources", {})
        if not isinstance(resources, dict):
            raise InvalidInputError("'resources' must be a table", hint=_SCHEMA_HINT)
        _refuse_unknown(resources, _RESOURCE_FIELDS, "resources.")
        if complete:
            _require(resources, _RESOURCE_FIELDS, "resources.")
        return AppManifest(
            entries=entries,
            env=env,
            egress=tuple(egress),
            memory_mib=resources.get("memory_mib"),
            processes=resources.get("processes"),
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"{source}: {exc.message}", hint=exc.hint) from None


def _refuse_unknown(table: Mapping[str, object], known: tuple[str, ...], prefix: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {prefix + close[0]!r}? " if close else ""
            raise InvalidInputError(f"unknown field {prefix + key!r}", hint=hint + _SCHEMA_HINT)


def _require(table: Mapping[str, object], known: tuple[str, ...], prefix: str) -> None:
    for key in known:
        if key not in table:
            raise InvalidInputError(f"the field {prefix + key!r} is missing", hint=_SCHEMA_HINT)


def _strings(value: object, field: str, low: int, high: int, hint: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidInputError(f"{field!r} must be a list of strings", hint=hint)
    if not low <= len(value) <= high:
        raise InvalidInputError(
            f"{field!r} has {len(value)} items; it may have {low} to {high}", hint=hint
        )
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInputError(f"{field}[{index}] must be a string", hint=hint)
    return tuple(value)


def _check_entries(entries: tuple[str, ...]) -> None:
    _check_tuple("entries", entries, 1, MAX_ENTRIES, _ENTRY_HINT)
    for index, entry in enumerate(entries):
        where = f"entries[{index}]"
        problem = _entry_problem(entry)
        if problem:
            raise InvalidInputError(f"{where} {entry!r} {problem}", hint=_ENTRY_HINT)
        if entry in entries[:index]:
            raise InvalidInputError(f"{where} {entry!r} is listed twice", hint=_ENTRY_HINT)


def _entry_problem(entry: str) -> str | None:
    if "\\" in entry:
        return "contains a backslash (write POSIX paths with '/')"
    if not _printable(entry):
        return "contains a control or invisible character"
    problem = name_problem(entry, _ENTRY_LIMITS)
    if problem:
        return problem
    if PurePosixPath(entry).suffix != ENTRY_SUFFIX:
        return f"does not end in {ENTRY_SUFFIX} (entries are Python scripts)"
    return None


def _entry_file_problem(app_dir: Path, entry: str) -> str | None:
    """Why ``entry`` is not a regular file reached through real directories, or None."""
    path = app_dir
    parts = entry.split("/")
    for position, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return "does not exist in the app directory"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        last = position == len(parts) - 1
        if stat.S_ISLNK(mode):
            return "is a symlink" if last else f"goes through the symlink {'/'.join(parts[:-1])!r}"
        if last and not stat.S_ISREG(mode):
            return "is not a regular file"
        if not last and not stat.S_ISDIR(mode):
            return "does not exist in the app directory"
    return None


def _check_env(env: tuple[str, ...]) -> None:
    _check_tuple("env", env, 0, MAX_ENV, _ENV_HINT)
    for index, name in enumerate(env):
        where = f"env[{index}]"
        if len(name) > MAX_ENV_NAME_LENGTH:
            raise InvalidInputError(
                f"{where} is longer than {MAX_ENV_NAME_LENGTH} characters", hint=_ENV_HINT
            )
        if not _ENV_NAME.match(name):
            raise InvalidInputError(
                f"{where} {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                hint=_ENV_HINT,
            )
        if env_name_reserved(name):
            raise InvalidInputError(f"{where} {name!r} is reserved", hint=_RESERVED_HINT)
        if name in env[:index]:
            raise InvalidInputError(f"{where} {name!r} is listed twice", hint=_ENV_HINT)


def _check_egress(egress: tuple[tuple[str, int], ...]) -> None:
    _check_tuple("egress", egress, 0, MAX_EGRESS, _EGRESS_HINT)
    for index, item in enumerate(egress):
        where = f"egress[{index}]"
        if not (isinstance(item, tuple) and len(item) == 2):
            raise InvalidInputError(f"{where} must be a (host, port) pair", hint=_EGRESS_HINT)
        host, port = item
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise InvalidInputError(f"{where} must be a (host, port) pair", hint=_EGRESS_HINT)
        try:
            canonical = parse_egress(format_egress(host, port))
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc.message}", hint=exc.hint) from None
        if canonical != (host, port):
            raise InvalidInputError(
                f"{where} {format_egress(host, port)!r} is not a canonical destination",
                hint=_EGRESS_HINT,
            )
        if item in egress[:index]:
            raise InvalidInputError(
                f"{where} {format_egress(host, port)!r} is listed twice", hint=_EGRESS_HINT
            )


def _canonical_host(host: str, text: str) -> str:
    """A hostname lower-cased, or an IPv4 address, checked; ``text`` is for the message."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise InvalidInputError(
                f"{text!r} has an invalid IPv4 address", hint=_EGRESS_HINT
            ) from None
    lower = host.lower()
    labels = lower.split(".")
    if (
        len(lower) > MAX_HOSTNAME_LENGTH
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidInputError(
            f"{text!r} has an invalid hostname (letters, digits, '-' and '.' only; no wildcards)",
            hint=_EGRESS_HINT,
        )
    return lower


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{field} must be an integer", hint=f"use {low} to {high}")
    if not low <= value <= high:
        raise InvalidInputError(f"{field} {value} is out of range", hint=f"use {low} to {high}")


def _check_tuple(field: str, value: object, low: int, high: int, hint: str) -> None:
    if not isinstance(value, tuple):
        raise InvalidInputError(f"{field!r} must be a tuple", hint=hint)
    if not low <= len(value) <= high:
        raise InvalidInputError(
            f"{field!r} has {len(value)} items; it may have {low} to {high}", hint=hint
        )


def _printable(text: str) -> bool:
    """No control, format, private-use, unassigned or line-separator character.

    Entries reach the host's terminal through ``inspect``.
    """
    return all(
        unicodedata.category(char)[0] != "C" and unicodedata.category(char) not in ("Zl", "Zp")
        for char in text
    )


def _read_up_to(fd: int, size: int) -> bytes:
    parts = []
    while size > 0 and (part := os.read(fd, size)):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)
