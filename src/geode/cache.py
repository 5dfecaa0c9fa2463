"""Geode's private on-disk cache: results of pure computations, kept across runs.

A start of ``geode run`` repeats work whose inputs rarely change: hashing Geode's own source
files for the runtime identity, parsing and checking a 1.7 MB manifest. Callers key an entry
by a SHA-256 over *everything* its value depends on, so an entry is either the right value or
not found; nothing is ever invalidated, old entries are pruned.

Invariants:

* An entry holds data only: ``marshal`` of str, bytes, int, bool, None, tuples, lists and
  dicts, never code. Callers check the shape of what they get back.
* Entries are written to a temporary file and renamed into place, with a SHA-256 of their
  payload: a torn or corrupted entry is a miss, never an error.
* The cache is trusted like Geode's own code and Python's bytecode cache beside it, which
  decide what the supervisor does: the directory and every entry must belong to the
  effective user and be writable by nobody else, or the cache is not used.
* The cache is an optimization: no failure to read or write it fails the caller.

Location: ``$GEODE_CACHE_DIR``, else ``$XDG_CACHE_HOME/geode``, else ``~/.cache/geode``;
``GEODE_NO_CACHE=1`` turns it off (nothing read, nothing written).
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_MAGIC = b"geode-cache/1\n"
_DIGEST = 32
_MARSHAL_VERSION = 4


def directory() -> str | None:
    """The cache directory, or None when caching is off or there is no home to put it in."""
    env = os.environ
    if env.get("GEODE_NO_CACHE"):
        return None
    explicit = env.get("GEODE_CACHE_DIR")
    if explicit:
        return os.path.abspath(explicit)
    xdg = env.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "geode")
    home = env.get("HOME", "")
    if os.path.isabs(home):
        return os.path.join(home, ".cache", "geode")
    return None


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_dir(path: str) -> int | None:
    """A descriptor of the cache directory if it is a private directory (not a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if not _private(os.fstat(fd)):
        os.close(fd)
        return None
    return fd


def _name(kind: str, key: bytes) -> str:
    return f"{kind}-{key.hex()}"


def get(kind: str, key: bytes) -> Any:
    """The value stored under ``(kind, key)``, or None."""
    path = directory()
    if path is None:
        return None
    dirfd = _open_dir(path)
    if dirfd is None:
        return None
    try:
        fd = os.open(_name(kind, key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        return None
    finally:
        os.close(dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _private(st):
            return None
        with open(fd, "rb", closefd=False) as f:
            blob = f.read()
        # Marks the entry as used, for pruning (which keeps the most recently used).
        with contextlib.suppress(OSError):
            os.utime(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    head = len(_MAGIC) + _DIGEST
    if not blob.startswith(_MAGIC) or len(blob) < head:
        return None
    payload = memoryview(blob)[head:]
    if hashlib.sha256(payload).digest() != blob[len(_MAGIC):head]:
        return None
    try:
        return marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None


def put(kind: str, key: bytes, value: Any, *, keep: int) -> None:
    """Store ``value`` under ``(kind, key)``; keep at most ``keep`` entries of ``kind``."""
    path = directory()
    if path is None:
        return
    try:
        payload = marshal.dumps(value, _MARSHAL_VERSION)
    except ValueError:
        return  # not plain data (a TOML date, say): not cached
    with contextlib.suppress(OSError):
        os.makedirs(path, mode=0o700, exist_ok=True)
    dirfd = _open_dir(path)
    if dirfd is None:
        return
    try:
        _write(dirfd, _name(kind, key), _MAGIC + hashlib.sha256(payload).digest() + payload)
        _prune(dirfd, kind, keep)
    except OSError:
        pass
    finally:
        os.close(dirfd)


def _write(dirfd: int, name: str, blob: bytes) -> None:
    tmp = f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dirfd)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(blob)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise
    finally:
        os.close(fd)


def _prune(dirfd: int, kind: str, keep: int) -> None:
    """Keep the ``keep`` most recently used entries of ``kind``; drop temporary files that a
    writer killed mid-write left behind (an hour old)."""
    entries = []
    stale_before = time.time_ns() - 3600 * 10**9
    with os.scandir(dirfd) as it:
        for entry in it:
            name = entry.name
            try:
                if name.startswith(kind + "-"):
                    entries.append((entry.stat(follow_symlinks=False).st_mtime_ns, name))
                elif name.startswith(f".{kind}-") and name.endswith(".tmp") and \
                        entry.stat(follow_symlinks=False).st_mtime_ns < stale_before:
                    os.unlink(name, dir_fd=dirfd)
            except OSError:
                pass
    entries.sort(reverse=True)
    for _, name in entries[keep:]:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dirfd)
