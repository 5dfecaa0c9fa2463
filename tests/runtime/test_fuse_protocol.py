"""The FUSE kernel protocol of :mod:`geode.runtime.fuse`, without a mount.

Requests are hand-built bytes fed to ``Session._dispatch`` (or to a serving session through a
SOCK_SEQPACKET socket pair, which keeps message boundaries as ``/dev/fuse`` does); replies are
read back and parsed. Every layout below is written here from ``include/uapi/linux/fuse.h``
(protocol 7.38), independently of the module's own ``struct.Struct`` objects: a mistake in
either reading shows up as a failing test.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geode.runtime import fuse

# ----------------------------------------------------------------------------- the header

# opcodes (enum fuse_opcode)
OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_SYMLINK = 1, 2, 3, 4, 5, 6
OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR, OP_RENAME, OP_LINK = 8, 9, 10, 11, 12, 13
OP_OPEN, OP_READ, OP_WRITE, OP_STATFS, OP_RELEASE, OP_FSYNC = 14, 15, 16, 17, 18, 20
OP_SETXATTR, OP_GETXATTR, OP_FLUSH, OP_INIT, OP_OPENDIR, OP_READDIR = 21, 22, 25, 26, 27, 28
OP_RELEASEDIR, OP_ACCESS, OP_CREATE, OP_INTERRUPT, OP_DESTROY = 29, 34, 35, 36, 38
OP_BATCH_FORGET, OP_FALLOCATE, OP_READDIRPLUS, OP_RENAME2, OP_LSEEK = 42, 43, 44, 45, 46

# init flags
F_ASYNC_READ = 1 << 0
F_POSIX_LOCKS = 1 << 1
F_FILE_OPS = 1 << 2
F_ATOMIC_O_TRUNC = 1 << 3
F_EXPORT_SUPPORT = 1 << 4
F_BIG_WRITES = 1 << 5
F_DONT_MASK = 1 << 6
F_SPLICE_WRITE = 1 << 7
F_SPLICE_MOVE = 1 << 8
F_SPLICE_READ = 1 << 9
F_FLOCK_LOCKS = 1 << 10
F_HAS_IOCTL_DIR = 1 << 11
F_AUTO_INVAL_DATA = 1 << 12
F_DO_READDIRPLUS = 1 << 13
F_READDIRPLUS_AUTO = 1 << 14
F_ASYNC_DIO = 1 << 15
F_WRITEBACK_CACHE = 1 << 16
F_NO_OPEN_SUPPORT = 1 << 17
F_PARALLEL_DIROPS = 1 << 18
F_HANDLE_KILLPRIV = 1 << 19
F_POSIX_ACL = 1 << 20
F_ABORT_ERROR = 1 << 21
F_MAX_PAGES = 1 << 22
F_CACHE_SYMLINKS = 1 << 23
F_NO_OPENDIR_SUPPORT = 1 << 24
F_EXPLICIT_INVAL_DATA = 1 << 25
F_MAP_ALIGNMENT = 1 << 26
F_SUBMOUNTS = 1 << 27
F_HANDLE_KILLPRIV_V2 = 1 << 28
F_SETXATTR_EXT = 1 << 29
F_INIT_EXT = 1 << 30
F_INIT_RESERVED = 1 << 31
ALL_FLAGS = (1 << 32) - 1

#: what the server asks for (the module docstring and the view's needs)
SERVER_WANTS = (F_ASYNC_READ | F_ATOMIC_O_TRUNC | F_BIG_WRITES | F_AUTO_INVAL_DATA
                | F_DO_READDIRPLUS | F_ASYNC_DIO | F_PARALLEL_DIROPS | F_MAX_PAGES
                | F_CACHE_SYMLINKS)

# setattr valid bits
V_MODE, V_UID, V_GID, V_SIZE, V_ATIME, V_MTIME, V_FH = 1, 2, 4, 8, 16, 32, 64
V_ATIME_NOW, V_MTIME_NOW, V_LOCKOWNER, V_CTIME, V_KILL_SUIDGID = 128, 256, 512, 1024, 2048

# notify codes
N_POLL, N_INVAL_INODE, N_INVAL_ENTRY, N_STORE = 1, 2, 3, 4

# open_out flags
FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NONSEEKABLE, FOPEN_NOFLUSH = 1, 2, 4, 32

# struct layouts, field by field
IN_HEADER = "<I I Q Q I I I H H"          # len opcode unique nodeid uid gid pid total_extlen pad
OUT_HEADER = "<I i Q"                      # len error unique
INIT_IN = "<I I I I I 44x"                 # major minor max_readahead flags flags2 unused[11]
INIT_OUT = "<I I I I H H I I H H I 28x"   # ... max_pages map_alignment flags2 unused[7]
ATTR = "<Q Q Q Q Q Q I I I I I I I I I I"  # fuse_attr
ENTRY_OUT = "<Q Q Q Q I I"                 # nodeid generation entry_valid attr_valid (+nsec)
ATTR_OUT = "<Q I I"                        # attr_valid attr_valid_nsec dummy
DIRENT = "<Q Q I I"                        # ino off namelen type
OPEN_IN = "<I I"                           # flags open_flags
OPEN_OUT = "<Q I I"                        # fh open_flags padding
CREATE_IN = "<I I I I"                     # flags mode umask open_flags
MKNOD_IN = "<I I I I"                      # mode rdev umask padding
MKDIR_IN = "<I I"                          # mode umask
RENAME_IN = "<Q"                           # newdir
RENAME2_IN = "<Q I I"                      # newdir flags padding
LINK_IN = "<Q"                             # oldnodeid
RW_IN = "<Q Q I I Q I I"                   # fh offset size rw_flags lock_owner flags padding
WRITE_OUT = "<I I"                         # size padding
RELEASE_IN = "<Q I I Q"                    # fh flags release_flags lock_owner
FSYNC_IN = "<Q I I"                        # fh fsync_flags padding
GETATTR_IN = "<I I Q"                      # getattr_flags dummy fh
SETATTR_IN = "<I I Q Q Q Q Q Q I I I I I I I I"
ACCESS_IN = "<I I"                         # mask padding
FORGET_IN = "<Q"                           # nlookup
BATCH_FORGET_IN = "<I I"                   # count dummy
FORGET_ONE = "<Q Q"                        # nodeid nlookup
STATFS_OUT = "<Q Q Q Q Q I I I I 24x"      # blocks bfree bavail files ffree bsize namelen frsize
INTERRUPT_IN = "<Q"                        # unique
NOTIFY_STORE_OUT = "<Q Q I I"              # nodeid offset size padding
NOTIFY_INVAL_INODE_OUT = "<Q q q"          # ino off len
NOTIFY_INVAL_ENTRY_OUT = "<Q I I"          # parent namelen flags

ENTRY_OUT_SIZE = struct.calcsize(ENTRY_OUT) + struct.calcsize(ATTR)
DIRENTPLUS_HEAD = ENTRY_OUT_SIZE + struct.calcsize(DIRENT)


def test_layout_sizes_match_the_header() -> None:
    """The sizes the kernel checks (FUSE_COMPAT_*_SIZE and sizeof of the 7.38 structs)."""
    sizes = {IN_HEADER: 40, OUT_HEADER: 16, INIT_IN: 64, INIT_OUT: 64, ATTR: 88,
             ATTR_OUT: 16, DIRENT: 24, OPEN_OUT: 16, CREATE_IN: 16, RW_IN: 40,
             SETATTR_IN: 88, RELEASE_IN: 24, STATFS_OUT: 80, NOTIFY_STORE_OUT: 24,
             NOTIFY_INVAL_INODE_OUT: 24, NOTIFY_INVAL_ENTRY_OUT: 16}
    for fmt, size in sizes.items():
        assert struct.calcsize(fmt) == size, fmt
    assert ENTRY_OUT_SIZE == 128 and DIRENTPLUS_HEAD == 152


# ----------------------------------------------------------------------------- requests

UID, GID, PID = 1000, 1001, 4242


def request(opcode: int, body: bytes = b"", *, unique: int = 2, nodeid: int = 1,
            uid: int = UID, gid: int = GID, pid: int = PID) -> bytes:
    size = struct.calcsize(IN_HEADER) + len(body)
    return struct.pack(IN_HEADER, size, opcode, unique, nodeid, uid, gid, pid, 0, 0) + body


def init_body(major: int = 7, minor: int = 38, flags: int = ALL_FLAGS,
              readahead: int = 128 * 1024) -> bytes:
    return struct.pack(INIT_IN, major, minor, readahead, flags & 0xFFFFFFFF, 0)


def cstr(name: bytes) -> bytes:
    return name + b"\0"


@dataclass
class Reply:
    unique: int
    error: int
    payload: bytes


def parse_replies(data: bytes) -> list[Reply]:
    out, pos = [], 0
    hsize = struct.calcsize(OUT_HEADER)
    while pos < len(data):
        size, error, unique = struct.unpack_from(OUT_HEADER, data, pos)
        assert size >= hsize and pos + size <= len(data), "reply length out of bounds"
        out.append(Reply(unique, error, data[pos + hsize:pos + size]))
        pos += size
    return out


@dataclass
class Attr:
    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


@dataclass
class Entry:
    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


def parse_attr(data: bytes, pos: int = 0) -> Attr:
    return Attr(*struct.unpack_from(ATTR, data, pos))


def parse_entry(data: bytes, pos: int = 0) -> Entry:
    nodeid, gen, ev, av, evn, avn = struct.unpack_from(ENTRY_OUT, data, pos)
    return Entry(nodeid, gen, ev, av, evn, avn,
                 parse_attr(data, pos + struct.calcsize(ENTRY_OUT)))


@dataclass
class DirentPlus:
    entry: Entry
    ino: int
    off: int
    type: int
    name: bytes


def parse_direntplus(data: bytes) -> list[DirentPlus]:
    out, pos = [], 0
    while pos < len(data):
        entry = parse_entry(data, pos)
        ino, off, namelen, typ = struct.unpack_from(DIRENT, data, pos + ENTRY_OUT_SIZE)
        start = pos + DIRENTPLUS_HEAD
        name = data[start:start + namelen]
        assert len(name) == namelen
        reclen = (DIRENTPLUS_HEAD + namelen + 7) & ~7       # FUSE_DIRENTPLUS_SIZE
        assert pos + reclen <= len(data)
        assert data[start + namelen:pos + reclen] == bytes(pos + reclen - start - namelen)
        out.append(DirentPlus(entry, ino, off, typ, name))
        pos += reclen
    return out


def split_ns(ns: int) -> tuple[int, int]:
    """A time in ns as (seconds, nanoseconds), nanoseconds in [0, 1e9), seconds two's
    complement in the unsigned 64-bit field (as libfuse packs a struct timespec)."""
    sec, nsec = divmod(ns, 10**9)
    return sec & (2**64 - 1), nsec


# ----------------------------------------------------------------------------- operations


def make_attr(ino: int = 5, *, mode: int = stat.S_IFREG | 0o644, size: int = 11,
              entry_timeout: float = 2.5, attr_timeout: float = 1.25) -> fuse.EntryAttributes:
    a = fuse.EntryAttributes()
    a.st_ino, a.generation, a.st_mode, a.st_nlink = ino, 3, mode, 1
    a.st_uid, a.st_gid, a.st_rdev, a.st_size = 1000, 1001, 0, size
    a.st_blksize, a.st_blocks = 4096, 8
    a.st_atime_ns = 1_700_000_000_123_456_789
    a.st_mtime_ns = 1_600_000_000_000_000_001
    a.st_ctime_ns = 1_500_000_000_999_999_999
    a.entry_timeout, a.attr_timeout = entry_timeout, attr_timeout
    return a


class Recorder(fuse.Operations):
    """Every operation the module dispatches, recording its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.inited: list[fuse.Session] = []
        self.destroyed = 0
        self.attr = make_attr()
        self.dir_entries: list[tuple[bytes, fuse.EntryAttributes]] = []
        self.readdir_results: list[bool] = []

    def last(self, name: str) -> tuple[Any, ...]:
        for n, args in reversed(self.calls):
            if n == name:
                return tuple(args)
        raise AssertionError(f"{name} not called: {self.calls}")

    def init(self, session: fuse.Session) -> None:
        self.inited.append(session)

    def destroy(self) -> None:
        self.destroyed += 1

    def lookup(self, parent: int, name: bytes, ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("lookup", (parent, bytes(name), ctx)))
        return self.attr

    def forget(self, items: list[tuple[int, int]]) -> None:
        self.calls.append(("forget", (list(items),)))

    def getattr(self, ino: int, ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("getattr", (ino, ctx)))
        return self.attr

    def setattr(self, ino: int, attr: fuse.EntryAttributes, fields: fuse.SetattrFields,
                fh: int | None, ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("setattr", (ino, attr, fields, fh, ctx)))
        return self.attr

    def readlink(self, ino: int, ctx: fuse.RequestContext) -> bytes:
        self.calls.append(("readlink", (ino, ctx)))
        return b"/some/target"

    def symlink(self, parent: int, name: bytes, target: bytes,
                ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("symlink", (parent, bytes(name), bytes(target), ctx)))
        return self.attr

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int,
              ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("mknod", (parent, bytes(name), mode, rdev, ctx)))
        return self.attr

    def mkdir(self, parent: int, name: bytes, mode: int,
              ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("mkdir", (parent, bytes(name), mode, ctx)))
        return self.attr

    def unlink(self, parent: int, name: bytes, ctx: fuse.RequestContext) -> None:
        self.calls.append(("unlink", (parent, bytes(name), ctx)))

    def rmdir(self, parent: int, name: bytes, ctx: fuse.RequestContext) -> None:
        self.calls.append(("rmdir", (parent, bytes(name), ctx)))

    def rename(self, parent: int, old: bytes, newparent: int, new: bytes, flags: int,
               ctx: fuse.RequestContext) -> None:
        self.calls.append(("rename", (parent, bytes(old), newparent, bytes(new), flags, ctx)))

    def link(self, ino: int, newparent: int, name: bytes,
             ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("link", (ino, newparent, bytes(name), ctx)))
        return self.attr

    def open(self, ino: int, flags: int, ctx: fuse.RequestContext) -> fuse.FileInfo:
        self.calls.append(("open", (ino, flags, ctx)))
        return fuse.FileInfo(fh=77, keep_cache=True, noflush=True)

    def read(self, fh: int, off: int, size: int) -> bytes:
        self.calls.append(("read", (fh, off, size)))
        return b"abcdefghij"[:min(size, 10)]

    def write(self, fh: int, off: int, data: Any) -> int:
        self.calls.append(("write", (fh, off, bytes(data))))
        return len(data)

    def statfs(self, ctx: fuse.RequestContext) -> fuse.StatvfsData:
        self.calls.append(("statfs", (ctx,)))
        s = fuse.StatvfsData()
        s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree = 100, 50, 40, 30, 20
        s.f_bsize, s.f_frsize, s.f_namemax = 8192, 512, 200
        return s

    def release(self, fh: int) -> None:
        self.calls.append(("release", (fh,)))

    def fsync(self, fh: int, datasync: bool) -> None:
        self.calls.append(("fsync", (fh, datasync)))

    def opendir(self, ino: int, ctx: fuse.RequestContext) -> int:
        self.calls.append(("opendir", (ino, ctx)))
        return 99

    def readdir(self, ino: int, fh: int, start_id: int, token: fuse.ReaddirToken) -> None:
        self.calls.append(("readdir", (ino, fh, start_id)))
        self.readdir_results = []
        for i, (name, attr) in enumerate(self.dir_entries[start_id:], start_id + 1):
            ok = fuse.readdir_reply(token, name, attr, i)
            self.readdir_results.append(ok)
            if not ok:
                break

    def releasedir(self, fh: int) -> None:
        self.calls.append(("releasedir", (fh,)))

    def access(self, ino: int, mask: int, ctx: fuse.RequestContext) -> bool:
        self.calls.append(("access", (ino, mask, ctx)))
        return mask != 2

    def create(self, parent: int, name: bytes, mode: int, flags: int,
               ctx: fuse.RequestContext) -> tuple[fuse.FileInfo, fuse.EntryAttributes]:
        self.calls.append(("create", (parent, bytes(name), mode, flags, ctx)))
        return fuse.FileInfo(fh=123, direct_io=True, nonseekable=True), self.attr


# ----------------------------------------------------------------------------- harness


class Harness:
    """A session whose descriptor is the write end of a pipe."""

    def __init__(self, ops: fuse.Operations | None = None, **kwargs: Any) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.ops: Any = ops if ops is not None else Recorder()
        self.session = fuse.Session(self.w, self.ops, **kwargs)
        self.unique = 100

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)

    def dispatch(self, buf: bytes) -> bool:
        return self.session._dispatch(buf)

    def replies(self) -> list[Reply]:
        data = b""
        while True:
            try:
                chunk = os.read(self.r, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        return parse_replies(data)

    def call(self, opcode: int, body: bytes = b"", *, nodeid: int = 1,
             **kw: Any) -> Reply:
        """One request that must get exactly one reply, to it."""
        self.unique += 1
        assert self.dispatch(request(opcode, body, unique=self.unique, nodeid=nodeid, **kw))
        replies = self.replies()
        assert len(replies) == 1, replies
        assert replies[0].unique == self.unique
        return replies[0]

    def ok(self, opcode: int, body: bytes = b"", **kw: Any) -> bytes:
        reply = self.call(opcode, body, **kw)
        assert reply.error == 0, os.strerror(-reply.error)
        return reply.payload

    def init(self, minor: int = 38, flags: int = ALL_FLAGS) -> bytes:
        return self.ok(OP_INIT, init_body(minor=minor, flags=flags))


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    harness.init()
    yield harness
    harness.close()


@pytest.fixture
def raw() -> Iterator[Harness]:
    """A session that has not had its INIT."""
    harness = Harness()
    yield harness
    harness.close()


# ----------------------------------------------------------------------------- INIT


def parse_init_out(payload: bytes) -> dict[str, int]:
    assert len(payload) == 64
    keys = ("major", "minor", "max_readahead", "flags", "max_background",
            "congestion_threshold", "max_write", "time_gran", "max_pages", "map_alignment",
            "flags2")
    return dict(zip(keys, struct.unpack(INIT_OUT, payload), strict=True))


@pytest.mark.parametrize("minor", [31, 36, 38, 39, 45])
def test_init_negotiates_the_minor_version(raw: Harness, minor: int) -> None:
    out = parse_init_out(raw.init(minor=minor))
    assert out["major"] == 7
    assert out["minor"] == min(minor, 38)
    assert raw.session.proto_minor == min(minor, 38)
    assert raw.ops.inited == [raw.session]


def test_init_flags_are_what_both_sides_want(raw: Harness) -> None:
    out = parse_init_out(raw.init(flags=ALL_FLAGS))
    assert out["flags"] == SERVER_WANTS
    assert out["flags"] & F_CACHE_SYMLINKS and out["flags"] & F_DO_READDIRPLUS
    assert out["flags"] & F_MAX_PAGES and out["flags"] & F_ATOMIC_O_TRUNC
    assert not out["flags"] & F_WRITEBACK_CACHE       # only when asked for
    assert not out["flags"] & F_READDIRPLUS_AUTO      # always plus
    assert not out["flags"] & F_INIT_EXT and out["flags2"] == 0
    assert raw.session.flags == SERVER_WANTS


def test_init_flags_never_exceed_the_kernel_offer(raw: Harness) -> None:
    offered = F_ASYNC_READ | F_DO_READDIRPLUS | F_POSIX_LOCKS | F_WRITEBACK_CACHE
    out = parse_init_out(raw.init(flags=offered))
    assert out["flags"] == F_ASYNC_READ | F_DO_READDIRPLUS


@given(offered=st.integers(0, ALL_FLAGS), writeback=st.booleans(), killpriv=st.booleans())
def test_init_flags_are_the_intersection(offered: int, writeback: bool, killpriv: bool) -> None:
    harness = Harness(writeback_cache=writeback, handle_killpriv=killpriv)
    try:
        out = parse_init_out(harness.init(flags=offered))
    finally:
        harness.close()
    want = (SERVER_WANTS | (F_WRITEBACK_CACHE if writeback else 0)
            | (F_HANDLE_KILLPRIV_V2 if killpriv else 0))
    assert out["flags"] == offered & want
    assert not out["flags"] & F_HANDLE_KILLPRIV  # (version 1 would also cover chown by root)


def test_init_writeback_cache_when_asked() -> None:
    harness = Harness(writeback_cache=True)
    try:
        out = parse_init_out(harness.init(flags=ALL_FLAGS))
        assert out["flags"] == SERVER_WANTS | F_WRITEBACK_CACHE
        harness2 = Harness(writeback_cache=True)
        try:  # but not when the kernel does not offer it
            out2 = parse_init_out(harness2.init(flags=ALL_FLAGS & ~F_WRITEBACK_CACHE))
            assert out2["flags"] == SERVER_WANTS
        finally:
            harness2.close()
    finally:
        harness.close()


@pytest.mark.parametrize(("max_write", "pages"), [(1 << 20, 256), (128 * 1024, 32),
                                                   (4096 * 3 + 1, 4)])
def test_init_max_write_and_pages(max_write: int, pages: int) -> None:
    harness = Harness(max_write=max_write, max_readahead=1 << 18)
    try:
        out = parse_init_out(harness.init())
    finally:
        harness.close()
    assert out["max_write"] == max_write
    assert out["max_pages"] == pages
    assert out["max_readahead"] == 1 << 18
    assert out["time_gran"] == 1          # nanosecond timestamps
    assert out["max_background"] > 0 and out["congestion_threshold"] <= out["max_background"]
    assert out["map_alignment"] == 0


@pytest.mark.parametrize(("major", "minor"), [(7, 30), (7, 8), (6, 38), (8, 0)])
def test_init_refuses_unsupported_protocols(raw: Harness, major: int, minor: int) -> None:
    reply = raw.call(OP_INIT, init_body(major=major, minor=minor))
    assert reply.error == -errno.EPROTO and reply.payload == b""
    assert not raw.ops.inited
    # and the session is still not initialized
    assert raw.call(OP_GETATTR, struct.pack(GETATTR_IN, 0, 0, 0)).error == -errno.ENOSYS


def test_init_accepts_the_old_16_byte_init_in(raw: Harness) -> None:
    """Before 7.36 fuse_init_in ended after ``flags``."""
    out = parse_init_out(raw.ok(OP_INIT, struct.pack("<IIII", 7, 31, 65536,
                                                     F_DO_READDIRPLUS | F_BIG_WRITES)))
    assert out["minor"] == 31 and out["flags"] == F_DO_READDIRPLUS | F_BIG_WRITES


@pytest.mark.parametrize("opcode", [OP_LOOKUP, OP_GETATTR, OP_READ, OP_READDIRPLUS, 9999])
def test_requests_before_init_get_enosys(raw: Harness, opcode: int) -> None:
    body = cstr(b"x") if opcode == OP_LOOKUP else bytes(40)
    assert raw.call(opcode, body).error == -errno.ENOSYS
    assert raw.ops.calls == []
    raw.init()
    if opcode != 9999:
        assert raw.call(opcode, body).error == 0


# ----------------------------------------------------------------------------- dispatch


class Minimal(fuse.Operations):
    def __init__(self) -> None:
        self.destroyed = 0

    def getattr(self, ino: int, ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        return make_attr(ino)

    def destroy(self) -> None:
        self.destroyed += 1


@pytest.mark.parametrize("opcode", [OP_LOOKUP, OP_READ, OP_WRITE, OP_OPEN, OP_MKDIR,
                                    OP_READDIRPLUS, OP_RENAME2, OP_SETATTR,
                                    # without opendir: the kernel opens directories itself
                                    OP_OPENDIR, OP_RELEASEDIR,
                                    # opcodes the module never serves
                                    OP_READDIR, OP_FLUSH, OP_GETXATTR, OP_SETXATTR,
                                    OP_FALLOCATE, OP_LSEEK, 17000])
def test_unimplemented_opcodes_get_enosys(opcode: int) -> None:
    harness = Harness(Minimal())
    try:
        harness.init()
        reply = harness.call(opcode, bytes(64))
        assert reply.error == -errno.ENOSYS and reply.payload == b""
        # and the session goes on
        attr = parse_attr(harness.ok(OP_GETATTR, bytes(16), nodeid=9), 16)
        assert attr.ino == 9
    finally:
        harness.close()


def test_forget_gets_no_reply(h: Harness) -> None:
    assert h.dispatch(request(OP_FORGET, struct.pack(FORGET_IN, 7), nodeid=42, unique=5))
    assert h.replies() == []
    assert h.ops.last("forget") == ([(42, 7)],)


def test_batch_forget_gets_no_reply(h: Harness) -> None:
    items = [(10, 1), (11, 2), (2**63, 2**64 - 1)]
    body = struct.pack(BATCH_FORGET_IN, len(items), 0)
    body += b"".join(struct.pack(FORGET_ONE, *i) for i in items)
    assert h.dispatch(request(OP_BATCH_FORGET, body, nodeid=0, unique=6))
    assert h.replies() == []
    assert [tuple(i) for i in h.ops.last("forget")[0]] == items


def test_forget_failing_gets_no_reply(h: Harness) -> None:
    def boom(items: Any) -> None:
        raise RuntimeError("bug in forget")

    h.ops.forget = boom
    assert h.dispatch(request(OP_FORGET, struct.pack(FORGET_IN, 1), unique=5))
    assert h.replies() == []


def test_interrupt_gets_no_reply(h: Harness) -> None:
    assert h.dispatch(request(OP_INTERRUPT, struct.pack(INTERRUPT_IN, 3), unique=4))
    assert h.replies() == []


@pytest.mark.parametrize("opcode", [OP_FORGET, OP_BATCH_FORGET])
def test_forget_without_a_forget_handler_gets_no_reply(opcode: int) -> None:
    harness = Harness(Minimal())
    try:
        harness.init()
        body = (struct.pack(FORGET_IN, 1) if opcode == OP_FORGET
                else struct.pack(BATCH_FORGET_IN, 1, 0) + struct.pack(FORGET_ONE, 5, 1))
        assert harness.dispatch(request(opcode, body, unique=8))
        assert harness.replies() == []
    finally:
        harness.close()


def test_destroy_gets_an_empty_reply_and_ends(h: Harness) -> None:
    assert h.dispatch(request(OP_DESTROY, unique=77)) is False
    assert h.replies() == [Reply(77, 0, b"")]


# ----------------------------------------------------------------------------- errors


def test_fuse_error_gives_its_errno(h: Harness) -> None:
    def lookup(parent: int, name: bytes, ctx: Any) -> Any:
        raise fuse.FUSEError(errno.ENAMETOOLONG)

    h.ops.lookup = lookup
    reply = h.call(OP_LOOKUP, cstr(b"name"))
    assert reply.error == -errno.ENAMETOOLONG and reply.payload == b""


def test_access_denied_is_eacces(h: Harness) -> None:
    assert h.call(OP_ACCESS, struct.pack(ACCESS_IN, 2, 0), nodeid=3).error == -errno.EACCES
    assert h.ok(OP_ACCESS, struct.pack(ACCESS_IN, 4, 0), nodeid=3) == b""
    assert h.ops.last("access")[:2] == (3, 4)


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyError(3), ValueError(),
                                 ZeroDivisionError(), struct.error("x")])
def test_other_exceptions_give_eio_and_the_session_goes_on(h: Harness,
                                                           exc: Exception) -> None:
    def read(fh: int, off: int, size: int) -> bytes:
        raise exc

    h.ops.read = read
    reply = h.call(OP_READ, struct.pack(RW_IN, 1, 0, 10, 0, 0, 0, 0))
    assert reply.error == -errno.EIO and reply.payload == b""
    assert parse_attr(h.ok(OP_GETATTR, bytes(16)), 16).ino == 5


@pytest.mark.parametrize("exc", [PermissionError(errno.EPERM, "x"),
                                 FileNotFoundError(errno.ENOENT, "x"), OSError(errno.ENODEV, "x")])
def test_handler_oserror_gives_eio(h: Harness, exc: OSError) -> None:
    def read(fh: int, off: int, size: int) -> bytes:
        raise exc

    h.ops.read = read
    assert h.dispatch(request(OP_READ, struct.pack(RW_IN, 1, 0, 10, 0, 0, 0, 0), unique=9))
    assert [(r.unique, r.error) for r in h.replies()] == [(9, -errno.EIO)]


@pytest.mark.parametrize("path", ["reply", "error"])
def test_enoent_writing_a_reply_is_ignored(h: Harness, monkeypatch: pytest.MonkeyPatch,
                                           path: str) -> None:
    """The kernel answers ENOENT to the write of a reply it no longer waits for."""
    def gone(*args: Any) -> Any:
        raise OSError(errno.ENOENT, "no such request")

    if path == "error":
        def lookup(parent: int, name: bytes, ctx: Any) -> Any:
            raise fuse.FUSEError(errno.EACCES)

        h.ops.lookup = lookup
    with monkeypatch.context() as m:
        m.setattr(os, "writev", gone)
        m.setattr(os, "write", gone)
        assert h.dispatch(request(OP_LOOKUP, cstr(b"a"), unique=11)) is True
    assert h.replies() == []
    assert parse_attr(h.ok(OP_GETATTR, bytes(16)), 16).ino == 5


def test_enodev_writing_a_reply_ends_the_session(h: Harness,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(*args: Any) -> Any:
        raise OSError(errno.ENODEV, "aborted")

    with monkeypatch.context() as m:
        m.setattr(os, "writev", gone)
        assert h.dispatch(request(OP_LOOKUP, cstr(b"a"), unique=11)) is False


# ----------------------------------------------------------------------------- LOOKUP, attrs


def check_entry(e: Entry, a: fuse.EntryAttributes) -> None:
    assert e.nodeid == a.st_ino and e.generation == a.generation
    assert e.entry_valid + e.entry_valid_nsec / 1e9 == pytest.approx(a.entry_timeout, abs=2e-9)
    assert e.attr_valid + e.attr_valid_nsec / 1e9 == pytest.approx(a.attr_timeout, abs=2e-9)
    assert e.entry_valid_nsec < 10**9 and e.attr_valid_nsec < 10**9
    check_attr(e.attr, a)


def check_attr(got: Attr, a: fuse.EntryAttributes) -> None:
    assert got.ino == a.st_ino and got.size == a.st_size and got.blocks == a.st_blocks
    assert (got.atime, got.atimensec) == split_ns(a.st_atime_ns)
    assert (got.mtime, got.mtimensec) == split_ns(a.st_mtime_ns)
    assert (got.ctime, got.ctimensec) == split_ns(a.st_ctime_ns)
    assert got.mode == a.st_mode and got.nlink == a.st_nlink
    assert got.uid == a.st_uid and got.gid == a.st_gid and got.rdev == a.st_rdev
    assert got.blksize == a.st_blksize and got.flags == 0


def test_lookup_reply(h: Harness) -> None:
    payload = h.ok(OP_LOOKUP, cstr(b"file.txt"), nodeid=17)
    assert len(payload) == ENTRY_OUT_SIZE
    e = parse_entry(payload)
    assert (e.nodeid, e.generation) == (5, 3)
    assert (e.entry_valid, e.entry_valid_nsec) == (2, 500_000_000)
    assert (e.attr_valid, e.attr_valid_nsec) == (1, 250_000_000)
    assert (e.attr.atime, e.attr.atimensec) == (1_700_000_000, 123_456_789)
    assert (e.attr.mtime, e.attr.mtimensec) == (1_600_000_000, 1)
    assert (e.attr.ctime, e.attr.ctimensec) == (1_500_000_000, 999_999_999)
    check_entry(e, h.ops.attr)
    parent, name, ctx = h.ops.last("lookup")
    assert (parent, name) == (17, b"file.txt")
    assert (ctx.uid, ctx.gid, ctx.pid, ctx.umask) == (UID, GID, PID, 0)


def test_lookup_name_ends_at_the_first_nul(h: Harness) -> None:
    h.ok(OP_LOOKUP, b"abc\0def\0\0\0")
    assert h.ops.last("lookup")[1] == b"abc"


def test_lookup_name_without_nul_is_an_error_not_a_crash(h: Harness) -> None:
    assert h.call(OP_LOOKUP, b"abc").error < 0
    h.ok(OP_LOOKUP, cstr(b"abc"))


def test_negative_lookup(h: Harness) -> None:
    neg = fuse.EntryAttributes()
    neg.entry_timeout = 7.75
    neg.attr_timeout = 3.0
    neg.st_mode = stat.S_IFREG | 0o600
    h.ops.attr = neg
    e = parse_entry(h.ok(OP_LOOKUP, cstr(b"missing")))
    assert e.nodeid == 0 and e.generation == 0
    assert (e.entry_valid, e.entry_valid_nsec) == (7, 750_000_000)
    assert (e.attr_valid, e.attr_valid_nsec) == (0, 0)
    assert e.attr == Attr(*([0] * 16))


def test_zero_and_negative_timeouts(h: Harness) -> None:
    h.ops.attr = make_attr(entry_timeout=0.0, attr_timeout=-5.0)
    e = parse_entry(h.ok(OP_LOOKUP, cstr(b"x")))
    assert (e.entry_valid, e.entry_valid_nsec, e.attr_valid, e.attr_valid_nsec) == (0, 0, 0, 0)


def test_times_before_the_epoch(h: Harness) -> None:
    a = make_attr()
    a.st_mtime_ns = -1_500_000_000          # 1969-12-31T23:59:58.5
    a.st_atime_ns = -1
    h.ops.attr = a
    attr = parse_entry(h.ok(OP_LOOKUP, cstr(b"old"))).attr
    assert (attr.mtime, attr.mtimensec) == (2**64 - 2, 500_000_000)
    assert (attr.atime, attr.atimensec) == (2**64 - 1, 999_999_999)


def test_getattr_reply(h: Harness) -> None:
    payload = h.ok(OP_GETATTR, struct.pack(GETATTR_IN, 0, 0, 0), nodeid=5)
    assert len(payload) == struct.calcsize(ATTR_OUT) + struct.calcsize(ATTR)
    valid, valid_nsec, dummy = struct.unpack_from(ATTR_OUT, payload)
    assert (valid, valid_nsec, dummy) == (1, 250_000_000, 0)
    check_attr(parse_attr(payload, struct.calcsize(ATTR_OUT)), h.ops.attr)
    assert h.ops.last("getattr")[0] == 5


def test_request_with_extensions_excludes_them_from_the_body(h: Harness) -> None:
    """``total_extlen`` (8-byte units) at the end of a request is not part of the body."""
    body = cstr(b"name") + bytes(3)
    ext = struct.pack("<II", 16, 99) + bytes(8)   # a fuse_ext_header and its payload
    size = struct.calcsize(IN_HEADER) + len(body) + len(ext)
    buf = struct.pack(IN_HEADER, size, OP_LOOKUP, 55, 1, UID, GID, PID, 2, 0) + body + ext
    assert h.dispatch(buf)
    [reply] = h.replies()
    assert reply.unique == 55 and reply.error == 0
    assert h.ops.last("lookup")[1] == b"name"


# ----------------------------------------------------------------------------- READDIRPLUS


def readdir_in(fh: int, offset: int, size: int) -> bytes:
    return struct.pack(RW_IN, fh, offset, size, 0, 0, 0, 0)


def dir_entries(n: int) -> list[tuple[bytes, fuse.EntryAttributes]]:
    modes = [stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777,
             stat.S_IFCHR | 0o600, stat.S_IFIFO | 0o600, stat.S_IFSOCK | 0o600,
             stat.S_IFBLK | 0o600]
    out = []
    for i in range(n):
        name = b"n" * (i % 13 + 1)
        out.append((name, make_attr(10 + i, mode=modes[i % len(modes)])))
    return out


def test_readdirplus_packing(h: Harness) -> None:
    h.ops.dir_entries = dir_entries(9)
    payload = h.ok(OP_READDIRPLUS, readdir_in(99, 0, 1 << 16), nodeid=1)
    assert h.ops.last("readdir") == (1, 99, 0)
    got = parse_direntplus(payload)
    assert len(got) == 9
    for i, (d, (name, attr)) in enumerate(zip(got, h.ops.dir_entries, strict=True)):
        assert d.name == name
        assert d.ino == attr.st_ino
        assert d.off == i + 1
        assert d.type == attr.st_mode >> 12 == stat.S_IFMT(attr.st_mode) >> 12
        check_entry(d.entry, attr)


def test_readdirplus_resumes_at_the_offset(h: Harness) -> None:
    h.ops.dir_entries = dir_entries(9)
    payload = h.ok(OP_READDIRPLUS, readdir_in(99, 6, 1 << 16), nodeid=7)
    assert h.ops.last("readdir") == (7, 99, 6)
    assert [d.off for d in parse_direntplus(payload)] == [7, 8, 9]


def test_readdirplus_stops_when_the_buffer_is_full(h: Harness) -> None:
    h.ops.dir_entries = [(b"a" * 8, make_attr(20)), (b"b", make_attr(21)),
                         (b"c" * 9, make_attr(22)), (b"d", make_attr(23))]
    rec8, rec1, rec9 = DIRENTPLUS_HEAD + 8, DIRENTPLUS_HEAD + 8, DIRENTPLUS_HEAD + 16
    size = rec8 + rec1 + rec9 - 1        # the third entry is one byte too long
    payload = h.ok(OP_READDIRPLUS, readdir_in(1, 0, size))
    assert len(payload) == rec8 + rec1 <= size
    assert [d.name for d in parse_direntplus(payload)] == [b"a" * 8, b"b"]
    assert h.ops.readdir_results == [True, True, False]
    # exactly full
    payload = h.ok(OP_READDIRPLUS, readdir_in(1, 0, size + 1))
    assert len(payload) == size + 1
    assert h.ops.readdir_results == [True, True, True, False]
    # not even one entry fits: an empty reply (end of directory for the kernel)
    assert h.ok(OP_READDIRPLUS, readdir_in(1, 0, DIRENTPLUS_HEAD)) == b""
    assert h.ops.readdir_results == [False]


def test_readdir_reply_token() -> None:
    token = fuse.ReaddirToken(DIRENTPLUS_HEAD + 8)
    assert fuse.readdir_reply(token, b"x" * 8, make_attr(3), 1)
    assert token.used == DIRENTPLUS_HEAD + 8
    parts = list(token.parts)
    assert not fuse.readdir_reply(token, b"y", make_attr(4), 2)
    assert token.parts == parts and token.used == DIRENTPLUS_HEAD + 8


U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
TIME_NS = st.integers(-(2**62), 2**62)


@given(ino=U64, generation=U64, size=U64, blocks=U64, mode=U32, nlink=U32, uid=U32,
       gid=U32, rdev=U32, blksize=U32, times=st.tuples(TIME_NS, TIME_NS, TIME_NS),
       timeouts=st.tuples(st.floats(-1, 1e6), st.floats(-1, 1e6)), next_id=U64,
       name=st.binary(min_size=1, max_size=40))
def test_readdir_reply_packs_the_generic_layout(
    ino: int, generation: int, size: int, blocks: int, mode: int, nlink: int, uid: int,
    gid: int, rdev: int, blksize: int, times: tuple[int, int, int],
    timeouts: tuple[float, float], next_id: int, name: bytes
) -> None:
    """readdir_reply's one-pack fast path gives the bytes of fuse_entry_out (as LOOKUP
    replies pack it), fuse_dirent and the padded name."""
    a = fuse.EntryAttributes()
    a.st_ino, a.generation, a.st_size, a.st_blocks = ino, generation, size, blocks
    a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev = mode, nlink, uid, gid, rdev
    a.st_blksize = blksize
    a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = times
    a.entry_timeout, a.attr_timeout = timeouts
    token = fuse.ReaddirToken(1 << 16)
    assert fuse.readdir_reply(token, name, a, next_id)
    padded = name + bytes(-len(name) % 8)
    expected = (fuse._pack_entry(a)
                + fuse._DIRENT_HEAD.pack(ino, next_id, len(name), stat.S_IFMT(mode) >> 12)
                + padded)
    assert b"".join(token.parts) == expected
    assert token.used == len(expected)


def test_readdirplus_negative_entry_for_dot(h: Harness) -> None:
    """A zero st_ino entry gives a zero nodeid (the kernel then makes no lookup)."""
    dot = fuse.EntryAttributes()
    dot.st_mode = stat.S_IFDIR | 0o755
    h.ops.dir_entries = [(b".", dot), (b"..", dot)]
    got = parse_direntplus(h.ok(OP_READDIRPLUS, readdir_in(1, 0, 4096)))
    assert [(d.name, d.entry.nodeid, d.type, d.off) for d in got] == [
        (b".", 0, stat.S_IFDIR >> 12, 1), (b"..", 0, stat.S_IFDIR >> 12, 2)]


# ----------------------------------------------------------------------------- SETATTR


def setattr_in(valid: int, *, fh: int = 0, size: int = 0, atime: tuple[int, int] = (0, 0),
               mtime: tuple[int, int] = (0, 0), ctime: tuple[int, int] = (0, 0),
               mode: int = 0, uid: int = 0, gid: int = 0) -> bytes:
    return struct.pack(SETATTR_IN, valid, 0, fh, size, 0xDEAD, atime[0], mtime[0], ctime[0],
                       atime[1], mtime[1], ctime[1], mode, 0, uid, gid, 0)


@pytest.mark.parametrize(("valid", "fields"), [
    (V_MODE, {"update_mode"}), (V_UID, {"update_uid"}), (V_GID, {"update_gid"}),
    (V_SIZE, {"update_size"}), (V_ATIME, {"update_atime"}), (V_MTIME, {"update_mtime"}),
    (V_CTIME, {"update_ctime"}), (V_ATIME | V_ATIME_NOW, {"update_atime"}),
    (V_MTIME | V_MTIME_NOW, {"update_mtime"}), (V_FH | V_LOCKOWNER | V_KILL_SUIDGID, set()),
    (V_MODE | V_UID | V_GID | V_SIZE | V_ATIME | V_MTIME | V_CTIME,
     {"update_mode", "update_uid", "update_gid", "update_size", "update_atime",
      "update_mtime", "update_ctime"}),
])
def test_setattr_fields(h: Harness, valid: int, fields: set[str]) -> None:
    h.ok(OP_SETATTR, setattr_in(valid, fh=5, size=123, mode=0o100600, uid=7, gid=8,
                                atime=(10, 11), mtime=(20, 21), ctime=(30, 31)), nodeid=44)
    ino, attr, got, fh, ctx = h.ops.last("setattr")
    assert ino == 44 and ctx.uid == UID
    assert {k for k, v in got._asdict().items() if v} == fields
    assert fh == (5 if valid & V_FH else None)
    assert (attr.st_size, attr.st_mode, attr.st_uid, attr.st_gid) == (123, 0o100600, 7, 8)
    if not valid & V_ATIME_NOW:
        assert attr.st_atime_ns == 10 * 10**9 + 11
    if not valid & V_MTIME_NOW:
        assert attr.st_mtime_ns == 20 * 10**9 + 21
    assert attr.st_ctime_ns == 30 * 10**9 + 31


def test_setattr_now(h: Harness) -> None:
    before = time.time_ns()
    h.ok(OP_SETATTR, setattr_in(V_ATIME | V_ATIME_NOW | V_MTIME | V_MTIME_NOW,
                                atime=(1, 2), mtime=(3, 4)))
    after = time.time_ns()
    _, attr, fields, fh, _ = h.ops.last("setattr")
    assert before <= attr.st_atime_ns <= after and before <= attr.st_mtime_ns <= after
    assert fields.update_atime and fields.update_mtime and fh is None
    # only the one marked NOW is the current time
    h.ok(OP_SETATTR, setattr_in(V_ATIME | V_MTIME | V_MTIME_NOW, atime=(1, 2), mtime=(3, 4)))
    _, attr, *_ = h.ops.last("setattr")
    assert attr.st_atime_ns == 1_000_000_002 and attr.st_mtime_ns >= before


def test_setattr_reply_is_attr_out(h: Harness) -> None:
    payload = h.ok(OP_SETATTR, setattr_in(V_SIZE, size=0))
    assert len(payload) == 16 + 88
    assert struct.unpack_from(ATTR_OUT, payload) == (1, 250_000_000, 0)


# ----------------------------------------------------------------------------- the others


def test_write_passes_exactly_the_payload(h: Harness) -> None:
    data = bytes(range(256)) * 3 + b"\0tail"
    reply = h.ok(OP_WRITE, struct.pack(RW_IN, 31, 4096, len(data), 0, 0, 0, 0) + data, nodeid=8)
    assert h.ops.last("write") == (31, 4096, data)
    assert struct.unpack(WRITE_OUT, reply) == (len(data), 0)


def test_write_ignores_bytes_past_size(h: Harness) -> None:
    body = struct.pack(RW_IN, 1, 0, 3, 0, 0, 0, 0) + b"abcdef"
    assert struct.unpack(WRITE_OUT, h.ok(OP_WRITE, body)) == (3, 0)
    assert h.ops.last("write") == (1, 0, b"abc")


def test_read(h: Harness) -> None:
    assert h.ok(OP_READ, struct.pack(RW_IN, 31, 100, 4, 0, 0, 0, 0)) == b"abcd"
    assert h.ops.last("read") == (31, 100, 4)


def test_open_reply_flags(h: Harness) -> None:
    payload = h.ok(OP_OPEN, struct.pack(OPEN_IN, os.O_RDWR | os.O_APPEND, 0), nodeid=6)
    assert struct.unpack(OPEN_OUT, payload) == (77, FOPEN_KEEP_CACHE | FOPEN_NOFLUSH, 0)
    assert h.ops.last("open")[:2] == (6, os.O_RDWR | os.O_APPEND)


def test_create_passes_umask_and_replies_entry_and_open(h: Harness) -> None:
    body = struct.pack(CREATE_IN, os.O_WRONLY | os.O_CREAT, 0o100666, 0o027, 0) + cstr(b"new")
    payload = h.ok(OP_CREATE, body, nodeid=3)
    parent, name, mode, flags, ctx = h.ops.last("create")
    assert (parent, name, mode, flags) == (3, b"new", 0o100666, os.O_WRONLY | os.O_CREAT)
    assert (ctx.uid, ctx.gid, ctx.pid, ctx.umask) == (UID, GID, PID, 0o027)
    assert len(payload) == ENTRY_OUT_SIZE + 16
    check_entry(parse_entry(payload), h.ops.attr)
    assert struct.unpack_from(OPEN_OUT, payload, ENTRY_OUT_SIZE) == (
        123, FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE, 0)


def test_mkdir_passes_umask(h: Harness) -> None:
    payload = h.ok(OP_MKDIR, struct.pack(MKDIR_IN, 0o755, 0o022) + cstr(b"sub"), nodeid=4)
    parent, name, mode, ctx = h.ops.last("mkdir")
    # the kernel sends permission bits only; the handler gets a directory mode
    assert (parent, name, mode, ctx.umask) == (4, b"sub", stat.S_IFDIR | 0o755, 0o022)
    assert parse_entry(payload).nodeid == 5


def test_mknod_passes_mode_rdev_umask(h: Harness) -> None:
    body = struct.pack(MKNOD_IN, stat.S_IFIFO | 0o640, 0x1234, 0o077, 0) + cstr(b"fifo")
    h.ok(OP_MKNOD, body, nodeid=4)
    parent, name, mode, rdev, ctx = h.ops.last("mknod")
    assert (parent, name, mode, rdev, ctx.umask) == (4, b"fifo", stat.S_IFIFO | 0o640,
                                                     0x1234, 0o077)


def test_rename(h: Harness) -> None:
    assert h.ok(OP_RENAME, struct.pack(RENAME_IN, 9) + cstr(b"old") + cstr(b"new"),
                nodeid=4) == b""
    assert h.ops.last("rename")[:5] == (4, b"old", 9, b"new", 0)


@pytest.mark.parametrize("flags", [0, 1, 2, 4])   # NOREPLACE, EXCHANGE, WHITEOUT
def test_rename2(h: Harness, flags: int) -> None:
    body = struct.pack(RENAME2_IN, 12, flags, 0) + cstr(b"from") + cstr(b"to")
    assert h.ok(OP_RENAME2, body, nodeid=4) == b""
    assert h.ops.last("rename")[:5] == (4, b"from", 12, b"to", flags)
    assert fuse.RENAME_NOREPLACE == 1 and fuse.RENAME_EXCHANGE == 2


def test_symlink_passes_name_then_target(h: Harness) -> None:
    payload = h.ok(OP_SYMLINK, cstr(b"link") + cstr(b"../target/file"), nodeid=4)
    assert h.ops.last("symlink")[:3] == (4, b"link", b"../target/file")
    assert parse_entry(payload).nodeid == 5


def test_link(h: Harness) -> None:
    payload = h.ok(OP_LINK, struct.pack(LINK_IN, 33) + cstr(b"hard"), nodeid=4)
    assert h.ops.last("link")[:3] == (33, 4, b"hard")
    assert parse_entry(payload).nodeid == 5


def test_a_subtree_connection_maps_its_root_to_the_subtree_inode() -> None:
    """A connection serving a subtree (root=N): node id 1 in the header and in request
    bodies stands for inode N; other node ids pass unchanged."""
    harness = Harness(root=50)
    try:
        harness.init()
        parse_entry(harness.ok(OP_LOOKUP, cstr(b"x"), nodeid=1))
        assert harness.ops.last("lookup")[:2] == (50, b"x")
        harness.ok(OP_LOOKUP, cstr(b"y"), nodeid=7)
        assert harness.ops.last("lookup")[:2] == (7, b"y")
        harness.ok(OP_GETATTR, bytes(16), nodeid=1)
        assert harness.ops.last("getattr")[0] == 50
        harness.ok(OP_RENAME, struct.pack(RENAME_IN, 1) + cstr(b"a") + cstr(b"b"), nodeid=7)
        assert harness.ops.last("rename")[:5] == (7, b"a", 50, b"b", 0)
        harness.ok(OP_RENAME2, struct.pack(RENAME2_IN, 1, 0, 0) + cstr(b"a") + cstr(b"b"),
                   nodeid=1)
        assert harness.ops.last("rename")[:5] == (50, b"a", 50, b"b", 0)
        harness.ok(OP_LINK, struct.pack(LINK_IN, 1) + cstr(b"l"), nodeid=7)
        assert harness.ops.last("link")[:3] == (50, 7, b"l")
        body = struct.pack(BATCH_FORGET_IN, 2, 0) + struct.pack(FORGET_ONE, 1, 3) + \
            struct.pack(FORGET_ONE, 9, 4)
        assert harness.dispatch(request(OP_BATCH_FORGET, body, nodeid=0, unique=6))
        assert [tuple(i) for i in harness.ops.last("forget")[0]] == [(50, 3), (9, 4)]
    finally:
        harness.close()


def test_unlink_rmdir(h: Harness) -> None:
    assert h.ok(OP_UNLINK, cstr(b"f"), nodeid=4) == b""
    assert h.ops.last("unlink")[:2] == (4, b"f")
    assert h.ok(OP_RMDIR, cstr(b"d"), nodeid=4) == b""
    assert h.ops.last("rmdir")[:2] == (4, b"d")


def test_readlink(h: Harness) -> None:
    assert h.ok(OP_READLINK, nodeid=6) == b"/some/target"
    assert h.ops.last("readlink")[0] == 6


def test_statfs(h: Harness) -> None:
    payload = h.ok(OP_STATFS)
    assert struct.unpack(STATFS_OUT, payload) == (100, 50, 40, 30, 20, 8192, 200, 512, 0)


def test_release_fsync_opendir_releasedir(h: Harness) -> None:
    assert h.ok(OP_RELEASE, struct.pack(RELEASE_IN, 71, 0, 0, 0)) == b""
    assert h.ops.last("release") == (71,)
    assert h.ok(OP_FSYNC, struct.pack(FSYNC_IN, 72, 1, 0)) == b""
    assert h.ops.last("fsync") == (72, True)
    assert h.ok(OP_FSYNC, struct.pack(FSYNC_IN, 72, 0, 0)) == b""
    assert h.ops.last("fsync") == (72, False)
    assert struct.unpack(OPEN_OUT, h.ok(OP_OPENDIR, struct.pack(OPEN_IN, 0, 0))) == (99, 0, 0)
    assert h.ok(OP_RELEASEDIR, struct.pack(RELEASE_IN, 99, 0, 0, 0)) == b""
    assert h.ops.last("releasedir") == (99,)


# ----------------------------------------------------------------------------- notifications


def read_notification(h: Harness) -> tuple[int, bytes]:
    [reply] = h.replies()
    assert reply.unique == 0
    return reply.error, reply.payload


def test_notify_store(h: Harness) -> None:
    h.session.notify_store(5, 8192, memoryview(b"page data"))
    code, payload = read_notification(h)
    assert code == N_STORE
    assert struct.unpack_from(NOTIFY_STORE_OUT, payload) == (5, 8192, 9, 0)
    assert payload[24:] == b"page data"


def test_invalidate_inode(h: Harness) -> None:
    h.session.invalidate_inode(6)
    code, payload = read_notification(h)
    assert code == N_INVAL_INODE
    assert struct.unpack(NOTIFY_INVAL_INODE_OUT, payload) == (6, 0, 0)
    h.session.invalidate_inode(6, -1, 0)       # attributes only
    code, payload = read_notification(h)
    assert struct.unpack(NOTIFY_INVAL_INODE_OUT, payload) == (6, -1, 0)
    h.session.invalidate_inode(6, 4096, 8192)
    code, payload = read_notification(h)
    assert struct.unpack(NOTIFY_INVAL_INODE_OUT, payload) == (6, 4096, 8192)


def test_invalidate_entry(h: Harness) -> None:
    h.session.invalidate_entry(1, b"gone.txt")
    code, payload = read_notification(h)
    assert code == N_INVAL_ENTRY
    assert struct.unpack_from(NOTIFY_INVAL_ENTRY_OUT, payload) == (1, 8, 0)
    assert payload[16:] == b"gone.txt\0"


# ----------------------------------------------------------------------------- properties

names = st.binary(min_size=1, max_size=255).filter(lambda b: b"\0" not in b and b"/" not in b)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
timeouts = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1e6,
                                             allow_nan=False, allow_infinity=False))


@st.composite
def attributes(draw: st.DrawFn) -> fuse.EntryAttributes:
    a = fuse.EntryAttributes()
    a.st_ino = draw(st.integers(1, 2**64 - 1))
    a.generation = draw(u64)
    a.entry_timeout, a.attr_timeout = draw(timeouts), draw(timeouts)
    a.st_mode = draw(st.sampled_from([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR,
                                      stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])) \
        | draw(st.integers(0, 0o7777))
    a.st_nlink, a.st_uid, a.st_gid, a.st_rdev = draw(u32), draw(u32), draw(u32), draw(u32)
    a.st_size, a.st_blocks = draw(st.integers(0, 2**63 - 1)), draw(u64)
    a.st_blksize = draw(u32)
    times = st.integers(0, 2**63 - 1)
    a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = draw(times), draw(times), draw(times)
    return a


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, attr=attributes(), parent=st.integers(1, 2**64 - 1))
def test_lookup_roundtrip(name: bytes, attr: fuse.EntryAttributes, parent: int) -> None:
    harness = Harness()
    try:
        harness.init()
        harness.ops.attr = attr
        e = parse_entry(harness.ok(OP_LOOKUP, cstr(name), nodeid=parent))
        assert harness.ops.last("lookup")[:2] == (parent, name)
        check_entry(e, attr)
    finally:
        harness.close()


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(st.tuples(names, attributes()), min_size=0, max_size=12),
       start=st.integers(0, 12), size=st.integers(0, 8192))
def test_readdirplus_roundtrip(entries: list[tuple[bytes, fuse.EntryAttributes]], start: int,
                               size: int) -> None:
    harness = Harness()
    try:
        harness.init()
        harness.ops.dir_entries = entries
        payload = harness.ok(OP_READDIRPLUS, readdir_in(1, start, size))
    finally:
        harness.close()
    assert len(payload) <= size
    got = parse_direntplus(payload)
    expect = entries[start:start + len(got)]
    # as many as fit, in order: the next one would not have
    if start + len(got) < len(entries):
        nxt = len(entries[start + len(got)][0])
        assert len(payload) + ((DIRENTPLUS_HEAD + nxt + 7) & ~7) > size
    for i, (d, (name, attr)) in enumerate(zip(got, expect, strict=True)):
        assert d.name == name and d.ino == attr.st_ino and d.off == start + i + 1
        assert d.type == stat.S_IFMT(attr.st_mode) >> 12
        check_entry(d.entry, attr)


#: opcodes to throw garbage at (all the module serves, some it does not, and INTERRUPT)
GARBAGE_OPCODES = [OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_SYMLINK,
                   OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR, OP_RENAME, OP_LINK, OP_OPEN,
                   OP_READ, OP_WRITE, OP_STATFS, OP_RELEASE, OP_FSYNC, OP_FLUSH, OP_OPENDIR,
                   OP_READDIR, OP_RELEASEDIR, OP_ACCESS, OP_CREATE, OP_INTERRUPT,
                   OP_BATCH_FORGET, OP_READDIRPLUS, OP_RENAME2, OP_LSEEK, 0, 4096, 2**32 - 1]
NO_REPLY = {OP_FORGET, OP_BATCH_FORGET, OP_INTERRUPT}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(opcode=st.sampled_from(GARBAGE_OPCODES), garbage=st.binary(max_size=300),
       nodeid=u64)
def test_garbage_bodies_get_at_most_an_error_reply(opcode: int, garbage: bytes,
                                                   nodeid: int) -> None:
    harness = Harness()
    try:
        harness.init()
        assert harness.dispatch(request(opcode, garbage, unique=500, nodeid=nodeid)) is True
        replies = harness.replies()
        assert all(r.unique == 500 for r in replies) and len(replies) <= 1
        if opcode in NO_REPLY:
            assert not replies or replies[0].error < 0
        else:
            assert len(replies) == 1
            assert replies[0].error <= 0 and (replies[0].error == 0 or not replies[0].payload)
        # the session keeps serving
        payload = harness.ok(OP_GETATTR, bytes(16), nodeid=3)
        assert struct.unpack_from(ATTR_OUT, payload) == (1, 250_000_000, 0)
    finally:
        harness.close()


@settings(max_examples=100)
@given(garbage=st.binary(min_size=16, max_size=200))
def test_garbage_init(garbage: bytes) -> None:
    """An INIT body of at least the 16 bytes every kernel sends: accepted or EPROTO."""
    harness = Harness()
    try:
        assert harness.dispatch(request(OP_INIT, garbage, unique=1)) is True
        [reply] = harness.replies()
        major, minor = struct.unpack_from("<II", garbage)
        if major == 7 and minor >= 31:
            assert reply.error == 0 and parse_init_out(reply.payload)["minor"] == min(minor, 38)
        else:
            assert reply.error == -errno.EPROTO
    finally:
        harness.close()


# ----------------------------------------------------------------------------- serving


class Served:
    """A session serving one end of a SOCK_SEQPACKET pair (one read = one request)."""

    def __init__(self, ops: fuse.Operations, threads: int = 1, **kwargs: Any) -> None:
        self.peer, sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = sock
        self.session = fuse.Session(sock.fileno(), ops, **kwargs)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, args=(threads,), daemon=True)
        self.thread.start()
        self.peer.settimeout(10)

    def _serve(self, threads: int) -> None:
        try:
            self.session.serve(threads)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def send(self, buf: bytes) -> None:
        self.peer.send(buf)

    def recv(self) -> Reply:
        [reply] = parse_replies(self.peer.recv(1 << 20))
        return reply

    def close(self) -> None:
        self.peer.close()
        self.thread.join(10)
        self.sock.close()

    def destroy(self, unique: int) -> None:
        """End the connection as the kernel does (DESTROY): it is answered, and the serving
        thread ends without an error."""
        self.send(request(OP_DESTROY, unique=unique))
        assert self.recv() == Reply(unique, 0, b"")
        self.thread.join(10)
        assert not self.thread.is_alive() and self.error is None


def test_serve_until_destroy() -> None:
    ops = Recorder()
    s = Served(ops)
    try:
        s.send(request(OP_INIT, init_body(), unique=1))
        assert s.recv().error == 0
        s.send(request(OP_LOOKUP, cstr(b"x"), unique=2))
        reply = s.recv()
        assert reply.unique == 2 and parse_entry(reply.payload).nodeid == 5
        s.destroy(3)
        assert ops.destroyed == 1
    finally:
        s.close()


def test_serve_ends_when_the_device_closes() -> None:
    ops = Recorder()
    s = Served(ops)
    s.send(request(OP_INIT, init_body(), unique=1))
    assert s.recv().error == 0
    s.close()
    assert not s.thread.is_alive() and s.error is None
    assert ops.destroyed == 1


def test_serve_survives_handler_bugs_and_gone_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = Recorder()
    calls = {"n": 0}

    def lookup(parent: int, name: bytes, ctx: Any) -> Any:
        calls["n"] += 1
        if name == b"bug":
            raise RuntimeError("bug")
        return ops.attr

    ops.lookup = lookup  # type: ignore[method-assign]
    s = Served(ops)
    try:
        s.send(request(OP_INIT, init_body(), unique=1))
        assert s.recv().error == 0
        s.send(request(OP_LOOKUP, cstr(b"bug"), unique=2))
        assert s.recv() == Reply(2, -errno.EIO, b"")
        s.send(request(OP_LOOKUP, cstr(b"ok"), unique=3))
        assert s.recv().unique == 3
        s.send(request(OP_DESTROY, unique=4))
        assert s.recv() == Reply(4, 0, b"")
        s.thread.join(10)
        assert s.error is None and calls["n"] == 2
    finally:
        s.close()


def test_serve_survives_a_handler_oserror() -> None:
    ops = Recorder()

    def getattr_(ino: int, ctx: Any) -> Any:
        raise FileNotFoundError(errno.ENOENT, "vanished")

    ops.getattr = getattr_  # type: ignore[method-assign]
    s = Served(ops)
    try:
        s.send(request(OP_INIT, init_body(), unique=1))
        assert s.recv().error == 0
        s.send(request(OP_GETATTR, bytes(16), unique=2))
        s.peer.settimeout(2)
        assert s.recv() == Reply(2, -errno.EIO, b"")
        s.send(request(OP_LOOKUP, cstr(b"x"), unique=3))
        assert s.recv().unique == 3
    finally:
        s.close()
    assert s.error is None


def test_released_lets_another_request_through() -> None:
    """While a handler blocks in ``released()``, a second reader serves other requests."""
    ops = Recorder()
    blocked, go = threading.Event(), threading.Event()
    holder: dict[str, fuse.Session] = {}

    def read(fh: int, off: int, size: int) -> bytes:
        with holder["s"].released():
            blocked.set()
            assert go.wait(10)
        return b"slow"

    ops.read = read  # type: ignore[method-assign]
    s = Served(ops, threads=2)
    holder["s"] = s.session
    try:
        s.send(request(OP_INIT, init_body(), unique=1))
        assert s.recv().error == 0
        s.send(request(OP_READ, struct.pack(RW_IN, 1, 0, 4, 0, 0, 0, 0), unique=2))
        assert blocked.wait(10)
        s.send(request(OP_GETATTR, bytes(16), unique=3))
        assert s.recv().unique == 3        # answered while READ still blocks
        go.set()
        assert s.recv() == Reply(2, 0, b"slow")
        s.send(request(OP_DESTROY, unique=4))
        # the surplus reader may take the next request, but every one is answered once
        assert s.recv() == Reply(4, 0, b"")
        s.thread.join(10)
        assert s.error is None
    finally:
        go.set()
        s.close()


# ----------------------------------------------------------------------------- mount_args

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8   # <sys/mount.h>


@dataclass
class MountCase:
    options: list[str]
    expect: tuple[str, str, int, str]
    note: str = field(default="")


@pytest.mark.parametrize("case", [
    MountCase([], ("geode", "fuse", MS_NOSUID | MS_NODEV, "")),
    MountCase(["fsname=myview", "subtype=geode"],
              ("myview", "fuse.geode", MS_NOSUID | MS_NODEV, "")),
    MountCase(["ro", "noexec", "nosuid", "nodev"],
              ("geode", "fuse", MS_RDONLY | MS_NOEXEC | MS_NOSUID | MS_NODEV, "")),
    MountCase(["allow_other", "default_permissions", "max_read=131072", "blksize=4096"],
              ("geode", "fuse", MS_NOSUID | MS_NODEV,
               "allow_other,default_permissions,max_read=131072,blksize=4096")),
    MountCase(["auto_unmount", "allow_other", "nonempty", "fsname=a=b", "kernel_cache"],
              ("a=b", "fuse", MS_NOSUID | MS_NODEV, "allow_other"),
              "libfuse-only options are dropped; fsname keeps everything after the first ="),
])
def test_mount_args(case: MountCase) -> None:
    assert fuse.mount_args(case.options) == case.expect, case.note


def _thread_cpu_ticks(name_prefix: str) -> int:
    """User+system clock ticks of this process's threads whose name starts with the prefix."""
    total = 0
    for t in threading.enumerate():
        if t.name.startswith(name_prefix) and t.native_id is not None:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def test_busy_polling_reader_answers_then_sleeps() -> None:
    """With busy_poll_us, requests are answered as usual, and a reader with nothing to do
    sleeps once the polling window has passed (it does not spin while idle)."""
    ops = Recorder()
    s = Served(ops, busy_poll_us=200)
    try:
        s.send(request(OP_INIT, init_body(), unique=1))
        assert s.recv().error == 0
        for i in range(50):  # back to back: picked up while polling
            s.send(request(OP_GETATTR, bytes(16), nodeid=3, unique=10 + i))
            assert s.recv().unique == 10 + i
        time.sleep(0.05)
        before = _thread_cpu_ticks("geode-fuse")
        time.sleep(1.0)
        spent = _thread_cpu_ticks("geode-fuse") - before
        assert spent < 0.2 * os.sysconf("SC_CLK_TCK"), spent  # idle, not spinning
        s.send(request(OP_GETATTR, bytes(16), nodeid=4, unique=99))  # after the window
        assert s.recv().unique == 99
        s.destroy(100)
    finally:
        s.close()


def _cpu_while_idle(s: Served, seconds: float) -> float:
    """CPU time (clock ticks) of ``s``'s reader (the thread serving it) over ``seconds`` of
    no requests."""
    def ticks() -> int:
        with open(f"/proc/self/task/{s.thread.native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = ticks()
    time.sleep(seconds)
    return ticks() - before


def test_exec_polling_spins_only_after_an_exec_open_and_its_release() -> None:
    """With exec_poll_us, the reader polls after answering an open that carries
    FMODE_EXEC (execve's) and after the release of such a handle, and only then: an
    ordinary open, and the release of its handle, leave it asleep."""
    ops = Recorder()
    s = Served(ops, exec_poll_us=600_000)  # (a long window, for the CPU it spins to show)
    tick = os.sysconf("SC_CLK_TCK")
    exec_flags = os.O_RDONLY | 0o100000 | fuse._FMODE_EXEC  # O_LARGEFILE | FMODE_EXEC
    try:
        s.send(request(OP_INIT, init_body(), unique=1))
        assert s.recv().error == 0
        s.send(request(OP_OPEN, struct.pack(OPEN_IN, os.O_RDONLY, 0), nodeid=5, unique=2))
        assert s.recv().error == 0
        assert _cpu_while_idle(s, 0.4) < 0.1 * tick  # an ordinary open: asleep
        s.send(request(OP_OPEN, struct.pack(OPEN_IN, exec_flags, 0), nodeid=5, unique=3))
        assert struct.unpack(OPEN_OUT, s.recv().payload)[0] == 77
        assert s.session._exec_handles == {77}
        assert _cpu_while_idle(s, 0.4) > 0.15 * tick  # polling
        time.sleep(0.3)  # (the window is over)
        assert _cpu_while_idle(s, 0.4) < 0.1 * tick
        s.send(request(OP_RELEASE, struct.pack(RELEASE_IN, 77, 0, 0, 0), unique=4))
        assert s.recv().error == 0
        assert s.session._exec_handles == set()
        assert _cpu_while_idle(s, 0.4) > 0.15 * tick  # polling after the exec handle's release
        time.sleep(0.3)
        s.send(request(OP_RELEASE, struct.pack(RELEASE_IN, 77, 0, 0, 0), unique=5))
        assert s.recv().error == 0
        assert _cpu_while_idle(s, 0.4) < 0.1 * tick  # not an exec handle any more: asleep
        s.destroy(6)
    finally:
        s.close()


def test_without_exec_polling_exec_opens_are_not_tracked() -> None:
    ops = Recorder()
    s = Served(ops)
    try:
        s.send(request(OP_INIT, init_body(), unique=1))
        assert s.recv().error == 0
        flags = os.O_RDONLY | fuse._FMODE_EXEC
        s.send(request(OP_OPEN, struct.pack(OPEN_IN, flags, 0), nodeid=5, unique=2))
        assert s.recv().error == 0
        assert s.session._exec_handles == set()
        assert _cpu_while_idle(s, 0.3) < 0.1 * os.sysconf("SC_CLK_TCK")
    finally:
        s.close()


@pytest.mark.parametrize("err", [errno.ENODEV, errno.ECONNABORTED])
def test_a_reply_to_a_connection_that_is_gone_ends_the_session(err: int) -> None:
    """Unmounted (ENODEV) or aborted (ECONNABORTED, which a torn-down sandbox's connection
    has returned) both mean the connection is gone: the session ends, it does not fail."""
    with pytest.raises(fuse._DeviceGone):
        fuse._reply_failed(OSError(err, os.strerror(err)))
    fuse._reply_failed(OSError(errno.ENOENT, "interrupted"))  # (nobody waits: dropped)
    with pytest.raises(OSError):
        fuse._reply_failed(OSError(errno.EINVAL, "a reply the kernel refused"))
