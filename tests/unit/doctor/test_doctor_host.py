"""The allocator.yaml reader and the host checks' decisions, on files in a temporary root."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.doctor.base import Status
from strongroom.doctor.host import (
    Enclave,
    HostPaths,
    ImageFacts,
    allocator,
    nitro_device,
    read_allocation,
)

MIB = 1024 * 1024


def paths_with(tmp_path: Path, allocator_yaml: str) -> HostPaths:
    paths = HostPaths(tmp_path)
    paths.allocator_config.parent.mkdir(parents=True)
    paths.allocator_config.write_text(allocator_yaml)
    return paths


@pytest.mark.parametrize(
    ("text", "memory", "cpus", "entries"),
    [
        ("---\nmemory_mib: 512\ncpu_count: 2\n", 512, 2, 1),
        ("---\n# comment\nmemory_mib: 20480\ncpu_pool: 2,3,6-9\n", 20480, 6, 1),
        (
            "---\n- memory_mib: 512\n  cpu_count: 2\n- memory_mib: 1024\n  cpu_pool: 4-5\n",
            1536,
            4,
            2,
        ),
    ],
)
def test_the_allocator_reservation_adds_up_as_the_allocator_reads_it(
    tmp_path: Path, text: str, memory: int, cpus: int, entries: int
) -> None:
    reserved = read_allocation(paths_with(tmp_path, text))
    assert (reserved.memory_mib, reserved.cpus, reserved.entries) == (memory, cpus, entries)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "---\nmemory_mib: 512\ncpu_count: 2\ncpu_pool: 2-3\n",
            "cpu_count conflicts with cpu_pool",
        ),
        ("---\ncpu_count: 2\n", "memory_mib is missing"),
        ("---\nmemory_mib: 512\n", "cpu_count (or cpu_pool) is missing"),
        ("---\nmemory_mib: 0\ncpu_count: 2\n", "memory_mib must be above 0"),
        ("---\nmemory_mib: 512\ncpu_pool: 3-1\n", "backwards range 3-1"),
        ("---\nmemory_mib: 512\ncpu_pool: two\n", "is not a CPU list"),
        ("---\nmemory_mib: 512\ncpu_count: 2\nmemory: 9\n", "unexpected key 'memory'"),
        ("memory_mib: [\n", "it is not YAML"),
    ],
)
def test_a_broken_allocator_yaml_says_what_is_wrong(tmp_path: Path, text: str, says: str) -> None:
    paths = paths_with(tmp_path, text)
    with pytest.raises(ValueError, match=None) as raised:
        read_allocation(paths)
    assert says in str(raised.value)
    finding = allocator(paths, None, Enclave())
    assert finding.status is Status.FAIL
    assert finding.detail.startswith("/etc/nitro_enclaves/allocator.yaml cannot be used: ")


def test_the_eif_needs_four_times_its_size_rounded_up_to_a_mib() -> None:
    assert ImageFacts(Path("a.eif"), 300 * MIB, {0: "0" * 96}).memory_needed_mib == 1200
    assert ImageFacts(Path("a.eif"), 300 * MIB + 1, {0: "0" * 96}).memory_needed_mib == 1201
    assert ImageFacts(Path("a.eif"), 10, {0: "0" * 96}).memory_needed_mib == 1


def test_memory_and_cpus_are_compared_with_the_reservation(tmp_path: Path) -> None:
    paths = paths_with(tmp_path, "---\nmemory_mib: 4096\ncpu_count: 2\n")
    image = ImageFacts(tmp_path / "app.eif", 500 * MIB, {0: "0" * 96})
    assert allocator(paths, image, Enclave()).status is Status.OK
    assert allocator(paths, image, Enclave(memory_mib=2400, cpus=2)).status is Status.OK
    short = allocator(paths, image, Enclave(memory_mib=1900))
    assert short.status is Status.FAIL and "--memory 1900 MiB is below 4 x" in short.detail
    too_big = allocator(paths, None, Enclave(memory_mib=8192, cpus=3))
    assert "asks 8192 MiB" in too_big.detail and "asks 3 CPUs" in too_big.detail
    assert too_big.fix is not None and too_big.fix.endswith(
        "then `sudo systemctl restart nitro-enclaves-allocator.service`"
    )


def test_the_device_is_looked_for_under_the_root(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    assert nitro_device(paths).status is Status.FAIL
    paths.device.parent.mkdir()
    paths.device.touch()
    found = nitro_device(paths)
    assert found.status is Status.OK and found.detail.startswith("/dev/nitro_enclaves is present")
