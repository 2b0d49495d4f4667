from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from strongroom.keys import sigv4

AKID, SECRET = "AKIAEXAMPLEEXAMPLE00", "s" * 40
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def signed(
    body: bytes = b"{}", *, service: str = "kms", secret: str = SECRET
) -> sigv4.SignedRequest:
    req = AWSRequest(
        method="POST",
        url="http://127.0.0.1:4000/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.ListKeys",
        },
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials(AKID, secret), service, "ap-south-1").add_auth(req)
    headers = {k.lower(): v for k, v in req.headers.items()}
    headers["host"] = "127.0.0.1:4000"
    return sigv4.SignedRequest("POST", "/", "", headers, body)


def lookup(key: str) -> str | None:
    return SECRET if key == AKID else None


def test_valid_signature_any_region() -> None:
    v = sigv4.verify(signed(), lookup, now=NOW + timedelta(seconds=30))
    assert v.access_key_id == AKID and v.region == "ap-south-1"


@pytest.mark.parametrize(
    ("request_", "now", "code"),
    [
        (signed(secret="x" * 40), NOW, "InvalidSignatureException"),
        (signed(service="s3"), NOW, "InvalidSignatureException"),
        (signed(), NOW + timedelta(minutes=6), "InvalidSignatureException"),
        (signed(), NOW - timedelta(minutes=6), "InvalidSignatureException"),
    ],
)
def test_rejections(request_: sigv4.SignedRequest, now: datetime, code: str) -> None:
    with pytest.raises(sigv4.SignatureError) as e:
        sigv4.verify(request_, lookup, now=now)
    assert e.value.kms_type == code


def test_body_and_header_tampering_detected() -> None:
    good = signed(b'{"Limit": 1}')
    tampered_body = sigv4.SignedRequest("POST", "/", "", good.headers, b'{"Limit": 2}')
    with pytest.raises(sigv4.SignatureError):
        sigv4.verify(tampered_body, lookup, now=NOW)
    headers = dict(good.headers, **{"x-amz-target": "TrentService.Decrypt"})
    with pytest.raises(sigv4.SignatureError):
        sigv4.verify(sigv4.SignedRequest("POST", "/", "", headers, good.body), lookup, now=NOW)


def test_unknown_key_and_missing_auth() -> None:
    with pytest.raises(sigv4.SignatureError) as e:
        sigv4.verify(signed(), lambda _k: None, now=NOW)
    assert e.value.kms_type == "UnrecognizedClientException"
    req = signed()
    bare = {k: v for k, v in req.headers.items() if k != "authorization"}
    with pytest.raises(sigv4.SignatureError) as e:
        sigv4.verify(sigv4.SignedRequest("POST", "/", "", bare, req.body), lookup, now=NOW)
    assert e.value.kms_type == "MissingAuthenticationToken"
