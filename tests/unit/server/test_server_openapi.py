"""The committed OpenAPI description matches the code and every served route."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.routing import Route

from strongroom.server.app import EnclaveIdentity, ServerConfig, create_app
from strongroom.server.files import SharedFolder
from strongroom.server.openapi import document, render

DOCS = Path(__file__).parents[3] / "docs" / "enclave-api.json"


def test_committed_description_is_current() -> None:
    assert DOCS.read_text() == render(), (
        "docs/enclave-api.json is stale; regenerate it with "
        "`python -m strongroom.server.openapi > docs/enclave-api.json`"
    )


def test_every_route_is_described_and_nothing_else(tmp_path: Path) -> None:
    config = ServerConfig(
        attestor=None,  # type: ignore[arg-type]  # not called while building routes
        identity=EnclaveIdentity(module_id="test", pcrs={}),
        egress=None,
        started=time.monotonic(),
        shared=SharedFolder(tmp_path / "shared"),
        apps_root=tmp_path / "apps",
    )
    served: set[tuple[str, str]] = set()
    for route in create_app(config).routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                served.add((route.path, method.lower()))
    paths: dict[str, Any] = document()["paths"]
    described = {(path, method) for path, ops in paths.items() for method in ops}
    assert served == described


def test_the_served_description_is_the_committed_one_and_every_405_says_so(
    tmp_path: Path,
) -> None:
    from starlette.testclient import TestClient

    config = ServerConfig(
        attestor=None,  # type: ignore[arg-type]  # not called here
        identity=EnclaveIdentity(module_id="test", pcrs={}),
        egress=None,
        started=time.monotonic(),
        shared=SharedFolder(tmp_path / "shared"),
        apps_root=tmp_path / "apps",
    )
    paths: dict[str, Any] = document()["paths"]
    with TestClient(create_app(config)) as api:
        assert api.get("/v1/openapi.json").json() == document()
        for path, operations in paths.items():
            refused = api.request("TRACE", path)
            assert refused.status_code == 405, path
            allowed = {m.strip().lower() for m in refused.headers["allow"].split(",")}
            assert allowed - {"head"} == set(operations), path


def test_every_operation_lists_its_statuses_and_problems() -> None:
    from strongroom.server.api import QUERIES

    paths: dict[str, Any] = document()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            # a query or body that does not match is a 400; our own faults are 500s
            assert {"200", "400", "500"} <= statuses, (path, method)
            assert "default" not in statuses, (path, method)
            described = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            parsed = {q.name for q in QUERIES.get((path, method), ())}
            assert described == parsed, (path, method)
    # every query declaration belongs to a described operation
    assert {(path, method) for path, method in QUERIES} <= {
        (path, method) for path, operations in paths.items() for method in operations
    }
