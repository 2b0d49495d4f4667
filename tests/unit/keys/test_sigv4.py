"""The SigV4 verifier as AWS enforces it: what must be signed, scope, skew, session tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from strongroom.errors import CredentialError
from strongroom.keys import sigv4

AKID, SECRET = "AKIAEXAMPLEEXAMPLE00", "s" * 40
SESSION_KEY, SESSION_SECRET, TOKEN = "ASIAEXAMPLEEXAMPLE00", "t" * 40, "token-" + "x" * 100
REGION = "ap-south-1"
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def signed(
    body: bytes = b"{}",
    *,
    service: str = "kms",
    region: str = REGION,
    access_key: str = AKID,
    secret: str = SECRET,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    unsigned: dict[str, str] | None = None,
    when: datetime = NOW,
) -> sigv4.SignedRequest:
    """A request signed by botocore; ``unsigned`` headers are added after signing."""
    req = AWSRequest(
        method="POST",
        url="http://127.0.0.1:4000/",
        data=body,
        headers=headers
        if headers is not None
        else {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.ListKeys",
        },
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        SigV4Auth(Credentials(access_key, secret, token), service, region).add_auth(req)
    result = {k.lower(): v for k, v in req.headers.items()}
    result["host"] = "127.0.0.1:4000"
    for name, value in (unsigned or {}).items():
        result[name.lower()] = value
    return sigv4.SignedRequest("POST", "/", "", result, body)


def lookup(key: str) -> sigv4.SigningKey | None:
    if key == AKID:
        return sigv4.SigningKey(SECRET)
    if key == SESSION_KEY:
        return sigv4.SigningKey(SESSION_SECRET, TOKEN, expires=NOW + timedelta(minutes=15))
    return None


def verify(request: sigv4.SignedRequest, **kwargs: object) -> sigv4.VerifiedSignature:
    options: dict[str, object] = {"service": "kms", "region": REGION, "now": NOW}
    options.update(kwargs)
    return sigv4.verify(request, lookup, **options)  # type: ignore[arg-type]


def refused(request: sigv4.SignedRequest, code: str, **kwargs: object) -> str:
    with pytest.raises(sigv4.SignatureError) as e:
        verify(request, **kwargs)
    assert e.value.kms_type == code
    assert isinstance(e.value, CredentialError)
    return e.value.message


def test_valid_signature() -> None:
    v = verify(signed(), now=NOW + timedelta(seconds=30))
    assert v.access_key_id == AKID and v.region == REGION and not v.session


def test_scope_must_name_this_region_and_service() -> None:
    message = refused(signed(region="eu-west-1"), "InvalidSignatureException")
    assert "scoped to a valid region, not 'eu-west-1'" in message
    message = refused(signed(service="s3"), "InvalidSignatureException")
    assert "correct service: 'kms'" in message
    # the same request is fine for the STS verifier only when signed for sts
    assert verify(signed(service="sts"), service="sts").service == "sts"
    refused(signed(service="kms"), "InvalidSignatureException", service="sts")


@pytest.mark.parametrize("minutes", [6, -6])
def test_clock_skew(minutes: int) -> None:
    message = refused(signed(), "InvalidSignatureException", now=NOW + timedelta(minutes=minutes))
    assert message.startswith("Signature expired")
    verify(signed(), now=NOW + timedelta(minutes=4, seconds=59))


def test_body_and_header_tampering_detected() -> None:
    good = signed(b'{"Limit": 1}')
    tampered_body = sigv4.SignedRequest("POST", "/", "", good.headers, b'{"Limit": 2}')
    refused(tampered_body, "InvalidSignatureException")
    headers = dict(good.headers, **{"x-amz-target": "TrentService.Decrypt"})
    refused(sigv4.SignedRequest("POST", "/", "", headers, good.body), "InvalidSignatureException")


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Amz-Target", "TrentService.GetKeyPolicy"),
        ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Security-Token", TOKEN),
        (
            "X-Amz-Content-SHA256",
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        ),
        ("X-Amz-Whatever", "1"),
    ],
)
def test_target_content_type_and_every_amz_header_must_be_signed(header: str, value: str) -> None:
    # signed over host;x-amz-date only, the header added afterwards
    request = signed(headers={}, unsigned={header: value})
    message = refused(request, "IncompleteSignatureException")
    assert f"'{header.replace('SHA256', 'Sha256')}' must be a 'SignedHeader'" in message


def test_host_and_date_must_be_signed() -> None:
    good = signed()
    auth = good.headers["authorization"]
    for dropped in ("host;", ";x-amz-date"):
        headers = dict(good.headers, authorization=auth.replace(dropped, "", 1))
        refused(
            sigv4.SignedRequest("POST", "/", "", headers, b"{}"), "IncompleteSignatureException"
        )
    no_date = {k: v for k, v in good.headers.items() if k != "x-amz-date"}
    message = refused(
        sigv4.SignedRequest("POST", "/", "", no_date, b"{}"), "IncompleteSignatureException"
    )
    assert "X-Amz-Date" in message


def test_unsigned_payload_is_refused() -> None:
    request = signed(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    refused(request, "InvalidSignatureException")


def test_unknown_key_and_missing_auth() -> None:
    refused(signed(access_key="AKIAUNKNOWNUNKNOWN00"), "UnrecognizedClientException")
    req = signed()
    bare = {k: v for k, v in req.headers.items() if k != "authorization"}
    refused(
        sigv4.SignedRequest("POST", "/", "", bare, req.body), "MissingAuthenticationTokenException"
    )
    garbled = dict(req.headers, authorization="AWS4-HMAC-SHA256 Credential=x")
    refused(sigv4.SignedRequest("POST", "/", "", garbled, req.body), "IncompleteSignatureException")


def test_session_credentials() -> None:
    session = signed(access_key=SESSION_KEY, secret=SESSION_SECRET, token=TOKEN)
    assert verify(session).session
    # another session's (or a made-up) token, properly signed, is refused
    other = signed(access_key=SESSION_KEY, secret=SESSION_SECRET, token=TOKEN + "x")
    refused(other, "UnrecognizedClientException")
    # session key without its token
    refused(signed(access_key=SESSION_KEY, secret=SESSION_SECRET), "UnrecognizedClientException")
    # a long-term key with a token glued on
    refused(signed(token=TOKEN), "UnrecognizedClientException")
    # expired (within the clock-skew window, the signature itself is fresh)
    late = NOW + timedelta(minutes=15)
    expired = signed(access_key=SESSION_KEY, secret=SESSION_SECRET, token=TOKEN, when=late)
    message = refused(expired, "ExpiredTokenException", now=late)
    assert "expired" in message


def test_unsigned_token_is_refused_even_if_valid() -> None:
    # signed as a long-term-looking request, then the token is attached unsigned
    request = signed(
        access_key=SESSION_KEY, secret=SESSION_SECRET, unsigned={"X-Amz-Security-Token": TOKEN}
    )
    refused(request, "IncompleteSignatureException")


def test_required_signed_headers() -> None:
    names = sigv4.required_signed_headers(
        {
            "host": "h",
            "content-type": "c",
            "x-amz-target": "t",
            "user-agent": "u",
            "x-amzn-trace-id": "i",
        }
    )
    assert names == ["host", "x-amz-date", "x-amz-target", "content-type"]
