"""The view file system: one FUSE tree presenting a manifest's mounts under its file policy.

Interface for the launcher
==========================
::

    plan = ViewPlan.from_manifest(manifest, base_dir=...)   # geode.runtime.plan
    fs = ViewFS(plan, manifest)                               # opens the mounts' host dirs
    serve_fd(fs, fd)                 # the supervisor: serve a /dev/fuse descriptor PID 1 mounted
    serve(fs, mountpoint, ready=cb)  # tests, debugging: mount at a path and serve it

``serve`` mounts the view at ``mountpoint`` (mount(2) itself: root or a user namespace is
needed), waits until the kernel has completed the FUSE handshake and answered a ``stat`` of the
mountpoint, then calls ``ready()``; it returns when the file system is unmounted (e.g. by
``geode.runtime.fuse.unmount`` from a signal handler), and unmounts it itself when ``ready``
raises. Both block the calling thread; requests are answered on threads of
:class:`geode.runtime.fuse.Session`, one handler at a time. After ``ready`` the launcher
uses ``mountpoint`` as the program's root and mounts, on top of the view's placeholders:
kernel tmpfs at each ``plan.mounts`` entry of type ``tmpfs`` (their mount points are empty
directories here; a chroot mount *below* a tmpfs mount is visible in the view at its path and
has to be bind-mounted again by the launcher after the tmpfs), procfs at ``/proc``, host
device nodes at ``/dev/{null,zero,full,random,urandom,tty,ptmx}`` (empty regular files here;
opening an unbound one gives ENXIO), devpts at ``/dev/pts`` and tmpfs at ``/dev/shm``.
``/dev/fd``, ``/dev/stdin``, ``/dev/stdout`` and ``/dev/stderr`` are symlinks into
``/proc/self/fd``. ``fs.keys`` is the live ``name -> 16 bytes`` table behind
``/dev/attestation/keys``; ``fs.attestation.files`` holds the other ``/dev/attestation``
pseudo-files (extend it with :class:`PseudoFile` subclasses). ``fs.stats`` counts FUSE
requests per operation (``fs.verified_bytes``: bytes hashed at first opens; ``fs.busy_ns``,
``fs.op_ns``: time spent in handlers, in all and per operation).
``ViewFS(..., owner=(uid, gid))`` makes every file appear owned by that uid/gid (as
numbered in the FUSE connection's user namespace; default: the host owner).
``MOUNT_OPTIONS`` are the libfuse-style options ``serve`` mounts with; a launcher that mounts
``/dev/fuse`` itself should use their kernel equivalents and may call
:func:`tune_readahead` with the mount's device number, as ``serve`` does.

What the program sees
=====================
* **Composition.** ``fs.root`` and the visible ``fs.mounts`` (see :mod:`geode.runtime.plan`)
  form one tree; a mount point hides whatever its parent has at that name, and mount points
  that do not exist in the parent appear as directories. ``/proc``, ``/sys`` and ``/dev`` are
  virtual directories that hide the root mount's entries of those names.
* **Gramine's interpreter lookup.** When ``/lib`` is mounted and ``/lib64`` is not (the usual
  Gramine manifest), ``/lib64/ld-linux-x86-64.so.2`` is a symlink to the interpreter Gramine's
  loader would pick: the basename searched in ``loader.env.LD_LIBRARY_PATH`` directories, or
  in ``/lib`` then ``/lib64`` when that is unset. The kernel's ``PT_INTERP`` lookup follows it.
* **Policy** (``sgx.file_check_policy``), decided by host path as in Gramine:

  - directories can always be looked up, listed and stat'ed (so paths can be traversed);
  - *trusted* files are read-only (opening for writing, truncating, chmod, utimes, unlink and
    rename give EACCES). The first open reads the whole file once, computing its SHA-256 (and,
    for a file too big to be pushed into the page cache, a table of truncated 128-bit SHA-256
    hashes of each 16 KiB chunk); a mismatch with the manifest gives EACCES and an error log
    line naming the file. Only the chunk table is kept (16 bytes per 16 KiB). Every later read
    from the host is re-verified chunk by chunk (a file that was pushed into the page cache
    gets its table at the first read that reaches the view, by hashing it whole again), so
    the program gets exactly the verified bytes, or EIO if the host file changed (TOCTOU);
    size and times of a verified file are frozen at verification;
  - *allowed* files (an ``sgx.allowed_files`` entry and everything below it) are read-write
    passthrough: create, write, truncate, unlink, rename, mkdir, rmdir, symlink, link,
    chmod, utimes, fsync, FIFOs and unix sockets;
  - anything else: EACCES on open/create/modify under ``strict`` (a warning log line names
    it); allowed with a warning log line naming it under ``allow_all_but_log``. As in
    Gramine, ``stat`` of such a file works (only opening it is refused);
  - mkdir/rmdir/chmod/utimes of directories follow the same rule as files (Geode is stricter
    than Gramine here, which lets a program create directories anywhere); chown is accepted
    and ignored (ownership is not passed through);
  - host device nodes are never shown; host FIFOs and sockets only where files are allowed.
* **Host path resolution** never leaves a mount's host directory: every host path is opened
  relative to an ``O_PATH`` descriptor of the mount's host directory with ``openat2`` and
  ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` (single names use ``*at`` calls on such a
  descriptor). Host symlinks are shown as symlinks and resolved by the kernel *inside the
  view*. One exception keeps Gramine manifests working: a symlink whose own host path is a
  trusted file (gramine-manifest hashes through links, e.g. ``/lib64/ld-linux-x86-64.so.2``)
  is shown as the regular file it points to on the host; its content must match the hash,
  so following it can never yield unverified bytes.
* **Caching** keeps Python off the hot path: 300 s entry/attribute timeouts (1 s in allowed
  areas, 0 for ``/dev/attestation/keys``), cached negative lookups, readdirplus (listing a
  directory also answers the lookups of its entries), ``keep_cache`` on trusted files (the
  page cache only ever holds verified bytes), no ``direct_io`` except for pseudo-files, and
  FLUSH/xattr requests left unimplemented so that the kernel stops sending them. A trusted
  file of at most 16 MiB is pushed into the page cache (``notify_store``) right after it
  verified, from the very bytes that were hashed, so the program's reads of it never reach
  Python; bigger files are read 1 MiB per request (readahead raised from 128 KiB, and
  ``max_pages`` negotiated to 256). Symlinks are cached by the kernel (``FUSE_CACHE_SYMLINKS``).
  An open of an already verified trusted file touches no host file (the first read that
  reaches the view opens it). Inode numbers are stable for the mount's lifetime per host (dev,
  inode).
* ``default_permissions`` is deliberately *not* used: access is decided by the manifest
  policy (Gramine ignores host mode bits the same way and accesses files with the rights of
  the user running it), and the kernel's mode-bit checks would otherwise compare host
  owners with the program's (namespaced) ids. ``access(2)`` is answered from the policy.
  The view is mounted ``nodev,nosuid``.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import posixpath
import resource
import stat
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

from geode.errors import GeodeError, ManifestError
from geode.formats import elf
from geode.log import get_logger
from geode.records import Record
from geode.runtime import encfs, fuse
from geode.runtime.plan import Mount, ViewPlan, normalize_view_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

__all__ = [
    "AttestationDir",
    "KeyFile",
    "PseudoFile",
    "PseudoHandle",
    "StaticPseudoFile",
    "ViewFS",
    "openat2",
    "serve",
    "tune_readahead",
]

log = get_logger("geode.fs")

CHUNK_SIZE = 16 * 1024
CHUNK_HASH_SIZE = 16
STABLE_TIMEOUT = 300.0
VOLATILE_TIMEOUT = 1.0
#: first-open verification of files at least this big runs on a worker thread
THREAD_HASH_MIN = 2 << 20
#: ... and computes the whole-file hash and the chunk hashes in parallel
PARALLEL_HASH_MIN = 2 << 20
#: verified files up to this size are pushed into the kernel page cache (notify_store) as
#: soon as they are verified, so that the program's reads never reach Python
STORE_MAX = 16 << 20
#: readahead window of the view's FUSE connection (see tune_readahead)
READ_AHEAD_KB = 1024
HASH_BLOCK = 64 * CHUNK_SIZE
#: how long a prefetched file's verified bytes wait for the open they were hashed for, in s
PREFETCH_KEEP = 10.0
#: where ld.so looks for libraries after LD_LIBRARY_PATH and DT_RUNPATH (Debian's x86-64
#: multiarch directories first, as in its ld.so cache, then glibc's built-in ones)
SYSTEM_LIBRARY_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib",
                       "/usr/lib")
KEY_SIZE = 16
INTERP_NAME = "ld-linux-x86-64.so.2"
DEV_PLACEHOLDERS = ("null", "zero", "full", "random", "urandom", "tty", "ptmx")
DEV_DIRS = ("pts", "shm")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
#: busy-polling of the encrypted mounts' own connections after each reply, in µs (see
#: fuse.Session; docs/performance.md has the measurements)
OWN_CONNECTION_POLL_US = 100
#: how long the root connection's reader polls after an exec's open or its release, in µs
#: (fuse.Session's ``exec_poll_us``): 1,000 fork+execs of /usr/bin/true took 1.37-1.40 s
#: without, 1.22-1.28 s with (native 1.08-1.13 s; interleaved rounds, docs/performance.md).
#: Polling after every reply instead slowed nginx (its workers open the file they serve at
#: each request, and need both vCPUs).
EXEC_POLL_US = 1000
#: times of encrypted files kept by the kernel in whole seconds (see fuse.Session): a
#: database syncing every transaction then costs no time-flushing SETATTR per fsync
OWN_CONNECTION_TIME_GRAN = 1_000_000_000
MOUNT_OPTIONS = (
    "fsname=geode",
    "subtype=geode",
    "allow_other",
    "nodev",
    "nosuid",
)

# ------------------------------------------------------------------------------------------
# openat2 and friends (ctypes)
# ------------------------------------------------------------------------------------------

_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = IN_ROOT) -> int:
    """``openat2(2)``; with the default ``resolve`` the path cannot leave ``dirfd``.

    ``O_CLOEXEC`` is always added; an empty path means ``"."``. Retries the EAGAIN that
    RESOLVE_IN_ROOT returns when a rename races with the walk.
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    bpath = os.fsencode(path) or b"."
    for _ in range(100):
        fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(bpath),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _renameat2_call(olddirfd: int, old: str, newdirfd: int, new: str, flags: int) -> None:
    if _renameat2(olddirfd, os.fsencode(old), newdirfd, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    """pread until ``size`` bytes or EOF."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _lstat_in(dirfd: int, rel: str) -> os.stat_result:
    """``lstat`` of ``rel`` resolved inside ``dirfd``: no symlink on the way leaves it."""
    fd = openat2(dirfd, rel, os.O_PATH | os.O_NOFOLLOW)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _is_regular(root: _Root, rel: str) -> bool:
    """Whether ``rel`` of a mount is a regular file on the host (not following a final
    symlink), resolved inside the mount's host directory."""
    try:
        st = _lstat_in(root.fd, rel) if root.is_dir else os.lstat(root.host)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


class _BackgroundHash:
    """Feeds a hash object on a thread of its own (hashlib releases the GIL for big
    updates), at most two blocks behind the caller.

    (A deque and two semaphores rather than ``queue.SimpleQueue``: importing ``queue`` took
    ~1.5 ms of the prefetch thread at every start, holding the GIL while the sandbox is
    being built.)"""

    def __init__(self, h: Any) -> None:
        self._h = h
        self._todo: deque[bytes | None] = deque()
        self._ready = threading.Semaphore(0)  # blocks in _todo
        self._room = threading.Semaphore(2)  # blocks that may still be given
        self._thread = threading.Thread(target=self._run, name="geode-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._ready.acquire()
            block = self._todo.popleft()
            if block is None:
                return
            self._h.update(block)
            self._room.release()

    def update(self, block: bytes) -> None:
        self._room.acquire()
        self._todo.append(block)
        self._ready.release()

    def finish(self) -> None:
        """Wait until every block given is hashed."""
        self._todo.append(None)
        self._ready.release()
        self._thread.join()


def _shown_mode(node: Node, st: os.stat_result) -> int:
    """The mode the view shows for a host-backed node whose host attributes are ``st``: a
    trusted file is read-only, without set-id bits."""
    if node.policy is Policy.TRUSTED and node.kind is Kind.FILE:
        return st.st_mode & ~0o7222
    return st.st_mode


def _search_dirs(library_path: Sequence[str]) -> tuple[str, ...]:
    """The directories of an ``LD_LIBRARY_PATH`` the view follows: absolute ones only."""
    return tuple(d for d in library_path if d.startswith("/"))


def _runtime_picks(found: Sequence[str]) -> list[str]:
    """The ELF interpreter (first, as dependency lists name it) and ``libc.so.6`` of
    ``found``."""
    return [p for i, p in enumerate(found)
            if i == 0 and posixpath.basename(p).startswith("ld-") or
            posixpath.basename(p) == "libc.so.6"]


def _hash_fd(fd: int, size: int, *, keep: bool = False, parallel: bool = False,
             table: bool = True) -> tuple[str, bytes, list[bytes] | None]:
    """Whole-file SHA-256 (hex), chunk table (empty without ``table``) and (with ``keep``) the
    blocks read.

    Hashes the first ``size`` bytes of ``fd``; raises OSError(ENODATA) if the file is
    shorter. With ``parallel`` the whole-file hash runs on a helper thread while this one
    reads and computes the chunk hashes, halving the time of big files.
    """
    full = hashlib.sha256()
    chunks = bytearray()
    blocks: list[bytes] | None = [] if keep else None
    sha256 = hashlib.sha256
    background = _BackgroundHash(full) if parallel else None
    update = background.update if background is not None else full.update
    pos = 0
    try:
        while pos < size:
            n = min(HASH_BLOCK, size - pos)
            block = _pread_full(fd, n, pos)
            if len(block) != n:
                raise OSError(errno.ENODATA, "file shrank while it was verified")
            update(block)
            if table:
                mv = memoryview(block)
                for i in range(0, n, CHUNK_SIZE):
                    chunks += sha256(mv[i:i + CHUNK_SIZE]).digest()[:CHUNK_HASH_SIZE]
            if blocks is not None:
                blocks.append(block)
            pos += n
    finally:
        if background is not None:
            background.finish()
    return full.hexdigest(), bytes(chunks), blocks


# ------------------------------------------------------------------------------------------
# /dev/attestation (kept small and separate: the attestation issue extends it)
# ------------------------------------------------------------------------------------------


class PseudoHandle:
    """One open of a pseudo-file. Reads and writes are served by Python (direct I/O)."""

    def read(self, offset: int, size: int) -> bytes:
        raise fuse.FUSEError(errno.EACCES)

    def write(self, offset: int, data: bytes) -> int:
        raise fuse.FUSEError(errno.EACCES)

    def truncate(self, size: int) -> None:
        raise fuse.FUSEError(errno.EACCES)

    def release(self) -> None:
        return None


class PseudoFile:
    """A pseudo-file under ``/dev/attestation``; ``open`` gets the calling process's pid."""

    mode: int = 0o444

    def size(self) -> int:
        return 0

    def exists(self) -> bool:
        return True

    def open(self, pid: int, flags: int) -> PseudoHandle:
        raise fuse.FUSEError(errno.EACCES)


class _BytesHandle(PseudoHandle):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


class StaticPseudoFile(PseudoFile):
    """Read-only constant content (e.g. ``attestation_type``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def size(self) -> int:
        return len(self.data)

    def open(self, pid: int, flags: int) -> PseudoHandle:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise fuse.FUSEError(errno.EACCES)
        return _BytesHandle(self.data)


class _KeyHandle(PseudoHandle):
    def __init__(self, keys: dict[str, bytes], name: str) -> None:
        self.keys = keys
        self.name = name

    def read(self, offset: int, size: int) -> bytes:
        return self.keys.get(self.name, b"")[offset:offset + size]

    def write(self, offset: int, data: bytes) -> int:
        # Gramine: a key is exactly 16 bytes, anything else is EACCES.
        if offset != 0 or len(data) != KEY_SIZE:
            log.warning("refusing to set /dev/attestation/keys/%s: %d bytes at offset %d "
                        "(a key is %d bytes)", self.name, len(data), offset, KEY_SIZE)
            raise fuse.FUSEError(errno.EACCES)
        self.keys[self.name] = bytes(data)
        return len(data)

    def truncate(self, size: int) -> None:
        if size != 0:
            raise fuse.FUSEError(errno.EACCES)


class KeyFile(PseudoFile):
    """``/dev/attestation/keys/NAME``: 16 raw bytes, readable and writable.

    Names starting with ``_`` are special (the TEE's sealing keys): read-only, as in Gramine.
    """

    mode = 0o600

    def __init__(self, keys: dict[str, bytes], name: str) -> None:
        self.keys = keys
        self.name = name
        if name.startswith("_"):
            self.mode = 0o400

    def exists(self) -> bool:
        return self.name in self.keys

    def size(self) -> int:
        return len(self.keys.get(self.name, b""))

    def open(self, pid: int, flags: int) -> PseudoHandle:
        if flags & os.O_ACCMODE == os.O_RDONLY and self.name not in self.keys:
            raise fuse.FUSEError(errno.ENOENT)
        if flags & os.O_ACCMODE != os.O_RDONLY and self.name.startswith("_"):
            log.warning("refusing to write /dev/attestation/keys/%s: special keys are "
                        "read-only", self.name)
            raise fuse.FUSEError(errno.EACCES)
        return _KeyHandle(self.keys, self.name)


class AttestationDir:
    """State behind ``/dev/attestation``: ``files`` (name -> PseudoFile) and ``keys``."""

    def __init__(self, attestation_type: str, keys: dict[str, bytes]) -> None:
        self.keys = keys
        self.files: dict[str, PseudoFile] = {
            "attestation_type": StaticPseudoFile(attestation_type.encode()),
        }
        #: some file keeps state per calling process (the TEE backend's files): the
        #: supervisor must tell geode.runtime.attestation the sandbox's pid namespace
        self.per_process = False

    def key_file(self, name: str) -> KeyFile:
        return KeyFile(self.keys, name)


def _insecure_keys(manifest: Mapping[str, Any]) -> dict[str, bytes]:
    fs = manifest.get("fs", {})
    raw = fs.get("insecure__keys", {}) if isinstance(fs, Mapping) else {}
    if not isinstance(raw, Mapping):
        raise ManifestError("expected a table of NAME = \"32 hex digits\"",
                            where="fs.insecure__keys")
    keys: dict[str, bytes] = {}
    for name, value in raw.items():
        where = f"fs.insecure__keys.{name}"
        if not isinstance(value, str) or len(value) != 2 * KEY_SIZE:
            raise ManifestError(f"expected 32 hex digits, got {value!r}", where=where)
        try:
            keys[str(name)] = bytes.fromhex(value)
        except ValueError:
            raise ManifestError(f"expected 32 hex digits, got {value!r}", where=where) from None
        if "/" in str(name) or str(name) in ("", ".", ".."):
            raise ManifestError("not a valid key name", where=where)
    return keys


# ------------------------------------------------------------------------------------------
# nodes
# ------------------------------------------------------------------------------------------


# Policy and Kind are plain constants, not enum.IntEnum/enum.Enum: importing enum costs
# ~2 ms of every start. Their values are only ever taken from these classes (compared by
# identity where that is faster).


class Policy:
    """Policy of a host file (ints, ordered: for non-trusted nodes a higher value wins, for
    hard links)."""

    DENIED = 0
    LOGGED = 1
    ALLOWED = 2
    TRUSTED = 3
    ENCRYPTED = 4  # a file below an encrypted mount (see geode.runtime.encfs)


class Kind:
    """What a node is."""

    DIR = "dir"
    FILE = "file"
    LINK = "link"
    SPECIAL = "special"  # host FIFO or socket
    PSEUDO = "pseudo"  # /dev/attestation file
    PLACEHOLDER = "placeholder"  # /dev/null etc. before the launcher binds the device


# The records below are plain __slots__ classes, not dataclasses: creating a dataclass
# costs ~0.7 ms at import, and start-up time is what users of `geode run` feel.


class Node:
    """An entry of the view as the kernel knows it (by ``ino``)."""

    __slots__ = ("ino", "kind", "vpath", "key", "mount", "rel", "host", "policy", "sha",
                 "follow", "timeout", "permanent", "lookups", "parent", "role", "target",
                 "pseudo", "chunks", "vstat", "lock", "unsized", "handles", "listing",
                 "listing_expiry")

    mount: Mount | None  # host-backed if set
    role: str | None  # "attestation" or "keys" for those pseudo directories
    target: str | None  # virtual symlink target
    #: trusted: per-chunk hash table (built at verification, or for a file pushed into the
    #: page cache, at the first read that reaches the view)
    chunks: bytes | None
    #: trusted: attributes frozen at verification (set once it succeeded)
    vstat: os.stat_result | None
    lock: threading.Lock | None
    #: encrypted: the kernel was given this inode while its size was unknown (no key yet)
    unsized: bool
    handles: set[int]
    listing: _Listing | None

    def __init__(self, ino: int, kind: str, vpath: str, key: tuple[Any, ...], *,
                 mount: Mount | None = None, rel: str = "", host: str = "",
                 policy: int = Policy.ALLOWED, sha: str | None = None, follow: bool = False,
                 timeout: float = STABLE_TIMEOUT, permanent: bool = False,
                 parent: int = fuse.ROOT_INODE, role: str | None = None,
                 target: str | None = None, pseudo: PseudoFile | None = None) -> None:
        self.ino, self.kind, self.vpath, self.key = ino, kind, vpath, key
        self.mount, self.rel, self.host = mount, rel, host
        self.policy, self.sha, self.follow = policy, sha, follow
        self.timeout, self.permanent, self.lookups, self.parent = timeout, permanent, 0, parent
        self.role, self.target, self.pseudo = role, target, pseudo
        self.chunks = self.vstat = self.lock = None
        self.unsized = False
        self.handles = set()
        self.listing, self.listing_expiry = None, 0.0

    def __repr__(self) -> str:
        return f"Node({self.ino}, {self.kind}, {self.vpath!r})"


class _Prefetch:
    """A trusted file hashed ahead of its first open (see ViewFS.prefetch)."""

    __slots__ = ("st", "done", "digest", "blocks")

    def __init__(self, st: os.stat_result) -> None:
        self.st = st
        self.done = threading.Event()
        self.digest = ""
        self.blocks: list[bytes] | None = None


class _Handle:
    """An open file of the view (the FUSE file handle's state)."""

    __slots__ = ("node", "fd", "writable", "trusted", "pseudo", "enc")

    def __init__(self, node: Node, *, fd: int = -1, writable: bool = False,
                 trusted: bool = False, pseudo: PseudoHandle | None = None,
                 enc: encfs.EncFile | None = None) -> None:
        self.node, self.fd, self.writable, self.trusted = node, fd, writable, trusted
        self.pseudo, self.enc = pseudo, enc


class _VEntry(Record):
    kind: str  # mount | dir | opaque | placeholder | link | attestation
    mount: Mount | None = None
    target: str | None = None


class _Root:
    """A mount's host directory (or file), opened O_PATH."""

    __slots__ = ("fd", "is_dir", "host")

    def __init__(self, fd: int, is_dir: bool, host: str) -> None:
        self.fd, self.is_dir, self.host = fd, is_dir, host


class _Listing:
    """A directory's entries in readdir order: ascending cookies, one per entry.

    A cookie is the offset a listing resumes after (the kernel sends it back with the next
    READDIRPLUS), derived from the name alone: entries added or removed between two chunks
    of a listing shift no other entry, so every entry that stays is listed exactly once
    (POSIX), even though a listing has no per-open state. Cookies are a 30-bit hash of the
    name (this process's ``hash``), after 1 and 2 (``.`` and ``..``) and small enough for
    32-bit ``getdents``; a colliding name takes the next free value.
    """

    __slots__ = ("cookies", "entries")

    def __init__(self, entries: list[tuple[str, Any]]) -> None:
        ordered = sorted((3 + (hash(name) & 0x3FFF_FFFF), name, info)
                         for name, info in entries)
        self.cookies: list[int] = []
        self.entries: list[tuple[str, Any]] = []
        last = 2
        for cookie, name, info in ordered:
            last = cookie if cookie > last else last + 1
            self.cookies.append(last)
            self.entries.append((name, info))


def _file_key(dev: int, ino: int, sha: str | None) -> tuple[Any, ...]:
    """Node key of a host file below a chroot mount: one node per inode and trusted hash
    (a hard link listed with another hash is another file)."""
    return ("f", dev, ino, sha)


def _join_rel(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _join_host(host: str, rel: str) -> str:
    if not rel:
        return host
    return f"{host}/{rel}" if host != "/" else f"/{rel}"


def _join_view(vpath: str, name: str) -> str:
    return f"{vpath}/{name}" if vpath != "/" else f"/{name}"


if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])


def _op(fn: _F) -> _F:
    """Count the request and turn any failure into an errno for the program."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: ViewFS, *args: Any) -> Any:
        self.stats[name] += 1
        t0 = time.perf_counter_ns()
        try:
            return fn(self, *args)
        except fuse.FUSEError:
            raise
        except OSError as e:
            raise fuse.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", name)
            raise fuse.FUSEError(errno.EIO) from None
        finally:
            spent = time.perf_counter_ns() - t0
            self.busy_ns += spent
            self.op_ns[name] += spent

    return wrapper  # type: ignore[return-value]


def _fail(err: int) -> fuse.FUSEError:
    return fuse.FUSEError(err)


#: mode bits the view never shows or sets on encrypted files
_SET_ID = stat.S_ISUID | stat.S_ISGID
_HOST_OPEN_FLAGS = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC
#: mount types served from a host directory (or file)
_HOST_TYPES = ("chroot", "encrypted")


def _encrypted(mount: Mount | None) -> bool:
    return mount is not None and mount.type == "encrypted"


# ------------------------------------------------------------------------------------------
# the file system
# ------------------------------------------------------------------------------------------


class ViewFS(fuse.Operations):
    """FUSE operations of one view; see the module docstring."""

    def __init__(self, plan: ViewPlan, manifest: Mapping[str, Any], *,
                 owner: tuple[int, int] | None = None, tee: Any = None) -> None:
        super().__init__()
        self.plan = plan
        #: the TEE backend (geode.tee.TeeBackend) behind /dev/attestation; None: "none"
        self.tee = tee
        self.stats: Counter[str] = Counter()
        self.verified_bytes = 0
        #: wall time spent inside request handlers (including awaited hashing threads)
        self.busy_ns = 0
        #: handler time per operation
        self.op_ns: Counter[str] = Counter()
        #: push verified small files into the page cache (set False to measure without)
        self.store_verified = True
        self.owner = owner
        self._strict = plan.file_check_policy == "strict"
        self._trusted: Mapping[str, str] = plan.trusted_paths
        self._allowed: frozenset[str] = frozenset(str(p) for p in plan.allowed)
        # What a path strictly below an allowed path starts with (paths are normalized).
        self._allowed_below = tuple(p if p == "/" else p + "/" for p in self._allowed)
        self._start = time.time_ns()
        self._check_openat2()

        att_type = tee.attestation_type if tee is not None else "none"
        self.keys: dict[str, bytes] = _insecure_keys(manifest)
        self.attestation = AttestationDir(att_type, self.keys)
        if tee is not None and (tee.local_attestation or tee.has_quote):
            # the backend's files: geode.runtime.attestation
            from geode.runtime.attestation import add_files

            add_files(self.attestation, tee)

        self._roots: dict[int, _Root] = {}
        self._visible = plan.visible_mounts
        #: files below encrypted mounts; adds the TEE's sealing keys to ``keys`` and refuses
        #: (GeodeError) a mount whose sealing key the backend cannot derive
        self.enc = encfs.EncryptedFiles([m for m in self._visible if m.type == "encrypted"],
                                        self.keys, tee, self._enc_parent)
        for m in self._visible:
            if m.type in _HOST_TYPES and m.host is not None:
                self._open_root(m)

        self.interp_target = self._find_interp(manifest)
        self._vtree = self._build_vtree()

        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple[Any, ...], Node] = {}
        self._inos: dict[tuple[Any, ...], int] = {}
        self._next_ino = fuse.ROOT_INODE + 1
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        #: every connection serving this view handles requests under this lock
        self.lock = threading.Lock()
        #: encrypted mounts to serve on FUSE connections of their own, with the kernel's
        #: write-back cache (see serve_fd): those of a host directory with no mount below
        self.own_connections = tuple(
            m for m in self._visible
            if m.type == "encrypted" and m.path != "/" and m.index in self._roots
            and self._roots[m.index].is_dir
            and not any(o is not m and o.path.startswith(m.path + "/") for o in self._visible))
        #: indexes of the mounts being served with write-back caching
        self._writeback: set[int] = set()
        self._serving = 0  # connections serving the view (see serving())
        #: trusted files being or having been hashed ahead of their first open, by host inode
        self._prefetched: dict[tuple[int, int], _Prefetch] = {}
        self._make_root()

    def report(self) -> dict[str, float]:
        """Request counts per operation, their total, bytes verified and handler time."""
        stats: dict[str, float] = dict(self.stats)
        stats["total"] = sum(self.stats.values())
        stats["verified_bytes"] = self.verified_bytes
        stats["busy_ms"] = round(self.busy_ns / 1e6, 3)
        for name, ns in self.op_ns.items():
            stats[f"busy_ms.{name}"] = round(ns / 1e6, 3)
        return stats

    # ------------------------------------------------------------------ connection

    def _released(self) -> contextlib.AbstractContextManager[None]:
        """Let other requests run while this handler blocks (see fuse.Session.lock)."""
        session = fuse.current_session()
        if session is None:
            return contextlib.nullcontext()
        return session.released()

    @contextlib.contextmanager
    def _node_locked(self, lock: threading.Lock) -> Iterator[None]:
        """Hold a per-node lock; waiting for it lets other requests run."""
        if not lock.acquire(blocking=False):
            with self._released():
                lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _notify_store(self, ino: int, offset: int, data: bytes | memoryview) -> None:
        session = fuse.current_session()
        if session is None:
            raise OSError(errno.ENOSYS, "not served")
        session.notify_store(ino, offset, data)

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count a connection serving this view for the body; the last one to end writes
        back and closes the view's files."""
        with self.lock:
            self._serving += 1
        try:
            yield
        finally:
            with self.lock:
                self._serving -= 1
                last = self._serving == 0
            if last:
                self.close()

    def connection_root(self, path: str) -> int:
        """The inode a FUSE connection serving the view at ``path`` has as its root: the
        root, or the mount point of one of :attr:`own_connections` (then served with the
        kernel's write-back cache)."""
        if path == "/":
            return fuse.ROOT_INODE
        mount = next((m for m in self.own_connections if m.path == path), None)
        if mount is None:
            raise GeodeError("not a mount served on a connection of its own", where=path)
        with self.lock:
            node = self._get(fuse.ROOT_INODE)
            for name in path.strip("/").split("/"):
                found = self._child(node, name)
                if found is None or found[0].kind is not Kind.DIR:
                    raise GeodeError("mount point is not a directory in the view", where=path)
                node = found[0]
            node.permanent = True
            node.lookups += 1
            self._writeback.add(mount.index)
            return node.ino

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _check_openat2() -> None:
        try:
            os.close(openat2(-100, "/", os.O_PATH))  # AT_FDCWD
        except OSError as e:
            if e.errno == errno.ENOSYS:
                raise GeodeError("this kernel has no openat2(2) (Linux 5.6 or newer is needed "
                                 "to confine host paths)") from None
            raise

    def _open_root(self, m: Mount) -> None:
        assert m.host is not None
        host = str(m.host)
        try:
            fd = os.open(host, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            log.warning("%s: host path %s of mount %s is not accessible (%s); the mount "
                        "point is an empty directory", m.where, host, m.path, e.strerror)
            return
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            os.close(fd)
            log.warning("%s: host path %s is neither a directory nor a regular file; the "
                        "mount point is an empty directory", m.where, host)
            return
        self._roots[m.index] = _Root(fd=fd, is_dir=stat.S_ISDIR(st.st_mode), host=host)

    def close(self) -> None:
        """Write back encrypted files; close host descriptors (mount roots and open handles).
        Idempotent."""
        self._prefetched.clear()
        self.enc.close_all()
        for h in self._handles.values():
            if h.fd >= 0:
                os.close(h.fd)
                h.fd = -1
        self._handles.clear()
        for r in self._roots.values():
            if r.fd >= 0:
                os.close(r.fd)
                r.fd = -1
        self._roots.clear()

    def _exists_in_view(self, vpath: str, *, follow: bool) -> bool:
        """Best-effort existence check of a view path through the chroot mounts."""
        mount, rel = self.plan.resolve(vpath)
        root = self._roots.get(mount.index)
        if mount.type != "chroot" or root is None:
            return False
        if not root.is_dir:
            return rel == ""
        flags = os.O_PATH | (0 if follow else os.O_NOFOLLOW)
        try:
            os.close(openat2(root.fd, rel, flags))
        except OSError:
            return False
        return True

    def _find_interp(self, manifest: Mapping[str, Any]) -> str | None:
        paths = {m.path for m in self._visible if m.path != "/"}
        if "/lib" not in paths or "/lib64" in paths:
            return None
        if any(p.startswith("/lib64/") for p in paths):
            return None
        loader = manifest.get("loader", {})
        env = loader.get("env", {}) if isinstance(loader, Mapping) else {}
        llp: Any = env.get("LD_LIBRARY_PATH") if isinstance(env, Mapping) else None
        if isinstance(llp, Mapping):
            if llp.get("passthrough") is True:
                llp = os.environ.get("LD_LIBRARY_PATH")
            else:
                llp = llp.get("value")
        dirs = [d for d in llp.split(":") if d] if isinstance(llp, str) and llp else []
        if not dirs:
            dirs = ["/lib", "/lib64"]
        for d in dirs:
            candidate = normalize_view_path(posixpath.join(d, INTERP_NAME))
            if candidate == f"/lib64/{INTERP_NAME}":
                continue
            if self._exists_in_view(candidate, follow=True):
                return candidate
        log.debug("no %s found in %s; /lib64 is not synthesized", INTERP_NAME, dirs)
        return None

    def _build_vtree(self) -> dict[str, dict[str, _VEntry]]:
        tree: dict[str, dict[str, _VEntry]] = {}

        def put(path: str, ve: _VEntry, *, override: bool = True) -> None:
            parent, name = posixpath.split(path)
            d = tree.setdefault(parent, {})
            if override or name not in d:
                d[name] = ve

        def ancestors(path: str) -> None:
            chain = []
            p = posixpath.dirname(path)
            while p != "/":
                chain.append(p)
                p = posixpath.dirname(p)
            for a in reversed(chain):
                put(a, _VEntry("dir"), override=False)

        put("/proc", _VEntry("opaque"))
        put("/sys", _VEntry("opaque"))
        put("/dev", _VEntry("opaque"))
        for name in DEV_PLACEHOLDERS:
            put(f"/dev/{name}", _VEntry("placeholder"))
        for name in DEV_DIRS:
            put(f"/dev/{name}", _VEntry("opaque"))
        for name, target in DEV_LINKS.items():
            put(f"/dev/{name}", _VEntry("link", target=target))
        put("/dev/attestation", _VEntry("attestation"))
        if self.interp_target is not None:
            put("/lib64", _VEntry("dir"), override=False)
            put(f"/lib64/{INTERP_NAME}", _VEntry("link", target=self.interp_target))
        for m in self._visible:
            if m.path == "/":
                continue
            ancestors(m.path)
            put(m.path, _VEntry("mount", mount=m))
        return tree

    def _make_root(self) -> None:
        mount, _ = self.plan.resolve("/")
        root = self._roots.get(mount.index)
        if mount.type == "chroot" and root is not None and root.is_dir:
            st = os.fstat(root.fd)
            key: tuple[Any, ...] = ("d", mount.index, st.st_dev, st.st_ino)
        else:
            key = ("v", "/")
        self._inos[key] = fuse.ROOT_INODE
        node = self._dir_node(key, "/", mount if key[0] == "d" else None, "", fuse.ROOT_INODE)
        node.permanent = True
        node.lookups = 1

    # ------------------------------------------------------------------ policy

    def _is_allowed(self, host: str) -> bool:
        """Is the normalized absolute ``host`` an allowed path or below one?"""
        return host in self._allowed or host.startswith(self._allowed_below)

    def classify(self, host: str) -> tuple[int, str | None]:
        """Policy of a host path: allowed wins over trusted (Gramine), then the default."""
        if self._is_allowed(host):
            return Policy.ALLOWED, None
        sha = self._trusted.get(host)
        if sha is not None:
            return Policy.TRUSTED, sha
        return (Policy.DENIED if self._strict else Policy.LOGGED), None

    def _check_change(self, host: str, vpath: str, what: str,
                      mount: Mount | None = None) -> None:
        """May the program create/modify/delete ``host``? Raise EACCES if not.

        Everything below an encrypted mount may be changed (as in Gramine)."""
        if _encrypted(mount):
            return
        policy, _ = self.classify(host)
        if policy is Policy.ALLOWED:
            return
        if policy is Policy.TRUSTED:
            log.error("refusing to %s trusted file %s (host %s)", what, vpath, host)
            raise _fail(errno.EACCES)
        if policy is Policy.LOGGED:
            log.warning("allowing %s of %s (host %s), which is neither trusted nor allowed, "
                        "because of sgx.file_check_policy", what, vpath, host)
            return
        log.warning("refusing to %s %s (host %s): neither trusted nor allowed", what, vpath,
                    host)
        raise _fail(errno.EACCES)

    def _timeout_for(self, host: str) -> float:
        return VOLATILE_TIMEOUT if self._is_allowed(host) else STABLE_TIMEOUT

    # ------------------------------------------------------------------ node table

    def _ino_for(self, key: tuple[Any, ...]) -> int:
        ino = self._inos.get(key)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self._inos[key] = ino
        return ino

    def _register(self, node: Node) -> Node:
        self._nodes[node.ino] = node
        self._by_key[node.key] = node
        return node

    def _get(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise _fail(errno.ESTALE)
        return node

    def _dir_node(self, key: tuple[Any, ...], vpath: str, mount: Mount | None, rel: str,
                  parent: int) -> Node:
        node = self._by_key.get(key)
        host = _join_host(self._roots[mount.index].host, rel) if mount is not None else ""
        if node is None:
            node = self._register(Node(ino=self._ino_for(key), kind=Kind.DIR, vpath=vpath,
                                       key=key, mount=mount, rel=rel, host=host,
                                       parent=parent))
        else:
            node.vpath, node.rel, node.host, node.parent = vpath, rel, host, parent
        if _encrypted(mount):
            node.timeout = VOLATILE_TIMEOUT
        else:
            node.timeout = self._timeout_for(host) if mount is not None else STABLE_TIMEOUT
        return node

    def _virtual(self, key: tuple[Any, ...], kind: str, vpath: str, parent: int,
                 **kw: Any) -> Node:
        node = self._by_key.get(key)
        if node is None:
            node = self._register(Node(ino=self._ino_for(key), kind=kind, vpath=vpath, key=key,
                                       parent=parent, permanent=True, **kw))
        return node

    def _vnode(self, vpath: str, ve: _VEntry, parent: int) -> tuple[Node, os.stat_result | None]:
        if ve.kind == "mount":
            m = ve.mount
            assert m is not None
            root = self._roots.get(m.index)
            if m.type in _HOST_TYPES and root is not None:
                if root.is_dir:
                    st = os.fstat(root.fd)
                    return self._dir_node(("d", m.index, st.st_dev, st.st_ino), vpath, m, "",
                                          parent), st
                st = os.stat(root.host)
                found = self._file_node(m, "", vpath, st, parent, follow=False)
                return found, st
            return self._virtual(("v", vpath), Kind.DIR, vpath, parent), None
        if ve.kind == "dir":
            m, rel = self.plan.resolve(vpath)
            root = self._roots.get(m.index)
            if m.type in _HOST_TYPES and root is not None and root.is_dir:
                try:
                    st = _lstat_in(root.fd, rel)
                except OSError:
                    pass
                else:
                    if stat.S_ISDIR(st.st_mode):
                        return self._dir_node(("d", m.index, st.st_dev, st.st_ino), vpath, m,
                                              rel, parent), st
            return self._virtual(("v", vpath), Kind.DIR, vpath, parent), None
        if ve.kind == "opaque":
            return self._virtual(("v", vpath), Kind.DIR, vpath, parent), None
        if ve.kind == "placeholder":
            return self._virtual(("v", vpath), Kind.PLACEHOLDER, vpath, parent), None
        if ve.kind == "link":
            return self._virtual(("v", vpath), Kind.LINK, vpath, parent, target=ve.target), None
        if ve.kind == "attestation":
            return self._virtual(("v", vpath), Kind.DIR, vpath, parent,
                                 role="attestation"), None
        raise AssertionError(ve.kind)

    def _file_node(self, m: Mount, rel: str, vpath: str, st: os.stat_result, parent: int,
                   *, follow: bool) -> Node:
        host = _join_host(self._roots[m.index].host, rel)
        if m.type == "encrypted":
            return self._enc_node(m, rel, vpath, host, st, parent)
        policy, sha = self.classify(host)
        key = _file_key(st.st_dev, st.st_ino, sha)
        node = self._by_key.get(key)
        if node is None:
            node = self._register(Node(ino=self._ino_for(key), kind=Kind.FILE, vpath=vpath,
                                       key=key, mount=m, rel=rel, host=host, policy=policy,
                                       sha=sha, follow=follow, parent=parent))
        else:
            node.vpath, node.mount, node.rel, node.host = vpath, m, rel, host
            node.follow, node.parent = follow, parent
            if sha is None:
                node.policy = max(node.policy, policy)
        node.timeout = VOLATILE_TIMEOUT if policy is Policy.ALLOWED else STABLE_TIMEOUT
        return node

    def _enc_node(self, m: Mount, rel: str, vpath: str, host: str, st: os.stat_result,
                  parent: int) -> Node:
        """Node of a file below an encrypted mount (keyed per mount: one host file seen
        through two mounts is two files, each bound to its own path)."""
        key: tuple[Any, ...] = ("e", m.index, st.st_dev, st.st_ino)
        node = self._by_key.get(key)
        if node is None:
            node = self._register(Node(ino=self._ino_for(key), kind=Kind.FILE, vpath=vpath,
                                       key=key, mount=m, rel=rel, host=host,
                                       policy=Policy.ENCRYPTED, parent=parent))
        else:
            node.vpath, node.mount, node.rel, node.host = vpath, m, rel, host
            node.parent = parent
        node.timeout = VOLATILE_TIMEOUT
        return node

    def _enc_parent(self, m: Mount, rel: str) -> tuple[int, str]:
        """(O_PATH descriptor of the host directory holding ``rel`` of ``m``, its name)."""
        root = self._roots.get(m.index)
        if root is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), m.path)
        if not root.is_dir:
            if rel:
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), m.path)
            d, name = posixpath.split(root.host)
            return os.open(d or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), name
        if not rel:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), m.path)
        return self._parent_fd(m, rel), posixpath.basename(rel)

    def _host_node(self, m: Mount, rel: str, vpath: str, st: os.stat_result, parent: int,
                   dirfd: int | None = None) -> tuple[Node, os.stat_result] | None:
        """Node for a host entry whose lstat is ``st``; None if it must stay hidden."""
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return self._dir_node(("d", m.index, st.st_dev, st.st_ino), vpath, m, rel,
                                  parent), st
        if stat.S_ISREG(mode):
            return self._file_node(m, rel, vpath, st, parent, follow=False), st
        if m.type == "encrypted":
            return None  # Gramine: "not an encrypted file or directory"
        host = _join_host(self._roots[m.index].host, rel)
        if stat.S_ISLNK(mode):
            policy, sha = self.classify(host)
            if policy is Policy.TRUSTED:
                tst = self._stat_follow(m, rel, dirfd)
                if tst is not None and stat.S_ISREG(tst.st_mode):
                    return self._file_node(m, rel, vpath, tst, parent, follow=True), tst
            key: tuple[Any, ...] = ("l", st.st_dev, st.st_ino)
            node = self._by_key.get(key)
            if node is None:
                node = self._register(Node(ino=self._ino_for(key), kind=Kind.LINK,
                                           vpath=vpath, key=key, mount=m, rel=rel, host=host,
                                           parent=parent))
            else:
                node.vpath, node.mount, node.rel, node.host = vpath, m, rel, host
            node.timeout = self._timeout_for(host)
            return node, st
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            policy, _ = self.classify(host)
            if policy in (Policy.ALLOWED, Policy.LOGGED):
                key = ("s", st.st_dev, st.st_ino)
                node = self._by_key.get(key)
                if node is None:
                    node = self._register(Node(ino=self._ino_for(key), kind=Kind.SPECIAL,
                                               vpath=vpath, key=key, mount=m, rel=rel,
                                               host=host, policy=policy, parent=parent))
                else:
                    node.vpath, node.mount, node.rel, node.host = vpath, m, rel, host
                node.timeout = VOLATILE_TIMEOUT
                return node, st
        return None

    def _leads_to_file(self, m: Mount, root: _Root, rel: str) -> bool:
        """Whether ``rel`` of a chroot mount is a regular file on the host, or a symlink to
        one (which the view serves as that file when it is trusted)."""
        if _is_regular(root, rel):
            return True
        st = self._stat_follow(m, rel, None) if root.is_dir else None
        return st is not None and stat.S_ISREG(st.st_mode)

    def _stat_follow(self, m: Mount, rel: str, dirfd: int | None) -> os.stat_result | None:
        """stat() following the final symlink on the host (trusted links only)."""
        try:
            if dirfd is not None:
                return os.stat(posixpath.basename(rel), dir_fd=dirfd)
            pfd = self._parent_fd(m, rel)
            try:
                return os.stat(posixpath.basename(rel), dir_fd=pfd)
            finally:
                os.close(pfd)
        except OSError:
            return None

    def _parent_fd(self, m: Mount, rel: str) -> int:
        root = self._roots[m.index]
        return openat2(root.fd, posixpath.dirname(rel), os.O_PATH | os.O_DIRECTORY)

    def _dir_fd(self, node: Node) -> int:
        """O_PATH descriptor of a host-backed directory node."""
        if node.mount is None or node.kind is not Kind.DIR:
            raise _fail(errno.EACCES)
        root = self._roots.get(node.mount.index)
        if root is None or not root.is_dir:
            raise _fail(errno.EACCES)
        return openat2(root.fd, node.rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)

    # ------------------------------------------------------------------ attributes

    def _stat(self, node: Node) -> os.stat_result | None:
        """Current host attributes of a host-backed node (None for virtual nodes)."""
        if node.vstat is not None:
            return node.vstat
        for fh in node.handles:
            h = self._handles.get(fh)
            if h is not None and h.fd >= 0:
                return os.fstat(h.fd)
            if h is not None and h.enc is not None and h.enc.fd >= 0:
                return os.fstat(h.enc.fd)
        if node.mount is None:
            return None
        root = self._roots[node.mount.index]
        if not root.is_dir:
            return os.stat(root.host)
        if node.follow:
            st = self._stat_follow(node.mount, node.rel, None)
            if st is None:
                raise _fail(errno.ENOENT)
            return st
        return _lstat_in(root.fd, node.rel)

    def _encrypted_attr(self, node: Node, st: os.stat_result,
                        a: fuse.EntryAttributes) -> None:
        """Plaintext size; while the file is open, the modification time it had when opened
        (the kernel drops the page cache of a file whose time changes; see encfs).

        No set-user-ID or set-group-ID bits: the view never sets them on an encrypted file
        and hides any the host set, so it has none to clear when the file is written,
        truncated or chowned (what ``FUSE_HANDLE_KILLPRIV_V2`` promises the kernel).
        """
        assert node.mount is not None
        a.st_mode &= ~_SET_ID
        size = self.enc.plain_size(node.mount, node.rel, st)
        if size is None:  # key not set yet, or not authentic: ask again next time
            a.st_size = 0
            a.attr_timeout = a.entry_timeout = 0
            node.unsized = True
        else:
            a.st_size = size
        mtime = self.enc.open_mtime(node.mount, st)
        if mtime is not None:
            a.st_mtime_ns = mtime
        if node.mount.index in self._writeback:
            # Whole seconds, the granularity the kernel keeps these files' times in on that
            # connection (OWN_CONNECTION_TIME_GRAN): writes within the second a file was
            # created or last changed then leave its times clean (no SETATTR to flush them).
            a.st_atime_ns -= a.st_atime_ns % 1_000_000_000
            a.st_mtime_ns -= a.st_mtime_ns % 1_000_000_000
            a.st_ctime_ns -= a.st_ctime_ns % 1_000_000_000

    def _attr(self, node: Node, st: os.stat_result | None = None) -> fuse.EntryAttributes:
        a = fuse.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = node.timeout
        a.attr_timeout = node.timeout
        if node.vstat is not None:
            st = node.vstat
        elif st is None and node.mount is not None:
            st = self._stat(node)
        if st is not None:
            a.st_mode = _shown_mode(node, st)
            a.st_nlink = st.st_nlink
            a.st_uid, a.st_gid = self.owner if self.owner else (st.st_uid, st.st_gid)
            a.st_size = st.st_size
            a.st_blksize = st.st_blksize
            a.st_blocks = st.st_blocks
            a.st_atime_ns = st.st_atime_ns
            a.st_mtime_ns = st.st_mtime_ns
            a.st_ctime_ns = st.st_ctime_ns
            if node.policy is Policy.ENCRYPTED and node.kind is Kind.FILE:
                self._encrypted_attr(node, st, a)
            a.st_rdev = 0
            return a
        # virtual node
        if node.kind is Kind.DIR:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
        elif node.kind is Kind.LINK:
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_nlink = 1
            a.st_size = len(os.fsencode(node.target or ""))
        elif node.kind is Kind.PLACEHOLDER:
            a.st_mode = stat.S_IFREG | 0o666
            a.st_nlink = 1
        elif node.kind is Kind.PSEUDO:
            assert node.pseudo is not None
            a.st_mode = stat.S_IFREG | node.pseudo.mode
            a.st_nlink = 1
            a.st_size = node.pseudo.size()
        uid, gid = self.owner if self.owner else (os.getuid(), os.getgid())
        a.st_uid, a.st_gid = uid, gid
        a.st_blksize = 4096
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._start
        return a

    # ------------------------------------------------------------------ lookup

    def _child(self, parent: Node, name: str) -> tuple[Node, os.stat_result | None] | None:
        if name in (".", "..") or "/" in name or "\0" in name:
            return None
        if parent.role == "attestation":
            if name == "keys":
                return self._virtual(("v", "/dev/attestation/keys"), Kind.DIR,
                                     "/dev/attestation/keys", parent.ino, role="keys",
                                     timeout=0.0), None
            pf = self.attestation.files.get(name)
            if pf is None:
                return None
            return self._virtual(("att", name), Kind.PSEUDO, _join_view(parent.vpath, name),
                                 parent.ino, pseudo=pf, timeout=0.0), None
        if parent.role == "keys":
            if name not in self.keys:
                return None
            return self._key_node(name, parent.ino), None
        vpath = _join_view(parent.vpath, name)
        ve = self._vtree.get(parent.vpath, {}).get(name)
        if ve is not None:
            return self._vnode(vpath, ve, parent.ino)
        if parent.mount is None:
            return None
        if _encrypted(parent.mount) and name.endswith(encfs.RECOVERY_SUFFIX):
            return None  # recovery journals are the view's own business
        root = self._roots[parent.mount.index]
        rel = _join_rel(parent.rel, name)
        try:
            st = _lstat_in(root.fd, rel)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        found = self._host_node(parent.mount, rel, vpath, st, parent.ino)
        if found is None:
            log.warning("hiding %s (host %s): special files are not passed through", vpath,
                        _join_host(root.host, rel))
            raise _fail(errno.EACCES)
        return found

    def _key_node(self, name: str, parent: int) -> Node:
        return self._virtual(("key", name), Kind.PSEUDO, f"/dev/attestation/keys/{name}",
                             parent, pseudo=self.attestation.key_file(name), timeout=0.0)

    @_op
    def lookup(self, parent_inode: fuse.InodeT, name: bytes,
               ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        parent = self._get(parent_inode)
        if parent.kind is not Kind.DIR:
            raise _fail(errno.ENOTDIR)
        found = self._child(parent, os.fsdecode(name))
        if found is None:
            if parent.role is not None:
                raise _fail(errno.ENOENT)  # not cached: keys come and go
            neg = fuse.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = parent.timeout
            return neg
        node, attr = self._entry_attr(*found)
        node.lookups += 1
        return attr

    def _entry_attr(self, node: Node, st: os.stat_result | None
                    ) -> tuple[Node, fuse.EntryAttributes]:
        """Attributes for a new reference of the kernel to ``node`` (lookup, readdirplus).

        With the write-back cache the kernel keeps the size an inode had when it first saw
        it: an encrypted file it saw before its key was known gets a new inode number once
        its size is known (a path walk then drops the old dentry)."""
        if node.unsized and node.mount is not None and node.mount.index in self._writeback:
            if st is None:
                st = self._stat(node)
            if st is not None and self.enc.plain_size(node.mount, node.rel, st) is not None:
                node = self._renumber(node)
        return node, self._attr(node, st)

    def _renumber(self, node: Node) -> Node:
        """A new node (and inode number) for ``node``'s file; the old one stays until the
        kernel forgets it."""
        ino = self._next_ino
        self._next_ino += 1
        self._inos[node.key] = ino
        return self._register(Node(ino=ino, kind=node.kind, vpath=node.vpath, key=node.key,
                                   mount=node.mount, rel=node.rel, host=node.host,
                                   policy=node.policy, timeout=node.timeout,
                                   parent=node.parent))

    def forget(self, inode_list: Sequence[tuple[fuse.InodeT, int]]) -> None:
        self.stats["forget"] += 1
        try:
            for ino, count in inode_list:
                node = self._nodes.get(ino)
                if node is None:
                    continue
                node.lookups -= count
                if node.lookups <= 0 and not node.permanent and not node.handles:
                    del self._nodes[ino]
                    if self._by_key.get(node.key) is node:
                        del self._by_key[node.key]
        except Exception:  # forget must not raise
            log.exception("internal error in forget")

    @_op
    def getattr(self, inode: fuse.InodeT,
                ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        return self._attr(self._get(inode))

    @_op
    def readlink(self, inode: fuse.InodeT, ctx: fuse.RequestContext) -> bytes:
        node = self._get(inode)
        if node.kind is not Kind.LINK:
            raise _fail(errno.EINVAL)
        if node.mount is None:
            return os.fsencode(node.target or "")
        root = self._roots[node.mount.index]
        fd = openat2(root.fd, node.rel, os.O_PATH | os.O_NOFOLLOW)
        try:
            return os.fsencode(os.readlink("", dir_fd=fd))
        finally:
            os.close(fd)

    @_op
    def access(self, inode: fuse.InodeT, mode: int,
               ctx: fuse.RequestContext) -> bool:
        node = self._get(inode)
        if node.kind is Kind.FILE:
            if node.policy is Policy.ENCRYPTED:
                return True
            if node.policy is Policy.TRUSTED:
                return not mode & os.W_OK
            return node.policy is not Policy.DENIED or mode == os.F_OK
        if node.kind is Kind.DIR and mode & os.W_OK:
            if node.role == "keys":
                return True
            return node.mount is not None and (_encrypted(node.mount) or
                self.classify(node.host)[0] in (Policy.ALLOWED, Policy.LOGGED))
        if node.kind is Kind.PSEUDO and mode & os.W_OK:
            assert node.pseudo is not None
            return bool(node.pseudo.mode & 0o200)
        return True

    # ------------------------------------------------------------------ directories

    def _listing(self, node: Node) -> _Listing:
        """Names in a directory: (name, _VEntry | "host" | "keys" | "att" | "key"), in
        readdir order.

        Only names are cached (for the directory's timeout, dropped on changes made through
        the view): attributes are read fresh when entries are returned, because readdirplus
        attributes overwrite the kernel's cached ones.
        """
        now = time.monotonic()
        if node.listing is not None and now < node.listing_expiry:
            return node.listing
        entries: list[tuple[str, Any]] = []
        if node.role == "attestation":
            entries.append(("keys", "keys"))
            entries.extend((name, "att") for name in self.attestation.files)
        elif node.role == "keys":
            entries.extend((name, "key") for name in self.keys)
        else:
            virtual = self._vtree.get(node.vpath, {})
            entries.extend(virtual.items())
            if node.mount is not None:
                root = self._roots[node.mount.index]
                fd = openat2(root.fd, node.rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                hide = encfs.RECOVERY_SUFFIX if _encrypted(node.mount) else None
                try:
                    with os.scandir(fd) as it:
                        entries.extend((e.name, "host") for e in it if e.name not in virtual
                                       and not (hide and e.name.endswith(hide)))
                finally:
                    os.close(fd)
        listing = _Listing(entries)
        if node.role is None:
            node.listing = listing
            node.listing_expiry = now + node.timeout
        return listing

    def _materialize_virtual(self, parent: Node, name: str, info: Any
                             ) -> tuple[Node, os.stat_result | None] | None:
        """The node of a listed entry that is not a host entry (readdir does those)."""
        if isinstance(info, _VEntry):
            return self._vnode(_join_view(parent.vpath, name), info, parent.ino)
        if info == "keys" or info == "att":
            return self._child(parent, name)
        assert info == "key", info
        if name not in self.keys:
            return None
        return self._key_node(name, parent.ino), None

    # No opendir/releasedir: the kernel opens directories without a message (see
    # geode.runtime.fuse), so a listing has no per-open state and resumes by cookie.
    @_op
    def readdir(self, inode: fuse.InodeT, fh: int, start_id: int,
                token: fuse.ReaddirToken) -> None:
        node = self._get(inode)
        if node.kind is not Kind.DIR:
            raise _fail(errno.ENOTDIR)
        listing = self._listing(node)
        if start_id == 0:
            if not fuse.readdir_reply(token, b".", self._attr(node), 1):
                return
            start_id = 1
        if start_id == 1:
            parent = self._nodes.get(node.parent, node)
            if not fuse.readdir_reply(token, b"..", self._attr(parent), 2):
                return
        cookies, entries = listing.cookies, listing.entries
        dirfd_cache: list[int] = []
        mount, rel, vpath, ino = node.mount, node.rel, node.vpath, node.ino
        owner = self.owner
        found: tuple[Node, os.stat_result | None] | None
        try:
            for i in range(bisect.bisect_right(cookies, start_id), len(entries)):
                name, info = entries[i]
                try:
                    if info == "host":  # most entries, so with no call in between
                        assert mount is not None
                        if not dirfd_cache:
                            dirfd_cache.append(self._dir_fd(node))
                        st = os.stat(name, dir_fd=dirfd_cache[0], follow_symlinks=False)
                        found = self._host_node(mount, _join_rel(rel, name),
                                                _join_view(vpath, name), st, ino,
                                                dirfd_cache[0])
                    else:
                        found = self._materialize_virtual(node, name, info)
                except OSError:
                    continue
                if found is None:
                    continue
                child, st = found
                if st is not None and child.vstat is None and child.policy < Policy.ENCRYPTED:
                    # (most entries: _attr's result, packed straight from the stat)
                    uid, gid = owner if owner else (st.st_uid, st.st_gid)
                    if not fuse.readdir_stat_reply(token, os.fsencode(name), cookies[i],
                                                   child.ino, child.timeout, st,
                                                   _shown_mode(child, st), uid, gid):
                        break
                    child.lookups += 1
                    continue
                try:
                    child, attr = self._entry_attr(*found)
                except (OSError, fuse.FUSEError):
                    continue
                if not fuse.readdir_reply(token, os.fsencode(name), attr, cookies[i]):
                    break
                child.lookups += 1
        finally:
            for fd in dirfd_cache:
                os.close(fd)

    # ------------------------------------------------------------------ open / read / write

    def _open_host(self, node: Node, flags: int, mode: int = 0) -> int:
        """Open the host file of a FILE node; refuses anything but a regular file."""
        assert node.mount is not None
        return self._open_host_at(node.mount, node.rel, flags, follow=node.follow, mode=mode)

    def _open_host_at(self, mount: Mount, rel: str, flags: int, *, follow: bool = False,
                      mode: int = 0) -> int:
        """Open ``rel`` of ``mount`` on the host, confined to it; refuses anything but a
        regular file.

        O_NONBLOCK (meaningless for regular files) keeps a FIFO swapped in by the host
        from blocking the file system.
        """
        root = self._roots[mount.index]
        flags |= os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        if not root.is_dir:
            fd = os.open(root.host, flags)
        elif follow:
            pfd = self._parent_fd(mount, rel)
            try:
                fd = os.open(posixpath.basename(rel), flags, dir_fd=pfd)
            finally:
                os.close(pfd)
        else:
            fd = openat2(root.fd, rel, flags | os.O_NOFOLLOW, mode)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _fail(errno.EACCES)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _new_handle(self, h: _Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        h.node.handles.add(fh)
        return fh

    def prefetch(self, vpath: str, library_path: Sequence[str] = (),
                 exclude: Collection[str] = ()) -> None:
        """Start hashing, on a thread of its own, the trusted file at ``vpath`` (the entry
        point, which execve opens first) and, transitively, the ELF interpreter and libraries
        it needs, so that the program's first opens find them verified; called while the
        sandbox is being built. Files are hashed in the order ld.so opens them.

        A needed library is looked for as ld.so looks: in DT_RPATH (of an object without
        DT_RUNPATH), ``library_path`` (the program's ``LD_LIBRARY_PATH``), DT_RUNPATH, then
        :data:`SYSTEM_LIBRARY_DIRS`; the first view path that is a trusted regular file, or a
        trusted symlink to one (a soname), is taken. ld.so's cache and hwcaps subdirectories
        are not consulted: a guess that misses costs hashing, nothing else. The dependency
        lists are read from the host files unverified, as they only choose what to hash.

        Only regular trusted files up to :data:`STORE_MAX` are read, and only what was hashed
        is ever served: a first open uses a result if the host file it opens is the same
        inode, unchanged since (size and times), else it hashes the file itself. Paths in
        ``exclude`` (files the program reads elsewhere) are neither hashed nor followed."""
        first = self._prefetch_job(vpath)
        if first is None:
            return
        search = _search_dirs(library_path)

        def run() -> None:
            todo = deque([(vpath, *first)])
            mine = []
            while todo:
                path, fd, job = todo.popleft()
                mine.append(job)
                try:
                    if path in exclude:  # (since it was queued: hashed where it is read)
                        continue
                    # The dependencies are queued before the file is hashed: an open that
                    # comes first then waits for its turn instead of hashing in parallel.
                    for dep in self._needed_libraries(fd, search):
                        if dep in exclude:
                            continue
                        queued = self._prefetch_job(dep)
                        if queued is not None:
                            todo.append((dep, *queued))
                    job.digest, _, job.blocks = _hash_fd(
                        fd, job.st.st_size, keep=True, table=False,
                        parallel=job.st.st_size >= PARALLEL_HASH_MIN)
                except OSError:
                    job.digest, job.blocks = "", None
                finally:
                    os.close(fd)
                    job.done.set()
            # A result no open has taken by now (a library ld.so found elsewhere) only holds
            # memory: drop it. Its file, if opened later, is hashed by that open.
            time.sleep(PREFETCH_KEEP)
            with self.lock:
                for job in mine:
                    ident = (job.st.st_dev, job.st.st_ino)
                    if self._prefetched.get(ident) is job:
                        del self._prefetched[ident]

        threading.Thread(target=run, name="geode-prefetch", daemon=True).start()

    def libraries(self, vpath: str, library_path: Sequence[str] = ()) -> list[str]:
        """View paths of the ELF interpreter and, transitively, the libraries the trusted
        file at ``vpath`` needs, found as :meth:`prefetch` finds them, that are trusted
        regular files of at most :data:`STORE_MAX` bytes; in the order ld.so loads them.
        Read from the host files unverified: the list only chooses which files PID 1 serves
        from the sandbox's memory (which it reads through the view, verified)."""
        search = _search_dirs(library_path)
        seen, todo, found = {vpath}, deque([vpath]), []
        while todo:
            path = todo.popleft()
            opened = self._open_trusted(path)
            if opened is None:
                continue
            fd = opened[0]
            try:
                if path != vpath:
                    if os.fstat(fd).st_size > STORE_MAX:
                        continue
                    found.append(path)
                for dep in self._needed_libraries(fd, search):
                    if dep not in seen:
                        seen.add(dep)
                        todo.append(dep)
            finally:
                os.close(fd)
        return found

    def runtime_libraries(self, vpath: str, library_path: Sequence[str] = ()) -> list[str]:
        """Of :meth:`libraries`, those every dynamically linked program loads: the ELF
        interpreter and the C library (``libc.so.6``). The rest serve only the entry point,
        which is started once. Looked for among the entry point's own needs first, where
        nearly every program names the C library (no other library is opened then)."""
        opened = self._open_trusted(vpath)
        if opened is None:
            return []
        try:
            direct = self._needed_libraries(
                opened[0], _search_dirs(library_path))
        finally:
            os.close(opened[0])
        picked = _runtime_picks(direct)
        if picked and posixpath.basename(picked[-1]) == "libc.so.6":
            return picked
        return _runtime_picks(self.libraries(vpath, library_path))

    def verified_copies(self, vpaths: Iterable[str]) -> tuple[list[str], list[int]]:
        """:meth:`verified_copy` of each of ``vpaths``: those it made, and their memfds."""
        paths: list[str] = []
        memfds: list[int] = []
        for vpath in vpaths:
            memfd = self.verified_copy(vpath)
            if memfd is not None:
                paths.append(vpath)
                memfds.append(memfd)
        return paths, memfds

    def verified_copy(self, vpath: str) -> int | None:
        """A sealed memfd holding the bytes of the trusted file at ``vpath``, read and hashed
        once (by the prefetch, if it came to this very file first, see :meth:`prefetch`) and
        matched against the manifest (for PID 1 to serve it from the sandbox's
        memory, see :func:`geode.runtime.sandbox._promote`); None if it is no such file, is
        bigger than :data:`STORE_MAX`, or does not match (the view then answers the program's
        own open of it, and reports a mismatch there)."""
        opened = self._open_trusted(vpath)
        if opened is None:
            return None
        fd, sha = opened
        try:
            st = os.fstat(fd)
            size = st.st_size
            if size > STORE_MAX:
                return None
            # (the prefetch's result, if it hashed this very file first: once is enough)
            taken = self._take_prefetched(st)
            if taken is not None:
                digest, blocks = taken
            else:
                digest, _, blocks = _hash_fd(fd, size, keep=True, table=False)
        except OSError:
            return None
        finally:
            os.close(fd)
        if digest != sha or blocks is None:
            return None
        memfd = os.memfd_create("geode-verified", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            for block in blocks:
                view = memoryview(block)
                while view:
                    view = view[os.write(memfd, view):]
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        except OSError:
            os.close(memfd)
            return None
        self.verified_bytes += size
        return memfd

    def _open_trusted(self, vpath: str) -> tuple[int, str] | None:
        """The host file of the trusted file the manifest puts at ``vpath`` (opened read-only,
        confined to its mount) and its sha256; None for any other path or an unopenable
        file."""
        trusted = self._trusted_at(vpath)
        if trusted is None:
            return None
        mount, _, rel, sha = trusted
        # (a trusted symlink is served as the file it leads to, see _host_node: sonames
        # such as libz.so.1 are links)
        for follow in (False, True):
            try:
                return self._open_host_at(mount, rel, os.O_RDONLY, follow=follow), sha
            except (OSError, fuse.FUSEError):
                pass
        return None

    def _prefetch_job(self, vpath: str) -> tuple[int, _Prefetch] | None:
        """Open and register for prefetching the trusted file at ``vpath``; None if it is no
        such file, too big to keep, or already verified or registered."""
        opened = self._open_trusted(vpath) if self.store_verified else None
        if opened is None:
            return None
        fd, sha = opened
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        with self.lock:
            node = self._by_key.get(_file_key(*ident, sha))
            if st.st_size > STORE_MAX or ident in self._prefetched or (
                    node is not None and node.vstat is not None):
                os.close(fd)
                return None
            job = self._prefetched[ident] = _Prefetch(st)
        return fd, job

    def _needed_libraries(self, fd: int, search: tuple[str, ...]) -> list[str]:
        """View paths of the interpreter and libraries the ELF file ``fd`` asks for, where
        they are trusted files (see :meth:`prefetch`); empty for anything but ELF."""
        try:
            deps = elf.dependencies(lambda offset, size: os.pread(fd, size, offset))
        except (elf.ElfError, OSError):
            return []
        found = []
        if deps.interp and deps.interp.startswith("/"):
            found.append(self._through_virtual_link(deps.interp))
        dirs = (() if deps.runpath else deps.rpath) + search + deps.runpath + \
            SYSTEM_LIBRARY_DIRS
        for name in deps.needed:
            if "/" in name:
                if name.startswith("/"):
                    found.append(name)
                continue
            for d in dirs:
                if "$" in d or not d.startswith("/"):
                    continue  # $ORIGIN and friends, relative entries: not guessed
                vpath = normalize_view_path(f"{d}/{name}")
                trusted = self._trusted_at(vpath)
                if trusted is not None and self._leads_to_file(*trusted[:3]):
                    found.append(vpath)
                    break
        return found

    def _trusted_at(self, vpath: str) -> tuple[Mount, _Root, str, str] | None:
        """(mount, its host root, path in it, sha256) of the trusted file the manifest puts
        at ``vpath`` below a chroot mount; None for any other path."""
        mount, rel = self.plan.resolve(vpath)
        root = self._roots.get(mount.index)
        if mount.type != "chroot" or root is None:
            return None
        policy, sha = self.classify(_join_host(root.host, rel) if root.is_dir else root.host)
        if policy is not Policy.TRUSTED or sha is None:
            return None
        return mount, root, rel, sha

    def _through_virtual_link(self, vpath: str) -> str:
        """``vpath``, or where it leads if it is one of the view's own symlinks (Gramine's
        ``/lib64/ld-linux-x86-64.so.2``, see :meth:`_find_interp`)."""
        parent, name = posixpath.split(vpath)
        ve = self._vtree.get(parent, {}).get(name)
        if ve is None or ve.kind != "link" or ve.target is None:
            return vpath
        return normalize_view_path(posixpath.join(parent, ve.target))

    def _take_prefetched(self, st: os.stat_result) -> tuple[str, list[bytes]] | None:
        """The digest and verified bytes the prefetch made of the host file whose attributes
        are ``st``, if it is that very file, unchanged; taken (the prefetch thread keeps the
        job a while longer, without them)."""
        job = self._prefetched.pop((st.st_dev, st.st_ino), None) if self._prefetched else None
        if job is None:
            return None
        if not job.done.is_set():
            with self._released():
                job.done.wait()
        same = (job.st.st_size, job.st.st_mtime_ns, job.st.st_ctime_ns) == \
            (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        blocks, job.blocks = job.blocks, None
        return (job.digest, blocks) if same and blocks is not None else None

    def _verify(self, node: Node, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(errno.EACCES)
        size = st.st_size
        keep = self.store_verified and size <= STORE_MAX
        taken = self._take_prefetched(st)
        try:
            if taken is not None:  # (its bytes go into the page cache, as a kept file's)
                keep, table = True, b""
                digest, blocks = taken
            elif size >= THREAD_HASH_MIN:
                # a big file: other requests are served while it is hashed
                with self._released():
                    digest, table, blocks = _hash_fd(fd, size, keep=keep, table=not keep,
                                                     parallel=size >= PARALLEL_HASH_MIN)
            else:
                # A file pushed into the page cache is read from the host again only if the
                # kernel drops its pages; its chunk table waits until then (one pass now).
                digest, table, blocks = _hash_fd(fd, size, keep=keep, table=not keep)
        except OSError as e:
            log.error("cannot verify trusted file %s (host %s): %s", node.vpath, node.host,
                      e.strerror)
            raise _fail(errno.EACCES) from None
        self.verified_bytes += size
        if digest != node.sha:
            log.error("trusted file %s (host %s) does not match its sha256 in the manifest; "
                      "access denied", node.vpath, node.host)
            raise _fail(errno.EACCES)
        node.chunks = None if keep else table
        node.vstat = st
        log.debug("verified trusted file %s (%d bytes)", node.vpath, size)
        if blocks:
            # Only now, after the whole file matched, hand the very bytes that were hashed
            # to the kernel page cache.
            try:
                off = 0
                for block in blocks:
                    self._notify_store(node.ino, off, block)
                    off += len(block)
            except OSError as e:
                log.debug("notify_store of %s failed (%s); reads will be served and "
                          "re-verified by chunk", node.vpath, e.strerror)
                if e.errno == errno.ENOSYS:
                    self.store_verified = False

    @_op
    def open(self, inode: fuse.InodeT, flags: int,
             ctx: fuse.RequestContext) -> fuse.FileInfo:
        node = self._get(inode)
        acc = flags & os.O_ACCMODE
        if node.kind is Kind.PSEUDO:
            assert node.pseudo is not None
            ph = node.pseudo.open(ctx.pid, flags)
            if flags & os.O_TRUNC:
                ph.truncate(0)
            fh = self._new_handle(_Handle(node=node, pseudo=ph))
            return fuse.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if node.kind is Kind.PLACEHOLDER:
            raise _fail(errno.ENXIO)
        if node.kind is not Kind.FILE:
            raise _fail(errno.EACCES)
        if node.policy is Policy.ENCRYPTED:
            return self._open_encrypted(node, flags)
        if node.policy is Policy.TRUSTED:
            if acc != os.O_RDONLY or flags & os.O_TRUNC:
                log.error("refusing to open trusted file %s (host %s) for writing", node.vpath,
                          node.host)
                raise _fail(errno.EACCES)
            if node.vstat is not None:
                # Verified before: its pages are in the kernel's cache, so most opens (every
                # exec of a binary, every load of a library) never read. The host file is
                # opened by the first read that reaches the view.
                fh = self._new_handle(_Handle(node=node, trusted=True))
                return fuse.FileInfo(fh=fh, keep_cache=True, direct_io=False)
            fd = self._open_host(node, os.O_RDONLY)
            try:
                if node.vstat is None:
                    if node.lock is None:
                        node.lock = threading.Lock()
                    with self._node_locked(node.lock):
                        if node.vstat is None:
                            self._verify(node, fd)
            except BaseException:
                os.close(fd)
                raise
            fh = self._new_handle(_Handle(node=node, fd=fd, trusted=True))
            return fuse.FileInfo(fh=fh, keep_cache=True, direct_io=False)
        if node.policy is Policy.DENIED:
            # re-check: the file may have become allowed through another name
            policy, _ = self.classify(node.host)
            if policy is Policy.DENIED:
                log.warning("refusing to open %s (host %s): neither trusted nor allowed",
                            node.vpath, node.host)
                raise _fail(errno.EACCES)
        elif node.policy is Policy.LOGGED:
            log.warning("allowing access to %s (host %s), which is neither trusted nor "
                        "allowed, because of sgx.file_check_policy", node.vpath, node.host)
        fd = self._open_host(node, flags & _HOST_OPEN_FLAGS)
        fh = self._new_handle(_Handle(node=node, fd=fd, writable=acc != os.O_RDONLY))
        if flags & os.O_TRUNC and node.parent in self._nodes:
            self._nodes[node.parent].listing = None
        return fuse.FileInfo(fh=fh, keep_cache=False, direct_io=False)

    def _enc_ident(self, node: Node) -> tuple[int, int]:
        return node.key[2], node.key[3]

    def _open_encrypted(self, node: Node, flags: int) -> fuse.FileInfo:
        assert node.mount is not None
        ef, fresh = self.enc.acquire(node.mount, node.rel, node.vpath,
                                     expect=self._enc_ident(node))
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        try:
            if writable and not ef.writable:
                log.warning("refusing to open encrypted file %s for writing: its host file "
                            "%s is read-only", node.vpath, node.host)
                raise _fail(errno.EACCES)
            if flags & os.O_TRUNC and ef.size:
                self.enc.truncate(ef, 0)
        except BaseException:
            self.enc.release(ef)
            raise
        fh = self._new_handle(_Handle(node=node, enc=ef, writable=writable))
        # A fresh ProtectedFile: drop whatever the kernel cached of an earlier open (the host
        # file may have changed while nobody had it open). Otherwise every byte in the page
        # cache came through this inode and is current.
        return fuse.FileInfo(fh=fh, keep_cache=not fresh, direct_io=False)

    @_op
    def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        if h.pseudo is not None:
            return h.pseudo.read(off, size)
        if h.enc is not None:
            return self.enc.read(h.enc, off, size)
        if not h.trusted:
            return os.pread(h.fd, size, off)
        node = h.node
        vst = node.vstat
        assert vst is not None
        total = vst.st_size
        if off >= total or size <= 0:
            return b""
        end = min(off + size, total)
        start = off - off % CHUNK_SIZE
        stop = min(total, -(-end // CHUNK_SIZE) * CHUNK_SIZE)
        if h.fd < 0:
            h.fd = self._open_host(node, os.O_RDONLY)
        table = node.chunks
        if table is None:
            table = node.chunks = self._chunk_table(node, h.fd)
        data = _pread_full(h.fd, stop - start, start)
        if len(data) != stop - start:
            log.error("trusted file %s (host %s) changed after verification (now shorter); "
                      "read refused", node.vpath, node.host)
            raise _fail(errno.EIO)
        mv = memoryview(data)
        sha256 = hashlib.sha256
        k = start // CHUNK_SIZE
        for i in range(0, stop - start, CHUNK_SIZE):
            want = table[k * CHUNK_HASH_SIZE:(k + 1) * CHUNK_HASH_SIZE]
            if sha256(mv[i:i + CHUNK_SIZE]).digest()[:CHUNK_HASH_SIZE] != want:
                log.error("trusted file %s (host %s) changed after verification (chunk at "
                          "offset %d); read refused", node.vpath, node.host, k * CHUNK_SIZE)
                raise _fail(errno.EIO)
            k += 1
        if start == off and stop == end:
            return data
        return data[off - start:end - start]

    def _chunk_table(self, node: Node, fd: int) -> bytes:
        """Hash a verified file again, whole and per chunk, when its pages left the kernel's
        cache: the table is only trusted if the whole file still matches the manifest."""
        assert node.vstat is not None
        try:
            with self._released():
                digest, table, _ = _hash_fd(fd, node.vstat.st_size, table=True,
                                            parallel=node.vstat.st_size >= PARALLEL_HASH_MIN)
        except OSError:
            digest, table = "", b""
        if digest != node.sha:
            log.error("trusted file %s (host %s) changed after verification; read refused",
                      node.vpath, node.host)
            raise _fail(errno.EIO)
        return table

    @_op
    def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        if h.pseudo is not None:
            return h.pseudo.write(off, buf)
        if h.trusted or not h.writable:
            raise _fail(errno.EBADF)
        if h.enc is not None:
            return self.enc.write(h.enc, off, buf)
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            n = os.pwrite(h.fd, view[done:], off + done)
            if n <= 0:
                raise _fail(errno.EIO)
            done += n
        return done

    @_op
    def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        if h.enc is not None:
            self.enc.fsync(h.enc)
            return
        if h.fd >= 0 and h.writable:
            if datasync:
                os.fdatasync(h.fd)
            else:
                os.fsync(h.fd)

    @_op
    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        h.node.handles.discard(fh)
        try:
            if h.pseudo is not None:
                h.pseudo.release()
            if h.enc is not None:
                ef, h.enc = h.enc, None
                self.enc.release(ef)  # the last handle writes the file back
        finally:
            if h.fd >= 0:
                os.close(h.fd)
                h.fd = -1
            node = h.node
            if node.lookups <= 0 and not node.permanent and not node.handles:
                self._nodes.pop(node.ino, None)
                if self._by_key.get(node.key) is node:
                    del self._by_key[node.key]

    # ------------------------------------------------------------------ changes

    def _mutable_dir(self, parent: Node, name: str) -> tuple[str, str, str]:
        """(rel, host, vpath) of a new entry ``name`` in a host-backed directory."""
        if parent.kind is not Kind.DIR:
            raise _fail(errno.ENOTDIR)
        if name in (".", "..") or "/" in name:
            raise _fail(errno.EINVAL)
        if name in self._vtree.get(parent.vpath, {}):
            raise _fail(errno.EBUSY)
        if parent.mount is None or parent.role is not None:
            raise _fail(errno.EACCES)
        root = self._roots[parent.mount.index]
        rel = _join_rel(parent.rel, name)
        return rel, _join_host(root.host, rel), _join_view(parent.vpath, name)

    def _make_entry(self, parent: Node, rel: str, vpath: str, name: str,
                    make: Callable[[int], object]) -> fuse.EntryAttributes:
        """Create ``name`` in ``parent``'s host directory with ``make(dir_fd)`` and answer
        with its entry (one lookup of the new node)."""
        pfd = self._dir_fd(parent)
        try:
            make(pfd)
            node, st = self._new_entry(parent, rel, vpath, pfd, name)
        finally:
            os.close(pfd)
        attr = self._attr(node, st)
        node.lookups += 1
        return attr

    def _new_entry(self, parent: Node, rel: str, vpath: str, pfd: int, name: str,
                   st: os.stat_result | None = None) -> tuple[Node, os.stat_result]:
        assert parent.mount is not None
        if st is None:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        found = self._host_node(parent.mount, rel, vpath, st, parent.ino, pfd)
        if found is None:
            raise _fail(errno.EACCES)
        parent.listing = None
        node, st2 = found
        return node, st2

    @_op
    def create(self, parent_inode: fuse.InodeT, name: bytes, mode: int, flags: int,
               ctx: fuse.RequestContext
               ) -> tuple[fuse.FileInfo, fuse.EntryAttributes]:
        parent = self._get(parent_inode)
        sname = os.fsdecode(name)
        if parent.role == "keys":
            if "/" in sname or sname in (".", ".."):
                raise _fail(errno.EINVAL)
            node = self._key_node(sname, parent.ino)
            assert node.pseudo is not None
            fh = self._new_handle(_Handle(node=node, pseudo=node.pseudo.open(ctx.pid, flags)))
            attr = self._attr(node)
            node.lookups += 1
            return fuse.FileInfo(fh=fh, direct_io=True, keep_cache=False), attr
        rel, host, vpath = self._mutable_dir(parent, sname)
        if _encrypted(parent.mount):
            return self._create_encrypted(parent, rel, vpath, mode, flags)
        self._check_change(host, vpath, "create")
        pfd = self._dir_fd(parent)
        try:
            oflags = (flags & (_HOST_OPEN_FLAGS | os.O_EXCL)) | os.O_CREAT | os.O_NOFOLLOW
            fd = os.open(sname, oflags | os.O_CLOEXEC | os.O_NOCTTY, mode & 0o777, dir_fd=pfd)
            try:
                node, st = self._new_entry(parent, rel, vpath, pfd, sname, os.fstat(fd))
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.close(pfd)
        fh = self._new_handle(_Handle(node=node, fd=fd,
                                      writable=flags & os.O_ACCMODE != os.O_RDONLY))
        attr = self._attr(node, st)
        node.lookups += 1
        return fuse.FileInfo(fh=fh, keep_cache=False, direct_io=False), attr

    def _create_encrypted(self, parent: Node, rel: str, vpath: str, mode: int, flags: int
                          ) -> tuple[fuse.FileInfo, fuse.EntryAttributes]:
        assert parent.mount is not None
        ef, _ = self.enc.acquire(parent.mount, rel, vpath, create=True,
                                 exclusive=bool(flags & os.O_EXCL), mode=mode)
        try:
            if flags & os.O_TRUNC and ef.size:
                self.enc.truncate(ef, 0)
            st = os.fstat(ef.fd)
            node, st = self._new_entry(parent, rel, vpath, -1, posixpath.basename(rel), st)
        except BaseException:
            self.enc.release(ef)
            raise
        fh = self._new_handle(_Handle(node=node, enc=ef,
                                      writable=flags & os.O_ACCMODE != os.O_RDONLY))
        attr = self._attr(node, st)
        node.lookups += 1
        return fuse.FileInfo(fh=fh, keep_cache=False, direct_io=False), attr

    @_op
    def mkdir(self, parent_inode: fuse.InodeT, name: bytes, mode: int,
              ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        parent = self._get(parent_inode)
        sname = os.fsdecode(name)
        rel, host, vpath = self._mutable_dir(parent, sname)
        self._check_change(host, vpath, "create directory", parent.mount)
        return self._make_entry(parent, rel, vpath, sname,
                                lambda pfd: os.mkdir(sname, mode & 0o1777, dir_fd=pfd))

    @_op
    def mknod(self, parent_inode: fuse.InodeT, name: bytes, mode: int, rdev: int,
              ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise _fail(errno.EPERM)
        parent = self._get(parent_inode)
        sname = os.fsdecode(name)
        rel, host, vpath = self._mutable_dir(parent, sname)
        if _encrypted(parent.mount):
            raise _fail(errno.EPERM)
        self._check_change(host, vpath, "create")
        return self._make_entry(
            parent, rel, vpath, sname,
            lambda pfd: os.mknod(sname, stat.S_IFMT(mode) | (mode & 0o777), 0, dir_fd=pfd))

    @_op
    def symlink(self, parent_inode: fuse.InodeT, name: bytes, target: bytes,
                ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        parent = self._get(parent_inode)
        sname = os.fsdecode(name)
        rel, host, vpath = self._mutable_dir(parent, sname)
        if _encrypted(parent.mount):
            raise _fail(errno.EPERM)  # Gramine's encrypted mounts have no symlinks
        self._check_change(host, vpath, "create symlink")
        return self._make_entry(parent, rel, vpath, sname,
                                lambda pfd: os.symlink(os.fsdecode(target), sname, dir_fd=pfd))

    @_op
    def link(self, inode: fuse.InodeT, new_parent_inode: fuse.InodeT,
             new_name: bytes, ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        node = self._get(inode)
        parent = self._get(new_parent_inode)
        sname = os.fsdecode(new_name)
        rel, host, vpath = self._mutable_dir(parent, sname)
        if node.kind not in (Kind.FILE, Kind.LINK, Kind.SPECIAL) or node.mount is None:
            raise _fail(errno.EPERM)
        if _encrypted(node.mount) or _encrypted(parent.mount):
            raise _fail(errno.EPERM)  # a second name would not match the bound path
        if parent.mount is None or node.mount.index != parent.mount.index:
            raise _fail(errno.EXDEV)
        if node.follow or not self._roots[node.mount.index].is_dir:
            raise _fail(errno.EPERM)
        self._check_change(node.host, node.vpath, "link")
        self._check_change(host, vpath, "create link")
        src_pfd = self._parent_fd(node.mount, node.rel)
        try:
            return self._make_entry(
                parent, rel, vpath, sname,
                lambda pfd: os.link(posixpath.basename(node.rel), sname, src_dir_fd=src_pfd,
                                    dst_dir_fd=pfd, follow_symlinks=False))
        finally:
            os.close(src_pfd)

    def _remove(self, parent_inode: int, name: bytes, *, directory: bool) -> None:
        parent = self._get(parent_inode)
        sname = os.fsdecode(name)
        if parent.role is not None:
            raise _fail(errno.EPERM)
        rel, host, vpath = self._mutable_dir(parent, sname)
        self._check_change(host, vpath, "remove", parent.mount)
        pfd = self._dir_fd(parent)
        try:
            if directory:
                os.rmdir(sname, dir_fd=pfd)
            elif _encrypted(parent.mount):
                assert parent.mount is not None
                if sname.endswith(encfs.RECOVERY_SUFFIX):
                    raise _fail(errno.ENOENT)
                st = os.stat(sname, dir_fd=pfd, follow_symlinks=False)
                os.unlink(sname, dir_fd=pfd)
                self.enc.unlinked(parent.mount, pfd, sname, st)
            else:
                os.unlink(sname, dir_fd=pfd)
        finally:
            os.close(pfd)
        parent.listing = None

    @_op
    def unlink(self, parent_inode: fuse.InodeT, name: bytes,
               ctx: fuse.RequestContext) -> None:
        self._remove(parent_inode, name, directory=False)

    @_op
    def rmdir(self, parent_inode: fuse.InodeT, name: bytes,
              ctx: fuse.RequestContext) -> None:
        self._remove(parent_inode, name, directory=True)

    def _moved(self, node: Node, mount: Mount, rel: str, vpath: str) -> None:
        old_rel, old_vpath = node.rel, node.vpath
        root = self._roots[mount.index]
        node.rel, node.vpath, node.host = rel, vpath, _join_host(root.host, rel)
        if node.kind is Kind.FILE and node.sha is None and node.policy is not Policy.ENCRYPTED:
            node.policy, _ = self.classify(node.host)
        if node.kind is Kind.DIR:
            prefix = old_rel + "/"
            for other in self._nodes.values():
                if other.mount is mount and other.rel.startswith(prefix):
                    other.rel = rel + other.rel[len(old_rel):]
                    other.vpath = vpath + other.vpath[len(old_vpath):]
                    other.host = _join_host(root.host, other.rel)
                    other.listing = None

    def _node_at(self, mount: Mount, st: os.stat_result) -> Node | None:
        for key in (("d", mount.index, st.st_dev, st.st_ino),
                    ("e", mount.index, st.st_dev, st.st_ino), ("f", st.st_dev, st.st_ino, None),
                    ("l", st.st_dev, st.st_ino), ("s", st.st_dev, st.st_ino)):
            node = self._by_key.get(key)
            if node is not None:
                return node
        return None

    @_op
    def rename(self, parent_inode_old: fuse.InodeT, name_old: bytes,
               parent_inode_new: fuse.InodeT, name_new: bytes, flags: int,
               ctx: fuse.RequestContext) -> None:
        po, pn = self._get(parent_inode_old), self._get(parent_inode_new)
        so, sn = os.fsdecode(name_old), os.fsdecode(name_new)
        rel_o, host_o, vpath_o = self._mutable_dir(po, so)
        rel_n, host_n, vpath_n = self._mutable_dir(pn, sn)
        assert po.mount is not None and pn.mount is not None
        if po.mount.index != pn.mount.index:
            raise _fail(errno.EXDEV)
        mount = po.mount
        self._check_change(host_o, vpath_o, "rename", mount)
        self._check_change(host_n, vpath_n, "replace", mount)
        pfo = self._dir_fd(po)
        try:
            pfn = self._dir_fd(pn)
            try:
                st_o = os.stat(so, dir_fd=pfo, follow_symlinks=False)
                st_n: os.stat_result | None = None
                if flags & fuse.RENAME_EXCHANGE:
                    st_n = os.stat(sn, dir_fd=pfn, follow_symlinks=False)
                if _encrypted(mount):
                    self._rename_encrypted(mount, (pfo, so, rel_o, vpath_o),
                                           (pfn, sn, rel_n, vpath_n), st_o, flags)
                else:
                    _renameat2_call(pfo, so, pfn, sn, flags)
            finally:
                os.close(pfn)
        finally:
            os.close(pfo)
        moved = self._node_at(mount, st_o)
        other = self._node_at(mount, st_n) if st_n is not None else None
        if moved is not None:
            self._moved(moved, mount, rel_n, vpath_n)
        if other is not None:
            self._moved(other, mount, rel_o, vpath_o)
        po.listing = None
        pn.listing = None

    def _rename_encrypted(self, mount: Mount, old: tuple[int, str, str, str],
                          new: tuple[int, str, str, str], st_o: os.stat_result,
                          flags: int) -> None:
        """Rename below an encrypted mount: rebind the file(s), then rename on the host.

        A file's bound path is rewritten first and restored if the host rename fails (as
        Gramine's LibOS does). Non-empty directories are not renamed (EXDEV): the files in
        them are bound to their current paths.
        """
        pfo, so, rel_o, vpath_o = old
        pfn, sn, rel_n, vpath_n = new
        suffix = encfs.RECOVERY_SUFFIX
        if so.endswith(suffix) or sn.endswith(suffix):
            raise _fail(errno.ENOENT if so.endswith(suffix) else errno.EACCES)
        exchange = bool(flags & fuse.RENAME_EXCHANGE)
        try:
            st_t: os.stat_result | None = os.stat(sn, dir_fd=pfn, follow_symlinks=False)
        except FileNotFoundError:
            st_t = None
        # (attributes, dir fd, name, current rel, new rel, current view path, new view path)
        sides = [(st_o, pfo, so, rel_o, rel_n, vpath_o, vpath_n)]
        if exchange and st_t is not None:
            sides.append((st_t, pfn, sn, rel_n, rel_o, vpath_n, vpath_o))
        for st, pfd, name, _, _, vpath, _ in sides:
            if stat.S_ISDIR(st.st_mode):
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=pfd)
                try:
                    empty = not os.listdir(dfd)
                finally:
                    os.close(dfd)
                if not empty:
                    log.info("not renaming non-empty directory %s of an encrypted mount "
                             "(EXDEV: the files in it are bound to their paths)", vpath)
                    raise _fail(errno.EXDEV)
        rebound: list[tuple[encfs.EncFile, str, str, str]] = []
        renamed = False
        try:
            for st, _, _, cur, dest, vpath, vdest in sides:
                if stat.S_ISREG(st.st_mode):
                    ef, _ = self.enc.acquire(mount, cur, vpath, expect=(st.st_dev, st.st_ino))
                    rebound.append((ef, cur, dest, vdest))
                    self.enc.rebind(ef, dest)
            _renameat2_call(pfo, so, pfn, sn, flags)
            renamed = True
            if not exchange and st_t is not None and stat.S_ISREG(st_t.st_mode):
                self.enc.unlinked(mount, pfn, sn, st_t)  # replaced
            self.enc.moved([(ef, dest, vdest) for ef, _, dest, vdest in rebound])
        except BaseException:
            if not renamed:
                for ef, cur, _, _ in rebound:
                    with contextlib.suppress(fuse.FUSEError):
                        self.enc.rebind(ef, cur)
            raise
        finally:
            for ef, *_ in rebound:
                self.enc.release(ef)

    @_op
    def setattr(self, inode: fuse.InodeT, attr: fuse.EntryAttributes,
                fields: fuse.SetattrFields, fh: int | None,
                ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        node = self._get(inode)
        if node.kind is Kind.PSEUDO:
            h = self._handles.get(fh) if fh is not None else None
            if fields.update_size:
                if h is not None and h.pseudo is not None:
                    h.pseudo.truncate(attr.st_size)
                elif attr.st_size != 0:
                    raise _fail(errno.EACCES)
            elif fields.update_mode or fields.update_atime or fields.update_mtime:
                raise _fail(errno.EPERM)
            return self._attr(node)
        if node.mount is None:
            raise _fail(errno.EPERM)
        if node.kind is Kind.FILE and node.policy is Policy.ENCRYPTED:
            if fields.update_size:
                self._truncate_encrypted(node, fh, attr.st_size)
            attr.st_mode &= ~_SET_ID  # never set on encrypted files (see _encrypted_attr)
            if fields.update_mode or fields.update_atime or fields.update_mtime:
                ef = self._open_enc(node, fh)
                st: os.stat_result | None
                if ef is not None:  # (the write-back cache sends times at every fsync)
                    self._set_meta_fd(ef.fd, attr, fields)
                    st = os.fstat(ef.fd)
                else:
                    self._set_meta(node, attr, fields)
                    st = self._stat(node)
                if fields.update_mtime and st is not None:
                    self.enc.set_mtime(node.mount, st, st.st_mtime_ns)
                return self._attr(node, st)
            return self._attr(node)
        if node.kind is Kind.FILE:
            if node.policy is Policy.TRUSTED:
                log.error("refusing to change trusted file %s (host %s)", node.vpath, node.host)
                raise _fail(errno.EACCES)
            self._check_change(node.host, node.vpath, "change")
        elif node.kind in (Kind.DIR, Kind.LINK, Kind.SPECIAL):
            if node.rel == "" and node.kind is Kind.DIR and (
                    fields.update_size or fields.update_mode):
                raise _fail(errno.EACCES)
            self._check_change(node.host, node.vpath, "change")
        h = self._handles.get(fh) if fh is not None else None
        if fields.update_size:
            if node.kind is not Kind.FILE:
                raise _fail(errno.EINVAL)
            if h is not None and h.writable and h.fd >= 0:
                os.ftruncate(h.fd, attr.st_size)
            else:
                fd = self._open_host(node, os.O_WRONLY)
                try:
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
        if fields.update_mode or fields.update_atime or fields.update_mtime:
            self._set_meta(node, attr, fields)
        # update_uid / update_gid: accepted and ignored (ownership is not passed through)
        return self._attr(node)

    def _open_enc(self, node: Node, fh: int | None) -> encfs.EncFile | None:
        """The open protected file behind ``node`` (through ``fh`` or any handle), if any."""
        h = self._handles.get(fh) if fh is not None else None
        if h is not None and h.enc is not None:
            return h.enc
        for other in node.handles:
            h = self._handles.get(other)
            if h is not None and h.enc is not None:
                return h.enc
        return None

    def _truncate_encrypted(self, node: Node, fh: int | None, size: int) -> None:
        ef = self._open_enc(node, fh)
        if ef is not None:
            self.enc.truncate(ef, size)
            return
        assert node.mount is not None
        ef, _ = self.enc.acquire(node.mount, node.rel, node.vpath, expect=self._enc_ident(node))
        try:
            self.enc.truncate(ef, size)
        finally:
            self.enc.release(ef)

    def _set_meta(self, node: Node, attr: fuse.EntryAttributes,
                  fields: fuse.SetattrFields) -> None:
        assert node.mount is not None
        if node.kind is Kind.LINK:
            if fields.update_atime or fields.update_mtime:
                cur = self._stat(node)
                assert cur is not None
                at = attr.st_atime_ns if fields.update_atime else cur.st_atime_ns
                mt = attr.st_mtime_ns if fields.update_mtime else cur.st_mtime_ns
                pfd = self._parent_fd(node.mount, node.rel)
                try:
                    os.utime(posixpath.basename(node.rel), ns=(at, mt), dir_fd=pfd,
                             follow_symlinks=False)
                finally:
                    os.close(pfd)
            return
        root = self._roots[node.mount.index]
        target: int | str
        if node.kind is Kind.DIR:
            fd = openat2(root.fd, node.rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            target = fd
        elif node.kind is Kind.SPECIAL:
            # FIFOs and sockets cannot be opened for this: act on an O_PATH descriptor of
            # exactly that inode through its /proc magic link (never a swapped-in symlink)
            fd = openat2(root.fd, node.rel, os.O_PATH | os.O_NOFOLLOW)
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                os.close(fd)
                raise _fail(errno.EACCES)
            target = f"/proc/self/fd/{fd}"
        else:
            fd = self._open_host(node, os.O_RDONLY)
            target = fd
        try:
            self._set_meta_fd(fd, attr, fields, target)
        finally:
            os.close(fd)

    @staticmethod
    def _set_meta_fd(fd: int, attr: fuse.EntryAttributes, fields: fuse.SetattrFields,
                     target: int | str | None = None) -> None:
        """Mode and times of the host file open as ``fd`` (changed through ``target``)."""
        target = fd if target is None else target
        if fields.update_mode:
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            cur = os.fstat(fd)
            at = attr.st_atime_ns if fields.update_atime else cur.st_atime_ns
            mt = attr.st_mtime_ns if fields.update_mtime else cur.st_mtime_ns
            os.utime(target, ns=(at, mt))

    @_op
    def statfs(self, ctx: fuse.RequestContext) -> fuse.StatvfsData:
        s = fuse.StatvfsData()
        mount, _ = self.plan.resolve("/")
        root = self._roots.get(mount.index)
        if root is not None:
            v = os.fstatvfs(root.fd)
            s.f_bsize, s.f_frsize = v.f_bsize, v.f_frsize
            s.f_blocks, s.f_bfree, s.f_bavail = v.f_blocks, v.f_bfree, v.f_bavail
            s.f_files, s.f_ffree, s.f_favail = v.f_files, v.f_ffree, v.f_favail
            s.f_namemax = v.f_namemax
        else:
            s.f_bsize = s.f_frsize = 4096
            s.f_namemax = 255
        return s


# ------------------------------------------------------------------------------------------
# serving
# ------------------------------------------------------------------------------------------


def tune_readahead(dev: int, kib: int = READ_AHEAD_KB) -> bool:
    """Raise the kernel readahead of the FUSE connection with device number ``dev``.

    FUSE inherits the default 128 KiB window, so a sequential read of a big file reaches
    Python 128 KiB at a time; with 1 MiB every READ request carries 1 MiB (the
    largest). Needs root (sysfs); returns False when it could not be changed.
    """
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kib))
    except OSError as e:
        log.debug("cannot set %s: %s", path, e.strerror)
        return False
    return True


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_fd(fs: ViewFS, fd: int, path: str = "/", *, threads: int = 4) -> None:
    """Serve ``fs`` on the ``/dev/fuse`` descriptor ``fd`` until the connection ends (the
    mount is gone); when the last connection of the view ends, write back and close the
    view's files.

    ``path`` is where ``fd`` is mounted in the view: ``/``, or one of ``fs.own_connections``
    (mounted on top of the view's mount point). Those are served with the kernel's
    write-back cache: it merges small writes into page-sized and larger WRITE requests and
    answers ``stat`` itself, which only a connection whose files change through it alone
    (encrypted files) can allow. They also tell the kernel that the view clears set-id bits
    itself (there never are any on encrypted files), which spares a GETATTR before each
    chown (sqlite, as root, chowns every journal it creates).
    """
    own = path != "/"
    session = fuse.Session(fd, fs, root=fs.connection_root(path), writeback_cache=own,
                           lock=fs.lock, busy_poll_us=OWN_CONNECTION_POLL_US if own else 0,
                           time_gran=OWN_CONNECTION_TIME_GRAN if own else 1,
                           handle_killpriv=own, exec_poll_us=0 if own else EXEC_POLL_US)
    with fs.serving():
        session.serve(threads)


def serve(fs: ViewFS, mountpoint: str | os.PathLike[str], *,
          ready: Callable[[], None] | None = None,
          options: Sequence[str] = MOUNT_OPTIONS) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until it is unmounted (from outside, e.g.
    by :func:`geode.runtime.fuse.unmount`, or because ``ready`` raised)."""
    mnt = os.fspath(mountpoint)
    if not os.path.isdir(mnt):
        raise GeodeError("mount point is not a directory", where=mnt)
    _raise_nofile_limit()
    source, fstype, flags, data = fuse.mount_args(options)
    try:
        fd = fuse.mount(mnt, options=data, source=source, fstype=fstype, flags=flags)
    except OSError as e:
        what = "/dev/fuse is missing" if not os.path.exists("/dev/fuse") else e.strerror
        raise GeodeError(f"cannot mount the view with FUSE: {what}", where=mnt) from None
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve_fd(fs, fd)
        except BaseException as e:  # reported by the caller's thread
            failure.append(e)

    server = threading.Thread(target=run, name="geode-view", daemon=True)
    server.start()
    #: (server thread, its connection's device number once known, the /dev/fuse descriptor
    #: to close after it, or -1 when the thread closes it)
    servers: list[tuple[threading.Thread, int | None, int]] = []
    try:
        # The first stat completes the FUSE handshake: the view is live after it.
        try:
            dev = os.stat(mnt).st_dev
        except OSError as e:
            servers.append((server, None, fd))
            raise GeodeError(f"the view did not come up: {e.strerror}", where=mnt) from None
        servers.append((server, dev, fd))
        tune_readahead(dev)
        for m in fs.own_connections:  # as geode run's sandbox does (unmounted with the view)
            servers.append(_serve_own_connection(fs, mnt + m.path, m.path, data, source,
                                                 fstype, flags))
        log.debug("view mounted at %s", mnt)
        if ready is not None:
            ready()
        server.join()
    finally:
        fuse.unmount(mnt)  # lazily: the own connections' mounts go with it
        for thread, sdev, sfd in servers:
            thread.join(2.0)
            if thread.is_alive() and sdev is not None:  # files still open in the unmounted view
                fuse.abort(sdev)
                thread.join(10.0)
            if thread.is_alive():  # no fusectl to abort through: it ends with those files
                log.warning("files of the unmounted view at %s are still open; its server "
                            "stops when they are closed", mnt)
            elif sfd >= 0:
                os.close(sfd)
    if failure:
        raise failure[0]


def _serve_own_connection(fs: ViewFS, target: str, path: str, options: str, source: str,
                          fstype: str, flags: int) -> tuple[threading.Thread, int | None, int]:
    try:
        fd = fuse.mount(target, options=options, source=source, fstype=fstype, flags=flags)
    except OSError as e:
        raise GeodeError(f"cannot mount the view's connection for {path}: {e.strerror}",
                         where=target) from None

    def run() -> None:
        try:
            serve_fd(fs, fd, path)
        except BaseException:  # logged; the rest of the view goes on
            log.exception("the view's FUSE connection for %s failed", path)
        finally:
            os.close(fd)  # (ends the connection if it was never served)

    thread = threading.Thread(target=run, name=f"geode-view{path}", daemon=True)
    thread.start()
    try:
        dev: int | None = os.stat(target).st_dev
    except OSError:
        dev = None
    if dev is not None:
        tune_readahead(dev)
    return thread, dev, -1


# ------------------------------------------------------------------------------------------
# debugging / benchmark entry point: python -m geode.runtime.viewfs MANIFEST MOUNTPOINT
# ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json
    import signal
    import tomllib
    from pathlib import Path

    p = argparse.ArgumentParser(
        prog="python -m geode.runtime.viewfs",
        description="Serve the view of a rendered manifest at MOUNTPOINT until SIGTERM/SIGINT "
                    "(debugging and benchmarks; `geode run` is the real entry point).")
    p.add_argument("manifest", type=Path)
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--base-dir", type=Path, default=Path("."))
    p.add_argument("--log-level", default="warning")
    p.add_argument("--ready-file", type=Path, help="created once the view is live")
    p.add_argument("--stats-file", type=Path, help="request counts (JSON) written at exit")
    p.add_argument("--no-store", action="store_true",
                   help="do not push verified files into the page cache (for measurements)")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="geode.fs %(levelname)s: %(message)s")
    try:
        manifest = tomllib.loads(args.manifest.read_text())
        plan = ViewPlan.from_manifest(manifest, base_dir=args.base_dir)
        fs = ViewFS(plan, manifest)
        fs.store_verified = not args.no_store
    except (GeodeError, OSError, tomllib.TOMLDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    def on_ready() -> None:
        if args.ready_file is not None:
            args.ready_file.write_text("ready\n")

    def stop(signum: int, frame: Any) -> None:
        fuse.unmount(str(args.mountpoint))

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        serve(fs, args.mountpoint, ready=on_ready)
    except GeodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if args.stats_file is not None:
            args.stats_file.write_text(json.dumps(fs.report(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
