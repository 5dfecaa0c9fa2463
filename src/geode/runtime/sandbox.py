"""Building the sandbox: namespaces, the root, /proc and /dev, identity, limits, exec.

Process tree::

    supervisor (S)          the geode process: host namespaces, serves the FUSE view
    └── outer helper (C)    forked from S before its FUSE threads start; unshares user, mount,
        │                   pid, uts and ipc namespaces; waits for its child, exits with its
        │                   status
        └── init (I)        PID 1 of the new pid namespace: waits for the configuration,
            │               builds the root, forks the program, reaps every zombie, exits
            │               with the program's status
            └── program (P) execve(libos.entrypoint) after signals reset, fs.start_dir,
                            rlimits, personality, ids, seccomp, fds >= 3 closed

Why this shape:

* **S stays in the host namespaces.** It reads host files with its own credentials (as root or
  as the invoking user) and never sees the sandbox's mounts, so no mount can outlive it on the
  host and S cannot deadlock on its own FUSE file system. It never calls ``unshare`` itself:
  ``unshare(CLONE_NEWUSER)`` requires a single-threaded caller (S serves FUSE on threads),
  and after ``unshare(CLONE_NEWPID)`` a process can no longer create threads. C is forked
  before those threads start, and a forked child has a single thread.
* **C exists because of ``CLONE_NEWPID``**: unsharing a pid namespace affects the caller's
  *children* only, so the first child of C is PID 1. C is also the only process that can hand
  S a race-free handle on I (a pidfd, passed over the control socket).
* **The FUSE mount is made inside the sandbox.** A FUSE file system mounted in a user
  namespace must be mounted with a ``/dev/fuse`` descriptor opened in that namespace, so I
  opens ``/dev/fuse`` (still with the host ids it inherited, before it takes the helper ids),
  mounts it, and passes the descriptor to S over ``SCM_RIGHTS``; S serves the descriptor
  (:mod:`geode.runtime.fuse`) and never mounts or unmounts anything itself. The mount exists
  only in the sandbox's mount namespace and disappears with its last process.
* **C and I can start before the configuration exists.** Handshake on the control socket
  (a ``SOCK_SEQPACKET`` pair; marshal data travels in a memfd passed with its message, so
  that an environment of any size fits): S → C ``ids`` (the id maps), C → S ``userns``
  (after ``unshare``), S → C ``mapped`` (S wrote the maps, unless C maps itself), C → S
  ``init N`` with I's pidfd, S → I ``config`` (the :class:`SandboxConfig`), I → S ``fuse``
  with the view's descriptor, then ``dev``, further ``fuse PATH`` connections, ``ready`` and
  ``error ...`` reports. A start command forks C as soon as it has parsed its arguments, and
  sends ``ids`` at once when they do not depend on the program's ids (as root): C and I are
  then ready while S loads and verifies the manifest, and I waits for ``config``, so nothing
  runs in the sandbox before the manifest is verified (:meth:`Sandbox.ahead`).

Identity. The program always runs in a fresh user namespace, also when Geode runs as root:

* as an ordinary user, in-namespace ``loader.uid``/``loader.gid`` map to the user's own ids
  (one id each; ``setgroups`` is denied, as the kernel requires for an unprivileged map; C
  writes these maps itself, as the namespace's owner may). A program that switches to other
  ids (``setuid``) gets ``EINVAL`` there: only one id exists;
* as root, in-namespace ids 0-65535 map to an unprivileged host range (root's range from
  ``/etc/subuid``/``/etc/subgid`` if there is one, else :data:`DEFAULT_SUBID_BASE`). The
  program's root is therefore *not* host root: host-root-owned files under ``/proc/sys`` and
  ``/proc/sysrq-trigger`` are not writable for it, ``RLIMIT_NPROC`` is enforced, and it holds
  capabilities only over its own namespaces. S writes these maps (it holds CAP_SETUID).

Descriptors. C closes everything but stdio and the control socket; a stdio slot that is closed
or close-on-exec in S is replaced by ``/dev/null``; P marks every descriptor above 2
close-on-exec. The program starts with exactly fds 0, 1 and 2. Core dumps are disabled
(``RLIMIT_CORE``, see :data:`CORE_LIMIT`): a dump would carry the program's memory outside.

Mount order, done by I in its private mount namespace (every mount point is resolved with
``openat2(RESOLVE_IN_ROOT)`` inside the new root, so a symlink in the view cannot redirect a
mount)::

    1. "/" made recursively private
    2. a private staging tmpfs over /tmp (only in this namespace), holding:
       root/      the FUSE view
       pristine/  a non-recursive clone of root/, used to re-expose view paths that a later
                  kernel tmpfs would otherwise hide
    3. the manifest's tmpfs mounts, in manifest order (and view binds for chroot mounts that
       lie inside an earlier tmpfs), and the view's further FUSE connections: encrypted
       mounts served on a connection of their own (with the kernel's write-back cache), each
       mounted at its path with a ``/dev/fuse`` descriptor C opened
    4. a fresh procfs at /proc (mounted by I, hence showing only the sandbox's pid namespace;
       this must happen while the host's /proc is still visible, as the kernel requires)
    5. /dev/{null,zero,full,random,urandom,tty}: bind mounts of the host's device nodes onto
       the view's placeholders; devpts (newinstance, ptmxmode=0666) at /dev/pts and its ptmx
       bound onto /dev/ptmx; a tmpfs at /dev/shm
       (5b) with ``SandboxConfig.promote``, the files S names (the entry point's ELF
       interpreter and C library): copies of the verified bytes S sent in sealed memfds,
       made in the staging tmpfs (promoted/) and bound read-only over their paths in root/
    6. pivot_root into root/, and the old root detached (MNT_DETACH): nothing of the host,
       nor of the staging tmpfs, remains reachable by path
    7. hostname (UTS namespace), then I installs the seccomp filter before forking P

Lifetime. S never forwards host signals except the one ``sys.enable_sigterm_injection``
SIGTERM (S signals I, I signals P). C has ``PR_SET_PDEATHSIG(SIGKILL)`` towards S and I towards
C, so if S dies (even by SIGKILL) C dies, I dies, and the kernel kills everything in the pid
namespace. When P exits, I exits with P's status (128+signal for a signal), which kills every
remaining process of the sandbox (daemonized leftovers included): the program's lifetime is
the sandbox's lifetime. I is non-dumpable, so the program (root in its namespace) cannot
open ``/proc/1/mem``.

I and P run Python between fork and exec; everything they use is imported at module import
time, because after ``pivot_root`` the host's Python library is no longer reachable.
"""

from __future__ import annotations

import _socket
import contextlib
import ctypes
import errno
import fcntl
import functools
import marshal
import os
import resource
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Sequence

from geode.errors import GeodeError, ManifestError
from geode.records import Record
from geode.runtime import seccomp
from geode.runtime.process import Limits, ProcessSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any, TypeVar

    _T = TypeVar("_T")
else:
    # The C module: the ``signal`` module's enums of every signal and handler cost ~3 ms of
    # each start (its ``enum`` import), and the sandbox needs only numbers.
    import _signal

__all__ = [
    "DEFAULT_SUBID_BASE",
    "PROMOTE_MAX",
    "DEV_NODES",
    "FuseRoot",
    "IdMapping",
    "KernelMount",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "id_mapping",
    "preflight",
]

# --------------------------------------------------------------------------------------------
# Kernel constants and thin ctypes wrappers
# --------------------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

ADDR_NO_RANDOMIZE = 0x0040000
CLOSE_RANGE_CLOEXEC = 1 << 2

_NR_PIVOT_ROOT = 155
_NR_CLOSE_RANGE = 436
_NR_OPENAT2 = 437

#: Host device nodes bound into the sandbox's /dev.
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
#: First host id of the range root's sandboxes map to when /etc/subuid has no entry for root
#: (inside systemd's "unused" id block, above the range systemd-nspawn allocates from).
DEFAULT_SUBID_BASE = 0x70000000
SUBID_RANGE = 65536
#: RLIMIT_CORE of the program (soft and hard): a core dump would carry the program's memory out
#: of the shield (to the host's file system or core handler). 1 rather than 0 because the
#: kernel ignores the limit for a piped core_pattern (systemd-coredump, apport) except for the
#: value 1, which aborts the dump; for file dumps 1 byte is below the minimum, so none is made.
CORE_LIMIT = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise _oserror("unshare")


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise _oserror("prctl")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    rc = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    if rc != 0:
        raise _oserror("mount")


def _umount2(target: str, flags: int) -> None:
    if _libc.umount2(target.encode(), ctypes.c_int(flags)) != 0:
        raise _oserror("umount2")


def _pivot_root(new_root: str, put_old: str) -> None:
    if _libc.syscall(ctypes.c_long(_NR_PIVOT_ROOT), new_root.encode(), put_old.encode()) != 0:
        raise _oserror("pivot_root")


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(_NR_OPENAT2), ctypes.c_long(dirfd), path.encode(),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _close_range_cloexec(first: int) -> None:
    if _libc.syscall(ctypes.c_long(_NR_CLOSE_RANGE), ctypes.c_uint(first),
                     ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC)) != 0:
        # very old kernel: mark them one by one
        for fd in _open_fds():
            if fd >= first:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]


def _close_fds_except(keep: Iterable[int]) -> None:
    keep_set = set(keep)
    for fd in _open_fds():
        if fd not in keep_set:
            with contextlib.suppress(OSError):
                os.close(fd)


def _prepare_children() -> None:
    """Work every helper would repeat, done once in S before it forks them (~1-2 ms each
    on the start-up path): resolving the C library functions they call, and finding the
    argument area :func:`_set_title` overwrites (a forked child has the same addresses)."""
    for name in ("unshare", "prctl", "mount", "umount2", "syscall", "personality"):
        getattr(_libc, name)  # (a CDLL resolves a function at its first use, then keeps it)
    _title_area()


@functools.cache
def _title_area() -> tuple[int, int] | None:
    """(start, end) of this process's command-line area, from /proc/self/stat."""
    try:
        fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = data[data.rindex(b")") + 2:].split()
        return int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    except (OSError, ValueError, IndexError):
        return None


def _set_title(title: str) -> None:
    """Replace what ``/proc/PID/cmdline`` and ``comm`` show for this process (they would
    otherwise show the supervisor's command line, a host detail, to the program)."""
    raw = title.encode()
    with contextlib.suppress(OSError):
        buf = ctypes.create_string_buffer(raw[:15])
        _libc.prctl(ctypes.c_int(PR_SET_NAME), buf, ctypes.c_ulong(0), ctypes.c_ulong(0),
                    ctypes.c_ulong(0))
    area = _title_area()
    if area is None:
        return
    start, end = area
    size = end - start
    if size <= 2:
        return
    text = raw[: size - 2]
    # A non-NUL last byte makes the kernel report the area up to the first NUL (the
    # setproctitle convention) instead of the whole area.
    ctypes.memmove(start, text + b"\0" * (size - len(text) - 1) + b" ", size)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class SandboxError(GeodeError):
    """The sandbox could not be set up (reported by a helper process)."""


class IdMapping(Record):
    """User-namespace id maps, and the in-namespace ids Geode's helpers (C, I) run as."""

    uid_map: str
    gid_map: str
    setgroups: str  #: "allow" or "deny"
    helper_uid: int
    helper_gid: int
    #: True: C writes its own maps (an unprivileged single-id map, which the kernel allows
    #: the namespace's owner to write from inside); False: S writes them (as root, a range)
    self_map: bool = False


class KernelMount(Record):
    """A mount made by the kernel on top of the view, in order.

    ``kind`` is ``"tmpfs"``, ``"view"`` for a path of the view re-exposed (bind mounted from
    the pristine view) because an earlier tmpfs covers it, or ``"fuse"`` for a further FUSE
    connection of the view that serves the subtree at ``path``."""

    kind: str
    path: str
    where: str = ""


class FuseRoot(Record):
    """The root is the supervisor's FUSE file system, mounted by PID 1 as
    ``mount(source, root, fstype, flags, "fd=N,rootmode=40000,user_id=,group_id=," + options)``.
    """

    options: str = "allow_other"
    source: str = "geode"
    fstype: str = "fuse.geode"
    flags: int = MS_NOSUID | MS_NODEV


class SandboxConfig(Record):
    spec: ProcessSpec
    ids: IdMapping
    root: FuseRoot = FuseRoot()
    mounts: tuple[KernelMount, ...] = ()
    #: clamped limits actually applied (see :func:`effective_limits`)
    rlimits: tuple[tuple[int, int], ...] = ()
    #: whether PID 1 serves some trusted files from the sandbox's memory, bound read-only
    #: over themselves: after the configuration S sends a ``promote`` message with their view
    #: paths and their verified bytes, one sealed memfd each (see :func:`_promote`)
    promote: bool = False


def _subid_base(path: str, names: Iterable[str]) -> int:
    """First id of the first range of at least SUBID_RANGE ids for one of ``names``."""
    wanted = set(names)
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in wanted:
                    with contextlib.suppress(ValueError):
                        start, count = int(parts[1]), int(parts[2])
                        if count >= SUBID_RANGE and start > 0:
                            return start
    except OSError:
        pass
    return DEFAULT_SUBID_BASE


def early_id_mapping() -> IdMapping | None:
    """The maps :func:`id_mapping` gives whatever the program's ids, if they do not depend on
    them (as root: a range of subordinate ids); None if they do (an ordinary user maps the
    program's ids onto their own)."""
    if os.geteuid() != 0:
        return None
    ubase = _subid_base("/etc/subuid", ("root", "0"))
    gbase = _subid_base("/etc/subgid", ("root", "0"))
    return IdMapping(
        uid_map=f"0 {ubase} {SUBID_RANGE}\n",
        gid_map=f"0 {gbase} {SUBID_RANGE}\n",
        setgroups="allow",
        helper_uid=0,
        helper_gid=0,
    )


def id_mapping(uid: int, gid: int) -> IdMapping:
    """The user-namespace maps for a program running as ``uid``/``gid`` (see module doc)."""
    early = early_id_mapping()
    if early is not None:
        for value, key in ((uid, "loader.uid"), (gid, "loader.gid")):
            if value >= SUBID_RANGE:
                raise ManifestError(f"must be below {SUBID_RANGE}, got {value}", where=key)
        return early
    return IdMapping(
        uid_map=f"{uid} {os.geteuid()} 1\n",
        gid_map=f"{gid} {os.getegid()} 1\n",
        setgroups="deny",
        helper_uid=uid,
        helper_gid=gid,
        self_map=True,
    )


def effective_limits(spec: ProcessSpec, ids: IdMapping) -> tuple[list[tuple[int, int]],
                                                                 list[str]]:
    """``(resource, value)`` pairs to apply (soft = hard), clamped to the hard limits this
    process holds (an unprivileged process cannot raise them), and warnings for each clamp.
    Core dumps are always disabled (:data:`CORE_LIMIT`)."""
    lim = spec.limits
    wanted: list[tuple[int, int, str]] = [
        (resource.RLIMIT_STACK, lim.stack, "sys.stack.size"),
        (resource.RLIMIT_NOFILE, lim.nofile, "sys.fds.limit"),
        (resource.RLIMIT_AS, lim.address_space, "sgx.enclave_size"),
    ]
    if lim.tasks is not None:
        # C and I run as the same (namespace, uid) as the program unless it switches uid.
        helpers = 2 if spec.uid == ids.helper_uid else 0
        wanted.append((resource.RLIMIT_NPROC, lim.tasks + helpers, "sgx.max_threads"))
    out: list[tuple[int, int]] = [(resource.RLIMIT_CORE, CORE_LIMIT)]
    warnings: list[str] = []
    for res, value, key in wanted:
        _, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY and value > hard:
            warnings.append(f"{key}: {value} exceeds this process's hard limit {hard}; "
                            f"using {hard}")
            value = hard
        if res == resource.RLIMIT_NOFILE:
            nr_open = _read_int("/proc/sys/fs/nr_open")
            if nr_open is not None and value > nr_open:
                warnings.append(f"{key}: {value} exceeds fs.nr_open {nr_open}; "
                                f"using {nr_open}")
                value = nr_open
        out.append((res, value))
    return out, warnings


# --------------------------------------------------------------------------------------------
# Preflight: say clearly what is missing
# --------------------------------------------------------------------------------------------


def _read_int(path: str) -> int | None:
    """The integer a /proc or /sys file holds; None if it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def preflight(*, fuse: bool = True) -> None:
    """Raise one :class:`GeodeError` naming everything this machine lacks for a sandbox."""
    missing: list[str] = []
    if not os.path.exists("/proc/self/ns/user"):
        missing.append("user namespaces (kernel built without CONFIG_USER_NS)")
    else:
        max_ns = _read_int("/proc/sys/user/max_user_namespaces")
        if max_ns == 0:
            missing.append("user namespaces (user.max_user_namespaces = 0)")
        elif os.geteuid() != 0:
            if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
                missing.append("unprivileged user namespaces "
                               "(kernel.unprivileged_userns_clone = 0)")
            if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
                missing.append("unprivileged user namespaces (AppArmor: "
                               "kernel.apparmor_restrict_unprivileged_userns = 1)")
    if fuse:
        if not os.path.exists("/dev/fuse"):
            missing.append("FUSE (/dev/fuse does not exist; load the fuse module)")
        elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
            mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
            missing.append(f"FUSE for this user (/dev/fuse is mode {mode:04o}; "
                           "distributions normally make it 0666)")
    if missing:
        raise GeodeError("cannot build the sandbox on this machine, missing: "
                         + "; ".join(missing))


# --------------------------------------------------------------------------------------------
# Control-socket protocol (S <-> C, I, P)
# --------------------------------------------------------------------------------------------
#
#   C -> S  b"userns"                 namespaces created; S writes the id maps
#   S -> C  b"mapped"
#   C -> S  b"init <pid>" + [pidfd]   PID 1 forked (pid as seen by S), with a pidfd for it
#   I -> S  b"fuse" + [/dev/fuse fd]  the view is mounted; S must start serving it now
#   I -> S  b"dev <st_dev>"           device number of the mounted view
#   I -> S  b"fuse <path>" + [fd]     a further connection of the view, mounted at <path>
#   I -> S  b"dev <st_dev> <path>"    its device number
#   I -> S  b"ready"                  root built, seccomp installed; forking the program
#   * -> S  b"error <message>"        setup failed; the helper exits
#   EOF                               every helper closed its end: the program was exec'd
#                                     (P's end is close-on-exec) or everything exited

_MSG_MAX = 4096
#: The control socket is a bare ``_socket.socket``: the ``socket`` module wraps nothing the
#: sandbox uses, and building its enums of every constant costs ~4 ms of each start.
_Ctl = _socket.socket


class _HelperGone(Exception):
    """C closed the control socket during the handshake (it has reported why, or died)."""


class _SetupFailure(Exception):
    """A setup step failed; the message is user-facing."""


def _send(ctl: _Ctl, msg: bytes, fds: list[int] | None = None) -> None:
    if fds:
        rights = struct.pack(f"{len(fds)}i", *fds)
        ctl.sendmsg([msg], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    else:
        ctl.send(msg)


def _recv(ctl: _Ctl, maxfds: int, flags: int = 0) -> tuple[bytes, list[int]]:
    """A message and the descriptors passed with it (at most ``maxfds``)."""
    msg, ancillary, _, _ = ctl.recvmsg(_MSG_MAX, _socket.CMSG_LEN(maxfds * 4), flags)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4]))
    return msg, fds


def _report(ctl: _Ctl | None, message: str) -> None:
    if ctl is None:
        return
    with contextlib.suppress(OSError):
        ctl.send(b"error " + message.encode("utf-8", "replace")[: _MSG_MAX - 6])


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 128


def _set_parent_death_signal(expected_parent: int | None) -> None:
    _prctl(PR_SET_PDEATHSIG, _signal.SIGKILL)
    # If the parent died before prctl, we were reparented and no signal will come.
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(125)


# --------------------------------------------------------------------------------------------
# C: the outer helper
# --------------------------------------------------------------------------------------------


def _sanitize_stdio() -> None:
    """Descriptors 0-2 are what the program inherits. A slot that is closed, or that holds a
    close-on-exec descriptor (when the supervisor runs without, say, stdin, the first file it
    opens takes number 0, e.g. a view's O_PATH handle on a host directory), is replaced by
    /dev/null, so that nothing but the caller's own stdio can ever reach the program."""
    for fd in (0, 1, 2):
        try:
            keep = not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        except OSError:
            keep = False
        if not keep:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)  # the copy is inheritable
                os.close(null)


def _map_self(ids: IdMapping) -> None:
    """Write this process's own id maps (unprivileged case). /proc/self/* files of a
    non-dumpable process belong to root, so make sure this one is dumpable while writing."""
    try:
        _prctl(PR_SET_DUMPABLE, 1)
        _write_proc("/proc/self/setgroups", ids.setgroups)
        _write_proc("/proc/self/uid_map", ids.uid_map)
        _write_proc("/proc/self/gid_map", ids.gid_map)
    except OSError as e:
        raise _SetupFailure(f"cannot map ids into the sandbox's user namespace: {e.strerror} "
                            f"(uid_map {ids.uid_map.strip()!r})") from None


def _outer_main(ctl: _Ctl, supervisor: int) -> None:
    """Runs in C; never returns. C can be started before the sandbox is configured: it
    creates the namespaces, waits for the id maps (``ids`` message), forks I and reports it;
    I then waits for the configuration (see :meth:`Sandbox.fork`)."""
    code = 125
    try:
        _set_parent_death_signal(supervisor)
        _set_title("geode-sandbox")
        for sig in (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGHUP, _signal.SIGTERM):
            _signal.signal(sig, _signal.SIG_IGN)
        _close_fds_except({0, 1, 2, ctl.fileno()})
        _sanitize_stdio()
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC)
        except OSError as e:
            raise _SetupFailure(
                f"cannot create the sandbox's namespaces ({e.strerror}): user namespaces are "
                "not available to this user (check user.max_user_namespaces, "
                "kernel.unprivileged_userns_clone, AppArmor or a container's seccomp profile)"
            ) from None
        ids, extra = _receive(ctl, b"ids", _ids_from)
        for fd in extra:
            os.close(fd)
        if ids.self_map:
            _map_self(ids)
        _send(ctl, b"userns")
        if ctl.recv(64) != b"mapped":
            os._exit(125)
        # Our cwd must not pin a host directory once I has pivoted (pivot_root moves the root
        # and cwd of every process of the mount namespace that uses the old root).
        os.chdir("/")
        pid = os.fork()
        if pid == 0:
            _init_main(ids, ctl)  # never returns
        _become_helper(ids)
        _set_parent_death_signal(supervisor)
        pidfd = os.pidfd_open(pid)
        _send(ctl, b"init %d" % pid, [pidfd])
        os.close(pidfd)
        ctl.close()
        _, status = os.waitpid(pid, 0)
        code = _exit_code(status)
    except _SetupFailure as e:
        _report(ctl, str(e))
    except BaseException as e:  # never let an exception escape into the caller's code
        _report(ctl, f"internal error in the sandbox helper: {e!r}")
    finally:
        os._exit(code)


def _become_helper(ids: IdMapping) -> None:
    """Take the in-namespace ids Geode's helpers run as (the credential change clears the
    parent-death signal: the caller sets it again)."""
    if ids.setgroups == "allow":
        os.setgroups([])
    os.setresgid(ids.helper_gid, ids.helper_gid, ids.helper_gid)
    os.setresuid(ids.helper_uid, ids.helper_uid, ids.helper_uid)


#: descriptors that may come with a message of S: its data, and the memfds of the files to
#: promote (see SandboxConfig.promote; S sends at most PROMOTE_MAX)
_DATA_FDS = 1 + 32
PROMOTE_MAX = _DATA_FDS - 1


def _receive(ctl: _Ctl, kind: bytes, decode: Callable[[Any], _T]) -> tuple[_T, list[int]]:
    """The next message, which must be ``kind`` with its marshal data in a memfd (any size:
    an environment can exceed what one message holds), and the descriptors that came after
    that one; exits quietly if S is gone."""
    msg, fds = _recv(ctl, _DATA_FDS)
    if msg != kind or not fds:
        for fd in fds:
            os.close(fd)
        if not msg:
            os._exit(125)  # S is gone (its sandbox discarded)
        raise _SetupFailure(f"unexpected message from the supervisor: {msg[:32]!r}")
    try:
        size = os.fstat(fds[0]).st_size
        data = bytearray()
        while len(data) < size:
            chunk = os.pread(fds[0], size - len(data), len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fds[0])
    try:
        return decode(marshal.loads(data)), fds[1:]
    except (ValueError, TypeError, EOFError) as e:
        for fd in fds[1:]:
            os.close(fd)
        raise _SetupFailure(f"bad {kind.decode()} message from the supervisor: {e}") from None


def _memfd_message(name: str, value: Any) -> int:
    """A memfd holding ``marshal.dumps(value)``, to pass with a message."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        data = memoryview(marshal.dumps(value))
        while data:
            data = data[os.write(fd, data):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ids_from(value: Any) -> IdMapping:
    return IdMapping(*value)


def _promoted_paths(value: Any) -> list[str]:
    if not (isinstance(value, list) and all(isinstance(p, str) for p in value)):
        raise TypeError("expected a list of paths")
    return value


def _config_plain(cfg: SandboxConfig) -> tuple[Any, ...]:
    """``cfg`` as marshal data (tuples, dicts and scalars), for :func:`_config_from`."""
    spec = cfg.spec._replace(env=dict(cfg.spec.env), limits=tuple(cfg.spec.limits))
    return (tuple(spec), tuple(cfg.ids), tuple(cfg.root), tuple(tuple(m) for m in cfg.mounts),
            tuple(tuple(r) for r in cfg.rlimits), bool(cfg.promote))


def _config_from(value: Any) -> SandboxConfig:
    spec, ids, root, mounts, rlimits, promote = value
    spec = ProcessSpec(*spec)
    return SandboxConfig(spec=spec._replace(limits=Limits(*spec.limits)), ids=IdMapping(*ids),
                         root=FuseRoot(*root), mounts=tuple(KernelMount(*m) for m in mounts),
                         rlimits=tuple(tuple(r) for r in rlimits), promote=bool(promote))


# --------------------------------------------------------------------------------------------
# I: PID 1
# --------------------------------------------------------------------------------------------


def _init_main(ids: IdMapping, ctl: _Ctl) -> None:
    """Runs as PID 1 of the sandbox; never returns."""
    code = 125
    try:
        _set_parent_death_signal(None)
        _prctl(PR_SET_DUMPABLE, 0)
        _set_title("geode-init")
        # PID 1 ignores signals it has no handler for; drop the handler Python installed.
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        dev_fds = _open_dev_nodes()
        cfg, extra = _receive(ctl, b"config", _config_from)
        for fd in extra:
            os.close(fd)
        if cfg.ids != ids:
            raise _SetupFailure("the configuration's id maps are not the namespace's")
        # Must be opened inside the new user namespace (the kernel requires the mounter and
        # the opener of /dev/fuse to share it), and before switching ids (as root, /dev/fuse
        # is typically 0600).
        try:
            fuse_fds = [os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
                        for _ in range(1 + sum(m.kind == "fuse" for m in cfg.mounts))]
        except OSError as e:
            raise _SetupFailure(f"FUSE is not available: cannot open /dev/fuse: "
                                f"{e.strerror}") from None
        _become_helper(ids)
        _set_parent_death_signal(None)
        _build_root(cfg, ctl, fuse_fds, dev_fds)
        _socket.sethostname(cfg.spec.hostname)
        seccomp.install(base=True)
        _send(ctl, b"ready")
        pid = os.fork()
        if pid == 0:
            _program_main(cfg, ctl)  # never returns
        ctl.close()
        ctl = None  # type: ignore[assignment]
        if cfg.spec.sigterm_injection:
            def forward(*_: object) -> None:
                with contextlib.suppress(OSError):
                    os.kill(pid, _signal.SIGTERM)

            _signal.signal(_signal.SIGTERM, forward)
        while True:
            try:
                reaped, status = os.wait()
            except ChildProcessError:
                break
            if reaped == pid:
                code = _exit_code(status)
                break
    except _SetupFailure as e:
        _report(ctl, str(e))
    except BaseException as e:
        _report(ctl, f"internal error in the sandbox init: {e!r}")
    finally:
        os._exit(code)


def _resolve(root_fd: int, view_path: str) -> int:
    """O_PATH descriptor of ``view_path`` resolved inside the root (symlinks stay inside)."""
    rel = view_path.strip("/") or "."
    return _openat2(root_fd, rel, os.O_PATH | os.O_CLOEXEC,
                    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


def _ensure(root_fd: int, view_path: str, *, directory: bool, what: str) -> int:
    """O_PATH descriptor of the mount point ``view_path``; created if missing and its parent
    is writable (inside a tmpfs)."""
    try:
        return _resolve(root_fd, view_path)
    except FileNotFoundError:
        pass
    parent_path, _, name = view_path.rstrip("/").rpartition("/")
    parent = _ensure(root_fd, parent_path or "/", directory=True, what=what)
    try:
        if directory:
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644,
                             dir_fd=parent))
    except FileExistsError:
        pass
    except OSError as e:
        raise _SetupFailure(f"{what}: mount point {view_path} does not exist in the view and "
                            f"cannot be created ({e.strerror})") from None
    finally:
        os.close(parent)
    return _resolve(root_fd, view_path)


def _mount_at(root_fd: int, view_path: str, *, directory: bool, what: str,
              source: str | None, fstype: str | None, flags: int,
              data: str | None = None) -> None:
    target = _ensure(root_fd, view_path, directory=directory, what=what)
    try:
        _mount(source, _fd_path(target), fstype, flags, data)
    except OSError as e:
        raise _SetupFailure(f"{what}: cannot mount {fstype or 'bind'} at {view_path}: "
                            f"{e.strerror}") from None
    finally:
        os.close(target)


def _stage_dir() -> str:
    for candidate in ("/tmp", "/mnt", "/run", "/var/tmp"):
        if os.path.isdir(candidate) and not os.path.islink(candidate):
            return candidate
    raise _SetupFailure("no directory to stage the sandbox's root (/tmp, /mnt, /run)")


def _fuse_options(cfg: SandboxConfig, fd: int) -> str:
    return (f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
            + (f",{cfg.root.options}" if cfg.root.options else ""))


def _open_dev_nodes() -> dict[str, int]:
    """The host's device nodes (O_PATH), opened before anything covers them; runs in I
    before the configuration arrives. (Nothing is created yet: I still has the host ids,
    which the namespace does not map, and a file made with them could not be owned.)"""
    dev_fds: dict[str, int] = {}
    for name in DEV_NODES:
        try:
            dev_fds[name] = os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            raise _SetupFailure(f"cannot open host device /dev/{name}: {e.strerror}") from None
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        raise _SetupFailure(f"cannot prepare the sandbox's mount namespace: {e}") from None
    return dev_fds


def _build_root(cfg: SandboxConfig, ctl: _Ctl, fuse_fds: list[int],
                dev_fds: dict[str, int]) -> None:
    """Steps 1-6 of the mount order (module docstring). Runs in I, as the helper ids."""
    try:
        stage = _stage_dir()
        _mount("geode-stage", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
    except OSError as e:
        raise _SetupFailure(f"cannot prepare the sandbox's mount namespace: {e}") from None
    root = f"{stage}/root"
    os.mkdir(root, 0o755)

    fuse_fd, *more_fuse_fds = fuse_fds
    try:
        _mount(cfg.root.source, root, cfg.root.fstype, cfg.root.flags,
               _fuse_options(cfg, fuse_fd))
    except OSError as e:
        raise _SetupFailure(f"cannot mount the FUSE view: {e.strerror}") from None
    _send(ctl, b"fuse", [fuse_fd])
    os.close(fuse_fd)
    # Served from now on: tell S the connection's device number (for tuning it).
    _send(ctl, b"dev %d" % os.stat(root).st_dev)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    pristine_fd = -1
    if any(m.kind == "view" for m in cfg.mounts):
        pristine = f"{stage}/pristine"
        os.mkdir(pristine, 0o755)
        _mount(root, pristine, None, MS_BIND)
        pristine_fd = os.open(pristine, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    for m in cfg.mounts:
        what = m.where or m.path
        if m.kind == "tmpfs":
            _mount_at(root_fd, m.path, directory=True, what=what, source="tmpfs",
                      fstype="tmpfs", flags=MS_NOSUID | MS_NODEV, data="mode=1777")
        elif m.kind == "fuse":
            fd = more_fuse_fds.pop(0)
            _mount_at(root_fd, m.path, directory=True, what=what, source=cfg.root.source,
                      fstype=cfg.root.fstype, flags=cfg.root.flags,
                      data=_fuse_options(cfg, fd))
            path = m.path.encode()
            _send(ctl, b"fuse " + path, [fd])
            os.close(fd)
            # served from now on (S serves every connection it is sent)
            mounted = _resolve(root_fd, m.path)
            try:
                _send(ctl, b"dev %d " % os.fstat(mounted).st_dev + path)
            finally:
                os.close(mounted)
        else:
            try:
                src = _resolve(pristine_fd, m.path)
            except OSError as e:
                raise _SetupFailure(f"{what}: {m.path} is missing from the view: "
                                    f"{e.strerror}") from None
            is_dir = stat.S_ISDIR(os.fstat(src).st_mode)
            try:
                _mount_at(root_fd, m.path, directory=is_dir, what=what, source=_fd_path(src),
                          fstype=None, flags=MS_BIND)
            finally:
                os.close(src)

    # Step 4: a procfs of the sandbox's own pid namespace.
    _mount_at(root_fd, "/proc", directory=True, what="/proc", source="proc", fstype="proc",
              flags=MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # Step 5: /dev.
    for name, fd in dev_fds.items():
        _mount_at(root_fd, f"/dev/{name}", directory=False, what=f"/dev/{name}",
                  source=_fd_path(fd), fstype=None, flags=MS_BIND)
        os.close(fd)
    _mount_at(root_fd, "/dev/pts", directory=True, what="/dev/pts", source="devpts",
              fstype="devpts", flags=MS_NOSUID | MS_NOEXEC,
              data="newinstance,ptmxmode=0666,mode=0620")
    ptmx = _resolve(root_fd, "/dev/pts/ptmx")
    try:
        _mount_at(root_fd, "/dev/ptmx", directory=False, what="/dev/ptmx",
                  source=_fd_path(ptmx), fstype=None, flags=MS_BIND)
    finally:
        os.close(ptmx)
    _mount_at(root_fd, "/dev/shm", directory=True, what="/dev/shm", source="tmpfs",
              fstype="tmpfs", flags=MS_NOSUID | MS_NODEV, data="mode=1777")
    if pristine_fd >= 0:
        os.close(pristine_fd)
    if cfg.promote:
        paths, memfds = _receive(ctl, b"promote", _promoted_paths)
        if len(paths) != len(memfds):
            for fd in memfds:
                os.close(fd)
            raise _SetupFailure("the files to promote came without their contents")
        _promote(root_fd, f"{stage}/promoted", zip(paths, memfds, strict=True))
    os.close(root_fd)

    # Step 6: make the view the root; detach the host's tree.
    try:
        os.chdir(root)
        _pivot_root(".", ".")
        _umount2(".", MNT_DETACH)
        os.chdir("/")
    except OSError as e:
        raise _SetupFailure(f"cannot switch to the sandbox's root: {e}") from None


def _promote(root_fd: int, store: str, files: Iterable[tuple[str, int]]) -> None:
    """Step 5b: serve trusted files from copies in the sandbox's memory.

    ``files`` pairs a view path with a sealed memfd that S filled with the file's bytes after
    they matched the manifest (the file is the same as the view would serve, whatever the
    host does afterwards). Each is copied into ``store``, a directory of the staging tmpfs,
    and the copy is bound read-only (``nosuid``, ``nodev``) over the path in the root. Once
    the old root is detached (step 6) nothing but those binds reaches the copies; the
    program can neither write them (read-only mounts) nor unmount them (seccomp). Every exec
    of a dynamically linked program opens its ELF interpreter and the C library: served so,
    those opens make no FUSE request, where each cost the program a round trip to S.
    (A memfd cannot itself be bound: it is on no mount of this namespace.)"""
    for i, (vpath, memfd) in enumerate(files):
        copy = f"{store}/{i}"
        try:
            if i == 0:
                os.mkdir(store, 0o700)
            size = os.fstat(memfd).st_size
            dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o555)
            try:
                done = 0
                while done < size:
                    sent = os.sendfile(dst, memfd, done, size - done)
                    if sent == 0:
                        raise OSError(errno.EIO, "short copy")
                    done += sent
            finally:
                os.close(dst)
        except OSError as e:
            raise _SetupFailure(f"cannot copy {vpath} into the sandbox's memory: "
                                f"{e.strerror}") from None
        finally:
            os.close(memfd)
        _mount_at(root_fd, vpath, directory=False, what=vpath, source=copy, fstype=None,
                  flags=MS_BIND)
        target = _resolve(root_fd, vpath)
        try:
            _mount(None, _fd_path(target), None,
                   MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        except OSError as e:
            raise _SetupFailure(f"{vpath}: cannot make its copy read-only: {e.strerror}"
                                ) from None
        finally:
            os.close(target)


# --------------------------------------------------------------------------------------------
# P: the program
# --------------------------------------------------------------------------------------------


def _program_main(cfg: SandboxConfig, ctl: _Ctl) -> None:
    """Runs in P (child of PID 1); execs the program or reports why it cannot."""
    spec = cfg.spec
    try:
        for sig in _signal.valid_signals():
            if sig not in (_signal.SIGKILL, _signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError, RuntimeError):
                    _signal.signal(sig, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
        try:
            os.chdir(spec.start_dir)
        except OSError as e:
            raise _SetupFailure(f"fs.start_dir: cannot change to {spec.start_dir} in the "
                                f"view: {e.strerror}") from None
        for res, value in cfg.rlimits:
            try:
                resource.setrlimit(res, (value, value))
            except (OSError, ValueError) as e:
                raise _SetupFailure(f"cannot set resource limit {res} to {value}: {e}") from None
        if spec.disable_aslr:
            persona = _libc.personality(ctypes.c_ulong(0xFFFFFFFF))
            _libc.personality(ctypes.c_ulong(persona | ADDR_NO_RANDOMIZE))
        if cfg.ids.setgroups == "allow":
            os.setgroups([])
        os.setresgid(spec.gid, spec.gid, spec.gid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
        if spec.disallow_subprocesses:
            seccomp.install(base=False, disallow_subprocesses=True)
        _close_range_cloexec(3)
        try:
            os.execve(spec.path, list(spec.argv), dict(spec.env))
        except OSError as e:
            raise _SetupFailure(f"libos.entrypoint: cannot execute {spec.path}: "
                                f"{e.strerror}") from None
    except _SetupFailure as e:
        _report(ctl, str(e))
    except BaseException as e:
        _report(ctl, f"internal error before exec: {e!r}")
    finally:
        os._exit(127)


# --------------------------------------------------------------------------------------------
# S: the supervisor's handle on the sandbox
# --------------------------------------------------------------------------------------------


def _write_proc(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


class Sandbox:
    """The supervisor's side: starts the helpers, answers the handshake, signals, reaps.

    :meth:`start` blocks until PID 1 exists and the view is mounted, its descriptor in
    :attr:`fuse_fd`; the caller must then serve it at once, since PID 1 keeps building the
    root through it. After that the control socket (:attr:`ctl`) is
    non-blocking; read it with :meth:`read_messages`.

    :meth:`fork` may come first, before the configuration is known: C creates the
    namespaces and forks I, which prepares what it can and waits for :meth:`start`'s
    configuration, while the caller loads its manifest, calling :meth:`advance` now and then
    to answer C. Until :meth:`start` returns, nothing runs in the sandbox but Geode's
    helpers; :meth:`discard` (or leaving the ``with`` block) kills them.
    """

    def __init__(self, cfg: SandboxConfig | None = None) -> None:
        self.cfg = cfg
        self.pid: int | None = None  #: C's pid
        self.pidfd: int | None = None  #: pidfd of C (readable when C exits)
        self.init_pid: int | None = None
        self.init_pidfd: int | None = None
        self.fuse_fd: int | None = None
        self.fuse_dev: int | None = None  #: st_dev of the mounted view, once known
        #: the view's further connections as they arrive: (path, /dev/fuse descriptor)
        self.connections: list[tuple[str, int]] = []
        #: st_dev of each of those, by path, once known
        self.connection_devs: dict[str, int] = {}
        self.ctl: _Ctl | None = None
        self.errors: list[str] = []
        self.ready = False
        self.eof = False
        self.status: int | None = None
        #: the id maps sent to C (it waits for them before it maps its user namespace)
        self._ids: IdMapping | None = None
        #: what went wrong in :meth:`advance`, for :meth:`start` to raise
        self._failure: Exception | None = None
        #: the thread sending PID 1 the files to promote (see :meth:`start`)
        self._promoter: threading.Thread | None = None

    # ---------------------------------------------------------------- start / handshake

    @classmethod
    def ahead(cls) -> Sandbox:
        """A sandbox forked before its configuration is known (see :meth:`fork`), with the
        id maps sent if they do not depend on the program's ids (:func:`early_id_mapping`);
        the caller calls :meth:`advance` while it works, then :meth:`start`."""
        sandbox = cls()
        sandbox.fork(early_id_mapping())
        return sandbox

    def fork(self, ids: IdMapping | None = None) -> None:
        """Start C, sending it ``ids`` if given (else :meth:`start` sends the
        configuration's)."""
        _prepare_children()
        parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # C
            try:
                parent.close()
            finally:
                _outer_main(child, supervisor)
        child.close()
        self.pid, self.ctl = pid, parent
        try:
            self.pidfd = os.pidfd_open(pid)
            if ids is not None:
                self._send_ids(ids)
        except BaseException:
            self.discard()
            raise

    def advance(self) -> None:
        """Answer what C has said so far (map its user namespace, so that it forks I),
        without waiting. A failure is left for :meth:`start` to report."""
        if self.ctl is None or self.eof or self.init_pidfd is not None or self._failure:
            return
        try:
            self._expect(lambda: self.init_pidfd is not None, block=False)
        except Exception as e:
            self._failure = e

    def start(self, cfg: SandboxConfig | None = None,
              promote: Callable[[], tuple[list[str], list[int]]] | None = None) -> None:
        """Configure the sandbox (forking it first if :meth:`fork` was not called) and wait
        until the view is mounted. On any failure the helpers are killed and reaped.

        With ``cfg.promote``, ``promote()`` is called on a thread of its own while PID 1
        builds the root: it returns view paths and a sealed memfd of each one's verified
        bytes (closed here); PID 1 waits for them before it pivots into the root."""
        if cfg is not None:
            self.cfg = cfg
        assert self.cfg is not None
        if self.pid is None:
            self.fork(self.cfg.ids)
        try:
            if self._failure is not None:
                raise self._failure
            if self._ids is None:
                self._send_ids(self.cfg.ids)
            elif self._ids != self.cfg.ids:
                raise SandboxError("the sandbox was forked with other id maps than its "
                                   "configuration's")
            self._expect(lambda: self.init_pidfd is not None)
            self._send_data(b"config", _config_plain(self.cfg))
            if self.cfg.promote:
                self._promoter = threading.Thread(target=self._send_promoted, args=(promote,),
                                                  name="geode-promote", daemon=True)
                self._promoter.start()
            self._expect(lambda: self.fuse_fd is not None)
        except BaseException as e:
            self.kill()
            self.wait()
            if isinstance(e, _HelperGone):
                raise SandboxError(self._failure_text()) from None
            raise
        assert self.ctl is not None
        self.ctl.setblocking(False)

    def _send_promoted(self, promote: Callable[[], tuple[list[str], list[int]]] | None
                       ) -> None:
        """(On its own thread.) Send the ``promote`` message PID 1 waits for: always, with
        nothing when ``promote`` is missing or fails."""
        paths: list[str] = []
        fds: list[int] = []
        try:
            if promote is not None:
                paths, fds = promote()
        except Exception:
            pass  # (nothing promoted: the view serves those files)
        try:
            if len(paths) != len(fds) or len(fds) > PROMOTE_MAX:
                paths, fds_sent = [], []
            else:
                fds_sent = fds
            while True:
                try:
                    self._send_data(b"promote", paths, fds_sent)
                    break
                except BlockingIOError:  # (start() made the socket non-blocking meanwhile)
                    import select

                    assert self.ctl is not None
                    select.select([], [self.ctl], [], 1.0)
        except OSError:
            pass  # (the sandbox is being torn down)
        finally:
            for fd in fds:
                os.close(fd)

    def discard(self) -> None:
        """Kill and reap the helpers (if they were started) and close everything."""
        if self.status is None and self.pid is not None:
            self.kill()
            self.wait()
        self.close()

    def _send_ids(self, ids: IdMapping) -> None:
        self._ids = ids
        self._send_data(b"ids", tuple(ids))

    def _send_data(self, kind: bytes, value: Any, fds: Sequence[int] = ()) -> None:
        """Send ``kind`` with ``value`` as marshal data in a memfd, and ``fds`` after it (see
        :func:`_receive`)."""
        assert self.ctl is not None
        assert len(fds) <= PROMOTE_MAX
        fd = _memfd_message("geode-" + kind.decode(), value)
        try:
            _send(self.ctl, kind, [fd, *fds])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the helper is gone: the handshake reads why
        finally:
            os.close(fd)

    def _recv(self, flags: int = 0) -> tuple[bytes, list[int]]:
        assert self.ctl is not None
        try:
            return _recv(self.ctl, 2, flags)
        except ConnectionResetError:
            # C or I closed the socket with a message of ours unread (say C could not
            # create the namespaces before it read its ids): the kernel says so once,
            # before what they sent
            return _recv(self.ctl, 2, flags)

    def _expect(self, done: Callable[[], bool], *, block: bool = True) -> None:
        """Read and act on C's and I's messages until ``done()`` (without ``block``: until
        no message is waiting either)."""
        while not done():
            try:
                msg, fds = self._recv(0 if block else _socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not msg:
                self.eof = True
                raise _HelperGone
            if msg == b"userns":
                assert self._ids is not None
                if not self._ids.self_map:
                    self._write_maps()
                assert self.ctl is not None
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.ctl.send(b"mapped")  # (if C is gone, the next read says why)
            elif msg.startswith(b"init ") and fds:
                self.init_pid = int(msg.split()[1])
                self.init_pidfd = fds[0]
            elif msg == b"fuse" and fds:
                self.fuse_fd = fds[0]
            elif self._connection_message(msg, fds):
                pass
            elif msg.startswith(b"error "):
                self.errors.append(msg[6:].decode("utf-8", "replace"))
                for fd in fds:
                    os.close(fd)
            else:
                for fd in fds:
                    os.close(fd)
                raise SandboxError(f"unexpected message from the sandbox helper: {msg!r}")

    def _write_maps(self) -> None:
        ids = self._ids
        assert ids is not None
        proc = f"/proc/{self.pid}"
        try:
            if ids.setgroups == "deny":
                _write_proc(f"{proc}/setgroups", "deny")
            _write_proc(f"{proc}/uid_map", ids.uid_map)
            _write_proc(f"{proc}/gid_map", ids.gid_map)
        except OSError as e:
            raise SandboxError(f"cannot map ids into the sandbox's user namespace: "
                               f"{e.strerror} ({ids.uid_map.strip()!r})") from None

    def _failure_text(self) -> str:
        if self.errors:
            return self.errors[0]
        return f"the sandbox helper exited during setup (status {self.status})"

    # ---------------------------------------------------------------- running

    def read_messages(self) -> None:
        """Drain the (non-blocking) control socket: collects errors, notes ready and EOF."""
        if self.ctl is None or self.eof:
            return
        while True:
            try:
                msg, fds = self._recv()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.eof = True
                return
            if self._connection_message(msg, fds):
                continue
            for fd in fds:
                os.close(fd)
            if not msg:
                self.eof = True
                return
            if msg == b"ready":
                self.ready = True
            elif msg.startswith(b"error "):
                self.errors.append(msg[6:].decode("utf-8", "replace"))

    def _connection_message(self, msg: bytes, fds: list[int]) -> bool:
        """Take a ``fuse <path>`` (keeping its descriptor) or ``dev`` message."""
        if msg.startswith(b"fuse ") and len(fds) == 1:
            self.connections.append((os.fsdecode(msg[5:]), fds[0]))
            return True
        if msg.startswith(b"dev "):
            _, dev, *path = msg.split(b" ", 2)
            if path:
                self.connection_devs[os.fsdecode(path[0])] = int(dev)
            else:
                self.fuse_dev = int(dev)
            return True
        return False

    def signal_program(self, sig: int) -> None:
        """Send ``sig`` to PID 1 (which forwards SIGTERM to the program when injection is on)."""
        if self.init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                _signal.pidfd_send_signal(self.init_pidfd, sig)

    def kill(self) -> None:
        """Kill everything: SIGKILL to PID 1 (the kernel then kills its whole pid namespace)
        and to C."""
        for fd in (self.init_pidfd, self.pidfd):
            if fd is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    _signal.pidfd_send_signal(fd, _signal.SIGKILL)
        if self.pidfd is None and self.pid is not None and self.status is None:
            # (no pidfd: C is an unreaped child of ours, so its pid is still its own)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, _signal.SIGKILL)

    def poll(self) -> int | None:
        """C's exit code if it has exited (reaping it), else None."""
        if self.status is None and self.pid is not None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = _exit_code(status)
        return self.status

    def wait(self) -> int:
        """Block until C exits; its exit code (the program's, or 128+signal)."""
        if self.status is None and self.pid is not None:
            _, status = os.waitpid(self.pid, 0)
            self.status = _exit_code(status)
        assert self.status is not None
        return self.status

    def close(self) -> None:
        if self._promoter is not None:
            # (it writes to the control socket: not after the socket is closed)
            self._promoter.join()
            self._promoter = None
        for _, fd in self.connections:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.connections.clear()
        for name in ("pidfd", "init_pidfd", "fuse_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

