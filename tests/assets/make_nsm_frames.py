"""Build ``nsm-frames.json``: NSM request/response frames CONSTRUCTED from the documented API.

These frames were not recorded from a Nitro Secure Module. They are written
from the shapes of the ``Request``/``Response`` enums in
aws/aws-nitro-enclaves-nsm-api ``src/api/mod.rs`` as serde (externally
tagged) and ciborium encode them: unit variants as bare text strings, struct
variants as one-entry maps, ``Error(ErrorCode)`` as ``{"Error": "<code>"}``.
The Attestation response embeds the real production document from
``nitro-attestation-production.b64``.

Regenerate with ``.venv/bin/python tests/assets/make_nsm_frames.py``;
``tests/unit/attestation/test_attestation_nsm.py`` checks the committed file
matches what this script builds.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cbor2

HERE = Path(__file__).parent
OUTPUT = HERE / "nsm-frames.json"


def build_frames() -> dict[str, str]:
    """Frame name → hex of the CBOR frame."""
    document = base64.b64decode((HERE / "nitro-attestation-production.b64").read_bytes())
    frames: dict[str, object] = {
        "request-attestation": {
            "Attestation": {
                "user_data": b"user data",
                "nonce": bytes(range(32)),
                "public_key": None,
            }
        },
        "request-attestation-empty": {
            "Attestation": {"user_data": None, "nonce": None, "public_key": None}
        },
        "request-get-random": "GetRandom",
        "request-describe-nsm": "DescribeNSM",
        "request-describe-pcr": {"DescribePCR": {"index": 4}},
        "response-attestation": {"Attestation": {"document": document}},
        "response-get-random": {"GetRandom": {"random": bytes(range(256))}},
        "response-describe-nsm": {
            "DescribeNSM": {
                "version_major": 1,
                "version_minor": 0,
                "version_patch": 0,
                "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
                "max_pcrs": 32,
                "locked_pcrs": [0, 1, 2, 3, 4, 8],
                "digest": "SHA384",
            }
        },
        "response-describe-pcr": {"DescribePCR": {"lock": True, "data": bytes(range(48))}},
        "response-error-invalid-index": {"Error": "InvalidIndex"},
        "response-error-internal": {"Error": "InternalError"},
    }
    return {name: cbor2.dumps(value).hex() for name, value in frames.items()}


def main() -> None:
    OUTPUT.write_text(json.dumps(build_frames(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
