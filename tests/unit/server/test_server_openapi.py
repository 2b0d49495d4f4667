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
