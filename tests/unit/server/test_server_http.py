"""The enclave API's HTTP edge (server/http.py): the error guard, strict queries and JSON."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from strongroom.errors import (
    InsufficientSpaceError,
    InvalidInputError,
    NotFoundError,
    PathEscapeError,
    UsageError,
)
from strongroom.server.app import EnclaveIdentity, ServerConfig, create_app
from strongroom.server.files import SharedFolder
from strongroom.server.http import (
    INTERNAL_ERROR,
    MAX_OFFSET,
    ErrorGuard,
    Query,
    RequestError,
    error_name,
    problem_status,
    strict_json,
)


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    config = ServerConfig(
        attestor=None,  # type: ignore[arg-type]  # not called here
        identity=EnclaveIdentity(module_id="test", pcrs={}),
        egress=None,
        started=time.monotonic(),
        shared=SharedFolder(tmp_path / "shared"),
        apps_root=tmp_path / "apps",
    )
    with TestClient(create_app(config), raise_server_exceptions=False) as test_client:
        yield test_client


def test_our_faults_are_500_problems_logged_once_with_their_traceback(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: SharedFolder, path: str) -> None:
        raise RuntimeError("secret detail of the fault")

    monkeypatch.setattr(SharedFolder, "stat", broken)
    with caplog.at_level(logging.ERROR, logger="strongroom.server"):
        response = app_client.get("/v1/files/stat", params={"path": "/"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "ServiceError", "message": INTERNAL_ERROR, "hint": None}
    assert "secret detail" not in response.text
    faults = [r for r in caplog.records if r.exc_info]
    assert len(faults) == 1 and "secret detail" in str(faults[0].exc_info[1])


def test_a_fault_after_a_stream_began_cuts_it_rather_than_ending_it_well(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stream(request: Request) -> Response:
        async def body() -> Iterator[bytes]:  # type: ignore[misc]
            yield b"half"
            raise RuntimeError("mid-stream")

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/s", stream)], middleware=[Middleware(ErrorGuard)])
    with (
        caplog.at_level(logging.ERROR, logger="strongroom.server"),
        TestClient(app, raise_server_exceptions=False) as test_client,
    ):
        response = test_client.get("/s")
    # no second answer (a Problem) after the first began: what was sent, and a log line
    # (uvicorn then closes the connection, "returned without completing response")
    assert response.status_code == 200 and response.content == b"half"
    assert len([r for r in caplog.records if r.exc_info]) == 1


def test_starlette_s_own_404_and_405_are_problems(app_client: TestClient) -> None:
    missing = app_client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFoundError"
    wrong = app_client.request("PATCH", "/v1/files/content")
    assert wrong.status_code == 405 and wrong.json()["error"] == "UsageError"
    assert {"GET", "PUT"} <= {m.strip() for m in wrong.headers["allow"].split(",")}


def test_statuses_follow_errno_then_class() -> None:
    def with_errno(error: InvalidInputError, name: str) -> InvalidInputError:
        error.errno_name = name
        return error

    assert problem_status(NotFoundError("x")) == 404
    assert problem_status(PathEscapeError("x")) == 403
    assert problem_status(InsufficientSpaceError("x")) == 413
    assert problem_status(UsageError("x")) == 400
    assert problem_status(with_errno(UsageError("x"), "ENOTEMPTY")) == 409
    assert problem_status(with_errno(InvalidInputError("x"), "EACCES")) == 403
    assert problem_status(with_errno(InvalidInputError("x"), "ENAMETOOLONG")) == 413
    assert problem_status(with_errno(RequestError("x"), "EEXIST")) == 400  # malformed first
    assert error_name(RequestError("x")) == "InvalidInputError"  # the wire knows errors.py


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0", True),
        ("42", True),
        (str(MAX_OFFSET), True),
        (str(MAX_OFFSET + 1), False),
        ("-1", False),
        ("+1", False),
        ("²", False),
        ("٣", False),
        ("1.0", False),
        ("", False),
        (" 1", False),
        ("1" * 30, False),
    ],
)
def test_integer_queries_are_ascii_digits_within_bounds(text: str, ok: bool) -> None:
    spec = Query("offset", "integer")
    if ok:
        assert spec.parse(text) == int(text)
    else:
        with pytest.raises(RequestError):
            spec.parse(text)


def test_boolean_queries_are_true_or_false() -> None:
    spec = Query("recursive", "boolean")
    assert spec.parse("true") is True and spec.parse("false") is False
    for text in ("True", "1", "yes", "", "1.5e308"):
        with pytest.raises(RequestError):
            spec.parse(text)


@pytest.mark.parametrize(
    "raw",
    [b"NaN", b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1, "a": 2}', b"\xff", b"{"],
)
def test_only_standard_json_is_taken(raw: bytes) -> None:
    with pytest.raises(RequestError):
        strict_json(raw)


def test_integral_numbers_are_integers() -> None:
    assert strict_json(b'{"a": 2.0, "b": 1e3, "c": 1.5}') == {"a": 2, "b": 1000, "c": 1.5}
    assert isinstance(strict_json(b"2.0"), int)
