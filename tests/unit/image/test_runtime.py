"""The runtime descriptor held in a local image's kernel section."""

from __future__ import annotations

import re
import sys

import pytest

from strongroom.image.errors import ImageFormatError
from strongroom.image.runtime import RuntimeDescriptor, host_abi, host_python


def test_host_abi_looks_like_a_wheel_tag() -> None:
    assert re.fullmatch(r"[a-z]+\d+[a-z]*-[a-z0-9_]+", host_abi())
    if sys.implementation.name == "cpython":
        assert host_abi().startswith(f"cp{sys.version_info.major}{sys.version_info.minor}")
    assert host_python() == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_canonical_bytes_round_trip() -> None:
    descriptor = RuntimeDescriptor(python="3.11", abi="cp311-linux_x86_64", strongroom="0.1.0")
    assert descriptor.to_bytes() == (
        b'{"abi":"cp311-linux_x86_64","kind":"strongroom-local-runtime",'
        b'"python":"3.11","strongroom":"0.1.0"}'
    )
    assert RuntimeDescriptor.parse(descriptor.to_bytes()) == descriptor


@pytest.mark.parametrize(
    "data",
    [b"MZ\x00\x00HdrS", b"", b"{not json", b"\xff{", b'{"kind":"linux"}', b"[1]", b"{\xff}"],
)
def test_other_kernels_are_not_descriptors(data: bytes) -> None:
    assert RuntimeDescriptor.parse(data) is None


@pytest.mark.parametrize(
    "data",
    [
        b'{"kind":"strongroom-local-runtime"}',
        b'{"kind":"strongroom-local-runtime","python":"3","abi":"x","strongroom":1}',
        b'{"kind":"strongroom-local-runtime","python":"3","abi":"x","strongroom":"1","more":""}',
    ],
)
def test_malformed_descriptors_are_errors(data: bytes) -> None:
    with pytest.raises(ImageFormatError, match="malformed runtime descriptor"):
        RuntimeDescriptor.parse(data)
