"""Encrypted mounts (``type = "encrypted"``): Gramine's protected files behind the FUSE view.

:class:`EncryptedFiles` is the part of :class:`geode.runtime.viewfs.ViewFS` that serves files
below encrypted mounts; the view keeps doing everything else (lookup, directories, names,
policy). What a program sees:

* **Contents** are encrypted at rest in Gramine's protected-file format v2.0
  (:mod:`geode.formats.pf`); names, directories, modes and times stay plaintext on the host,
  as in Gramine. ``stat`` shows the plaintext size. Host symlinks, FIFOs and sockets below an
  encrypted mount are hidden (EACCES), and symlinks, hard links and device nodes cannot be
  created there (EPERM).
* **Path binding.** Every file is bound to the path Gramine's LibOS passes to ``pf_open``: the
  mount's URI path *as written in the manifest*, joined with the path inside the mount and
  normalized (``uri = "file:db"`` and ``/db/x.sqlite`` give ``db/x.sqlite``; an absolute URI
  gives an absolute path). That is also the string ``gramine-sgx-pf-crypt encrypt -o PATH``
  binds and prints when ``PATH`` is written the same way, so files encrypted on the host open
  in the mount. A file copied or renamed on the host under another name is refused; a rename
  through the view rewrites the bound path first (and restores it if the host rename fails).
  Renaming a non-empty directory would orphan the bindings below it: it gives EXDEV, so tools
  like ``mv`` fall back to copying file by file.
* **Sharing.** All handles of one host file (one inode) share one :class:`EncFile`: one host
  descriptor opened read-write (read-only if the host refuses writing), one
  :class:`~geode.formats.pf.ProtectedFile` with a node cache of up to :data:`CACHE_NODES`
  nodes (16 MiB; all open files together within :data:`CACHE_BUDGET`),
  reference-counted, kept open while any handle is open (Gramine's advice: files are opened by
  descriptor and their Merkle tree stays in memory), written back on ``fsync`` and when the
  last handle is released, and closed with the view.
* **Page cache.** Reads and writes go through the kernel page cache (never ``direct_io``), so
  ``mmap`` works, shared writable mappings included. All changes reach the host file through
  this one FUSE inode, whose page cache the kernel keeps coherent itself (write-through, pages
  of failed writes dropped, truncation cut). Only the first open of a file (a fresh
  ProtectedFile) asks the kernel to drop what it cached earlier; later opens keep the cache.
  The kernel also drops a file's whole page cache whenever a ``stat`` shows a new
  modification time, and the host file's time changes at every write-back (every ``fsync``):
  so while a file is open its modification time is shown as it was when it was opened (or as
  the program set it with ``utimes``), and the host's time again once it is closed. Without
  this a database that syncs every transaction would re-read and re-decrypt its file after
  each one. (Gramine's own ``stat`` times of encrypted files are not maintained either.)
* **Keys**, looked up when a file is first opened (or created, renamed, truncated while
  closed): ``fs.insecure__keys.NAME``, anything the program (or secret provisioning) wrote to
  ``/dev/attestation/keys/NAME``, and the sealing keys ``_sgx_mrenclave`` / ``_sgx_mrsigner``
  from the TEE backend. A key that is not set yet gives EACCES and one error log line naming
  the key and the mount (a configuration problem the user must see). Sealing keys are derived
  when the view starts; a mount that names one the backend cannot derive stops the start-up
  with an error naming the mount and the key (fail closed: nothing could ever set that key
  later). ``stat`` of a file whose key is not set, or whose metadata does not authenticate,
  shows size 0 (Gramine's lookup fails with EACCES instead), so names stay listable and
  removable.
* **Integrity.** A file that fails to open (not a protected file, wrong key, bound to another
  path, truncated or extended, a node that does not authenticate, an interrupted write without
  its recovery file) gives EACCES and an error log line naming the file and the reason, never
  plaintext or keys. A corrupt node found later (a host rolling a file back or flipping bits
  while it is open) gives EACCES for that request and every later one on the file until all
  its handles are closed; nothing is written back to it.
* **Recovery** (``enable_recovery = true``): each write-back first journals the nodes it will
  overwrite into ``<host file>.gramine.recovery`` (Gramine's name); an open that finds the
  pending-write flag replays it, so a crash leaves the previous written-back state. The
  recovery file is removed when the file is closed cleanly and is hidden from the program.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType

from geode.errors import GeodeError
from geode.log import get_logger
from geode.runtime import fuse
from geode.runtime.plan import Mount

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from geode.formats.pf import ProtectedFile


def _pf() -> ModuleType:
    """The protected-files library. Imported on first use: it loads cryptography's ciphers,
    which a view without encrypted mounts never needs (start-up time of every run)."""
    import geode.formats.pf

    return geode.formats.pf


def _layout() -> ModuleType:
    from geode.formats.pf import layout

    return layout

__all__ = [
    "CACHE_NODES",
    "RECOVERY_SUFFIX",
    "SEAL_KEY_NAMES",
    "EncFile",
    "EncryptedFiles",
    "bound_path",
    "derive_seal_keys",
]

log = get_logger("geode.fs")

#: Gramine's name for the crash-recovery journal of ``<file>``: ``<file>.gramine.recovery``
RECOVERY_SUFFIX = ".gramine.recovery"
#: data nodes kept decrypted per open file: up to 16 MiB of plaintext (a database's working
#: set; every node that falls out of the cache costs a host read and a decryption when it is
#: touched again, and a 4 KiB write straddles two nodes), as long as the caches of all open
#: files stay within CACHE_BUDGET nodes (128 MiB); never fewer than CACHE_MIN_NODES (1 MiB)
CACHE_NODES = 4096
CACHE_MIN_NODES = 256
CACHE_BUDGET = 32768
#: the sealing keys a TEE backend may derive (read-only in /dev/attestation/keys)
SEAL_KEY_NAMES = ("_sgx_mrenclave", "_sgx_mrsigner")
KEY_SIZE = 16

_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW

#: ``parent(mount, rel) -> (O_PATH fd of the host directory, name in it)``; the caller
#: closes the descriptor
ParentOpener = Callable[[Mount, str], tuple[int, str]]


def bound_path(mount: Mount, rel: str) -> str:
    """The path a file ``rel`` below encrypted ``mount`` is bound to (Gramine's rule)."""
    base = mount.uri_path if mount.uri_path is not None else "."
    return str(_pf().norm_path(f"{base}/{rel}" if rel else base))


def derive_seal_keys(tee: Any) -> dict[str, bytes]:
    """The sealing keys ``tee`` can derive (none for the ``none`` backend)."""
    keys: dict[str, bytes] = {}
    if tee is None:
        return keys
    for name in SEAL_KEY_NAMES:
        try:
            key = tee.seal_key(name)
        except GeodeError:
            continue
        if isinstance(key, bytes) and len(key) == KEY_SIZE:
            keys[name] = key
    return keys


def _fail(err: int) -> fuse.FUSEError:
    return fuse.FUSEError(err)


class EncFile:
    """One open protected file, shared by every handle of one host inode.

    ``ident`` is (mount index, st_dev, st_ino); ``label`` the view path, for log lines;
    ``mtime_ns`` the modification time shown while the file is open (see the module
    docstring). A plain ``__slots__`` class: a dataclass costs ~0.7 ms at start-up."""

    __slots__ = ("ident", "mount", "rel", "label", "pf", "fd", "rec_fd", "writable", "refs",
                 "failed", "unlinked", "rec_ident", "mtime_ns", "cache_nodes")

    def __init__(self, ident: tuple[int, int, int], mount: Mount, rel: str, label: str,
                 pf: ProtectedFile, fd: int, rec_fd: int | None, writable: bool, *,
                 mtime_ns: int = 0, cache_nodes: int = CACHE_MIN_NODES) -> None:
        self.ident, self.mount, self.rel, self.label = ident, mount, rel, label
        self.pf, self.fd, self.rec_fd, self.writable = pf, fd, rec_fd, writable
        self.refs = 0
        self.failed = self.unlinked = False
        self.rec_ident: tuple[int, int] | None = None
        self.mtime_ns, self.cache_nodes = mtime_ns, cache_nodes

    @property
    def size(self) -> int:
        return self.pf.size


class EncryptedFiles:
    """Protected files of a view's encrypted mounts; see the module docstring.

    ``keys`` is the view's live key table (``/dev/attestation/keys``); ``parent`` opens the
    host directory of a file (confined to its mount, see :data:`ParentOpener`).
    """

    def __init__(self, mounts: Iterable[Mount], keys: dict[str, bytes], tee: Any,
                 parent: ParentOpener) -> None:
        self.keys = keys
        self._parent = parent
        self._files: dict[tuple[int, int, int], EncFile] = {}
        self._sizes: dict[tuple[Any, ...], int | None] = {}
        self._warned: set[tuple[int, str]] = set()
        #: names in ``keys`` that are sealing keys (read-only for the program)
        self.sealed = derive_seal_keys(tee)
        keys.update(self.sealed)
        backend = getattr(tee, "name", "none") if tee is not None else "none"
        for m in mounts:
            name = m.key_name or "default"
            if name.startswith("_") and name not in self.sealed:
                if name in SEAL_KEY_NAMES:
                    raise GeodeError(
                        f"encrypted mount {m.path} uses sealing key {name}, which the "
                        f"'{backend}' TEE backend cannot derive: run with --tee sim (development) "
                        "or a hardware backend, or name a key the program or secret "
                        "provisioning sets",
                        where=f"{m.where}.key_name")
                raise GeodeError(f"encrypted mount {m.path} uses unknown special key {name} "
                                 f"(known: {', '.join(SEAL_KEY_NAMES)})",
                                 where=f"{m.where}.key_name")

    # ------------------------------------------------------------------ keys

    def _key(self, m: Mount, label: str) -> bytes:
        name = m.key_name or "default"
        key = self.keys.get(name)
        if key is None or len(key) != KEY_SIZE:
            if (m.index, name) not in self._warned:
                self._warned.add((m.index, name))
                log.error("encrypted mount %s (%s): key '%s' is not set (write 16 bytes to "
                            "/dev/attestation/keys/%s first); access to %s denied", m.path,
                            m.where, name, name, label)
            raise _fail(errno.EACCES)
        self._warned.discard((m.index, name))
        return key

    def key_available(self, m: Mount) -> bool:
        key = self.keys.get(m.key_name or "default")
        return key is not None and len(key) == KEY_SIZE

    # ------------------------------------------------------------------ open / close

    def lookup(self, m: Mount, st_dev: int, st_ino: int) -> EncFile | None:
        """The open file of that host inode, if any."""
        return self._files.get((m.index, st_dev, st_ino))

    def acquire(self, m: Mount, rel: str, label: str, *, create: bool = False,
                exclusive: bool = False, mode: int = 0o600,
                expect: tuple[int, int] | None = None) -> tuple[EncFile, bool]:
        """Open (or share) the protected file ``rel`` of ``m``; take one reference.

        Returns the file and whether it was opened just now. ``create`` creates the host file
        if it is missing (``exclusive``: it must be missing); only a host file created here
        becomes a new protected file (an existing empty one is refused like any other
        non-protected file). ``expect`` is the (st_dev, st_ino) the caller looked up: an
        already open file of that inode is shared without touching the host.
        """
        if expect is not None:
            ef = self._files.get((m.index, *expect))
            if ef is not None:
                return self._ref(ef, label), False
        key = self._key(m, label)
        pfd, name = self._parent(m, rel)
        try:
            if name.endswith(RECOVERY_SUFFIX):
                log.warning("refusing access to %s: names ending in %s are reserved for "
                            "recovery files", label, RECOVERY_SUFFIX)
                raise _fail(errno.EACCES)
            created, writable = False, True
            fd = -1
            if create:
                try:
                    fd = os.open(name, _OPEN_FLAGS | os.O_RDWR | os.O_CREAT | os.O_EXCL,
                                 (mode & 0o777) | 0o600, dir_fd=pfd)
                    created = True
                except FileExistsError:
                    if exclusive:
                        raise
            if fd < 0:
                try:
                    fd = os.open(name, _OPEN_FLAGS | os.O_RDWR, dir_fd=pfd)
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise
                    fd = os.open(name, _OPEN_FLAGS | os.O_RDONLY, dir_fd=pfd)
                    writable = False
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    log.warning("refusing access to %s: not a regular file on the host", label)
                    raise _fail(errno.EACCES)
                os.set_blocking(fd, True)
                ident = (m.index, st.st_dev, st.st_ino)
                ef = self._files.get(ident)
                if ef is not None:  # another name of an open file, or a race with the host
                    os.close(fd)
                    return self._ref(ef, label), False
                rec_fd = None
                if m.enable_recovery and writable:
                    rec_fd = os.open(name + RECOVERY_SUFFIX, _OPEN_FLAGS | os.O_RDWR | os.O_CREAT,
                                     0o600, dir_fd=pfd)
                used = sum(f.cache_nodes for f in self._files.values())
                cache = max(CACHE_MIN_NODES, min(CACHE_NODES, CACHE_BUDGET - used))
                try:
                    pf = self._open_pf(fd, key, bound_path(m, rel), label, new=created,
                                       readonly=not writable, rec_fd=rec_fd, cache=cache)
                except BaseException:
                    if rec_fd is not None:
                        os.close(rec_fd)
                    raise
            except BaseException:
                os.close(fd)
                if created:  # leave no empty, non-protected file behind
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=pfd)
                raise
        finally:
            os.close(pfd)
        ef = EncFile(ident=ident, mount=m, rel=rel, label=label, pf=pf, fd=fd, rec_fd=rec_fd,
                     writable=writable, mtime_ns=st.st_mtime_ns, cache_nodes=cache)
        if rec_fd is not None:
            rst = os.fstat(rec_fd)
            ef.rec_ident = (rst.st_dev, rst.st_ino)
        self._files[ident] = ef
        return self._ref(ef, label), True

    @staticmethod
    def _ref(ef: EncFile, label: str) -> EncFile:
        if ef.failed:
            log.error("encrypted file %s was found corrupt while open; access denied until "
                      "every handle of it is closed", label)
            raise _fail(errno.EACCES)
        ef.refs += 1
        return ef

    @staticmethod
    def _open_pf(fd: int, key: bytes, path: str, label: str, *, new: bool, readonly: bool,
                 rec_fd: int | None, cache: int) -> ProtectedFile:
        try:
            pf: ProtectedFile = _pf().ProtectedFile.open(
                fd, key=key, path=path, create=new, readonly=readonly, cache_nodes=cache,
                name=label, recovery=rec_fd)
            return pf
        except _pf().PfError as e:  # evaluated only when something was raised
            log.error("encrypted file %s cannot be opened (%s): %s; access denied", label,
                      e.kind.value, e)
            raise _fail(errno.EACCES) from None
        except _pf().PfIOError as e:
            log.error("encrypted file %s: host I/O error: %s", label, e)
            raise _fail(e.errno or errno.EIO) from None
        except GeodeError as e:  # e.g. a bound path longer than the format allows
            log.error("encrypted file %s cannot be opened: %s", label, e)
            raise _fail(errno.EACCES) from None

    def release(self, ef: EncFile) -> None:
        """Drop one reference; the last one writes the file back and closes it."""
        ef.refs -= 1
        if ef.refs > 0:
            return
        self._close(ef)

    def _close(self, ef: EncFile) -> None:
        if self._files.get(ef.ident) is ef:
            del self._files[ef.ident]
        clean = False
        try:
            if not ef.failed:
                try:
                    ef.pf.close()
                    clean = True
                except GeodeError as e:
                    log.error("encrypted file %s could not be written back when closed: %s",
                              ef.label, e)
        finally:
            os.close(ef.fd)
            ef.fd = -1
            if ef.rec_fd is not None:
                if clean:
                    self._remove_recovery(ef)
                os.close(ef.rec_fd)
                ef.rec_fd = None
        self._sizes.clear()

    def _remove_recovery(self, ef: EncFile) -> None:
        """Unlink the recovery file, if its name still refers to the one we journaled into."""
        if ef.unlinked or ef.rec_ident is None:
            return
        try:
            pfd, name = self._parent(ef.mount, ef.rel)
        except OSError:
            return
        try:
            rname = name + RECOVERY_SUFFIX
            st = os.stat(rname, dir_fd=pfd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == ef.rec_ident:
                os.unlink(rname, dir_fd=pfd)
        except OSError:
            pass
        finally:
            os.close(pfd)

    def close_all(self) -> None:
        """Write back and close every open file (the view is going away)."""
        for ef in list(self._files.values()):
            try:
                self._close(ef)
            except Exception:  # keep closing the others
                log.exception("error closing encrypted file %s", ef.label)
        self._files.clear()

    # ------------------------------------------------------------------ I/O

    def _guard(self, ef: EncFile, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        if ef.failed:
            raise _fail(errno.EACCES)
        try:
            return fn(*args)
        except _pf().PfError as e:  # evaluated only when something was raised
            ef.failed = True
            log.error("encrypted file %s is corrupt or was changed on the host (%s while "
                      "%s): %s; access denied", ef.label, e.kind.value, what, e)
            raise _fail(errno.EACCES) from None
        except _pf().PfIOError as e:
            log.error("encrypted file %s: host I/O error while %s: %s", ef.label, what, e)
            raise _fail(e.errno or errno.EIO) from None
        except GeodeError as e:
            log.error("encrypted file %s: %s failed: %s", ef.label, what, e)
            raise _fail(errno.EACCES if ef.pf.readonly else errno.EIO) from None

    def read(self, ef: EncFile, offset: int, size: int) -> bytes:
        data: bytes = self._guard(ef, "reading", ef.pf.read, offset, size)
        return data

    def write(self, ef: EncFile, offset: int, data: bytes) -> int:
        if not ef.writable:
            raise _fail(errno.EACCES)
        n: int = self._guard(ef, "writing", ef.pf.write, offset, data)
        return n

    def truncate(self, ef: EncFile, size: int) -> None:
        if not ef.writable:
            raise _fail(errno.EACCES)
        self._guard(ef, "truncating", ef.pf.truncate, size)

    def fsync(self, ef: EncFile) -> None:
        self._guard(ef, "syncing", lambda: ef.pf.flush(sync=True))

    def rebind(self, ef: EncFile, new_rel: str) -> None:
        """Bind the file to ``new_rel`` (before the host rename)."""
        if not ef.writable:
            raise _fail(errno.EACCES)
        self._guard(ef, "renaming", ef.pf.rename, bound_path(ef.mount, new_rel))

    def unlinked(self, m: Mount, pfd: int, name: str, st: os.stat_result) -> None:
        """``name`` (whose attributes were ``st``) was unlinked from the directory ``pfd``:
        remove its recovery file too, unless that belongs to someone else."""
        ef = self._files.get((m.index, st.st_dev, st.st_ino))
        if ef is not None:
            ef.unlinked = True
        rname = name + RECOVERY_SUFFIX
        try:
            rst = os.stat(rname, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISREG(rst.st_mode) and (
                    ef is None or ef.rec_ident in (None, (rst.st_dev, rst.st_ino))):
                os.unlink(rname, dir_fd=pfd)
        except OSError:
            pass
        self._sizes.clear()

    def moved(self, items: Iterable[tuple[EncFile, str, str]]) -> None:
        """Files were renamed on the host to ``(new rel, new label)``; their recovery files
        follow them (in two steps, through hidden names, so that exchanged files do not
        overwrite each other's)."""
        staged: list[tuple[EncFile, int, str]] = []
        for n, (ef, new_rel, label) in enumerate(items):
            old_rel = ef.rel
            ef.rel, ef.label = new_rel, label
            if ef.rec_ident is None or ef.unlinked:
                continue
            try:
                pfd, name = self._parent(ef.mount, old_rel)
            except OSError:
                continue
            tmp = f".{os.getpid()}.{n}.moving{RECOVERY_SUFFIX}"
            try:
                st = os.stat(name + RECOVERY_SUFFIX, dir_fd=pfd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == ef.rec_ident:
                    os.rename(name + RECOVERY_SUFFIX, tmp, src_dir_fd=pfd, dst_dir_fd=pfd)
                    staged.append((ef, pfd, tmp))
                    continue
            except OSError:
                pass
            os.close(pfd)
        for ef, pfd, tmp in staged:
            try:
                npfd, nname = self._parent(ef.mount, ef.rel)
                try:
                    os.rename(tmp, nname + RECOVERY_SUFFIX, src_dir_fd=pfd, dst_dir_fd=npfd)
                finally:
                    os.close(npfd)
            except OSError as e:
                log.warning("cannot move the recovery file of %s: %s", ef.label, e.strerror)
            finally:
                os.close(pfd)
        self._sizes.clear()

    # ------------------------------------------------------------------ attributes

    def plain_size(self, m: Mount, rel: str, st: os.stat_result) -> int | None:
        """Plaintext size of the host file ``rel`` whose host attributes are ``st``.

        Open files answer from memory. Otherwise the metadata node is read and decrypted
        (cached per host inode, size and times); None if the key is not set or the metadata
        does not authenticate (opening the file then says why).
        """
        ef = self._files.get((m.index, st.st_dev, st.st_ino))
        if ef is not None:
            return ef.size
        if st.st_size < _layout().NODE_SIZE or not self.key_available(m):
            return None
        name_key = m.key_name or "default"
        ck = (m.index, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
              name_key, self.keys.get(name_key))
        if ck in self._sizes:
            return self._sizes[ck]
        size: int | None = None
        try:
            pfd, name = self._parent(m, rel)
            try:
                fd = os.open(name, _OPEN_FLAGS | os.O_RDONLY, dir_fd=pfd)
            finally:
                os.close(pfd)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    size = _metadata_size(os.pread(fd, _layout().NODE_SIZE, 0),
                                          self.keys[name_key])
            finally:
                os.close(fd)
        except (OSError, ValueError):
            size = None
        if len(self._sizes) > 4096:
            self._sizes.clear()
        self._sizes[ck] = size
        return size

    def open_mtime(self, m: Mount, st: os.stat_result) -> int | None:
        """The modification time to show for an open file (None: not open, use the host's)."""
        ef = self._files.get((m.index, st.st_dev, st.st_ino))
        return ef.mtime_ns if ef is not None else None

    def set_mtime(self, m: Mount, st: os.stat_result, mtime_ns: int) -> None:
        """The program set the modification time of (possibly open) file ``st``."""
        ef = self._files.get((m.index, st.st_dev, st.st_ino))
        if ef is not None:
            ef.mtime_ns = mtime_ns

    @property
    def open_files(self) -> Mapping[tuple[int, int, int], EncFile]:
        return self._files


def _metadata_size(node0: bytes, key: bytes) -> int | None:
    """The size recorded in a metadata node, or None if it does not authenticate."""
    L = _layout()  # noqa: N806 - the module alias used throughout the format library
    if len(node0) != L.NODE_SIZE:
        return None
    header = L.unpack_header(node0)
    if header.file_id != L.FILE_ID or header.major not in (L.MAJOR_VERSION,
                                                           L.MAJOR_VERSION_V1):
        return None
    plain = L.decrypt_node(L.derive_metadata_key(key, header.nonce),
                           L.encrypted_part(node0, header), header.mac)
    if plain is None:
        return None
    fields, _ = L.unpack_fields(plain)
    return int(fields.size)
