"""The seccomp-bpf deny filter that every sandboxed process runs under.

Geode confines a program with kernel namespaces (see :mod:`geode.runtime.sandbox`); the filter
built here is the second wall. It is a classic BPF program (``struct sock_filter``) built in
Python and installed with ``prctl(PR_SET_NO_NEW_PRIVS)`` followed by
``seccomp(SECCOMP_SET_MODE_FILTER)``. It is a *deny list*: everything not listed runs natively at
full speed (since Linux 5.11 the kernel caches "always allowed" verdicts per syscall number, so
an allowed call whose verdict does not depend on its arguments does not even run the filter).

A denied call never kills the program. It fails with an errno, as it would on a kernel that
refuses it:

* ``EPERM`` for privileged operations a confined program has no business making (mounting,
  changing root, new namespaces, tracing other processes, loading kernel code, keyrings...).
  Inside its user namespace the program is root with capabilities *over its own namespaces*,
  so without the filter some of these would succeed there; the filter makes the confinement
  independent of that.
* ``ENOSYS`` where Gramine does not implement the call and programs rely on ``ENOSYS`` to fall
  back: ``clone3`` (glibc then uses ``clone``, whose flags the filter can inspect) and io_uring
  (libraries fall back to ordinary system calls); and for any system call made through a
  foreign ABI (i386 ``int 0x80``, x32), which this filter cannot interpret.
* ``EAGAIN`` for process creation when ``sys.disallow_subprocesses`` is set, which is what
  Gramine returns in that case (``clone`` without ``CLONE_THREAD``, ``fork``, ``vfork``).

The rules are data (:data:`DENIED_SYSCALLS`, :data:`ARGUMENT_RULES`, :data:`SUBPROCESS_RULES`) so
documentation can render them (:func:`describe`).

Calls deliberately *not* filtered because the kernel already refuses them to a process without
capabilities in the initial user namespace, and because read-only uses are common:
``adjtimex``/``clock_adjtime`` (``ntp_gettime`` reads the clock through them), ``sethostname``
(the UTS namespace is private), ``mknod`` (device nodes cannot be created in a user namespace).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable

from geode.records import Record

# ---------------------------------------------------------------------------------------------
# Kernel ABI constants (x86_64)
# ---------------------------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# struct seccomp_data offsets
_OFF_NR = 0
_OFF_ARCH = 4


def _arg_lo(index: int) -> int:
    """Offset of the low 32 bits of syscall argument ``index`` in ``struct seccomp_data``."""
    return 16 + 8 * index


# classic BPF opcodes
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

SECCOMP_SET_MODE_FILTER = 1
#: leave the program's speculation controls as they are (Linux 4.17; see install_filter)
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
PR_SET_NO_NEW_PRIVS = 38
_NR_SECCOMP = 317
_NR_PRCTL = 157

CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

TIOCSTI = 0x5412
TIOCLINUX = 0x541C

NR_IOCTL = 16
NR_CLONE = 56
NR_FORK = 57
NR_VFORK = 58
NR_CLONE3 = 435


# ---------------------------------------------------------------------------------------------
# The rules, as data
# ---------------------------------------------------------------------------------------------


class SyscallRule(Record):
    """One system call denied unconditionally."""

    name: str
    nr: int
    errno: int
    reason: str


class ArgumentRule(Record):
    """A system call denied only for some argument values (described for documentation)."""

    name: str
    condition: str
    errno: int
    reason: str


def _rules(errno_value: int, reason: str, calls: Iterable[tuple[str, int]]) -> list[SyscallRule]:
    return [SyscallRule(name, nr, errno_value, reason) for name, nr in calls]


DENIED_SYSCALLS: tuple[SyscallRule, ...] = tuple(
    _rules(
        errno.EPERM,
        "changes the mount tree or the root directory",
        [
            ("mount", 165),
            ("umount2", 166),
            ("pivot_root", 155),
            ("chroot", 161),
            ("open_tree", 428),
            ("move_mount", 429),
            ("fsopen", 430),
            ("fsconfig", 431),
            ("fsmount", 432),
            ("fspick", 433),
            ("mount_setattr", 442),
            ("open_tree_attr", 467),
        ],
    )
    + _rules(
        errno.EPERM,
        "creates or enters namespaces",
        [("unshare", 272), ("setns", 308)],
    )
    + _rules(
        errno.EPERM,
        "reads or writes another process's memory or file descriptors",
        [
            ("ptrace", 101),
            ("process_vm_readv", 310),
            ("process_vm_writev", 311),
            ("pidfd_getfd", 438),
            ("process_madvise", 440),
        ],
    )
    + _rules(
        errno.EPERM,
        "loads code into or reconfigures the kernel",
        [
            ("kexec_load", 246),
            ("kexec_file_load", 320),
            ("init_module", 175),
            ("finit_module", 313),
            ("delete_module", 176),
            ("bpf", 321),
            ("perf_event_open", 298),
            ("reboot", 169),
            ("swapon", 167),
            ("swapoff", 168),
            ("acct", 163),
            ("quotactl", 179),
            ("quotactl_fd", 443),
            ("lookup_dcookie", 212),
            ("syslog", 103),
            ("iopl", 172),
            ("ioperm", 173),
            ("vhangup", 153),
        ],
    )
    + _rules(
        errno.EPERM,
        "sets the system clock",
        [("settimeofday", 164), ("clock_settime", 227)],
    )
    + _rules(
        errno.EPERM,
        "opens files by kernel handle, bypassing path confinement",
        [("name_to_handle_at", 303), ("open_by_handle_at", 304)],
    )
    + _rules(
        errno.EPERM,
        "uses the kernel keyrings, which are shared with the host",
        [("keyctl", 250), ("add_key", 248), ("request_key", 249)],
    )
    + _rules(
        errno.EPERM,
        "userfaultfd is an exploitation primitive with no use in a confined program",
        [("userfaultfd", 323)],
    )
    + _rules(
        errno.ENOSYS,
        "not implemented by Gramine; programs fall back to ordinary system calls",
        [("io_uring_setup", 425), ("io_uring_enter", 426), ("io_uring_register", 427)],
    )
    + _rules(
        errno.ENOSYS,
        "not implemented by Gramine; glibc falls back to clone, whose flags are checked",
        [("clone3", NR_CLONE3)],
    )
)

ARGUMENT_RULES: tuple[ArgumentRule, ...] = (
    ArgumentRule(
        "clone",
        "flags contain any CLONE_NEW* namespace flag",
        errno.EPERM,
        "creates namespaces",
    ),
    ArgumentRule(
        "ioctl",
        "request is TIOCSTI or TIOCLINUX",
        errno.EPERM,
        "would inject input into the host terminal shared with the program",
    ),
    ArgumentRule(
        "(any)",
        "architecture is not x86_64, or the x32 bit is set in the syscall number",
        errno.ENOSYS,
        "foreign system call ABIs are not interpreted by the filter",
    ),
)

SUBPROCESS_RULES: tuple[ArgumentRule, ...] = (
    ArgumentRule("fork", "always", errno.EAGAIN, "sys.disallow_subprocesses"),
    ArgumentRule("vfork", "always", errno.EAGAIN, "sys.disallow_subprocesses"),
    ArgumentRule(
        "clone", "flags lack CLONE_THREAD", errno.EAGAIN, "sys.disallow_subprocesses"
    ),
)


def describe(*, disallow_subprocesses: bool = False) -> list[dict[str, str]]:
    """The filter as rows (``syscall``, ``condition``, ``errno``, ``reason``) for documentation."""
    rows = [
        {
            "syscall": r.name,
            "condition": "always",
            "errno": errno.errorcode[r.errno],
            "reason": r.reason,
        }
        for r in DENIED_SYSCALLS
    ]
    extra = ARGUMENT_RULES + (SUBPROCESS_RULES if disallow_subprocesses else ())
    rows += [
        {
            "syscall": r.name,
            "condition": r.condition,
            "errno": errno.errorcode[r.errno],
            "reason": r.reason,
        }
        for r in extra
    ]
    return rows


# ---------------------------------------------------------------------------------------------
# Building the BPF program
# ---------------------------------------------------------------------------------------------

_Insn = tuple[int, int, int, int]


def _stmt(code: int, k: int) -> _Insn:
    return (code, 0, 0, k & 0xFFFFFFFF)


def _jump(code: int, k: int, jt: int, jf: int) -> _Insn:
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise ValueError("BPF jump offset out of range")
    return (code, jt, jf, k & 0xFFFFFFFF)


def _ret_errno(value: int) -> _Insn:
    return _stmt(_BPF_RET_K, SECCOMP_RET_ERRNO | (value & 0xFFFF))


def _ret_allow() -> _Insn:
    return _stmt(_BPF_RET_K, SECCOMP_RET_ALLOW)


def _load_nr() -> _Insn:
    return _stmt(_BPF_LD_W_ABS, _OFF_NR)


def build_program(*, base: bool = True, disallow_subprocesses: bool = False) -> list[_Insn]:
    """The filter as a list of ``(code, jt, jf, k)`` instructions.

    ``base`` selects the deny list and argument rules; ``disallow_subprocesses`` adds the
    process-creation rules. Both may be combined; a filter with neither allows everything
    (except foreign ABIs).
    """
    prog: list[_Insn] = [
        _stmt(_BPF_LD_W_ABS, _OFF_ARCH),
        _jump(_BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _ret_errno(errno.ENOSYS),
        _load_nr(),
        _jump(_BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        _ret_errno(errno.ENOSYS),
    ]
    # Each unconditional rule is "if nr == N return ERRNO", two instructions with short jumps,
    # so the program never needs a jump longer than BPF's 8-bit offsets.
    if base:
        for rule in DENIED_SYSCALLS:
            prog.append(_jump(_BPF_JEQ_K, rule.nr, 0, 1))
            prog.append(_ret_errno(rule.errno))
    if disallow_subprocesses:
        for nr in (NR_FORK, NR_VFORK):
            prog.append(_jump(_BPF_JEQ_K, nr, 0, 1))
            prog.append(_ret_errno(errno.EAGAIN))
        if not base:
            prog.append(_jump(_BPF_JEQ_K, NR_CLONE3, 0, 1))
            prog.append(_ret_errno(errno.ENOSYS))
    if base or disallow_subprocesses:
        # clone(flags, ...): inspect the low 32 bits of flags (all clone() flags live there).
        clone_body: list[_Insn] = [_stmt(_BPF_LD_W_ABS, _arg_lo(0))]
        if base:
            clone_body += [
                _jump(_BPF_JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1),
                _ret_errno(errno.EPERM),
            ]
        if disallow_subprocesses:
            clone_body += [
                _jump(_BPF_JSET_K, CLONE_THREAD, 1, 0),
                _ret_errno(errno.EAGAIN),
            ]
        clone_body.append(_ret_allow())
        prog.append(_jump(_BPF_JEQ_K, NR_CLONE, 0, len(clone_body)))
        prog += clone_body
    if base:
        # ioctl(fd, request, ...): the kernel takes request as a 32-bit value, so only the low
        # word matters (high bits are ignored by the kernel and must be ignored here too).
        ioctl_body: list[_Insn] = [
            _stmt(_BPF_LD_W_ABS, _arg_lo(1)),
            _jump(_BPF_JEQ_K, TIOCSTI, 1, 0),
            _jump(_BPF_JEQ_K, TIOCLINUX, 0, 1),
            _ret_errno(errno.EPERM),
            _ret_allow(),
        ]
        prog.append(_jump(_BPF_JEQ_K, NR_IOCTL, 0, len(ioctl_body)))
        prog += ioctl_body
    prog.append(_ret_allow())
    if len(prog) > 4096:
        raise ValueError("seccomp filter too long")
    return prog


def assemble(prog: list[_Insn]) -> bytes:
    """Pack instructions as an array of ``struct sock_filter``."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def build_filter(*, base: bool = True, disallow_subprocesses: bool = False) -> bytes:
    """The packed filter, ready for :func:`install_filter`."""
    return assemble(build_program(base=base, disallow_subprocesses=disallow_subprocesses))


# ---------------------------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------------------------


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def set_no_new_privs() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: exec can never grant privileges again."""
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def install_filter(packed: bytes) -> None:
    """Set no_new_privs and install ``packed`` for the calling thread (and its future children).

    The caller must be single-threaded (no TSYNC is requested).

    With ``SECCOMP_FILTER_FLAG_SPEC_ALLOW``, as runc and crun install their filters: without
    it, installing any filter also forces the Speculative Store Bypass mitigation (and, where
    the kernel is so configured, STIBP) on the process for good, which makes CPU-bound code,
    interpreters above all, markedly slower on CPUs that have the mitigation (runc measured
    Ruby ~1.85x slower). That mitigation protects a process from code running inside it
    (a browser's JavaScript); the filter here keeps the program away from the kernel's
    administrative calls and is no such sandbox, and a program that runs untrusted code can
    still ask for the mitigation itself (``prctl(PR_SET_SPECULATION_CTRL)``). A kernel
    older than 4.17 refuses the flag: the filter is then installed without it.
    """
    if len(packed) % 8:
        raise ValueError("packed filter length is not a multiple of 8")
    set_no_new_privs()
    buf = ctypes.create_string_buffer(packed, len(packed))
    prog = _SockFprog(len(packed) // 8, ctypes.cast(buf, ctypes.c_void_p))
    rc = -1
    for flags in (SECCOMP_FILTER_FLAG_SPEC_ALLOW, 0):
        rc = _libc.syscall(
            ctypes.c_long(_NR_SECCOMP),
            ctypes.c_long(SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(flags),
            ctypes.byref(prog),
        )
        if rc == 0 or ctypes.get_errno() != errno.EINVAL:
            break
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}")


def install(*, base: bool = True, disallow_subprocesses: bool = False) -> None:
    """Build and install the filter in the calling (single-threaded) process."""
    install_filter(build_filter(base=base, disallow_subprocesses=disallow_subprocesses))
