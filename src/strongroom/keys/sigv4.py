"""Verify AWS Signature Version 4 on requests to the local key service.

We recompute the signature with botocore's own signer over exactly the headers
the client listed in ``SignedHeaders``, so the canonicalisation rules are the
ones every AWS SDK uses, and compare in constant time. A request is accepted
only if it names a known access key, is scoped to the ``kms`` service, is
signed within :data:`MAX_CLOCK_SKEW` of our clock, and its payload hash
matches the body we received.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from strongroom.errors import AccessDeniedError

#: AWS rejects signatures more than five minutes away from its clock.
MAX_CLOCK_SKEW = timedelta(minutes=5)
SERVICE = "kms"
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})$"
)
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


class SignatureError(AccessDeniedError):
    """The request is not correctly signed. ``kms_type`` is the KMS error code to answer."""

    def __init__(self, message: str, kms_type: str = "InvalidSignatureException") -> None:
        super().__init__(message)
        self.kms_type = kms_type


@dataclass(frozen=True)
class SignedRequest:
    """What the verifier needs from an HTTP request."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class VerifiedSignature:
    access_key_id: str
    region: str
    signed_at: datetime


class _ReplaySigner(SigV4Auth):
    """botocore's signer, restricted to the headers the client actually signed."""

    def __init__(self, credentials: Credentials, region: str, signed: list[str]) -> None:
        super().__init__(credentials, SERVICE, region)
        self._signed = signed

    def headers_to_sign(self, request: Any) -> Any:
        header_map = HTTPHeaders()
        for name in self._signed:
            value = request.headers.get(name)
            if value is None:
                raise SignatureError(f"signed header {name!r} is missing from the request")
            header_map[name] = value
        return header_map


def verify(
    request: SignedRequest,
    lookup_secret: Callable[[str], str | None],
    *,
    now: datetime | None = None,
) -> VerifiedSignature:
    """Check the SigV4 signature of ``request``; return who signed it and where."""
    auth = request.headers.get("authorization")
    if not auth:
        raise SignatureError("request is not signed", kms_type="MissingAuthenticationToken")
    match = _AUTH_RE.match(auth.strip())
    if not match:
        raise SignatureError("Authorization header is not AWS4-HMAC-SHA256", "IncompleteSignature")
    parts = match["cred"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SignatureError("malformed credential scope", "IncompleteSignature")
    access_key, scope_date, region, service, _ = parts
    if service != SERVICE:
        raise SignatureError(f"credential scope names service {service!r}, expected 'kms'")
    if "x-amz-security-token" in request.headers:
        raise SignatureError(
            "session tokens are not issued by the local key service",
            "UnrecognizedClientException",
        )
    secret = lookup_secret(access_key)
    if secret is None:
        raise SignatureError(
            "the security token included in the request is invalid",
            "UnrecognizedClientException",
        )
    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("missing or malformed X-Amz-Date header") from None
    if amz_date[:8] != scope_date:
        raise SignatureError("credential scope date does not match X-Amz-Date")
    now = now or datetime.now(UTC)
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise SignatureError(
            f"signature expired: signed at {amz_date}, server time "
            f"{now.strftime(_AMZ_DATE_FORMAT)} (more than 5 minutes apart)"
        )
    signed = match["signed"].split(";")
    if "host" not in signed:
        raise SignatureError("the Host header must be signed")
    content_sha = request.headers.get("x-amz-content-sha256")
    if content_sha is not None and content_sha != hashlib.sha256(request.body).hexdigest():
        raise SignatureError("X-Amz-Content-SHA256 does not match the body")

    url = f"http://{request.headers.get('host', '')}{request.path}"
    if request.query:
        url += "?" + request.query
    aws_request = AWSRequest(
        method=request.method, url=url, headers=dict(request.headers), data=request.body
    )
    aws_request.context["timestamp"] = amz_date
    signer = _ReplaySigner(Credentials(access_key, secret), region, signed)
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    if not hmac.compare_digest(expected, match["sig"]):
        raise SignatureError(
            "the request signature we calculated does not match the signature you provided"
        )
    return VerifiedSignature(access_key_id=access_key, region=region, signed_at=signed_at)
