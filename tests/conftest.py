"""Fixtures shared by every test layer: a fresh workspace and a real key service process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from strongroom.keys import service as keyservice
from strongroom.workspace import Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.create(tmp_path / "ws")
    from strongroom.attestation.authority import LocalAuthority

    LocalAuthority.open_or_create(ws.ca_dir)
    return ws


@pytest.fixture
def key_service(workspace: Workspace) -> Iterator[str]:
    """A real `strongroom keys serve` process for the workspace; yields its endpoint."""
    rec = keyservice.start_detached(workspace)
    try:
        yield rec.addresses["endpoint"]
    finally:
        keyservice.stop(workspace)


@pytest.fixture
def kms_client(workspace: Workspace, key_service: str) -> Callable[[str], Any]:
    """boto3 KMS clients for the workspace identities, against the real server."""

    def make(identity: str = "vendor") -> Any:
        ident = workspace.identity(identity)
        return boto3.session.Session().client(
            "kms",
            region_name=workspace.config.region,  # the key service refuses any other
            endpoint_url=key_service,
            aws_access_key_id=ident.access_key_id,
            aws_secret_access_key=ident.secret_access_key,
            config=botocore.config.Config(retries={"max_attempts": 1}),
        )

    return make
