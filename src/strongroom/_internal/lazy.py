"""Package attributes imported on first use.

A component's ``__init__`` re-exports its API, but most commands need one
module of it: ``strongroom run`` must not pay for the image builder, the
sealing AEAD or an enclave runtime because it touched their package. Each
such package sets ``__getattr__ = lazy_attributes(__name__, {name: module})``
(PEP 562), and names its exports under ``TYPE_CHECKING`` for type checkers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``name`` from ``package.<modules[name]>``, imported then."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
