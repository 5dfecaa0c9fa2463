"""Trusted files: SHA-256 hashing and expansion of ``sgx.trusted_files`` (gramine-manifest).

Expansion follows Gramine (v1.8+ ``graminelibos/manifest.py``):

* An entry is a ``"file:..."`` string or a ``{uri = ..., sha256 = ...}`` table (other keys,
  other URI schemes and other value types are errors).
* A URI ending in ``/`` names a directory, expanded recursively. Each directory's entries
  are taken in sorted name order, depth first (so one directory's expansion is sorted by
  path components). Within a directory, entries that are neither regular files nor
  directories (FIFOs, sockets, devices, dangling symlinks), entries not readable by us and
  symlinks to directories are skipped; symlinks to files are kept under their own name and
  hashed through the link. A directory URI with a ``sha256`` is an error, and so is a URI
  without the trailing ``/`` that names a directory.
* Duplicate URIs (exact strings) are merged at the position of their first occurrence; a
  hash given by a later duplicate fills in a missing one; two different hashes are an
  error. The list is not otherwise reordered.
* Relative paths resolve against the current directory. With ``chroot``, paths must be
  absolute and are resolved inside the chroot (symlinks included, ``..`` stops at its
  root); the URIs of a directory's children are built from the resolved directory path.

Geode is stricter than Gramine where Gramine would crash, hang or trust silently: a
top-level entry that is missing, unreadable, not a regular file or (for ``dir/``) not a
listable directory is an error naming it; a ``sha256`` given in the manifest is checked
against the file; a file that vanishes between listing and hashing is an error.

Hashing runs on a thread pool (hashlib releases the GIL); large files are read by a helper
thread while the previous chunk is hashed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from geode import progress as progress_mod
from geode.errors import ManifestError

CHUNK = 1 << 20
#: Files at least this big are read by a helper thread while the hasher works.
PIPELINE_MIN = 32 << 20
#: Files at least this big are hashed by worker threads (the rest by the calling thread).
BIG_FILE_MIN = 1 << 20
MAX_SYMLINKS = 40

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

Advance = Callable[[int], None]


# --------------------------------------------------------------------------- hashing


def hash_file(path: Path) -> str:
    """Hex SHA-256 of the regular file ``path`` (symlinks followed)."""
    return _hash_path(os.fspath(path), None, expanding=False)


def _hash_path(path: str, advance: Advance | None, *, expanding: bool = True) -> str:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise _read_error(path, e, expanding) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"not a regular file: {path}")
        try:
            return _hash_fd(fd, st.st_size, advance)
        except OSError as e:
            raise _read_error(path, e, expanding) from None
    finally:
        os.close(fd)


def _read_error(path: str, e: OSError, expanding: bool) -> ManifestError:
    if expanding and e.errno in (errno.ENOENT, errno.ENOTDIR):
        return ManifestError(f"trusted file vanished before it could be hashed: {path}")
    return ManifestError(f"cannot read {path}: {e.strerror}")


def _hash_fd(fd: int, size: int, advance: Advance | None) -> str:
    h = hashlib.sha256()
    if size >= PIPELINE_MIN:
        _hash_pipelined(fd, h, advance)
        return h.hexdigest()
    # Small and medium files: usually one read of the whole file (size + 1 to see EOF).
    data = os.read(fd, size + 1)
    h.update(data)
    total = len(data)
    if total != size:  # short read or the file changed size: read on to EOF
        buf = bytearray(CHUNK)
        with memoryview(buf) as view:
            while n := os.readv(fd, [buf]):
                h.update(view[:n])
                total += n
    if advance is not None:
        advance(total)
    return h.hexdigest()


def _hash_pipelined(fd: int, h: Any, advance: Advance | None, nbufs: int = 4) -> None:
    """Hash ``fd`` to EOF while a helper thread reads ahead into a ring of buffers."""
    filled: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue()
    free: queue.Queue[bytearray | None] = queue.Queue()
    for _ in range(nbufs):
        free.put(bytearray(CHUNK))

    def reader() -> None:
        try:
            while (buf := free.get()) is not None:
                n = os.readv(fd, [buf])
                filled.put((buf, n))
                if n == 0:
                    return
        except BaseException as e:  # handed to the hashing thread, which re-raises it
            filled.put(e)

    thread = threading.Thread(target=reader, name="geode-hash-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = filled.get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            if n == 0:
                break
            with memoryview(buf) as view:
                h.update(view[:n])
            free.put(buf)
            if advance is not None:
                advance(n)
    finally:
        free.put(None)
        thread.join()


# --------------------------------------------------------------------------- paths


def resolve_in_chroot(chroot: Path, path: PurePosixPath) -> PurePosixPath:
    """Resolve the absolute ``path`` as seen inside ``chroot`` (symlinks, ``.``, ``..``).

    Symlinks are followed inside the chroot (absolute targets restart at its root, ``..``
    stops at its root); the result is an absolute path inside the chroot. A missing
    component ends resolution (the rest is appended as is). Raises OSError with ELOOP for
    symlink loops and ENOTDIR for a non-directory in the middle of the path.
    """
    if not path.is_absolute():
        raise ValueError("only absolute paths can be resolved inside a chroot")
    pending = list(reversed(path.parts[1:]))
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = os.path.join(chroot, *resolved, part)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            resolved.extend(reversed(pending))
            break
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
            target = PurePosixPath(os.readlink(host))
            if target.is_absolute():
                resolved = []
                pending.extend(reversed(target.parts[1:]))
            else:
                pending.extend(reversed(target.parts))
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
        resolved.append(part)
    return PurePosixPath("/", *resolved)


def uri_to_host_path(uri: str, chroot: Path | None = None) -> Path:
    """Host path of a ``file:`` URI; with ``chroot``, resolved inside the chroot."""
    if not uri.startswith("file:"):
        raise ManifestError(f"unsupported URI {uri!r}: only file: URIs can be trusted")
    path = PurePosixPath(uri[len("file:"):])
    if chroot is None:
        return Path(path)
    if not path.is_absolute():
        raise ManifestError(f"{uri!r}: only absolute paths can be measured with a chroot")
    try:
        inner = resolve_in_chroot(chroot, path)
    except OSError as e:
        raise ManifestError(f"{uri!r}: cannot resolve inside {chroot}: {e.strerror}") from None
    return chroot / inner.relative_to("/")


def _join(base: str, name: str) -> str:
    """``str(PurePosixPath(base) / name)`` for a normalized ``base``, without pathlib."""
    if base.endswith("/"):
        return base + name
    if base == ".":
        return name
    return base + "/" + name


# --------------------------------------------------------------------------- expansion


@dataclass(slots=True)
class _Entry:
    uri: str
    sha256: str | None
    host: str
    size: int
    where: str


def _check_name(path: str, where: str) -> None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(
            f"file name is not valid UTF-8 and cannot be written to a manifest: {path!r}",
            where=where,
        ) from None


def _parse_item(item: object, where: str) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        leftover = set(item) - {"uri", "sha256"}
        if leftover:
            raise ManifestError(f"unknown keys in trusted file entry: {sorted(leftover)}",
                                where=where)
        uri, sha256 = item.get("uri"), item.get("sha256")
        if not isinstance(uri, str):
            raise ManifestError("trusted file entry needs a string 'uri'", where=where)
        if sha256 is not None and not (
            isinstance(sha256, str) and _SHA256_RE.fullmatch(sha256)
        ):
            raise ManifestError(f"{uri}: sha256 must be 64 hex digits, got {sha256!r}",
                                where=where)
        return uri, sha256
    raise ManifestError(f"trusted file entry must be a string or a table, got {item!r}",
                        where=where)


def _expand_item(
    uri: str, sha256: str | None, chroot: Path | None, where: str
) -> Iterator[_Entry]:
    if not uri.startswith("file:"):
        raise ManifestError(f"unsupported URI {uri!r}: only file: URIs can be trusted",
                            where=where)
    path = PurePosixPath(uri[len("file:"):])
    if chroot is None:
        inner = path
        host = str(path)
    else:
        if not path.is_absolute():
            raise ManifestError(f"{uri}: only absolute paths can be measured with a chroot",
                                where=where)
        try:
            inner = resolve_in_chroot(chroot, path)
        except OSError as e:
            raise ManifestError(f"{uri}: cannot resolve inside {chroot}: {e.strerror}",
                                where=where) from None
        host = os.path.join(chroot, *inner.parts[1:])
    try:
        st = os.stat(host)
    except (FileNotFoundError, NotADirectoryError):
        kind = "directory" if uri.endswith("/") else "file"
        raise ManifestError(f"{uri}: no such {kind} ({host})", where=where) from None
    except OSError as e:
        raise ManifestError(f"{uri}: cannot access {host}: {e.strerror}", where=where) from None

    if uri.endswith("/"):
        if not stat.S_ISDIR(st.st_mode):
            raise ManifestError(f"{uri}: ends with '/' but is not a directory", where=where)
        if sha256 is not None:
            raise ManifestError(f"{uri}: a directory entry cannot have a sha256", where=where)
        try:
            os.scandir(host).close()
        except OSError as e:
            raise ManifestError(f"{uri}: cannot list directory {host}: {e.strerror}",
                                where=where) from None
        yield from _walk(host, str(inner), chroot, where)
        return

    if stat.S_ISDIR(st.st_mode):
        raise ManifestError(f"{uri}: is a directory; end the URI with '/' to trust its files",
                            where=where)
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"{uri}: not a regular file ({host})", where=where)
    if not os.access(host, os.R_OK):
        raise ManifestError(f"{uri}: not readable ({host})", where=where)
    yield _Entry(uri, sha256, host, st.st_size, where)


def _walk(host_dir: str, uri_dir: str, chroot: Path | None, where: str) -> Iterator[_Entry]:
    """Gramine's recursive expansion of one directory: depth first, sorted names."""
    stack: list[Iterator[tuple[str, str, os.DirEntry[str]]]] = [
        _sorted_entries(host_dir, uri_dir)
    ]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        child_host, child_uri, entry = item
        try:
            is_symlink = entry.is_symlink()
            if is_symlink and chroot is not None:
                # Resolve inside the chroot, not on the host.
                try:
                    inner = resolve_in_chroot(chroot, PurePosixPath(child_uri))
                except OSError:
                    continue
                child_host = os.path.join(chroot, *inner.parts[1:])
                st = os.stat(child_host)
                is_dir, is_file = stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
            else:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
        except OSError:
            continue
        if not (is_dir or is_file) or not os.access(child_host, os.R_OK):
            continue
        if is_dir:
            if not is_symlink:
                stack.append(_sorted_entries(child_host, child_uri))
            continue
        try:
            size = os.stat(child_host).st_size
        except OSError:
            continue
        _check_name(child_uri, where)
        yield _Entry("file:" + child_uri, None, child_host, size, where)


def _sorted_entries(host_dir: str, uri_dir: str) -> Iterator[tuple[str, str, os.DirEntry[str]]]:
    try:
        with os.scandir(host_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        yield os.path.join(host_dir, entry.name), _join(uri_dir, entry.name), entry


def _collect(trusted_files: list[Any], chroot: Path | None) -> dict[str, _Entry]:
    merged: dict[str, _Entry] = {}
    for index, item in enumerate(trusted_files):
        where = f"sgx.trusted_files[{index}]"
        uri, sha256 = _parse_item(item, where)
        for entry in _expand_item(uri, sha256, chroot, where):
            old = merged.get(entry.uri)
            if old is not None and old.sha256 is not None:
                if entry.sha256 is not None and entry.sha256.lower() != old.sha256.lower():
                    raise ManifestError(
                        f"two different sha256 values for {entry.uri}: "
                        f"{old.sha256} ({old.where}) and {entry.sha256}",
                        where=where,
                    )
                continue
            merged[entry.uri] = entry  # a dict keeps the first occurrence's position
    return merged


def _loader_entrypoint(manifest: dict[str, Any]) -> tuple[dict[str, Any], _Entry] | None:
    loader = manifest.get("loader")
    if not isinstance(loader, dict) or "entrypoint" not in loader:
        return None
    where = "loader.entrypoint"
    ep = loader["entrypoint"]
    if isinstance(ep, str):  # pre-1.8 form: loader.entrypoint = "file:..."
        ep = {"uri": ep}
    if not isinstance(ep, dict) or not isinstance(ep.get("uri"), str):
        raise ManifestError("must be a table with a string 'uri'", where=where)
    uri, sha256 = _parse_item(ep, where)
    entries = list(_expand_item(uri, sha256, None, where)) if not uri.endswith("/") else []
    if len(entries) != 1:
        raise ManifestError(f"{uri}: must name a file", where=where)
    return ep, entries[0]


# --------------------------------------------------------------------------- driver


def expand_trusted_files(
    manifest: dict[str, Any], *, chroot: Path | None = None, progress: bool | None = None
) -> None:
    """Expand and hash ``sgx.trusted_files`` in place, as gramine-manifest does.

    Afterwards ``sgx.trusted_files`` is a list of ``{uri, sha256}`` tables, one per
    distinct URI (see the module docstring for the rules), and ``loader.entrypoint`` (if
    present; a plain string is turned into a table) has its ``sha256``. Hashes given in
    the manifest are verified. ``progress``: True/False forces the stderr progress bar
    on/off; None shows it only on a terminal outside CI.
    """
    sgx = manifest.get("sgx")
    merged: dict[str, _Entry] = {}
    has_list = isinstance(sgx, dict) and "trusted_files" in sgx
    if has_list:
        assert isinstance(sgx, dict)
        trusted_files = sgx["trusted_files"]
        if not isinstance(trusted_files, list):
            raise ManifestError("must be a list of file: URIs or {uri, sha256} tables",
                                where="sgx.trusted_files")
        merged = _collect(trusted_files, chroot)
    loader = _loader_entrypoint(manifest)

    jobs = list(merged.values())
    if loader is not None:
        jobs.append(loader[1])
    digests = _hash_all(jobs, progress)

    def checked(entry: _Entry, digest: str) -> str:
        if entry.sha256 is None:
            return digest
        if entry.sha256.lower() != digest:
            raise ManifestError(
                f"{entry.uri}: sha256 mismatch: the manifest has {entry.sha256}, "
                f"the file {entry.host} has {digest}",
                where=entry.where,
            )
        return entry.sha256

    pairs = zip(merged.values(), digests[: len(merged)], strict=True)
    result = [{"uri": e.uri, "sha256": checked(e, d)} for e, d in pairs]
    if has_list:
        assert isinstance(sgx, dict)
        sgx["trusted_files"] = result
    if loader is not None:
        ep, entry = loader
        ep["sha256"] = checked(entry, digests[-1])
        manifest["loader"]["entrypoint"] = ep


def _hash_all(jobs: list[_Entry], force_progress: bool | None) -> list[str]:
    """Hash every job's file; results in job order.

    Large files go to worker threads, largest first: their hashing runs without the GIL.
    Small files are hashed by the calling thread, smallest first: they cost mostly Python
    and syscall overhead, and several threads contending for the GIL on them are slower
    than one. Whichever side runs out of work first takes over the rest of the other's.
    """
    digests: list[str] = [""] * len(jobs)
    if not jobs:
        return digests
    pending = deque(sorted(range(len(jobs)), key=lambda i: jobs[i].size, reverse=True))
    lock = threading.Lock()
    failed = threading.Event()
    total = sum(j.size for j in jobs)
    with progress_mod.progress(
        "Hashing trusted files", total_bytes=total, total_files=len(jobs), force=force_progress
    ) as bar:

        def hash_one(i: int) -> None:
            digests[i] = _hash_path(jobs[i].host, bar.advance)
            bar.advance(0, 1)

        def big_files() -> None:
            while not failed.is_set():
                with lock:
                    if not pending or jobs[pending[0]].size < BIG_FILE_MIN:
                        return
                    i = pending.popleft()
                try:
                    hash_one(i)
                except BaseException:
                    failed.set()
                    raise

        n_workers = max(1, (os.cpu_count() or 1) - 1)
        n_big = sum(1 for j in jobs if j.size >= BIG_FILE_MIN)
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="geode-hash") as pool:
            futures = [pool.submit(big_files) for _ in range(min(n_workers, n_big))]
            try:
                while not failed.is_set():
                    with lock:
                        if not pending:
                            break
                        i = pending.pop()
                    hash_one(i)
            except BaseException:
                failed.set()
                raise
            for future in futures:
                future.result()
    return digests
