"""Attacks on the key service's request signing, against a real `keys serve` process.

Each attack is sent as a raw HTTP request, signed with botocore's own signer
and then altered the way an attacker who saw (or half-signed) a request
would, and must be refused with the code KMS answers; the legitimate request
next to it must still work. These are the regressions of issue 10: before it,
a request signed over ``host;x-amz-date`` for DescribeKey was replayed as
DisableKeyRotation and GetKeyPolicy, and a credential scoped to any region
was accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from unittest import mock

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from strongroom.keys.audit import read_events
from strongroom.workspace import Workspace

JSON_1_1 = "application/x-amz-json-1.1"


@dataclass(frozen=True)
class Signer:
    """Credentials to sign with (a workspace identity or a session)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    @classmethod
    def of(cls, ws: Workspace, identity: str = "vendor") -> Signer:
        ident = ws.identity(identity)
        return cls(ident.access_key_id, ident.secret_access_key)


def signed_headers(
    endpoint: str,
    body: bytes,
    signer: Signer,
    *,
    region: str,
    service: str = "kms",
    sign: Mapping[str, str],
    add: Mapping[str, str] | None = None,
    when: datetime | None = None,
) -> dict[str, str]:
    """Headers of a request signed (by botocore) over ``sign`` plus host and date,
    then given ``add`` unsigned, as an attacker would add or change them."""
    request = AWSRequest(method="POST", url=endpoint + "/", data=body, headers=dict(sign))
    auth = SigV4Auth(
        Credentials(signer.access_key_id, signer.secret_access_key, signer.session_token),
        service,
        region,
    )
    if when is None:
        auth.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            auth.add_auth(request)
    headers = dict(request.headers.items())
    headers.update(add or {})
    return headers


def post(endpoint: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
    return httpx.post(endpoint + "/", content=body, headers=dict(headers), timeout=10)


def kms_request(
    ws: Workspace,
    endpoint: str,
    operation: str,
    params: Mapping[str, Any] | bytes,
    *,
    signer: Signer | None = None,
    region: str | None = None,
) -> httpx.Response:
    """A correctly signed KMS request, every header signed, as boto3 sends it."""
    body = params if isinstance(params, bytes) else json.dumps(params).encode()
    headers = signed_headers(
        endpoint,
        body,
        signer or Signer.of(ws),
        region=region or ws.config.region,
        sign={"Content-Type": JSON_1_1, "X-Amz-Target": f"TrentService.{operation}"},
    )
    return post(endpoint, body, headers)


def code(response: httpx.Response) -> str:
    return str(response.json()["__type"])


def no_traceback(ws: Workspace) -> None:
    log = ws.run_dir / "keys" / "server.log"
    text = log.read_text() if log.exists() else ""
    assert "Traceback" not in text, text[-3000:]


def test_operation_swap_replay_is_refused(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    vendor = kms_client("vendor")
    key = vendor.create_key()["KeyMetadata"]
    vendor.enable_key_rotation(KeyId=key["KeyId"])
    describe = json.dumps({"KeyId": key["KeyId"]}).encode()
    signer = Signer.of(workspace)
    region = workspace.config.region

    # 1. signed over host;x-amz-date only, target and content type added unsigned:
    #    refused as it stands, and refused as every operation it could be replayed as
    for operation in ("DescribeKey", "DisableKeyRotation", "GetKeyPolicy"):
        headers = signed_headers(
            key_service,
            describe,
            signer,
            region=region,
            sign={},
            add={"Content-Type": JSON_1_1, "X-Amz-Target": f"TrentService.{operation}"},
        )
        assert "SignedHeaders=host;x-amz-date," in headers["Authorization"]
        r = post(key_service, describe, headers)
        assert r.status_code == 400 and code(r) == "IncompleteSignatureException", r.text
        assert "'X-Amz-Target' must be a 'SignedHeader'" in r.json()["message"]

    # 2. properly signed DescribeKey, target swapped afterwards: the signature breaks
    good = signed_headers(
        key_service,
        describe,
        signer,
        region=region,
        sign={"Content-Type": JSON_1_1, "X-Amz-Target": "TrentService.DescribeKey"},
    )
    for operation in ("DisableKeyRotation", "GetKeyPolicy"):
        r = post(key_service, describe, {**good, "X-Amz-Target": f"TrentService.{operation}"})
        assert code(r) == "InvalidSignatureException"
    # the swaps did nothing: rotation is still on, no policy was read
    assert vendor.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    events = list(read_events(workspace.audit_log))
    assert not [
        e
        for e in events
        if e["operation"] in ("DisableKeyRotation", "GetKeyPolicy") and e["outcome"] == "allowed"
    ]
    # the legitimate request itself still works, and so does boto3
    r = post(key_service, describe, good)
    assert r.status_code == 200 and r.json()["KeyMetadata"]["KeyId"] == key["KeyId"]
    assert vendor.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["Enabled"]
    no_traceback(workspace)


def test_credential_scoped_to_another_region_or_service_is_refused(
    workspace: Workspace, key_service: str
) -> None:
    for region in ("eu-west-1", "x"):
        r = kms_request(workspace, key_service, "ListKeys", {}, region=region)
        assert r.status_code == 400 and code(r) == "InvalidSignatureException"
        assert f"scoped to a valid region, not '{region}'" in r.json()["message"]
    body = b"{}"
    for service in ("s3", "sts"):
        headers = signed_headers(
            key_service,
            body,
            Signer.of(workspace),
            region=workspace.config.region,
            service=service,
            sign={"Content-Type": JSON_1_1, "X-Amz-Target": "TrentService.ListKeys"},
        )
        r = post(key_service, body, headers)
        assert code(r) == "InvalidSignatureException"
        assert "correct service: 'kms'" in r.json()["message"]
    assert kms_request(workspace, key_service, "ListKeys", {}).status_code == 200


def test_content_type_must_be_signed_and_be_kms_json(
    workspace: Workspace, key_service: str
) -> None:
    signer, region, body = Signer.of(workspace), workspace.config.region, b"{}"
    target = {"X-Amz-Target": "TrentService.ListKeys"}
    unsigned = signed_headers(
        key_service, body, signer, region=region, sign=target, add={"Content-Type": JSON_1_1}
    )
    r = post(key_service, body, unsigned)
    assert code(r) == "IncompleteSignatureException"
    assert "'Content-Type' must be a 'SignedHeader'" in r.json()["message"]
    for wrong in ("application/json", "text/plain"):
        headers = signed_headers(
            key_service, body, signer, region=region, sign={**target, "Content-Type": wrong}
        )
        r = post(key_service, body, headers)
        assert r.status_code == 400 and code(r) == "UnknownOperationException"
        assert JSON_1_1 in r.json()["message"]
    # none at all (httpx sends none for raw bytes)
    r = post(
        key_service, body, signed_headers(key_service, body, signer, region=region, sign=target)
    )
    assert code(r) == "UnknownOperationException"
    assert kms_request(workspace, key_service, "ListKeys", {}).status_code == 200


def test_every_amz_header_must_be_signed(workspace: Workspace, key_service: str) -> None:
    signer, region, body = Signer.of(workspace), workspace.config.region, b"{}"
    sign = {"Content-Type": JSON_1_1, "X-Amz-Target": "TrentService.ListKeys"}
    for extra in ({"X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD"}, {"X-Amz-Meta": "1"}):
        r = post(
            key_service,
            body,
            signed_headers(key_service, body, signer, region=region, sign=sign, add=extra),
        )
        assert code(r) == "IncompleteSignatureException"
    # a signed payload hash that is not the body's
    r = post(
        key_service,
        body,
        signed_headers(
            key_service,
            body,
            signer,
            region=region,
            sign={**sign, "X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD"},
        ),
    )
    assert code(r) == "InvalidSignatureException"
    assert kms_request(workspace, key_service, "ListKeys", {}).status_code == 200


def test_unsigned_or_foreign_session_token_is_refused(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    from tests.security.test_keys_sessions import assume_host_role

    first = assume_host_role(workspace, key_service)
    second = assume_host_role(workspace, key_service)
    sign = {"Content-Type": JSON_1_1, "X-Amz-Target": "TrentService.ListKeys"}
    region, body = workspace.config.region, b"{}"
    keyless = Signer(first.access_key_id, first.secret_access_key)
    # 1. the token attached after signing
    headers = signed_headers(
        key_service,
        body,
        keyless,
        region=region,
        sign=sign,
        add={"X-Amz-Security-Token": str(first.session_token)},
    )
    r = post(key_service, body, headers)
    assert code(r) == "IncompleteSignatureException"
    assert "'X-Amz-Security-Token' must be a 'SignedHeader'" in r.json()["message"]
    # 2. no token at all
    r = post(
        key_service, body, signed_headers(key_service, body, keyless, region=region, sign=sign)
    )
    assert code(r) == "UnrecognizedClientException"
    # 3. another live session's token, signed
    foreign = Signer(first.access_key_id, first.secret_access_key, second.session_token)
    r = post(
        key_service, body, signed_headers(key_service, body, foreign, region=region, sign=sign)
    )
    assert code(r) == "UnrecognizedClientException"
    # 4. a long-term key with a session's token glued on
    vendor = Signer.of(workspace, "host")
    glued = Signer(vendor.access_key_id, vendor.secret_access_key, first.session_token)
    r = post(key_service, body, signed_headers(key_service, body, glued, region=region, sign=sign))
    assert code(r) == "UnrecognizedClientException"
    # the session itself, properly signed, works
    r = post(key_service, body, signed_headers(key_service, body, first, region=region, sign=sign))
    assert r.status_code == 200, r.text
    no_traceback(workspace)
