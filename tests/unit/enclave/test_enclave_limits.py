"""The enclave-wide process limit: written where the kernel looks, recorded, described."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.enclave import _limits
from strongroom.enclave._limits import DEFAULT_PIDS, Limits, create_limits


def _mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("".join(f"{line}\n" for line in lines))
    monkeypatch.setattr(_limits, "_MOUNTS", mounts)


def _hierarchies(tmp_path: Path, *names: str) -> dict[str, Path]:
    """Plain directories standing in for cgroup hierarchies (writes create the files)."""
    made = {name: tmp_path / name for name in names}
    for path in made.values():
        path.mkdir()
    return made


def test_cgroup1_pids_hierarchy_gets_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # this machine's layout: v1 memory, cpu and pids, and a cgroup2 with no controllers
    h = _hierarchies(tmp_path, "memory", "cpu", "pids", "unified")
    (h["unified"] / "cgroup.controllers").write_text("hugetlb\n")
    _mounts(
        tmp_path,
        monkeypatch,
        f"cgroup {h['memory']} cgroup rw,memory 0 0",
        f"cgroup {h['cpu']} cgroup rw,cpu 0 0",
        f"cgroup {h['pids']} cgroup rw,relatime,pids 0 0",
        f"cgroup2 {h['unified']} cgroup2 rw 0 0",
    )
    limits = create_limits("ws-e1", memory_mib=256, cpus=1, pids=300)
    group = h["pids"] / "strongroom" / "ws-e1"
    assert limits.mechanism == "cgroup1" and limits.pids_limited
    assert (group / "pids.max").read_text() == "300"
    # joined by enter() like the others, removed by release() like the others
    assert limits.cgroups[0] == str(h["memory"] / "strongroom" / "ws-e1")
    assert str(group) in limits.cgroups and limits.pids_cgroup == str(group)
    assert limits.note == "cgroup2: no memory controller"
    assert Limits.from_json(limits.to_json()) == limits
    assert limits.describe().endswith(", 1 CPU quota, 300 tasks (cgroup2: no memory controller)")
    (group / "pids.events").write_text("max 17\n")
    assert limits.refused_forks() == 17


def test_default_and_missing_pids_hierarchy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = _hierarchies(tmp_path, "memory")
    _mounts(tmp_path, monkeypatch, f"cgroup {h['memory']} cgroup rw,memory 0 0")
    limits = create_limits("ws-e1", memory_mib=128, cpus=1)
    assert limits.pids == DEFAULT_PIDS and not limits.pids_limited
    assert limits.refused_forks() is None
    assert "cgroup1: no pids hierarchy" in limits.note
    assert "processes not limited (" in limits.describe()


def test_pids_co_mounted_with_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _hierarchies(tmp_path, "memory")
    _mounts(tmp_path, monkeypatch, f"cgroup {h['memory']} cgroup rw,memory,pids 0 0")
    limits = create_limits("ws-e1", memory_mib=128, cpus=1)
    group = h["memory"] / "strongroom" / "ws-e1"
    assert limits.cgroups == (str(group),) and limits.pids_cgroup == str(group)
    assert (group / "pids.max").read_text() == str(DEFAULT_PIDS)


def test_cgroup2_enables_and_sets_pids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    _mounts(tmp_path, monkeypatch, f"cgroup2 {root} cgroup2 rw 0 0")
    limits = create_limits("ws-e1", memory_mib=128, cpus=1, pids=512)
    group = root / "strongroom" / "ws-e1"
    assert limits.mechanism == "cgroup2" and limits.pids_cgroup == str(group)
    assert (root / "strongroom" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (group / "pids.max").read_text() == "512"
    assert limits.note == ""


def test_cgroup2_without_pids_controller_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("memory\n")
    _mounts(tmp_path, monkeypatch, f"cgroup2 {root} cgroup2 rw 0 0")
    limits = create_limits("ws-e1", memory_mib=128, cpus=1)
    assert limits.mechanism == "cgroup2" and not limits.pids_limited
    assert limits.note == "cgroup2: no pids controller"


def test_rlimit_cannot_limit_processes_per_enclave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mounts(tmp_path, monkeypatch)
    limits = create_limits("ws-e1", memory_mib=128, cpus=1)
    assert limits.mechanism == "rlimit" and not limits.pids_limited
    assert "processes not limited per enclave" in limits.describe()


def test_records_without_a_process_limit_still_load() -> None:
    old = {"mechanism": "cgroup1", "memory_mib": 128, "cpus": 1, "cgroups": ["/x"]}
    limits = Limits.from_json(old)
    assert limits.pids == DEFAULT_PIDS and not limits.pids_limited
