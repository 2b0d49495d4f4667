r"""Confinement inside the enclave: the app jail, and the local enclave's init.

**The app jail.** The enclave server holds the enclave's secrets (the
attestor, the key-service channel, the host's run credentials, other runs'
plaintext); an app must reach none of them. The server starts each app through
this module (``python -I -S -c ... --status-fd N ... -- APP``: standard library
only, so it starts in milliseconds and imports nothing an app could have
influenced). Two processes do the work:

``launcher`` (the first process, in the server's namespaces; started ahead
    of its run, it waits for the run's arguments on a pipe)
    joins the run's own cgroup (its process limit) where there is one, raises
    its ``oom_score_adj`` (inherited by everything below it, so the
    kernel kills an app before the server), ``unshare``\s a new mount, PID,
    network, IPC and UTS namespace, forks the jail's init, waits for it and
    exits with its status. It dies with the server (``PR_SET_PDEATHSIG``), the
    init dies with it, and with the init the kernel kills every process of the
    PID namespace: double forks and ``setsid`` cannot outlive the run.

``init`` (PID 1 of the new PID namespace), before it ``exec``\s the app:

1. builds a fresh root on a small tmpfs holding only: the system's ``/usr``
   (and ``/bin``, ``/lib*`` links), the interpreter's tree and the image's app
   packages, all read-only; the run's own private folder (``/enclave/app``),
   its own ``/tmp`` and ``/dev/shm`` (folders of the run on the server's
   bounded app filesystem) and the shared folder (``/enclave/shared``),
   read-write, ``nosuid,nodev``; ``/dev`` with only null, zero, full, random
   and urandom; a read-only ``/proc`` of its own PID namespace. Then
   ``pivot_root`` and the old root is detached: the server's files, sockets
   (attestor, egress), other runs' folders and the server's ``/proc`` are not
   in the app's world at all;
2. takes the run's uid/gid (a distinct uid per run where the enclave has
   them, i.e. on Nitro; the sandbox's only uid locally), then a user namespace
   of its own in which the app is uid 1000 and owns nothing outside (its id
   maps are written through the server's ``/proc``, opened before the jail
   left it: the app's own is read-only);
3. drops every capability (bounding set, ambient), sets ``no_new_privs``,
   limits processes (``RLIMIT_NPROC`` counts per user namespace, so the run's
   own processes only), forbids core dumps;
4. installs a seccomp filter that refuses ``ptrace``, ``process_vm_*``,
   ``perf_event_open``, new namespaces (``unshare``, ``setns``, ``clone``
   with ``CLONE_NEW*``), mounts, kernel keyrings, BPF, io_uring and module
   loading, and every socket family but ``AF_UNIX`` (``AF_INET``/``AF_INET6``
   too, when the manifest declared egress: they reach only the jail's own
   loopback, where the server's egress proxy for the run listens);
5. ``exec``\s the app's interpreter with ``-I`` (no environment variable,
   user site or current directory can change what Python runs).

Setup errors are written as one line to the status descriptor and the init
exits with :data:`SETUP_FAILED`; the descriptor is close-on-exec, so the
server reads end-of-file with no data exactly when the app was exec'd.

**The local enclave's init** (``--enclave-init``). To make jails the server
needs capabilities, which in bubblewrap's user namespace would let it remount
the host's read-only binds writable. So the local sandbox first runs
:func:`enclave_init` — the *host's* copy of this file, passed as program text
by the supervisor, never the image's — which covers the dangerous parts of
``/proc`` (sysctls check only the owner, and the sandbox's uid is the host
user's, root on CI) with read-only binds, mounts one extra read-only ``/proc``
so jails may mount theirs, and moves into a child user namespace: every mount
made so far becomes locked there (read-only stays read-only, covers stay), and
the image's server starts inside it with capabilities over nothing but the
enclave. A Nitro enclave has no host mounts to protect and its own init.

The same jail code runs in the local sandbox and in a Nitro enclave (where the
server is real root); it relies only on what a minimal Linux guest has.
"""

from __future__ import annotations

# Only modules that load in microseconds: json, platform and signal pull in
# re/enum and would cost ~15 ms on every run.
import _signal  # type: ignore[import-not-found]
import ctypes
import errno
import os
import resource
import struct
import sys

#: Exit status of the init (and the launcher) when the jail could not be set up.
SETUP_FAILED = 125
#: The app's uid and gid inside its own user namespace.
APP_UID = 1000
#: The local sandbox's extra, uncovered, read-only /proc (see enclave_init).
VISIBLE_PROC = "/run/strongroom/proc"

# --- libc ------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

# statvfs flags → the mount flags a bind remount must keep (locked ones would fail)
_ST_FLAGS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}


class SetupError(Exception):
    """A step of the jail failed; the message names the step."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _prctl(option: int, arg: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


# --- seccomp ---------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
#: clone() flags that create namespaces (the low byte of clone's flags is the exit
#: signal, so CLONE_NEWTIME (0x80) is only reachable through clone3/unshare).
CLONE_NAMESPACES = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID
) | CLONE_NEWNET

#: System calls an app never needs and an attacker would (numbers from the
#: kernel's unistd tables: x86_64 ``asm/unistd_64.h``, aarch64 ``asm-generic/unistd.h``).
_REFUSED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "perf_event_open",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "bpf",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "syslog",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
_X86_64_ONLY = {"iopl": 172, "ioperm": 173, "uselib": 134, "_sysctl": 156}
_SYSCALLS = {
    "x86_64": {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "perf_event_open": 298, "kcmp": 312, "pidfd_getfd": 438, "process_madvise": 440,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 321, "userfaultfd": 323,
        "keyctl": 250, "add_key": 248, "request_key": 249, "kexec_load": 246,
        "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "lookup_dcookie": 212,
        "syslog": 103, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "clone": 56, "clone3": 435, "socket": 41, "socketpair": 53,
    },
    "aarch64": {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "perf_event_open": 241, "kcmp": 272, "pidfd_getfd": 438, "process_madvise": 440,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 280, "userfaultfd": 282,
        "keyctl": 219, "add_key": 217, "request_key": 218, "kexec_load": 104,
        "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "quotactl": 60,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "lookup_dcookie": 18,
        "syslog": 116, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "clone": 220, "clone3": 435, "socket": 198, "socketpair": 199,
    },
}  # fmt: skip
_ARCHES = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
#: offsets in struct seccomp_data
_NR, _ARCH, _ARG0 = 0, 4, 16


class _Program:
    """A tiny classic-BPF assembler: forward jumps to labels, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self.code):
            jumps = []
            for target in (jt, jf):
                offset = self.labels[target] - index - 1 if isinstance(target, str) else target
                if not 0 <= offset <= 255:
                    raise SetupError(f"seccomp filter jump out of range at {index}")
                jumps.append(offset)
            out += struct.pack("=HBBI", code, jumps[0], jumps[1], k & 0xFFFFFFFF)
        return bytes(out)


def seccomp_filter(machine: str, *, network: bool) -> bytes:
    """The app's seccomp program for ``machine`` (``os.uname().machine``)."""
    table = _SYSCALLS.get(machine)
    if table is None:
        raise SetupError(f"no seccomp syscall table for {machine}")
    refused = [table[name] for name in _REFUSED]
    if machine == "x86_64":
        refused += _X86_64_ONLY.values()
    families = [AF_UNIX] + ([AF_INET, AF_INET6] if network else [])
    p = _Program()
    p.op(_LD_W_ABS, _ARCH)
    p.op(_JEQ_K, _ARCHES[machine], 0, "kill")
    p.op(_LD_W_ABS, _NR)
    if machine == "x86_64":
        p.op(_JGE_K, X32_SYSCALL_BIT, "enosys", 0)
    for number in refused:
        p.op(_JEQ_K, number, "eperm", 0)
    p.op(_JEQ_K, table["clone3"], "enosys", 0)  # libc falls back to clone(), checked below
    p.op(_JEQ_K, table["clone"], "clone", 0)
    p.op(_JEQ_K, table["socket"], "socket", 0)
    p.op(_JEQ_K, table["socketpair"], "socket", 0)
    p.op(_RET_K, SECCOMP_RET_ALLOW)
    p.label("clone")
    p.op(_LD_W_ABS, _ARG0)
    p.op(_JSET_K, CLONE_NAMESPACES, "eperm", 0)
    p.op(_RET_K, SECCOMP_RET_ALLOW)
    p.label("socket")
    p.op(_LD_W_ABS, _ARG0)
    for family in families:
        p.op(_JEQ_K, family, "allow", 0)
    p.op(_RET_K, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT)
    p.label("allow")
    p.op(_RET_K, SECCOMP_RET_ALLOW)
    p.label("eperm")
    p.op(_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.op(_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS)
    p.label("kill")
    p.op(_RET_K, SECCOMP_RET_KILL_PROCESS)
    return p.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
           "seccomp")  # fmt: skip


# --- the new root ----------------------------------------------------------------

DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}  # fmt: skip
PASSWD = f"app:x:{APP_UID}:{APP_UID}:sealed app:/enclave/app:/usr/sbin/nologin\n"
GROUP = f"app:x:{APP_UID}:\n"


def _makedirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind(source: str, target: str, *, writable: bool) -> None:
    if os.path.isdir(source):
        _makedirs(target)
    else:
        _makedirs(os.path.dirname(target))
        with open(target, "a"):
            pass
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID
    for st_flag, ms_flag in _ST_FLAGS.items():
        if os.statvfs(target).f_flag & st_flag:
            flags |= ms_flag
    if not writable:
        flags |= MS_RDONLY
    if source not in ("/dev/" + d for d in DEVICES):
        flags |= MS_NODEV
    _mount(None, target, None, flags)


def _tmpfs(target: str, size_mib: int, mode: int, flags: int = MS_NOSUID | MS_NODEV) -> None:
    _makedirs(target)
    _mount("tmpfs", target, "tmpfs", flags, f"size={size_mib}m,mode={mode:o}")


class Spec:
    """What the server asks for, parsed from the launcher's command line (see :func:`parse`)."""

    def __init__(self) -> None:
        self.status_fd = -1
        self.root = "/tmp"  # noqa: S108 - a mount point in the jail's own mount namespace
        self.uid = self.gid = 0
        self.processes = 256
        #: > 0: the manifest declared egress; the jail listens there on its own loopback
        #: and hands the socket to the server (see strongroom.server.egress)
        self.proxy_port = 0
        self.cwd = "/"
        self.ro: list[str] = []
        self.rw: list[tuple[str, str]] = []
        self.links: list[tuple[str, str]] = []
        self.env: dict[str, str] = {}
        self.argv: list[str] = []


_INT_OPTIONS = {
    "--uid": "uid", "--gid": "gid", "--processes": "processes", "--proxy-port": "proxy_port",
}  # fmt: skip


def parse(args: list[str]) -> Spec:
    """``--opt VALUE ... -- APP_ARGV``: flat strings, so the server can pass anything
    execve can (and parsing needs no JSON module)."""
    spec = Spec()
    i = 0
    while i < len(args):
        option = args[i]
        if option == "--":
            spec.argv = args[i + 1 :]
            break
        if option in _INT_OPTIONS:
            setattr(spec, _INT_OPTIONS[option], int(args[i + 1]))
            i += 2
        elif option in ("--root", "--cwd"):
            setattr(spec, option[2:], args[i + 1])
            i += 2
        elif option == "--ro":
            spec.ro.append(args[i + 1])
            i += 2
        elif option in ("--rw", "--link"):
            (spec.rw if option == "--rw" else spec.links).append((args[i + 1], args[i + 2]))
            i += 3
        elif option == "--env":
            name, _, value = args[i + 1].partition("=")
            spec.env[name] = value
            i += 2
        else:
            raise SetupError(f"unknown jail option {option!r}")
    if not spec.argv:
        raise SetupError("the jail needs an app command after --")
    return spec


def build_root(spec: Spec) -> None:
    """Assemble the app's root at ``spec.root`` and switch into it."""
    root = spec.root
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _tmpfs(root, 4, 0o755)
    for tree in spec.ro:
        _bind(tree, root + tree, writable=False)
    for link, target in spec.links:
        os.symlink(target, root + link)
    os.makedirs(root + "/etc", exist_ok=True)
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        with open(f"{root}/etc/{name}", "w") as f:
            f.write(text)
    _tmpfs(root + "/dev", 1, 0o755, MS_NOSUID | MS_NOEXEC)
    for device in DEVICES:
        _bind("/dev/" + device, f"{root}/dev/{device}", writable=True)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{root}/dev/{name}")
    for source, target in spec.rw:  # after /dev: /dev/shm is one of them
        _bind(source, root + target, writable=True)
    _makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    _makedirs(root + "/.old-root")
    _pivot_root(root, root + "/.old-root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old-root", MNT_DETACH), "detach the old root")
    os.rmdir("/.old-root")
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _pivot_root(new_root: str, put_old: str) -> None:
    number = _SYSCALLS[os.uname().machine]["pivot_root"]
    if _libc.syscall(number, new_root.encode(), put_old.encode()) != 0:
        raise SetupError(f"pivot_root: {os.strerror(ctypes.get_errno())}")


def _write_proc(proc: int, name: str, text: str) -> None:
    """Write ``text`` to ``name`` under the /proc opened as ``proc`` (a directory fd)."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise SetupError(f"write /proc/{name}: {e.strerror}") from None


def _enter_user_namespace(proc: int, uid: int, gid: int, *, inner: int) -> None:
    """A new user namespace where we are ``inner``, mapped to ``uid``/``gid`` outside.

    The maps are opened after the ``unshare`` (they belong to the namespace the
    task is in when they are opened). Mapping the parent's uid 0 needs
    CAP_SETFCAP at the ``unshare`` (Linux >= 5.12).
    """
    _check(_libc.unshare(CLONE_NEWUSER), "unshare the user namespace")
    _write_proc(proc, "self/setgroups", "deny")
    _write_proc(proc, "self/uid_map", f"{inner} {uid} 1")
    _write_proc(proc, "self/gid_map", f"{inner} {gid} 1")


def drop_authority(spec: Spec, proc: int) -> None:
    """Steps 2 and 3 of the module docstring, in the order the kernel allows them."""
    uid, gid = spec.uid, spec.gid
    if set(os.getgroups()) - {gid}:
        os.setgroups([])  # (in a user namespace with setgroups denied there are none to drop)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _enter_user_namespace(proc, uid, gid, inner=APP_UID)
    os.close(proc)
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clear ambient capabilities")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    # RLIMIT_NPROC counts the tasks of this user namespace's uid: the run's own.
    resource.setrlimit(resource.RLIMIT_NPROC, (spec.processes, spec.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.umask(0o002)


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH22x")


def _open_proxy_listener(port: int, status_fd: int) -> None:
    """Bring the jail's loopback up, listen on ``port`` there, and send the listening
    socket to the server over the status socket (the server answers on it, as the
    app's egress proxy). The app itself never holds it."""
    import _socket
    import fcntl

    control = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        flags = _IFREQ.unpack(fcntl.ioctl(control.fileno(), SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))
        fcntl.ioctl(control.fileno(), SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags[1] | IFF_UP))
    finally:
        control.close()
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        status = _socket.socket(fileno=status_fd)
        try:
            fds = struct.pack("i", listener.fileno())
            status.sendmsg([b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        finally:
            status.detach()  # the descriptor stays ours (close-on-exec)
    finally:
        listener.close()


def make_undumpable() -> None:
    """``PR_SET_DUMPABLE`` 0 for the calling process (the server, at start)."""
    _prctl(PR_SET_DUMPABLE, 0, "not dumpable")


# --- the two processes -----------------------------------------------------------


def _fail(status_fd: int, message: str) -> None:
    try:
        os.write(status_fd, message.encode(errors="replace")[:4096])
    finally:
        os._exit(SETUP_FAILED)


def init(spec: Spec, proc: int, alive_fd: int) -> None:
    """PID 1 of the jail: set up, then become the app (never returns).

    ``proc`` is a descriptor of the server's /proc, opened by the launcher.
    """
    try:
        build_root(spec)
        if spec.proxy_port:
            _open_proxy_listener(spec.proxy_port, spec.status_fd)
        drop_authority(spec, proc)
        os.chdir(spec.cwd)
        # armed last: every credential change above clears the parent-death signal
        _prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, "parent-death signal")
        try:  # the launcher holds the pipe's write end: EOF means it died before we armed
            if os.read(alive_fd, 1) == b"":
                os._exit(SETUP_FAILED)
        except BlockingIOError:
            pass
        os.close(alive_fd)
        os.set_inheritable(spec.status_fd, False)  # closed by exec: EOF = the app started
        _install_seccomp(seccomp_filter(os.uname().machine, network=spec.proxy_port > 0))
    except (SetupError, OSError, ValueError) as e:
        _fail(spec.status_fd, f"the app sandbox could not be set up: {e}")
    try:
        os.execve(spec.argv[0], spec.argv, spec.env)  # noqa: S606 - the app, no shell
    except OSError as e:
        _fail(spec.status_fd, f"cannot start {spec.argv[0]}: {e.strerror}")


def prepare(oom_score_adj: int, cgroup: str) -> int:
    """What a launcher does before it knows its run: it is the same for every run, so a
    launcher started ahead does it while it waits (moving into a cgroup and creating
    namespaces, a network namespace above all, can each take milliseconds). Returns a
    descriptor of /proc."""
    make_undumpable()
    if cgroup:  # the run's own cgroup: everything the run makes will be counted there
        with open(cgroup + "/cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    _write_proc(proc, "self/oom_score_adj", str(oom_score_adj))
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET
    _check(_libc.unshare(flags), "unshare namespaces")
    return proc


def launch(spec: Spec, proc: int, result_fd: int) -> int:
    """The launcher, once it knows its run: fork the init, wait, report its status.

    The app's wait status goes to ``result_fd`` the moment the init is reaped:
    the launcher's own exit then waits for the kernel to tear the jail's mount
    namespace down (an RCU grace period), which the run need not wait for.
    """
    alive_read, alive_write = os.pipe()
    os.set_blocking(alive_read, False)
    pid = os.fork()
    if pid == 0:
        os.close(alive_write)
        os.close(result_fd)
        init(spec, proc, alive_read)
    os.close(proc)
    os.close(alive_read)
    os.close(spec.status_fd)
    # only the app's processes hold its output pipes: EOF comes when the last one is gone
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    _signal.signal(_signal.SIGTERM, lambda *_: os.kill(pid, _signal.SIGKILL))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return SETUP_FAILED
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    os.write(result_fd, str(code).encode())
    os.close(result_fd)
    if os.WIFSIGNALED(status):
        # die of the app's signal, so the server reports what killed the app
        _signal.signal(os.WTERMSIG(status), _signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    return code


# --- the local enclave's init -------------------------------------------------------

#: Top-level /proc entries the server keeps writable: the processes themselves.
_PROC_KEEP = ("self", "thread-self")


def enclave_init(args: list[str]) -> None:
    """Lock the local sandbox's mounts, then run the enclave server (see the docstring).

    ``args`` is ``SITE_DIR... -- MODULE ARGS...``: the image's package trees to
    put on ``sys.path``, then the server module and its arguments.
    """
    split = args.index("--")
    sites, command = args[:split], args[split + 1 :]
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for name in sorted(os.listdir("/proc")):
        path = "/proc/" + name
        if name.isdigit() or name in _PROC_KEEP or os.path.islink(path):
            continue
        _mount(path, path, None, MS_BIND)
        _mount(
            None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        )
    _mount("proc", VISIBLE_PROC, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUSER), "unshare the user namespace")
    _write_proc(proc, "self/setgroups", "deny")
    _write_proc(proc, "self/uid_map", "0 0 1")
    _write_proc(proc, "self/gid_map", "0 0 1")
    os.close(proc)
    import runpy
    import site

    for directory in sites:
        site.addsitedir(directory)
    sys.argv = command
    runpy.run_module(command[0], run_name="__main__", alter_sys=True)


_LAUNCHER_OPTIONS = ("--status-fd", "--result-fd", "--spec-fd", "--oom-score-adj", "--cgroup")


def _read_spec(fd: int) -> list[str]:
    """The jail's arguments, NUL-separated, as the server writes them when it has a run."""
    chunks = []
    with open(fd, "rb") as spec:
        while chunk := spec.read(1 << 16):
            chunks.append(chunk)
    if not chunks:
        raise SetupError("no jail arguments arrived")  # the server gave this launcher up
    return b"".join(chunks).decode().split("\0")


def main(args: list[str]) -> int:
    """``--enclave-init ...`` (the local sandbox's init), or a launcher:
    ``--status-fd N --result-fd N --spec-fd N --oom-score-adj N --cgroup DIR|""``."""
    if args[:1] == ["--enclave-init"]:
        try:
            enclave_init(args[1:])
        except (SetupError, OSError, ValueError) as e:
            sys.stderr.write(f"enclave init: {e}\n")
            return SETUP_FAILED
        return 0
    _prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, "parent-death signal")
    try:
        names, values = args[0::2], args[1::2]
        if tuple(names) != _LAUNCHER_OPTIONS or len(values) != len(names):
            raise SetupError(f"a launcher takes {' V '.join(_LAUNCHER_OPTIONS)} V")
        status_fd, result_fd, spec_fd, oom_score_adj = (int(v) for v in values[:4])
    except (SetupError, ValueError) as e:
        sys.stderr.write(f"jail: bad command line: {e}\n")
        return SETUP_FAILED
    try:
        proc = prepare(oom_score_adj, values[4])
        spec = parse(_read_spec(spec_fd))
        spec.status_fd = status_fd
        return launch(spec, proc, result_fd)
    except (SetupError, OSError, ValueError, IndexError) as e:
        _fail(status_fd, f"the app sandbox could not be set up: {e}")
    return SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
