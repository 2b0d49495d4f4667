"""A local unprivileged user against the key service's TCP port: floods, slow
requests, hostile bodies and names. The service must shed the attacker's
connections, keep serving legitimate clients within a bound, answer bad
input in KMS's shape, and never write a traceback to its log.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import pytest

from strongroom.keys._protocol import MAX_CONNECTIONS, MAX_HEAD_BYTES, REQUEST_READ_TIMEOUT_S
from strongroom.keys.server import MAX_JSON_DEPTH
from strongroom.workspace import Workspace
from tests.security.test_keys_sigv4 import code, kms_request, no_traceback

#: A legitimate request must be answered this fast while the flood is on.
SERVED_WITHIN_S = 2.0
#: More connections than the server keeps, so that shedding is exercised too.
FLOOD = MAX_CONNECTIONS + 100


def _address(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def test_slow_header_flood_is_shed_and_legitimate_clients_are_served(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    host, port = _address(key_service)
    kms = kms_client("vendor")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    flood: list[socket.socket] = []
    try:
        for i in range(FLOOD):
            sock = socket.create_connection((host, port), timeout=5)
            # half a request line, half the headers, or a body that never comes
            sock.sendall(
                [
                    b"POST / HT",
                    b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Tar",
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                ][i % 3]
            )
            flood.append(sock)
        # the flood is open: legitimate requests are still answered, promptly
        for _ in range(20):
            started = time.monotonic()
            blob = kms.generate_data_key(KeyId=key_id, NumberOfBytes=32)["CiphertextBlob"]
            assert kms.decrypt(CiphertextBlob=blob)["KeyId"].endswith(key_id)
            assert time.monotonic() - started < SERVED_WITHIN_S
        # and every flood connection is cut, by the cap or by the read deadline
        for sock in flood:
            sock.setblocking(False)
        deadline = time.monotonic() + REQUEST_READ_TIMEOUT_S + 5
        open_ = list(flood)
        while open_ and time.monotonic() < deadline:
            open_ = [s for s in open_ if not _closed_by_peer(s)]
            time.sleep(0.2)
        assert not open_, f"{len(open_)} of {FLOOD} slow connections still open"
    finally:
        for sock in flood:
            sock.close()
    assert kms.list_keys()["Keys"]
    no_traceback(workspace)


def test_oversized_head_is_cut_off(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    host, port = _address(key_service)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        sent = 0
        with pytest.raises(OSError):  # the server closes on us mid-headers
            while sent < 100 * MAX_HEAD_BYTES:
                sock.sendall(filler)
                sent += len(filler)
            sock.sendall(b"\r\n")
            if sock.recv(1) == b"":
                raise ConnectionResetError
    assert kms_client("vendor").list_keys()["Truncated"] is False
    no_traceback(workspace)


def test_deeply_nested_json_is_a_serialization_error(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any]
) -> None:
    bodies = [
        b"[" * 400_000,
        b'{"a":' * 60_000 + b"1" + b"}" * 60_000,
        b'{"KeyId": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
    ]
    for body in bodies:
        r = kms_request(workspace, key_service, "DescribeKey", body)
        assert r.status_code == 400 and code(r) == "SerializationException", r.text[:200]
    # brackets inside strings do not count; a legitimate body nests shallowly
    shallow = {"KeyId": "[" * 10_000, "EncryptionContext": {"a": "{" * 1000}}
    r = kms_request(workspace, key_service, "DescribeKey", shallow)
    assert code(r) == "NotFoundException"
    kms = kms_client("vendor")
    key = kms.create_key()["KeyMetadata"]
    ctx = {"app": "[{nested}]"}
    dk = kms.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=32, EncryptionContext=ctx)
    out = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert out["Plaintext"] == dk["Plaintext"]
    no_traceback(workspace)


def test_bad_bodies_never_leave_a_traceback(workspace: Workspace, key_service: str) -> None:
    for body in (
        b"\xff\xfe\x00",
        b'"just a string"',
        b"1" * 100_000,
        b'{"KeyId": "\\ud800"}',
        b'{"KeyId": {"$ne": 1}}',
        json.dumps({"CiphertextBlob": "!!!"}).encode(),
    ):
        r = kms_request(workspace, key_service, "Decrypt", body)
        assert r.status_code == 400, r.text
        assert code(r) in ("SerializationException", "ValidationException", "NotFoundException")
    no_traceback(workspace)


@pytest.mark.parametrize(
    "name",
    [
        "alias/ключ",  # Cyrillic
        "alias/café",
        "alias/ａｐｐ",  # fullwidth letters
        "alias/app٣",  # Arabic-Indic digit
        "alias/a b",
        "alias/a.b",
        "alias/",
        "alias/aws/reserved",
        "app",
        "alias/" + "a" * 251,
    ],
)
def test_alias_names_follow_kms_charset(
    workspace: Workspace, key_service: str, kms_client: Callable[[str], Any], name: str
) -> None:
    kms = kms_client("vendor")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.create_alias(AliasName=name, TargetKeyId=key_id)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert not [a for a in kms.list_aliases()["Aliases"] if a["AliasName"] == name]
    kms.create_alias(AliasName="alias/Good_name-1/sub", TargetKeyId=key_id)
    assert kms.encrypt(KeyId="alias/Good_name-1/sub", Plaintext=b"x")["CiphertextBlob"]
    no_traceback(workspace)
