"""The pure parts of the local runtime: the sandbox command, limits, PCRs, preflight."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

from strongroom.enclave import _limits
from strongroom.enclave._limits import Limits, create_limits
from strongroom.enclave.base import EnclaveSpec, check_name, memory_warning
from strongroom.enclave.sandbox import (
    ENTRY_MODULE,
    IMAGE_SITES,
    INIT_PROGRAM,
    SANDBOX_CAPS,
    EnclavePaths,
    cgroup_id,
    check_sandbox,
    enclave_init_program,
    sandbox_command,
)
from strongroom.enclave.supervisor import registered_pcrs
from strongroom.errors import UnavailableError, UsageError
from strongroom.image import Measurements
from strongroom.server import jail
from strongroom.server.isolation import filesystem_sizes

MEASUREMENTS = Measurements(pcr0="aa" * 48, pcr1="bb" * 48, pcr2="cc" * 48)


def _pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == option]


def test_sandbox_command_isolation_flags(tmp_path: Path) -> None:
    paths = EnclavePaths.of(tmp_path, "e1")
    argv = sandbox_command(
        "bwrap",
        paths,
        image_fd=5,
        control_fd=7,
        info_fd=9,
        forwards=["8000=127.0.0.1:1"],
        memory_mib=512,
    )
    options = argv[: argv.index("--")]
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent"):
        assert flag in options
    assert "--new-session" in options and ("--cap-drop", "ALL") in itertools.pairwise(options)
    # only what the enclave's init needs; it moves into a child user namespace at once
    assert (
        [options[i + 1] for i, a in enumerate(options) if a == "--cap-add"]
        == list(SANDBOX_CAPS)
        == ["CAP_SYS_ADMIN", "CAP_SETFCAP"]
    )
    assert ("--remount-ro", "/") in itertools.pairwise(options)
    assert ("--dir", jail.VISIBLE_PROC) in itertools.pairwise(options)
    assert "--share-net" not in options and "--bind" not in options  # nothing writable
    ro = dict((dest, src) for src, dest in _pairs(options, "--ro-bind"))
    # the image is the directory the image cache checked, by its descriptor
    assert dict((dest, fd) for fd, dest in _pairs(options, "--ro-bind-fd")) == {"/image": "5"}
    assert ro["/run/strongroom/attestor.sock"] == str(paths.attestor_socket)
    assert ro["/run/strongroom/egress.sock"] == str(paths.egress_socket)
    # the sandbox starts with the host's copy of the jail module, never the image's
    assert ro[INIT_PROGRAM] == str(enclave_init_program()) == jail.__file__
    allowed = {"/usr", "/etc/ld.so.cache", "/image", os.path.realpath(sys.base_prefix)}
    allowed |= {d for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")}
    allowed |= {"/run/strongroom/attestor.sock", "/run/strongroom/egress.sock", INIT_PROGRAM}
    binds = set(ro) | {dest for _, dest in _pairs(options, "--ro-bind-try")} | {"/image"}
    assert binds <= allowed, binds - allowed
    assert not any(str(tmp_path) in dest for dest in binds)  # the workspace is not visible
    tmpfs = [options[i + 1] for i, a in enumerate(options) if a == "--tmpfs"]
    assert tmpfs == ["/tmp", "/enclave/apps", "/enclave/shared"]
    sizes = [int(options[i + 1]) >> 20 for i, a in enumerate(options) if a == "--size"]
    shared_mib, apps_mib = filesystem_sizes(512)
    assert sizes[1:] == [apps_mib, shared_mib] and shared_mib + apps_mib <= 512 - 96
    command = argv[argv.index("--") + 1 :]
    # no -X pycache_prefix: every tree is read-only, and bytecode comes from the image cache
    assert command[1:4] == ["-S", "-E", INIT_PROGRAM]
    init = command[command.index(INIT_PROGRAM) + 1 :]
    assert init[: len(IMAGE_SITES) + 3] == ["--enclave-init", *IMAGE_SITES, "--", ENTRY_MODULE]
    assert ENTRY_MODULE == "strongroom.server"
    tail = init[len(IMAGE_SITES) + 3 :]
    assert tail[:2] == ["--listen", "fd:7"] and tail[-2:] == ["--forward", "8000=127.0.0.1:1"]
    assert ("--info-fd", "9") in itertools.pairwise(argv)


def test_the_image_goes_after_the_standard_library() -> None:
    assert IMAGE_SITES == ("/image/runtime/site-packages", "/image/app-packages")


def test_filesystems_leave_the_server_room() -> None:
    for memory in (64, 128, 512, 1024, 4096, 65536):
        shared, apps = filesystem_sizes(memory)
        assert shared >= 1 and apps >= 1
        assert shared + apps <= max(memory - max(96, memory // 4), 2)


def test_names() -> None:
    assert check_name("vendor-a1") == "vendor-a1"
    for bad in ("", "-a", "A", "a_b", "a" * 33, "../x"):
        with pytest.raises(UsageError):
            check_name(bad)
    assert cgroup_id(Path("/a"), "e") != cgroup_id(Path("/b"), "e")


def test_spec_json_round_trip() -> None:
    spec = EnclaveSpec("e1", Path("/x.eif"), cpus=2, memory_mib=512, debug=True)
    assert EnclaveSpec.from_json(spec.to_json()) == spec


def test_memory_rule_of_thumb() -> None:
    mib = 1024 * 1024
    assert "--memory 400" in (memory_warning(399, 100 * mib) or "")
    assert memory_warning(400, 100 * mib) is None
    assert memory_warning(400, 100 * mib + 1) is not None


def test_registered_pcrs() -> None:
    pcrs = registered_pcrs(MEASUREMENTS, debug=False)
    assert sorted(pcrs) == list(range(16)) and all(len(v) == 48 for v in pcrs.values())
    assert pcrs[0] == bytes.fromhex("aa" * 48) and pcrs[3] == bytes(48)
    debug = registered_pcrs(MEASUREMENTS, debug=True)
    assert debug[0] == debug[1] == debug[2] == bytes(48)


def test_missing_bubblewrap_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(UnavailableError, match="bubblewrap") as excinfo:
        check_sandbox()
    assert "apt-get install bubblewrap" in excinfo.value.hint


def test_limits_json_and_description() -> None:
    limits = Limits("cgroup1", 128, 2, ("/sys/fs/cgroup/memory/strongroom/x",), True, "why")
    assert Limits.from_json(limits.to_json()) == limits
    assert limits.describe() == (
        "cgroup1 at /sys/fs/cgroup/memory/strongroom/x: 128 MiB, 2 CPU quota, "
        "processes not limited (why)"
    )
    assert Limits("rlimit", 64, 1).oom_kills() is None


def test_no_memory_controller_falls_back_to_rlimit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {tmp_path} cgroup2 rw 0 0\n")
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    monkeypatch.setattr(_limits, "_MOUNTS", mounts)
    limits = create_limits("ws-e1", memory_mib=128, cpus=1)
    assert limits.mechanism == "rlimit" and not limits.cgroups
    assert "cgroup2: no memory controller" in limits.note
    assert "cgroup1: no memory hierarchy" in limits.note


def test_cgroup1_files_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain directories standing in for the v1 hierarchies (the kernel would
    # provide the control files; here writing creates them).
    memory, cpu = tmp_path / "memory", tmp_path / "cpu"
    memory.mkdir()
    cpu.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup {memory} cgroup rw,memory 0 0\ncgroup {cpu} cgroup rw,cpu 0 0\n")
    monkeypatch.setattr(_limits, "_MOUNTS", mounts)
    limits = create_limits("ws-e1", memory_mib=128, cpus=2)
    assert limits.mechanism == "cgroup1" and limits.cpu_limited
    group = memory / "strongroom" / "ws-e1"
    assert (group / "memory.limit_in_bytes").read_text() == str(128 * 1024 * 1024)
    assert (group / "memory.memsw.limit_in_bytes").read_text() == str(128 * 1024 * 1024)
    assert (group / "memory.swappiness").read_text() == "0"
    assert (cpu / "strongroom" / "ws-e1" / "cpu.cfs_quota_us").read_text() == "200000"
    (group / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert limits.oom_kills() == 3
