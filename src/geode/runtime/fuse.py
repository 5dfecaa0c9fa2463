"""The FUSE kernel protocol, spoken directly on a ``/dev/fuse`` descriptor.

Why not libfuse (pyfuse3): the view is served for every ``geode run``, and start-up time is
what users feel. pyfuse3 needs trio, whose import alone took about 110 ms of a 170 ms
start-up budget, and libfuse 3.14 hides init flags the view wants (cached symlinks, larger
requests, write-back caching per connection). The protocol is small and stable
(``include/uapi/linux/fuse.h``); this module implements the part the view uses, with
the semantics libfuse's low-level API gives (so handlers read like pyfuse3 handlers).

Invariants
==========
* **One handler at a time.** Every handler runs while holding :attr:`Session.lock`; a handler
  that blocks for long (hashing a large file) releases it explicitly with
  :meth:`Session.released`. Handlers therefore see the file system's state change only where
  they allow it, as with an async framework's await points.
* **One reader thread, more only while a handler blocks.** A single thread reads and answers
  requests (measured: several threads reading ``/dev/fuse`` at once made a fork+exec loop
  1.5-3x slower, from lock and GIL hand-offs). :meth:`Session.released` starts another reader
  when no reader would be left, so other requests are served while a big file is hashed;
  surplus readers exit after their next request.
* **Every request gets exactly one reply**, except FORGET, BATCH_FORGET and INTERRUPT, which
  take none. A handler's :class:`FUSEError` becomes the errno of the reply; any other
  exception is the handler's bug and becomes EIO (the operations class decides how to log).
  Operations a file system does not implement are answered ENOSYS, which makes the kernel
  stop sending most of them (FLUSH, xattrs, FSYNCDIR, ...).
* **Request bytes are borrowed.** Each reader reuses one buffer, so the data a ``write``
  handler gets (a memoryview) is valid only until it returns: copy what must outlive it.
* **Readdir is always READDIRPLUS.** Each entry the handler adds with :func:`readdir_reply`
  except ``.`` and ``..`` counts as a lookup of its inode (the kernel's rule). The handler
  gets the directory's inode as well as the handle: operations without ``opendir`` are
  answered ENOSYS at the first OPENDIR, after which the kernel opens directories without a
  message (no OPENDIR, no RELEASEDIR, handle 0) and keeps their listings in its page cache
  until the directory changes (its mtime, or a change made through the mount).
* A reply the kernel no longer waits for (the request was interrupted, or the connection is
  being torn down) is dropped silently (ENOENT from the write); a connection that is gone
  (``_GONE``: ENODEV once unmounted, ECONNABORTED once aborted through fusectl) ends the
  loop.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Iterator, Sequence

from geode.log import get_logger
from geode.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NewType

log = get_logger("geode.fuse")

if TYPE_CHECKING:
    InodeT = NewType("InodeT", int)
    FileHandleT = NewType("FileHandleT", int)
else:  # (distinct types for the type checker only)
    InodeT = FileHandleT = int

ROOT_INODE = InodeT(1)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

KERNEL_MAJOR = 7
#: newest minor version whose request layouts this module knows
KERNEL_MINOR = 38

# opcodes
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS = range(8, 18)
RELEASE, FSYNC, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 18, 20, 25, 26, 27, 28, 29
ACCESS, CREATE, INTERRUPT, DESTROY, BATCH_FORGET, READDIRPLUS, RENAME2 = 34, 35, 36, 38, 42, 44, 45

# INIT flags (flags, then flags2 << 32)
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28
INIT_EXT = 1 << 30

# open_out flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_NOFLUSH = 1 << 5
#: the kernel's FMODE_EXEC (``__FMODE_EXEC``), set in the flags of the open that execve makes
_FMODE_EXEC = 0x20

# setattr valid bits
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW, FATTR_MTIME_NOW = 16, 32, 64, 128, 256
FATTR_CTIME = 1024

NOTIFY_INVAL_INODE, NOTIFY_INVAL_ENTRY, NOTIFY_STORE = 2, 3, 4

_IN_HEADER = struct.Struct("<IIQQIIIHH")            # fuse_in_header, 40 bytes
_OUT_HEADER = struct.Struct("<IiQ")                  # fuse_out_header, 16 bytes
_INIT_IN = struct.Struct("<IIII")                    # major, minor, max_readahead, flags
_INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")         # fuse_init_out, 64 bytes
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")          # fuse_attr, 88 bytes
_ENTRY_HEAD = struct.Struct("<QQQQII")               # fuse_entry_out before its fuse_attr
_ATTR_OUT_HEAD = struct.Struct("<QII")               # fuse_attr_out before its fuse_attr
_OPEN_IN = struct.Struct("<II")
_OPEN_OUT = struct.Struct("<QII")
_CREATE_IN = struct.Struct("<IIII")
_READ_IN = struct.Struct("<QQIIQII")                 # also fuse_write_in
_WRITE_OUT = struct.Struct("<II")
_RELEASE_IN = struct.Struct("<QIIQ")
_FSYNC_IN = struct.Struct("<QII")
_SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
_GETATTR_IN = struct.Struct("<IIQ")
_MKNOD_IN = struct.Struct("<IIII")
_MKDIR_IN = struct.Struct("<II")
_RENAME_IN = struct.Struct("<Q")
_RENAME2_IN = struct.Struct("<QII")
_LINK_IN = struct.Struct("<Q")
_ACCESS_IN = struct.Struct("<II")
_FORGET_IN = struct.Struct("<Q")
_BATCH_FORGET_IN = struct.Struct("<II")
_FORGET_ONE = struct.Struct("<QQ")
_STATFS_OUT = struct.Struct("<QQQQQIIII24x")
_DIRENT_HEAD = struct.Struct("<QQII")
#: fuse_direntplus without its name: fuse_entry_out (head and fuse_attr), then fuse_dirent
_DIRENTPLUS = struct.Struct("<QQQQII" "QQQQQQIIIIIIIIII" "QQII")
_DIRENTPLUS_SIZE = _DIRENTPLUS.size
_PADDING = tuple(bytes(n) for n in range(8))  # a dirent's name is padded to 8 bytes
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_NOTIFY_STORE = struct.Struct("<QQII")
_NOTIFY_INVAL_INODE = struct.Struct("<Qqq")
_NOTIFY_INVAL_ENTRY = struct.Struct("<QII")


class FUSEError(Exception):
    """Raised by a handler: the request fails with ``errno``."""

    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.errno = err

    def __str__(self) -> str:
        return os.strerror(self.errno)


class EntryAttributes:
    """Attributes of an inode and how long the kernel may cache them (and its name).

    ``st_ino == 0`` in a LOOKUP reply is a negative entry, cached for ``entry_timeout``."""

    __slots__ = ("st_ino", "generation", "entry_timeout", "attr_timeout", "st_mode",
                 "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize",
                 "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")

    def __init__(self) -> None:
        self.st_ino = 0
        self.generation = 0
        self.entry_timeout = 0.0
        self.attr_timeout = 0.0
        self.st_mode = 0
        self.st_nlink = 0
        self.st_uid = 0
        self.st_gid = 0
        self.st_rdev = 0
        self.st_size = 0
        self.st_blksize = 4096
        self.st_blocks = 0
        self.st_atime_ns = 0
        self.st_mtime_ns = 0
        self.st_ctime_ns = 0


class FileInfo:
    """What an OPEN or CREATE handler returns. ``noflush``: do not send FLUSH when a
    descriptor of this open file is closed."""

    __slots__ = ("fh", "direct_io", "keep_cache", "nonseekable", "noflush")

    def __init__(self, fh: int = 0, direct_io: bool = False, keep_cache: bool = False,
                 nonseekable: bool = False, noflush: bool = False) -> None:
        self.fh, self.direct_io, self.keep_cache = fh, direct_io, keep_cache
        self.nonseekable, self.noflush = nonseekable, noflush

    def __repr__(self) -> str:
        return (f"FileInfo(fh={self.fh}, direct_io={self.direct_io}, "
                f"keep_cache={self.keep_cache}, nonseekable={self.nonseekable}, "
                f"noflush={self.noflush})")


class RequestContext:
    """Who made a request (ids and pid as seen in the connection's namespaces)."""

    __slots__ = ("uid", "gid", "pid", "umask")

    def __init__(self, uid: int, gid: int, pid: int, umask: int = 0) -> None:
        self.uid, self.gid, self.pid, self.umask = uid, gid, pid, umask


class SetattrFields(Record):
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


class StatvfsData:
    __slots__ = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                 "f_ffree", "f_favail", "f_namemax")

    def __init__(self) -> None:
        self.f_bsize = self.f_frsize = 4096
        self.f_blocks = self.f_bfree = self.f_bavail = 0
        self.f_files = self.f_ffree = self.f_favail = 0
        self.f_namemax = 255


class ReaddirToken:
    """The reply buffer of one READDIRPLUS request."""

    __slots__ = ("limit", "parts", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.used = 0


class _DeviceGone(Exception):
    """The connection was aborted or unmounted while a reply was being written."""


#: errnos of a read or write on a connection that is gone: unmounted (ENODEV) or aborted
#: (ECONNABORTED, as :func:`abort` does when a torn-down sandbox leaves a straggler)
_GONE = (errno.ENODEV, errno.ECONNABORTED)


def _reply_failed(e: OSError) -> None:
    if e.errno == errno.ENOENT:  # the request was interrupted: nobody waits for the reply
        return
    if e.errno in _GONE:
        raise _DeviceGone from None
    raise e  # a reply the kernel rejected (EINVAL): a bug of this module


def _ns(t: int) -> tuple[int, int]:
    """Seconds and nanoseconds of a time in ns; the seconds as the kernel's u64 field holds
    a signed time64_t (times before 1970 are negative)."""
    sec, nsec = divmod(t, 1_000_000_000)
    return sec & 0xFFFF_FFFF_FFFF_FFFF, nsec


def _timeout(seconds: float) -> tuple[int, int]:
    split = _TIMEOUTS.get(seconds)
    if split is None:
        if seconds <= 0:
            split = (0, 0)
        else:
            sec = int(seconds)
            split = (sec, int((seconds - sec) * 1e9))
        if len(_TIMEOUTS) < 64:  # a file system uses a handful of timeouts
            _TIMEOUTS[seconds] = split
    return split


_TIMEOUTS: dict[float, tuple[int, int]] = {}


def _pack_attr(a: EntryAttributes) -> bytes:
    at, atn = _ns(a.st_atime_ns)
    mt, mtn = _ns(a.st_mtime_ns)
    ct, ctn = _ns(a.st_ctime_ns)
    return _ATTR.pack(a.st_ino, a.st_size, a.st_blocks, at, mt, ct, atn, mtn, ctn,
                      a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, a.st_blksize, 0)


def _pack_entry(a: EntryAttributes) -> bytes:
    ev, evn = _timeout(a.entry_timeout)
    av, avn = _timeout(a.attr_timeout)
    if a.st_ino == 0:  # negative entry: only the name timeout matters
        return _ENTRY_HEAD.pack(0, 0, ev, 0, evn, 0) + bytes(_ATTR.size)
    return _ENTRY_HEAD.pack(a.st_ino, a.generation, ev, av, evn, avn) + _pack_attr(a)


def readdir_reply(token: ReaddirToken, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
    """Add one entry; False (and nothing added) when the reply buffer is full."""
    namelen = len(name)
    pad = -namelen & 7
    size = _DIRENTPLUS_SIZE + namelen + pad
    if token.used + size > token.limit:
        return False
    a = attr
    ino = a.st_ino
    kind = (a.st_mode >> 12) & 0o17  # the S_IFMT bits, as a dirent's type
    if ino == 0:  # no inode for the kernel to remember: the generic layout
        head = _pack_entry(a) + _DIRENT_HEAD.pack(0, next_id, namelen, kind)
    else:
        # One pack per entry (this runs for every name of every directory listed), with the
        # fields _pack_entry, _pack_attr and _DIRENT_HEAD would give.
        ev, evn = _timeout(a.entry_timeout)
        av, avn = _timeout(a.attr_timeout)
        at, atn = divmod(a.st_atime_ns, 1_000_000_000)
        mt, mtn = divmod(a.st_mtime_ns, 1_000_000_000)
        ct, ctn = divmod(a.st_ctime_ns, 1_000_000_000)
        head = _DIRENTPLUS.pack(
            ino, a.generation, ev, av, evn, avn,
            ino, a.st_size, a.st_blocks, at & _U64, mt & _U64, ct & _U64, atn, mtn, ctn,
            a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, a.st_blksize, 0,
            ino, next_id, namelen, kind)
    parts = token.parts
    parts.append(head)
    parts.append(name)
    parts.append(_PADDING[pad])
    token.used += size
    return True


def readdir_stat_reply(token: ReaddirToken, name: bytes, next_id: int, ino: int,
                       timeout: float, st: os.stat_result, mode: int, uid: int, gid: int
                       ) -> bool:
    """:func:`readdir_reply` of an entry whose attributes are ``st``'s but for ``mode`` and
    the owner (inode ``ino``, generation 0, no rdev, both timeouts ``timeout``), packed from
    ``st`` itself: the common case of a listing, without an :class:`EntryAttributes`."""
    namelen = len(name)
    pad = -namelen & 7
    size = _DIRENTPLUS_SIZE + namelen + pad
    if token.used + size > token.limit:
        return False
    tv, tvn = _timeout(timeout)
    at, atn = divmod(st.st_atime_ns, 1_000_000_000)
    mt, mtn = divmod(st.st_mtime_ns, 1_000_000_000)
    ct, ctn = divmod(st.st_ctime_ns, 1_000_000_000)
    parts = token.parts
    parts.append(_DIRENTPLUS.pack(
        ino, 0, tv, tv, tvn, tvn,
        ino, st.st_size, st.st_blocks, at & _U64, mt & _U64, ct & _U64, atn, mtn, ctn,
        mode, st.st_nlink, uid, gid, 0, st.st_blksize, 0,
        ino, next_id, namelen, (mode >> 12) & 0o17))
    parts.append(name)
    parts.append(_PADDING[pad])
    token.used += size
    return True


class Operations:
    """Base class of a file system: every operation not overridden answers ENOSYS."""

    def init(self, session: Session) -> None:
        """Called once the kernel handshake is done, before any other request."""

    def destroy(self) -> None:
        """Called when the kernel ends the connection (DESTROY, or the device closed)."""


_NO_REPLY = frozenset((FORGET, BATCH_FORGET, INTERRUPT))

_TYPE_NAMES = {LOOKUP: "lookup", FORGET: "forget", GETATTR: "getattr", SETATTR: "setattr",
               READLINK: "readlink", SYMLINK: "symlink", MKNOD: "mknod", MKDIR: "mkdir",
               UNLINK: "unlink", RMDIR: "rmdir", RENAME: "rename", LINK: "link", OPEN: "open",
               READ: "read", WRITE: "write", STATFS: "statfs", RELEASE: "release",
               FSYNC: "fsync", OPENDIR: "opendir", READDIRPLUS: "readdir",
               RELEASEDIR: "releasedir", ACCESS: "access", CREATE: "create",
               BATCH_FORGET: "forget", RENAME2: "rename"}


_current = threading.local()


def current_session() -> Session | None:
    """The session whose request the calling thread is handling (None outside handlers)."""
    session: Session | None = getattr(_current, "session", None)
    return session


def _name(data: bytes | memoryview, start: int = 0) -> tuple[bytes, int]:
    """A NUL-terminated name at ``start``; returns it and the offset after the NUL."""
    raw = bytes(data[start:])
    end = raw.index(b"\0")
    return raw[:end], start + end + 1


class Session:
    """One FUSE connection: the kernel handshake, then requests dispatched to ``ops``.

    ``writeback_cache`` asks the kernel to cache writes (the file system then sees
    larger, later WRITEs, and READs on descriptors opened write-only; the kernel keeps its
    own size and times of regular files and ignores those ``ops`` report for known inodes).

    ``root`` is the inode of ``ops`` the connection's root stands for: several connections can
    serve subtrees of one file system (each mounted at the subtree's place), sharing its
    inode numbers. They must then share ``lock``, the lock every handler runs under.

    ``time_gran``: the granularity of the times the kernel sets itself (write-back cache), in
    ns. With 1 s the kernel dirties an inode's times at most once a second, instead of at
    every write, and so sends the SETATTR that flushes them at most once a second rather
    than at every fsync and close.

    ``handle_killpriv``: the file system clears set-user-ID and set-group-ID bits itself
    (``FUSE_HANDLE_KILLPRIV_V2``). The kernel then no longer fetches a file's attributes
    before each chown, truncate or write to find out whether there are bits to clear.

    ``busy_poll_us``: after each reply a reader keeps polling the device for that long
    before it sleeps. A request that follows its predecessor's reply closely (a program
    doing small synchronous I/O) is then picked up without waking a sleeping CPU, at the
    cost of spinning one; 0 (the default) never spins.

    ``exec_poll_us``: the same, but only after answering an ``execve``'s open of a file
    (``FMODE_EXEC``) and the release of such a file. A program that runs other programs in
    a loop (a shell script) then finds the supervisor awake for its next exec, while one
    that opens files for I/O (a web server) never makes it spin.
    """

    def __init__(self, fd: int, ops: Operations, *, max_write: int = 1 << 20,
                 writeback_cache: bool = False, max_readahead: int = 1 << 20,
                 root: int = ROOT_INODE, lock: threading.Lock | None = None,
                 busy_poll_us: int = 0, time_gran: int = 1,
                 handle_killpriv: bool = False, exec_poll_us: int = 0) -> None:
        self.fd = fd
        self.ops = ops
        self.max_write = max_write
        self.writeback_cache = writeback_cache
        self.handle_killpriv = handle_killpriv
        self.max_readahead = max_readahead
        self.root = root
        self.busy_poll_ns = busy_poll_us * 1000
        self.exec_poll_ns = exec_poll_us * 1000
        #: handles the kernel opened to execute a file (see ``exec_poll_us``)
        self._exec_handles: set[int] = set()
        self.time_gran = time_gran
        self.lock = lock if lock is not None else threading.Lock()
        self.proto_minor = 0
        #: negotiated init flags (flags | flags2 << 32)
        self.flags = 0
        self._bufsize = max_write + 4096 + 256
        self._ended = threading.Event()
        self._initialized = False
        self._max_threads = 1
        #: reader threads alive, and handlers among them blocked in released() (under lock)
        self._threads = 0
        self._blocked = 0
        self._failure: BaseException | None = None
        self._handlers = self._handler_table()

    # ------------------------------------------------------------------ public

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Let other requests be handled while the calling handler blocks (call it holding
        :attr:`lock`, i.e. from a handler)."""
        self._blocked += 1
        if self._threads - self._blocked < 1 and self._threads < self._max_threads:
            self._spawn()
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()
            self._blocked -= 1

    def serve(self, max_threads: int = 4) -> None:
        """Handle requests until the connection ends, with up to ``max_threads`` readers."""
        self._max_threads = max(1, max_threads)
        with self.lock:
            self._threads += 1
        # The calling thread is the first reader (a thread of its own cost ~1 ms of every
        # start); it leaves the loop early if it is surplus, so wait for the end here.
        self._worker()
        self._ended.wait()
        if self._failure is not None:
            raise self._failure

    def _spawn(self) -> None:
        self._threads += 1
        threading.Thread(target=self._worker, name=f"geode-fuse-{self._threads}",
                         daemon=True).start()

    def notify_store(self, ino: int, offset: int, data: bytes | memoryview) -> None:
        """Put ``data`` into the kernel's page cache of ``ino`` at ``offset``."""
        head = _NOTIFY_STORE.pack(ino, offset, len(data), 0)
        self._notify(NOTIFY_STORE, head, data)

    def invalidate_inode(self, ino: int, offset: int = 0, length: int = 0) -> None:
        """Drop cached attributes and (``length`` 0: all) cached data of ``ino``."""
        self._notify(NOTIFY_INVAL_INODE, _NOTIFY_INVAL_INODE.pack(ino, offset, length))

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        self._notify(NOTIFY_INVAL_ENTRY, _NOTIFY_INVAL_ENTRY.pack(parent, len(name), 0),
                     name + b"\0")

    # ------------------------------------------------------------------ transport

    def _notify(self, code: int, *parts: bytes | memoryview) -> None:
        size = _OUT_HEADER.size + sum(len(p) for p in parts)
        os.writev(self.fd, [_OUT_HEADER.pack(size, code, 0), *parts])

    def _reply(self, unique: int, *parts: bytes | memoryview) -> None:
        size = _OUT_HEADER.size + sum(len(p) for p in parts)
        try:
            os.writev(self.fd, [_OUT_HEADER.pack(size, 0, unique), *parts])
        except OSError as e:
            _reply_failed(e)

    def _error(self, unique: int, err: int) -> None:
        try:
            os.write(self.fd, _OUT_HEADER.pack(_OUT_HEADER.size, -err, unique))
        except OSError as e:
            _reply_failed(e)

    def _worker(self) -> None:
        _current.session = self
        try:
            self._read_loop()
        except BaseException as e:  # a bug, or the device failing: end the session with it
            self._failure = e
            self._end()

    def _read_loop(self) -> None:
        # One buffer per reader, reused: os.read would allocate (and fault in) a fresh
        # max_write-sized object for every request. An anonymous mapping rather than a
        # bytearray, which would zero (and so fault in) all of its ~1 MiB at once: the kernel
        # maps a page of it only when a request first reaches that far, and most are small.
        fd, buf = self.fd, mmap.mmap(-1, self._bufsize)
        whole = memoryview(buf)
        spin, exec_spin, deadline = self.busy_poll_ns, self.exec_poll_ns, 0
        waiter = None
        _current.exec_step = False
        if spin or exec_spin:
            import select

            os.set_blocking(fd, False)  # (shared by every reader: they all wait in poll)
            waiter = select.poll()
            waiter.register(fd, select.POLLIN)
        while not self._ended.is_set():
            try:
                n = os.readv(fd, [buf])
            except OSError as e:
                if e.errno == errno.EAGAIN and waiter is not None:
                    if time.perf_counter_ns() >= deadline:
                        waiter.poll()
                    continue
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted before we read it
                if e.errno in _GONE:
                    self._end()
                    return
                raise
            if not n:
                self._end()
                return
            with self.lock:
                more = self._dispatch(whole[:n])
                surplus = more and self._threads - self._blocked > 1
                if surplus:
                    self._threads -= 1
            if spin:
                deadline = time.perf_counter_ns() + spin
            elif _current.exec_step:  # (set by _open and _release)
                _current.exec_step = False
                deadline = time.perf_counter_ns() + exec_spin
            if not more:
                self._end()
                return
            if surplus:
                return

    def _end(self) -> None:
        with self.lock:
            if self._ended.is_set():
                return
            self._ended.set()
            try:
                self.ops.destroy()
            except Exception:
                log.exception("internal error in destroy")

    def _dispatch(self, buf: bytes | memoryview) -> bool:
        """Handle one request; False when the connection is over. ``buf`` (and the data
        handed to ``write``) is valid only until the handler returns."""
        length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = _IN_HEADER.unpack_from(buf)
        if nodeid == ROOT_INODE:
            nodeid = self.root
        body = memoryview(buf)[_IN_HEADER.size:length - extlen * 8]
        try:
            if opcode == INIT:
                self._init(unique, body)
                return True
            if opcode == DESTROY:
                self._reply(unique)
                return False
            if opcode in _NO_REPLY:
                handler = self._handlers.get(opcode)
                if handler is not None and self._initialized:
                    handler(unique, nodeid, None, body)
                return True  # INTERRUPT: handlers are not interruptible, the request is answered
            handler = self._handlers.get(opcode)
            if handler is None or not self._initialized:
                self._error(unique, errno.ENOSYS)
                return True
            try:
                handler(unique, nodeid, RequestContext(uid, gid, pid), body)
            except (FUSEError, _DeviceGone):
                raise
            except Exception:  # the handler's bug, or a malformed request: the request fails
                log.exception("internal error handling FUSE opcode %d", opcode)
                self._error(unique, errno.EIO)
        except FUSEError as e:
            self._error(unique, e.errno)
        except _DeviceGone:
            return False
        except struct.error:  # a request shorter than its opcode's layout (INIT, FORGET)
            log.error("malformed FUSE request (opcode %d)", opcode)
            if opcode not in _NO_REPLY:
                self._error(unique, errno.EIO)
        return True

    def _init(self, unique: int, body: memoryview) -> None:
        major, minor, max_readahead, flags = _INIT_IN.unpack_from(body)
        if major != KERNEL_MAJOR or minor < 31:  # 7.31: Linux 5.4
            log.error("unsupported FUSE protocol %d.%d (need 7.31 or newer)", major, minor)
            self._error(unique, errno.EPROTO)
            return
        want = (ASYNC_READ | ATOMIC_O_TRUNC | BIG_WRITES | AUTO_INVAL_DATA | DO_READDIRPLUS
                | ASYNC_DIO | PARALLEL_DIROPS | MAX_PAGES | CACHE_SYMLINKS)
        if self.writeback_cache:
            want |= WRITEBACK_CACHE
        if self.handle_killpriv:
            want |= HANDLE_KILLPRIV_V2
        self.flags = flags & want
        self.proto_minor = min(minor, KERNEL_MINOR)
        max_pages = (self.max_write + 4095) // 4096
        # The kernel keeps the smaller of the connection's current readahead and this value,
        # so answering with our own maximum keeps a window raised before the handshake.
        out = _INIT_OUT.pack(KERNEL_MAJOR, self.proto_minor, self.max_readahead,
                             self.flags, 16, 12, self.max_write, self.time_gran, max_pages,
                             0, 0)
        self.ops.init(self)
        self._initialized = True
        self._reply(unique, out)

    # ------------------------------------------------------------------ requests

    def _handler_table(self) -> dict[int, Any]:
        ops = self.ops
        table: dict[int, Any] = {}
        for opcode, method in ((LOOKUP, self._lookup), (FORGET, self._forget),
                               (BATCH_FORGET, self._batch_forget), (GETATTR, self._getattr),
                               (SETATTR, self._setattr), (READLINK, self._readlink),
                               (SYMLINK, self._symlink), (MKNOD, self._mknod),
                               (MKDIR, self._mkdir), (UNLINK, self._unlink),
                               (RMDIR, self._rmdir), (RENAME, self._rename),
                               (RENAME2, self._rename2), (LINK, self._link), (OPEN, self._open),
                               (READ, self._read), (WRITE, self._write),
                               (STATFS, self._statfs), (RELEASE, self._release),
                               (FSYNC, self._fsync), (OPENDIR, self._opendir),
                               (READDIRPLUS, self._readdirplus),
                               (RELEASEDIR, self._releasedir), (ACCESS, self._access),
                               (CREATE, self._create)):
            if callable(getattr(ops, _TYPE_NAMES[opcode], None)):
                table[opcode] = method
        return table

    def _inode(self, nodeid: int) -> int:
        """The inode of ``ops`` a node id in a request body stands for."""
        return self.root if nodeid == ROOT_INODE else nodeid

    def _entry(self, unique: int, attr: EntryAttributes) -> None:
        self._reply(unique, _pack_entry(attr))

    def _attr_reply(self, unique: int, attr: EntryAttributes) -> None:
        av, avn = _timeout(attr.attr_timeout)
        self._reply(unique, _ATTR_OUT_HEAD.pack(av, avn, 0), _pack_attr(attr))

    def _open_reply(self, info: FileInfo) -> bytes:
        flags = ((FOPEN_DIRECT_IO if info.direct_io else 0)
                 | (FOPEN_KEEP_CACHE if info.keep_cache else 0)
                 | (FOPEN_NONSEEKABLE if info.nonseekable else 0)
                 | (FOPEN_NOFLUSH if info.noflush else 0))
        return _OPEN_OUT.pack(info.fh, flags, 0)

    def _lookup(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        name, _ = _name(body)
        self._entry(unique, self.ops.lookup(nodeid, name, ctx))  # type: ignore[attr-defined]

    def _forget(self, unique: int, nodeid: int, ctx: object, body: memoryview) -> None:
        (n,) = _FORGET_IN.unpack_from(body)
        self._call_forget([(nodeid, n)])

    def _batch_forget(self, unique: int, nodeid: int, ctx: RequestContext,
                      body: memoryview) -> None:
        count, _ = _BATCH_FORGET_IN.unpack_from(body)
        items = [_FORGET_ONE.unpack_from(body, _BATCH_FORGET_IN.size + i * _FORGET_ONE.size)
                 for i in range(count)]
        if self.root != ROOT_INODE:
            items = [(self._inode(ino), n) for ino, n in items]
        self._call_forget(items)

    def _call_forget(self, items: Sequence[tuple[int, int]]) -> None:
        try:  # no reply, whatever happens
            self.ops.forget(items)  # type: ignore[attr-defined]
        except Exception:
            log.exception("internal error in forget")

    def _getattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        self._attr_reply(unique, self.ops.getattr(nodeid, ctx))  # type: ignore[attr-defined]

    def _setattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (valid, _, fh, size, _, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode,
         _, uid, gid, _) = _SETATTR_IN.unpack_from(body)
        attr = EntryAttributes()
        attr.st_size, attr.st_mode, attr.st_uid, attr.st_gid = size, mode, uid, gid
        now = time.time_ns()
        attr.st_atime_ns = now if valid & FATTR_ATIME_NOW else atime * 10**9 + atimensec
        attr.st_mtime_ns = now if valid & FATTR_MTIME_NOW else mtime * 10**9 + mtimensec
        attr.st_ctime_ns = ctime * 10**9 + ctimensec
        fields = SetattrFields(
            update_mode=bool(valid & FATTR_MODE), update_uid=bool(valid & FATTR_UID),
            update_gid=bool(valid & FATTR_GID), update_size=bool(valid & FATTR_SIZE),
            update_atime=bool(valid & (FATTR_ATIME | FATTR_ATIME_NOW)),
            update_mtime=bool(valid & (FATTR_MTIME | FATTR_MTIME_NOW)),
            update_ctime=bool(valid & FATTR_CTIME))
        result = self.ops.setattr(nodeid, attr, fields,  # type: ignore[attr-defined]
                                  fh if valid & FATTR_FH else None, ctx)
        self._attr_reply(unique, result)

    def _readlink(self, unique: int, nodeid: int, ctx: RequestContext,
                  body: memoryview) -> None:
        self._reply(unique, self.ops.readlink(nodeid, ctx))  # type: ignore[attr-defined]

    def _symlink(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        name, pos = _name(body)
        target, _ = _name(body, pos)
        self._entry(unique, self.ops.symlink(nodeid, name, target, ctx))  # type: ignore[attr-defined]

    def _mknod(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        mode, rdev, umask, _ = _MKNOD_IN.unpack_from(body)
        name, _ = _name(body, _MKNOD_IN.size)
        ctx = RequestContext(ctx.uid, ctx.gid, ctx.pid, umask)
        self._entry(unique, self.ops.mknod(nodeid, name, mode, rdev, ctx))  # type: ignore[attr-defined]

    def _mkdir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        mode, umask = _MKDIR_IN.unpack_from(body)
        name, _ = _name(body, _MKDIR_IN.size)
        ctx = RequestContext(ctx.uid, ctx.gid, ctx.pid, umask)
        self._entry(unique, self.ops.mkdir(nodeid, name, mode | stat.S_IFDIR, ctx))  # type: ignore[attr-defined]

    def _unlink(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        name, _ = _name(body)
        self.ops.unlink(nodeid, name, ctx)  # type: ignore[attr-defined]
        self._reply(unique)

    def _rmdir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        name, _ = _name(body)
        self.ops.rmdir(nodeid, name, ctx)  # type: ignore[attr-defined]
        self._reply(unique)

    def _rename(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (newdir,) = _RENAME_IN.unpack_from(body)
        old, pos = _name(body, _RENAME_IN.size)
        new, _ = _name(body, pos)
        self.ops.rename(nodeid, old, self._inode(newdir), new, 0, ctx)  # type: ignore[attr-defined]
        self._reply(unique)

    def _rename2(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        newdir, flags, _ = _RENAME2_IN.unpack_from(body)
        old, pos = _name(body, _RENAME2_IN.size)
        new, _ = _name(body, pos)
        self.ops.rename(nodeid, old, self._inode(newdir), new, flags, ctx)  # type: ignore[attr-defined]
        self._reply(unique)

    def _link(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (old,) = _LINK_IN.unpack_from(body)
        name, _ = _name(body, _LINK_IN.size)
        self._entry(unique, self.ops.link(self._inode(old), nodeid, name, ctx))  # type: ignore[attr-defined]

    def _open(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        flags, _ = _OPEN_IN.unpack_from(body)
        info = self.ops.open(nodeid, flags, ctx)  # type: ignore[attr-defined]
        self._reply(unique, self._open_reply(info))
        if flags & _FMODE_EXEC and self.exec_poll_ns:
            self._exec_handles.add(info.fh)
            _current.exec_step = True

    def _read(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, offset, size, *_ = _READ_IN.unpack_from(body)
        self._reply(unique, self.ops.read(fh, offset, size))  # type: ignore[attr-defined]

    def _write(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, offset, size, *_ = _READ_IN.unpack_from(body)
        data = body[_READ_IN.size:_READ_IN.size + size]
        written = self.ops.write(fh, offset, data)  # type: ignore[attr-defined]
        self._reply(unique, _WRITE_OUT.pack(written, 0))

    def _statfs(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        s = self.ops.statfs(ctx)  # type: ignore[attr-defined]
        self._reply(unique, _STATFS_OUT.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files,
                                             s.f_ffree, s.f_bsize, s.f_namemax, s.f_frsize, 0))

    def _release(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, *_ = _RELEASE_IN.unpack_from(body)
        self.ops.release(fh)  # type: ignore[attr-defined]
        self._reply(unique)
        if fh in self._exec_handles:
            self._exec_handles.discard(fh)
            _current.exec_step = True

    def _fsync(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, flags, _ = _FSYNC_IN.unpack_from(body)
        self.ops.fsync(fh, bool(flags & 1))  # type: ignore[attr-defined]
        self._reply(unique)

    def _opendir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh = self.ops.opendir(nodeid, ctx)  # type: ignore[attr-defined]
        self._reply(unique, _OPEN_OUT.pack(fh, 0, 0))

    def _readdirplus(self, unique: int, nodeid: int, ctx: RequestContext,
                     body: memoryview) -> None:
        fh, offset, size, *_ = _READ_IN.unpack_from(body)
        token = ReaddirToken(size)
        self.ops.readdir(nodeid, fh, offset, token)  # type: ignore[attr-defined]
        self._reply(unique, b"".join(token.parts))

    def _releasedir(self, unique: int, nodeid: int, ctx: RequestContext,
                    body: memoryview) -> None:
        fh, *_ = _RELEASE_IN.unpack_from(body)
        self.ops.releasedir(fh)  # type: ignore[attr-defined]
        self._reply(unique)

    def _access(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        mask, _ = _ACCESS_IN.unpack_from(body)
        if not self.ops.access(nodeid, mask, ctx):  # type: ignore[attr-defined]
            raise FUSEError(errno.EACCES)
        self._reply(unique)

    def _create(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        flags, mode, umask, _ = _CREATE_IN.unpack_from(body)
        name, _ = _name(body, _CREATE_IN.size)
        ctx = RequestContext(ctx.uid, ctx.gid, ctx.pid, umask)
        info, attr = self.ops.create(nodeid, name, mode, flags, ctx)  # type: ignore[attr-defined]
        self._reply(unique, _pack_entry(attr), self._open_reply(info))


# ------------------------------------------------------------------------------------------
# mounting (for serving at a path; `geode run` gets an already mounted descriptor)
# ------------------------------------------------------------------------------------------

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MNT_DETACH = 2


def mount_args(options: Sequence[str]) -> tuple[str, str, int, str]:
    """``(source, fstype, flags, data options)`` of the kernel mount for libfuse-style
    ``options``: ``fsname`` is the source, ``subtype`` the type suffix, ``nodev``-style options
    become flags; options only libfuse understands are dropped."""
    flag_bits = {"nodev": MS_NODEV, "nosuid": MS_NOSUID, "noexec": MS_NOEXEC, "ro": MS_RDONLY}
    source, subtype, flags, data = "geode", "", MS_NOSUID | MS_NODEV, []
    for opt in options:
        key, _, value = opt.partition("=")
        if key == "fsname":
            source = value
        elif key == "subtype":
            subtype = value
        elif key in flag_bits:
            flags |= flag_bits[key]
        elif key in ("allow_other", "default_permissions", "max_read", "blksize"):
            data.append(opt)
    return source, f"fuse.{subtype}" if subtype else "fuse", flags, ",".join(data)


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def mount(mountpoint: str, *, options: str = "", source: str = "geode",
          fstype: str = "fuse.geode", flags: int = MS_NOSUID | MS_NODEV) -> int:
    """Open ``/dev/fuse`` and mount it at ``mountpoint``; returns the descriptor.

    Needs CAP_SYS_ADMIN in the mount namespace's user namespace (root, or inside a user
    namespace); there is no fusermount fallback."""
    import ctypes

    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    st = os.stat(mountpoint)
    opts = f"fd={fd},rootmode={stat.S_IFMT(st.st_mode):o},user_id={os.getuid()}," \
           f"group_id={os.getgid()}"
    if options:
        opts += "," + options
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    if libc.mount(source.encode(), os.fsencode(mountpoint), fstype.encode(), flags,
                  opts.encode()) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount {mountpoint}: {os.strerror(err)}")
    return fd


def unmount(mountpoint: str) -> None:
    """Lazily unmount ``mountpoint`` (the kernel then ends the connection)."""
    import ctypes

    libc = _libc()
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    if libc.umount2(os.fsencode(mountpoint), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise OSError(err, f"umount {mountpoint}: {os.strerror(err)}")


def abort(dev: int) -> bool:
    """Abort the FUSE connection of the mount with device number ``dev`` (through fusectl,
    when it is mounted): its readers get ECONNABORTED even while files of a lazily
    unmounted view are still open. Returns False when it could not."""
    try:
        with open(f"/sys/fs/fuse/connections/{os.minor(dev)}/abort", "w") as f:
            f.write("1")
    except OSError:
        return False
    return True
