"""Sealed packages: an application directory encrypted for an attested enclave.

A package is a header (readable without a key: the KMS key id, the wrapped
data key, the encryption context, the chunk size, the app's manifest and the
vendor's signature) followed by a body: a
deterministic tar of the directory, encrypted with AES-256-GCM in the STREAM
construction under a key derived from the KMS data key. ``docs/FORMAT.md``
specifies the bytes; this package is the only code that reads or writes them.

Invariants:

- Sealing and opening run in constant memory (a few chunks), whatever the
  size of the application; plaintext is never written to disk while sealing.
- Every chunk authenticates the header and its own position, so any change,
  truncation, reordering, duplication or appended data is detected, and
  nothing is returned or extracted from a chunk that did not authenticate.
- The manifest (:class:`AppManifest`) says what the host may do: the entries
  it may run, the environment variables it may set, the egress the app
  needs, its resources. No manifest (v1, legacy, no ``strongroom.toml``)
  means the safe defaults: the host's entry, no env, no egress.
- A signed header names its signer; :func:`verify_signature` decides
  whether that signer is one the enclave image pins.
- Every archive entry is checked before it is created: no absolute paths, no
  ``..``, no links out of the tree, no hard links, devices or FIFOs, no
  duplicates, nothing through a symlink, bounded size and entry count.
- :func:`seal` and :func:`unseal` leave nothing behind when they fail.
  :func:`open_package` (enclave side) extracts as chunks authenticate; on
  failure its caller wipes the destination.
- Legacy packages (the AWS sample's Fernet + zip envelope) are recognized and
  opened, in memory and within a size limit.
"""

from typing import TYPE_CHECKING

from strongroom._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from strongroom.sealing.format import (
        CONTEXT_APP,
        CONTEXT_APP_VERSION,
        CONTEXT_VENDOR,
        DEFAULT_CHUNK_SIZE,
        FORMAT_VERSION,
        MAX_CHUNK_SIZE,
        MIN_CHUNK_SIZE,
        READ_VERSIONS,
        SealedHeader,
    )
    from strongroom.sealing.header import Header, read_header
    from strongroom.sealing.legacy import LegacyHeader, legacy_fernet_key
    from strongroom.sealing.manifest import (
        DEFAULT_PROCESSES,
        MANIFEST_NAME,
        RESERVED_ENV_NAMES,
        RESERVED_ENV_PREFIXES,
        AppManifest,
        check_host_request,
        env_name_reserved,
    )
    from strongroom.sealing.package import PackageInfo, inspect, open_package, seal, unseal
    from strongroom.sealing.signing import (
        SigningKeyFiles,
        create_signing_key,
        load_signer_public_key,
        load_signing_key,
        signer_fingerprint,
        verify_signature,
    )
    from strongroom.sealing.tree import ExtractLimits

#: Each name, and the module it comes from: imported on first use, so reading a
#: header (``strongroom run``) does not load the AEAD, tar, zip and signing code.
_LAZY = {
    "CONTEXT_APP": "format",
    "CONTEXT_APP_VERSION": "format",
    "CONTEXT_VENDOR": "format",
    "DEFAULT_CHUNK_SIZE": "format",
    "FORMAT_VERSION": "format",
    "MAX_CHUNK_SIZE": "format",
    "MIN_CHUNK_SIZE": "format",
    "READ_VERSIONS": "format",
    "SealedHeader": "format",
    "LegacyHeader": "legacy",
    "legacy_fernet_key": "legacy",
    "DEFAULT_PROCESSES": "manifest",
    "MANIFEST_NAME": "manifest",
    "RESERVED_ENV_NAMES": "manifest",
    "RESERVED_ENV_PREFIXES": "manifest",
    "AppManifest": "manifest",
    "check_host_request": "manifest",
    "env_name_reserved": "manifest",
    "Header": "header",
    "read_header": "header",
    "PackageInfo": "package",
    "inspect": "package",
    "open_package": "package",
    "seal": "package",
    "unseal": "package",
    "SigningKeyFiles": "signing",
    "create_signing_key": "signing",
    "load_signer_public_key": "signing",
    "load_signing_key": "signing",
    "signer_fingerprint": "signing",
    "verify_signature": "signing",
    "ExtractLimits": "tree",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "CONTEXT_APP",
    "CONTEXT_APP_VERSION",
    "CONTEXT_VENDOR",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PROCESSES",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "READ_VERSIONS",
    "RESERVED_ENV_NAMES",
    "RESERVED_ENV_PREFIXES",
    "AppManifest",
    "ExtractLimits",
    "Header",
    "LegacyHeader",
    "PackageInfo",
    "SealedHeader",
    "SigningKeyFiles",
    "check_host_request",
    "create_signing_key",
    "env_name_reserved",
    "inspect",
    "legacy_fernet_key",
    "load_signer_public_key",
    "load_signing_key",
    "open_package",
    "read_header",
    "seal",
    "signer_fingerprint",
    "unseal",
    "verify_signature",
]
