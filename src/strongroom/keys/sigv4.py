"""Verify AWS Signature Version 4 on requests to the local key service, as AWS enforces it.

We recompute the signature with botocore's own signer over exactly the headers
the client listed in ``SignedHeaders``, so the canonicalisation rules are the
ones every AWS SDK uses, and compare in constant time. What a valid signature
must also cover, and why:

- ``host`` and ``x-amz-date``: without them a signature can be replayed to
  another endpoint or at another time;
- ``x-amz-target`` and ``content-type``: they choose the operation and the
  protocol. A signature over ``host;x-amz-date`` alone lets anyone who saw one
  request (a ``DescribeKey``, say) replay it as any other operation;
- every other ``x-amz-*`` header present, above all ``x-amz-security-token``
  and ``x-amz-content-sha256``: an unsigned token could be swapped for another
  session's, an unsigned payload hash would let the body be replaced.

The credential scope must name this service's region and the expected service
(``kms`` or ``sts``), the signing time must be within :data:`MAX_CLOCK_SKEW`
of our clock, and the access key must be known. A request signed with session
credentials must carry, signed, the token of a live session of that very
access key; an expired one is refused as ``ExpiredTokenException``. Error codes
and messages are the ones AWS's JSON services answer (the STS server maps
them to its query-protocol names).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from strongroom.errors import CredentialError

#: AWS rejects signatures more than five minutes away from its clock.
MAX_CLOCK_SKEW = timedelta(minutes=5)
KMS = "kms"
STS = "sts"
ALGORITHM = "AWS4-HMAC-SHA256"
#: Headers every signature must cover, whatever the request carries.
ALWAYS_SIGNED = ("host", "x-amz-date")
#: Headers that must be signed when present (plus every ``x-amz-*`` header).
SIGNED_IF_PRESENT = ("content-type",)
_AMZ_PREFIX = "x-amz-"
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})$"
)
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# KMS's error codes for signature and credential failures (AWS JSON protocol).
INCOMPLETE = "IncompleteSignatureException"
INVALID_SIGNATURE = "InvalidSignatureException"
UNRECOGNIZED = "UnrecognizedClientException"
EXPIRED_SESSION = "ExpiredTokenException"
MISSING_AUTH = "MissingAuthenticationTokenException"

_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
_UNKNOWN_CREDENTIAL = "The security token included in the request is invalid."


class SignatureError(CredentialError):
    """The request is not correctly signed. ``kms_type`` is the KMS error code to answer."""

    def __init__(self, message: str, kms_type: str = INVALID_SIGNATURE) -> None:
        super().__init__(message)
        self.kms_type = kms_type


@dataclass(frozen=True)
class SigningKey:
    """What the verifier needs to know about an access key.

    ``session_token`` is None for a long-term key and the session's token for
    session credentials; ``expires`` is when session credentials stop working.
    """

    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires: datetime | None = None


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
    service: str
    signed_at: datetime
    #: True when the request was signed with session credentials.
    session: bool = False


class _ReplaySigner(SigV4Auth):
    """botocore's signer, restricted to the headers the client actually signed."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: list[str]):
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: Any) -> Any:
        header_map = HTTPHeaders()
        for name in self._signed:
            value = request.headers.get(name)
            if value is None:
                raise SignatureError(
                    f"'{name}' is listed in SignedHeaders but missing from the request",
                    INCOMPLETE,
                )
            header_map[name] = value
        return header_map


def required_signed_headers(headers: Mapping[str, str]) -> list[str]:
    """The headers of this request that its signature must cover (lower-case), in the
    order they are checked: host and date, the ``x-amz-*`` headers, then the others."""
    amz = sorted(n for n in headers if n.startswith(_AMZ_PREFIX) and n not in ALWAYS_SIGNED)
    return [*ALWAYS_SIGNED, *amz, *(n for n in SIGNED_IF_PRESENT if n in headers)]


def verify(
    request: SignedRequest,
    lookup: Callable[[str], SigningKey | None],
    *,
    service: str,
    region: str,
    now: datetime | None = None,
) -> VerifiedSignature:
    """Check the SigV4 signature of ``request`` for ``service`` in ``region``.

    Returns who signed it; raises :class:`SignatureError` with the code KMS
    would answer. The checks run from the cheapest to the one that needs the
    secret, so an unknown caller learns nothing about the keys we hold.
    """
    auth = request.headers.get("authorization")
    if not auth:
        raise SignatureError("Missing Authentication Token", MISSING_AUTH)
    match = _AUTH_RE.match(auth.strip())
    if not match:
        raise SignatureError(
            f"Authorization header requires the {ALGORITHM} algorithm with "
            "'Credential', 'SignedHeaders' and 'Signature' parameters",
            INCOMPLETE,
        )
    parts = match["cred"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise SignatureError(
            "Credential must have the form ACCESS_KEY/DATE/REGION/SERVICE/aws4_request",
            INCOMPLETE,
        )
    access_key, scope_date, scope_region, scope_service, _ = parts
    signed = match["signed"].split(";")
    for name in required_signed_headers(request.headers):
        if name not in signed:
            if name == "x-amz-date" and name not in request.headers:
                raise SignatureError(
                    "Authorization header requires existence of either a 'X-Amz-Date' "
                    "or a 'Date' header.",
                    INCOMPLETE,
                )
            raise SignatureError(
                f"'{_display(name)}' must be a 'SignedHeader' in the AWS Authorization.",
                INCOMPLETE,
            )
    if scope_service != service:
        raise SignatureError(f"Credential should be scoped to correct service: '{service}'.")
    if scope_region != region:
        raise SignatureError(
            f"Credential should be scoped to a valid region, not '{scope_region}'. "
            f"This key service serves '{region}'."
        )
    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(
            f"X-Amz-Date must be in the ISO8601 basic format YYYYMMDD'T'HHMMSS'Z', "
            f"not {amz_date[:32]!r}",
            INCOMPLETE,
        ) from None
    if amz_date[:8] != scope_date:
        raise SignatureError(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
            f"date from HTTP: '{scope_date[:16]}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    now = now or datetime.now(UTC)
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        earlier = signed_at < now
        bound = now - MAX_CLOCK_SKEW if earlier else now + MAX_CLOCK_SKEW
        raise SignatureError(
            f"Signature expired: {amz_date} is now {'earlier' if earlier else 'later'} than "
            f"{bound.strftime(_AMZ_DATE_FORMAT)} ({now.strftime(_AMZ_DATE_FORMAT)} "
            f"{'-' if earlier else '+'} 5 min.)"
        )
    key = lookup(access_key)
    if key is None:
        raise SignatureError(_UNKNOWN_CREDENTIAL, UNRECOGNIZED)
    token = request.headers.get("x-amz-security-token")
    if key.session_token is None:
        if token is not None:
            # a long-term key never comes with a token: someone glued one on
            raise SignatureError(_UNKNOWN_CREDENTIAL, UNRECOGNIZED)
    else:
        if token is None or not hmac.compare_digest(token.encode(), key.session_token.encode()):
            raise SignatureError(_UNKNOWN_CREDENTIAL, UNRECOGNIZED)
        if key.expires is not None and key.expires <= now:
            raise SignatureError(
                "The security token included in the request is expired", EXPIRED_SESSION
            )
    content_sha = request.headers.get("x-amz-content-sha256")
    if content_sha is not None and content_sha != hashlib.sha256(request.body).hexdigest():
        raise SignatureError(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )

    url = f"http://{request.headers.get('host', '')}{request.path}"
    if request.query:
        url += "?" + request.query
    aws_request = AWSRequest(
        method=request.method, url=url, headers=dict(request.headers), data=request.body
    )
    aws_request.context["timestamp"] = amz_date
    signer = _ReplaySigner(
        Credentials(access_key, key.secret_access_key), scope_service, scope_region, signed
    )
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    if not hmac.compare_digest(expected, match["sig"]):
        raise SignatureError(_MISMATCH)
    return VerifiedSignature(
        access_key_id=access_key,
        region=scope_region,
        service=scope_service,
        signed_at=signed_at,
        session=key.session_token is not None,
    )


def _display(name: str) -> str:
    """A header name as AWS spells it in messages (``X-Amz-Target``)."""
    return "-".join(part.capitalize() for part in name.split("-"))
