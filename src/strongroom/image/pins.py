"""The vendor's pins: which packages an image's enclave may release keys for.

Key policies decide *which images* get a key; the pins decide *which keys* an
image will ask for. Without them, a host could seal an app of its own under a
key of its own and run it in the vendor's approved image, where it would
share the enclave with the vendor's data (and, before apps lost all
authority, could get the vendor's key released to it).

``strongroom image build --key K [--signer PUB]`` writes the pins into the
image's last ramdisk, so they are part of PCR0 and PCR2: the measurement a
vendor approves covers the keys it pinned, and a host cannot change them
without changing the measurement. The enclave server reads them at start
(:data:`PINS_PATH`) and, before any key release, refuses a package whose key
is not pinned or, when signers are pinned, whose header is not signed by one
of them (:meth:`VendorPins.check_package`). The server then names the pinned
key in KMS ``Decrypt`` (``KeyId``), so even a header that lies about its key
id gets ``IncorrectKeyException`` from the key service, not a key.

Keys are pinned by key ARN (aliases are resolved when the image is built):
a bare alias or key id would be resolved in the *caller's* account, which in
the enclave is the host's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom.errors import AccessDeniedError, InvalidInputError
from strongroom.sealing import Header, signer_fingerprint, verify_signature

#: The file in the image's pins ramdisk, and where the enclave sees it.
PINS_FILE = "pins.json"
PINS_PATH = "/image/vendor/" + PINS_FILE
PINS_VERSION = 1
MAX_PINNED_KEYS = 32
MAX_PINNED_SIGNERS = 8
MAX_PINS_BYTES = 64 * 1024
ED25519_PUBLIC_KEY_SIZE = 32
_KEY_ARN = re.compile(
    r"arn:aws(?:-cn|-us-gov)?:kms:[a-z0-9-]{1,32}:[0-9]{12}:key/[A-Za-z0-9-]{1,128}\Z"
)
_FIELDS = {"version", "keys", "signers"}
_PIN_HINT = (
    "pin the vendor's key at build time: `strongroom image build --key alias/NAME -o app.eif`"
)


def check_key_arn(arn: str) -> str:
    if not _KEY_ARN.match(arn):
        raise InvalidInputError(
            f"{arn!r} is not a KMS key ARN",
            hint="pin keys by ARN (arn:aws:kms:REGION:ACCOUNT:key/ID); "
            "`strongroom image build --key alias/NAME` resolves an alias for you",
        )
    return arn


@dataclass(frozen=True)
class VendorPins:
    """The keys (ARNs) and package signers (raw Ed25519 public keys) an image accepts."""

    keys: tuple[str, ...]
    signers: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.keys) > MAX_PINNED_KEYS or len(self.signers) > MAX_PINNED_SIGNERS:
            raise InvalidInputError(
                f"an image pins at most {MAX_PINNED_KEYS} keys and {MAX_PINNED_SIGNERS} signers"
            )
        for arn in self.keys:
            check_key_arn(arn)
        for signer in self.signers:
            if len(signer) != ED25519_PUBLIC_KEY_SIZE:
                raise InvalidInputError("a pinned signer must be a 32-byte Ed25519 public key")
        if len(set(self.keys)) != len(self.keys) or len(set(self.signers)) != len(self.signers):
            raise InvalidInputError("an image pins each key and signer once")

    # --- encoding ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PINS_VERSION,
            "keys": list(self.keys),
            "signers": [signer.hex() for signer in self.signers],
        }

    def describe(self) -> dict[str, Any]:
        """For ``image describe``: the key ARNs and the signers' fingerprints."""
        return {"Keys": list(self.keys), "Signers": [signer_fingerprint(s) for s in self.signers]}

    def to_bytes(self) -> bytes:
        """Canonical JSON: the bytes the image measures."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes, *, source: str = "the image's pins") -> VendorPins:
        if len(data) > MAX_PINS_BYTES:
            raise InvalidInputError(f"{source} are larger than {MAX_PINS_BYTES} bytes")
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidInputError(f"{source} are not JSON: {e}") from e
        if not isinstance(raw, dict) or set(raw) != _FIELDS or raw["version"] != PINS_VERSION:
            raise InvalidInputError(
                f"{source} must be an object with exactly {', '.join(sorted(_FIELDS))} "
                f"(version {PINS_VERSION})",
                hint="rebuild the image with this Strongroom: `strongroom image build --key ...`",
            )
        keys, signers = raw["keys"], raw["signers"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidInputError(f"{source}: keys must be a list of key ARNs")
        if not isinstance(signers, list) or not all(isinstance(s, str) for s in signers):
            raise InvalidInputError(f"{source}: signers must be a list of hex public keys")
        try:
            decoded = tuple(bytes.fromhex(s) for s in signers)
        except ValueError as e:
            raise InvalidInputError(f"{source}: a signer is not hex") from e
        pins = cls(tuple(keys), decoded)
        if pins.to_bytes() != data:
            raise InvalidInputError(f"{source} are not in canonical form")
        return pins

    @classmethod
    def load(cls, path: Path) -> VendorPins:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInputError(
                f"the image has no vendor pins ({path})",
                hint="rebuild it with this Strongroom: `strongroom image build --key ...`",
            ) from None
        return cls.parse(data, source=str(path))

    # --- enforcing --------------------------------------------------------------

    def check_package(self, header: Header, *, name: str) -> Sequence[str]:
        """Refuse ``header`` unless this image may release its key; return the key ids
        the release may use (the package's own, or every pin for a legacy package,
        whose header names no key).

        Raises :class:`AccessDeniedError` (a key not pinned) or
        :class:`~strongroom.errors.VerificationError` (signature missing or wrong).
        """
        if not self.keys:
            raise AccessDeniedError(
                "this enclave image pins no key, so it releases no key to any package",
                hint=_PIN_HINT,
            )
        if self.signers:
            verify_signature(header, self.signers)
        if header.key_id is None:
            return self.keys
        if header.key_id not in self.keys:
            raise AccessDeniedError(
                f"{name} is sealed under {header.key_id}, which this enclave image does not pin "
                f"(it releases keys only for {', '.join(self.keys)})",
                hint="run it in an image built for that key (`strongroom image build --key ...`); "
                "a package sealed by anyone else never runs in a vendor's image",
            )
        return (header.key_id,)


#: An image built without pins releases no key: it can be started and probed, not run apps.
NO_PINS = VendorPins(())

__all__ = ["NO_PINS", "PINS_FILE", "PINS_PATH", "VendorPins", "check_key_arn"]
