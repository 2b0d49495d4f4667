"""Issue 17: the key service's KMS JSON API answers every request with a 4xx or a 200, never a 5xx.

Hypothesis drives a real ``strongroom keys serve`` process with correctly
signed requests (SigV4, as boto3 signs them) for every operation the service
serves (:data:`strongroom.keys.server.OPERATIONS`), whose bodies mix each
operation's own field names, real key ids and aliases with values of every
JSON type (huge and negative integers, floats, nested objects, base64 and
non-base64 text), plus raw bodies that are not JSON or not standard JSON
(``NaN``, ``Infinity``). Every answer must be KMS-shaped: a 200 with a JSON
object, or a 4xx with ``{"__type", "message"}``; the service's log must hold
no traceback. The seed and the number of examples are fixed, so a run is
reproducible and takes well under a minute.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from tests.security.test_keys_sigv4 import kms_request, no_traceback

from strongroom.keys.server import OPERATIONS
from strongroom.workspace import Workspace

#: Examples per property (each one request to the real service).
EXAMPLES = 300
#: The field names KMS operations take (each operation gets its own and the others').
FIELDS = (
    "KeyId",
    "AliasName",
    "TargetKeyId",
    "Description",
    "Policy",
    "PolicyName",
    "KeySpec",
    "KeyUsage",
    "CustomerMasterKeySpec",
    "NumberOfBytes",
    "Plaintext",
    "CiphertextBlob",
    "EncryptionContext",
    "SourceEncryptionContext",
    "DestinationEncryptionContext",
    "SourceKeyId",
    "DestinationKeyId",
    "EncryptionAlgorithm",
    "Recipient",
    "PendingWindowInDays",
    "BypassPolicyLockoutSafetyCheck",
    "GrantTokens",
    "Limit",
    "Marker",
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _values(key_id: str, blob: str) -> st.SearchStrategy[Any]:
    """Anything, and now and then what the service knows (so requests get past the lookups)."""
    known = st.sampled_from(
        [key_id, "alias/fuzz", "alias/aws/none", blob, "SYMMETRIC_DEFAULT", "AES_256", 32, 1024]
    )
    return st.one_of(known, json_values)


def _body(key_id: str, blob: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(FIELDS), _values(key_id, blob), max_size=6)


def _check(response: Any, operation: str) -> None:
    assert response.status_code < 500, (operation, response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict), (operation, response.text)
    if response.status_code >= 400:
        assert isinstance(body.get("__type"), str) and isinstance(body.get("message"), str), (
            operation,
            response.text,
        )


def _setup(workspace: Workspace, endpoint: str, kms: Any) -> tuple[str, str]:
    key_id = kms.create_key(Description="fuzzed")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/fuzz", TargetKeyId=key_id)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"fuzz")["CiphertextBlob"]
    return key_id, base64.b64encode(blob).decode()


def test_kms_operations_never_answer_5xx(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    key_id, blob = _setup(workspace, key_service, kms_client("vendor"))
    # destructive operations would end the run's key early; they are fuzzed too, on
    # their own key (below), so the others keep reaching real key material
    destructive = {"ScheduleKeyDeletion", "DisableKey", "PutKeyPolicy", "DeleteAlias"}
    operations = sorted(set(OPERATIONS) - destructive)

    @seed(17)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.sampled_from(operations), _body(key_id, blob))
    def fuzz(operation: str, params: dict[str, Any]) -> None:
        _check(kms_request(workspace, key_service, operation, params), operation)

    fuzz()
    victim = kms_client("vendor").create_key(Description="victim")["KeyMetadata"]["KeyId"]

    @seed(18)
    @settings(max_examples=EXAMPLES // 3, deadline=None, database=None)
    @given(st.sampled_from(sorted(destructive)), _body(victim, blob))
    def fuzz_destructive(operation: str, params: dict[str, Any]) -> None:
        _check(kms_request(workspace, key_service, operation, params), operation)

    fuzz_destructive()
    no_traceback(workspace)


def test_kms_raw_bodies_never_answer_5xx(workspace: Workspace, key_service: str) -> None:
    seen: list[tuple[str, bytes]] = []

    @seed(19)
    @settings(max_examples=60, deadline=None, database=None)
    @given(
        st.sampled_from(sorted(OPERATIONS)),
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b'{"NumberOfBytes": NaN}',
                    b'{"NumberOfBytes": Infinity}',
                    b'{"KeyId": -Infinity}',
                    b'{"NumberOfBytes": 1e400}',
                    b'{"NumberOfBytes": 32, "NumberOfBytes": 33}',
                    b"[" * 100 + b"]" * 100,
                    b'"just a string"',
                    b"\xff\xfe",
                ]
            ),
        ),
    )
    def fuzz(operation: str, raw: bytes) -> None:
        seen.append((operation, raw))
        response = kms_request(workspace, key_service, operation, raw)
        _check(response, operation)

    fuzz()
    assert len(seen) >= 60
    # a body that is not standard JSON is refused as KMS refuses it
    refused = kms_request(workspace, key_service, "GenerateRandom", b'{"NumberOfBytes": NaN}')
    assert refused.status_code == 400
    assert json.loads(refused.text)["__type"] == "SerializationException"
    no_traceback(workspace)
