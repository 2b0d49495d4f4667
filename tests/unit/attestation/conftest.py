"""Fixtures for the attestation tests (helpers live in ``helpers``).

No test here touches the network or the real clock for a decision: every
verification passes ``at=`` explicitly (the recorded chains expired in 2024).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.attestation.authority import LocalAuthority

from .helpers import DEBUG_DOC, NOW, PRODUCTION_DOC, Pki


@pytest.fixture
def production_doc() -> bytes:
    return PRODUCTION_DOC


@pytest.fixture
def debug_doc() -> bytes:
    return DEBUG_DOC


@pytest.fixture
def authority(tmp_path: Path) -> LocalAuthority:
    return LocalAuthority.open_or_create(tmp_path / "ca", now=NOW)


@pytest.fixture
def pki() -> Pki:
    return Pki()
