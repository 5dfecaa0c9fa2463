"""An open protected file: random-access read/write over Gramine's v2.0 format.

The design follows the format's own: the metadata node and the root MHT node stay in memory
while the file is open; other MHT and data nodes live in two LRU caches of decrypted nodes.
A changed data node is marked dirty together with every MHT node above it; dirty nodes are
never evicted. When a cache is full and its least recently used node is dirty, or on
``flush``/``close``/``rename``/``truncate``, every dirty node is re-encrypted under a fresh
random key (data nodes first, then MHT nodes from the deepest up, then the root), the metadata
is sealed under a fresh nonce, and the nodes are written in physical order, the metadata node
last.

Every node read from the host is authenticated against its parent before use, so a host that
changes or rolls back a node while the file is open is detected. No plaintext or key is ever
put into an error message.

With a recovery file (``recovery=``), each write-back first copies the on-disk version of every
node it will overwrite or cut into the recovery file as ``{u64 physical node number, 4096
bytes}`` records (the metadata node included), syncs it, and sets the ``pending write`` flag in
the host file's metadata node before touching anything else; the final metadata write clears
it. Opening a file whose flag is set replays the records, which restores the previous content.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType

from geode.errors import GeodeError
from geode.formats.pf import gcm
from geode.formats.pf import layout as L
from geode.formats.pf.errors import PfError, PfErrorKind
from geode.formats.pf.host import Host, HostFile

DEFAULT_CACHE_NODES = 64
MIN_CACHE_NODES = 4
_READ_RUN = 64  # data nodes fetched from the host per read call
# Dirty data nodes that start a write-back, whatever the cache's size (not with a recovery
# file, where every write-back costs a sync). Encrypting a batch while its plaintext is still
# in the CPU's caches gave 15-25% more sequential write throughput than the batches of ~1,000
# nodes a 4,096-node cache's evictions make; the MHT nodes and metadata sealed once more per
# batch cost ~2% of that.
WRITE_BACK_BATCH = 256
_ZEROS = bytes(L.NODE_SIZE)
_RECORD = struct.Struct("<Q")
RECORD_SIZE = _RECORD.size + L.NODE_SIZE


class ProtectedFile:
    """One open protected file. Use :meth:`open`; all offsets are plaintext offsets.

    Methods are serialised by an internal lock, so one object may be shared by threads.
    """

    def __init__(self, host: Host, kdk: bytes, name: str, *, readonly: bool,
                 cache_nodes: int, recovery: Host | None) -> None:
        self._host = host
        self._kdf = L.MetadataKdf(kdk)
        self._name = name
        self._readonly = readonly
        self._recovery = recovery
        self._cap_data = cache_nodes
        self._cap_mht = max(MIN_CACHE_NODES, cache_nodes // 4)
        self._batch = cache_nodes if recovery is not None else min(cache_nodes, WRITE_BACK_BATCH)
        self._lock = threading.RLock()
        self._path = b""
        self._size = 0
        self._md = bytearray(L.MD_DATA_SIZE)
        self._root_key = bytes(L.KEY_SIZE)
        self._root_mac = bytes(L.MAC_SIZE)
        # Decrypted nodes: the root MHT node (pinned), and LRU caches of MHT nodes (by logical
        # number k >= 1) and data nodes (by logical number d). Dirty = changed since written.
        self._root: bytearray | None = None
        self._root_dirty = False
        self._data: OrderedDict[int, bytearray] = OrderedDict()
        self._mht: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty_data: set[int] = set()
        self._dirty_mht: set[int] = set()
        self._meta_dirty = False
        self._host_nodes = 0  # physical nodes in the host file, as far as we know
        self._closed = False
        self._failed: GeodeError | None = None

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, fileobj: HostFile, *, key: bytes, path: str | None, create: bool,
             readonly: bool = False, cache_nodes: int = DEFAULT_CACHE_NODES,
             name: str | None = None, recovery: HostFile | None = None) -> ProtectedFile:
        """Open (or with ``create``, initialise) the protected file held by ``fileobj``.

        ``fileobj`` is a seekable binary file object or an OS file descriptor; nothing else is
        touched. ``key`` is the 16-byte key-derivation key (Gramine's wrap key). ``path`` is the
        bound path: stored on create, compared byte for byte on open (``None`` skips the check
        and is not allowed with ``create``). ``name`` names the file in error messages (default:
        ``path``). ``recovery`` is an optional second file object for crash recovery.

        Raises :class:`PfError` for files that are not protected files, fail authentication,
        are bound to another path, truncated or extended; :class:`GeodeError` for bad
        arguments; :class:`PfIOError` when the host file cannot be read or written.
        """
        label = name if name is not None else (path if path is not None else "protected file")
        if not isinstance(key, bytes | bytearray) or len(key) != L.KEY_SIZE:
            raise GeodeError("the key must be exactly 16 bytes", where=label)
        if cache_nodes < MIN_CACHE_NODES:
            raise GeodeError(f"cache_nodes must be at least {MIN_CACHE_NODES}", where=label)
        if create and readonly:
            raise GeodeError("cannot create a protected file read-only", where=label)
        path_bytes = None if path is None else _encode_path(path, label)
        rec = None if recovery is None else Host(recovery, f"{label} (recovery file)")
        pf = cls(Host(fileobj, label), bytes(key), label, readonly=readonly,
                 cache_nodes=cache_nodes, recovery=rec)
        if create:
            if path_bytes is None:
                raise GeodeError("a path is needed to create a protected file", where=label)
            pf._path = path_bytes
            pf._host.truncate(0)
            pf._meta_dirty = True
            pf._write_back()
        else:
            pf._load(path_bytes)
        return pf

    def _load(self, path: bytes | None) -> None:
        host_size = self._host.size()
        if host_size == 0:
            raise self._error(PfErrorKind.NOT_PROTECTED, "not a protected file (empty)")
        if host_size % L.NODE_SIZE:
            raise self._error(PfErrorKind.NOT_PROTECTED, f"not a protected file (size "
                              f"{host_size} is not a multiple of {L.NODE_SIZE})")
        node0 = self._read_physical(0, 1)
        header = L.unpack_header(node0)
        if header.file_id != L.FILE_ID:
            raise self._error(PfErrorKind.NOT_PROTECTED, "not a protected file (bad magic)")
        if header.major not in (L.MAJOR_VERSION, L.MAJOR_VERSION_V1):
            raise self._error(PfErrorKind.VERSION, f"unsupported protected-file format version "
                              f"{header.major}.{header.minor}")
        if header.flags & ~L.KNOWN_FLAGS:
            raise self._error(PfErrorKind.FLAGS, f"unknown feature flags 0x{header.flags:02x}")
        if header.flags & L.FLAG_PENDING_WRITE:
            if self._recovery is None or self._readonly:
                raise self._error(PfErrorKind.RECOVERY_NEEDED,
                                  "an interrupted write left the file inconsistent; it needs "
                                  "its recovery file, opened writable")
            self._replay_recovery()
            return self._load(path)
        plain = L.decrypt_node(self._kdf.derive(header.nonce),
                               L.encrypted_part(node0, header), header.mac)
        if plain is None:
            raise self._error(PfErrorKind.WRONG_KEY, "metadata does not authenticate: wrong "
                              "key, or the metadata node is corrupt", node=0)
        fields, terminated = L.unpack_fields(plain)
        if not terminated:
            raise self._error(PfErrorKind.BAD_METADATA, "bound path is not NUL-terminated",
                              node=0)
        if path is not None and fields.path != path:
            raise self._error(PfErrorKind.PATH_MISMATCH, f"file is bound to path "
                              f"{os.fsdecode(fields.path)!r}, not {os.fsdecode(path)!r}")
        self._path = fields.path
        self._size = fields.size
        self._md[:] = fields.data
        self._root_key, self._root_mac = fields.root_key, fields.root_mac
        have, want = host_size // L.NODE_SIZE, L.physical_node_count(fields.size)
        if have < want:
            raise self._error(PfErrorKind.TRUNCATED, f"file is truncated: {have} nodes, "
                              f"its size {fields.size} needs {want}")
        if have > want:
            raise self._error(PfErrorKind.EXTENDED, f"file is extended: {have} nodes, "
                              f"its size {fields.size} needs {want}")
        self._host_nodes = have
        if header.major == L.MAJOR_VERSION_V1:
            self._meta_dirty = not self._readonly  # migrate to v2 on the next write-back
        if L.data_node_count(self._size):
            self._get_root()

    # --- properties ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Plaintext size in bytes."""
        return self._size

    @property
    def path(self) -> str:
        """The bound path (as stored in the metadata)."""
        return os.fsdecode(self._path)

    @property
    def name(self) -> str:
        return self._name

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dirty(self) -> bool:
        """Whether there are changes not yet written to the host file."""
        return self._meta_dirty or self._root_dirty

    # --- public operations -----------------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer only at end of file)."""
        with self._lock:
            self._check_open()
            if offset < 0 or size < 0:
                raise GeodeError("negative offset or size", where=self._name)
            end = min(offset + size, self._size)
            if offset >= end:
                return b""
            parts: list[bytes | memoryview] = []
            pos = offset
            if pos < L.MD_DATA_SIZE:
                stop = min(end, L.MD_DATA_SIZE)
                parts.append(bytes(self._md[pos:stop]))
                pos = stop
            while pos < end:
                pos = self._read_nodes(pos, end, parts)
                self._evict()
            return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else \
                b"".join(parts)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset``; a gap after the end of file is filled with zeros."""
        with self._lock:
            self._check_writable()
            if offset < 0:
                raise GeodeError("negative offset", where=self._name)
            view = memoryview(data).cast("B")
            if not len(view):
                return 0
            self._guard(self._grow_to, offset)
            self._guard(self._write_at, offset, view)
            return len(view)

    def truncate(self, size: int) -> None:
        """Set the plaintext size: cut, or extend with zeros. Shrinking is written at once."""
        with self._lock:
            self._check_writable()
            if size < 0:
                raise GeodeError("negative size", where=self._name)
            if size >= self._size:
                self._guard(self._grow_to, size)
                return
            self._write_back()
            keep = L.data_node_count(size)
            for d in [d for d in self._data if d >= keep]:
                del self._data[d]
            for k in [k for k in self._mht if k * L.DATA_PER_MHT >= keep]:
                del self._mht[k]
            if keep == 0:
                self._root = None
            self._size = size
            self._meta_dirty = True
            self._write_back(cut_to=L.physical_node_count(size))

    def rename(self, new_path: str) -> None:
        """Bind the file to ``new_path`` (the host-side rename is the caller's job)."""
        with self._lock:
            self._check_writable()
            self._path = _encode_path(new_path, self._name)
            self._meta_dirty = True
            self._write_back()

    def flush(self, *, sync: bool = False) -> None:
        """Write all changes to the host file; with ``sync``, fsync it too."""
        with self._lock:
            self._check_open()
            if not self._readonly:
                self._write_back()
            self._host.flush(sync)

    def close(self) -> None:
        """Write all changes and forget the decrypted state. Closing twice is a no-op.

        The host file object is not closed: it belongs to the caller.
        """
        with self._lock:
            if self._closed:
                return
            try:
                if not self._readonly and self._failed is None:
                    self._write_back()
                    self._host.flush()
            finally:
                self._closed = True
                for cache in (self._data, self._mht):
                    for buf in cache.values():
                        buf[:] = _ZEROS
                    cache.clear()
                self._dirty_data.clear()
                self._dirty_mht.clear()
                self._root = None
                self._md[:] = bytes(L.MD_DATA_SIZE)
            if self._failed is not None:
                raise self._failed

    def __enter__(self) -> ProtectedFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:  # keep the original error; still release the state
            with contextlib.suppress(GeodeError):
                self.close()

    # --- checks ----------------------------------------------------------------------------------

    def _error(self, kind: PfErrorKind, message: str, node: int | None = None) -> PfError:
        return PfError(kind, message, where=self._name, node=node)

    def _check_open(self) -> None:
        if self._closed:
            raise GeodeError("protected file is closed", where=self._name)

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise GeodeError("protected file is open read-only", where=self._name)
        if self._failed is not None:
            raise self._failed

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        """Run a mutating step; an error in the middle leaves the file unusable (fail closed)."""
        try:
            fn(*args)
        except GeodeError as e:
            self._failed = e
            raise

    # --- nodes -----------------------------------------------------------------------------------
    #
    # Invariant: a dirty data node's MHT ancestors are all dirty, and dirty nodes are never
    # evicted, so a write-back finds every parent it needs in memory.

    def _get_root(self) -> bytearray:
        root = self._root
        if root is None:
            if L.data_node_count(self._size):
                raw = self._read_physical(1, 1)
                plain = L.decrypt_node(self._root_key, raw, self._root_mac)
                if plain is None:
                    raise self._error(PfErrorKind.CORRUPT_NODE, "root MHT node (physical node "
                                      "1) does not authenticate", node=1)
                root = plain
            else:
                root = bytearray(L.NODE_SIZE)
            self._root = root
        return root

    def _get_mht(self, k: int) -> bytearray:
        if k == 0:
            return self._get_root()
        node = self._mht.get(k)
        if node is not None:
            self._mht.move_to_end(k)
            return node
        parent_k, slot = L.mht_node_parent(k)
        parent = self._get_mht(parent_k)
        if k * L.DATA_PER_MHT < L.data_node_count(self._size):
            physical = L.mht_node_physical(k)
            raw = self._read_physical(physical, 1)
            entry = memoryview(parent)[slot:slot + L.ENTRY_SIZE]
            node = gcm.decrypt(entry[:16], raw, entry[16:])
            if node is None:
                raise self._error(PfErrorKind.CORRUPT_NODE, f"MHT node {k} (physical node "
                                  f"{physical}) does not authenticate", node=physical)
        else:
            node = bytearray(L.NODE_SIZE)
        self._mht[k] = node
        return node

    def _read_physical(self, first: int, count: int) -> bytes:
        raw = self._host.read(first * L.NODE_SIZE, count * L.NODE_SIZE)
        if len(raw) != count * L.NODE_SIZE:
            bad = first + len(raw) // L.NODE_SIZE
            raise self._error(PfErrorKind.TRUNCATED, f"file is truncated: physical node {bad} "
                              "is missing", node=bad)
        return raw

    def _load_data_run(self, first: int, last: int) -> None:
        """Read, authenticate and cache data nodes ``first..last`` (none cached, all on disk)."""
        p0 = L.data_node_physical(first)
        raw = memoryview(self._read_physical(p0, L.data_node_physical(last) - p0 + 1))
        data = self._data
        decrypt = gcm.decrypt
        node_size = L.NODE_SIZE
        per_mht = L.DATA_PER_MHT
        k_cur, mht = -1, memoryview(b"")
        for d in range(first, last + 1):
            k = d // per_mht
            if k != k_cur:
                mht, k_cur = memoryview(self._get_mht(k)), k
            slot = (d - k * per_mht) * L.ENTRY_SIZE
            off = (d + 2 + k - p0) * node_size
            plain = decrypt(mht[slot:slot + 16], raw[off:off + node_size],
                            mht[slot + 16:slot + 32])
            if plain is None:
                physical = L.data_node_physical(d)
                raise self._error(PfErrorKind.CORRUPT_NODE, f"data node {d} (physical node "
                                  f"{physical}) does not authenticate", node=physical)
            data[d] = plain

    def _get_data(self, d: int) -> bytearray:
        node = self._data.get(d)
        if node is None:
            self._load_data_run(d, d)
            node = self._data[d]
        else:
            self._data.move_to_end(d)
        return node

    def _read_nodes(self, pos: int, end: int, parts: list[bytes | memoryview]) -> int:
        """Append plaintext from ``pos`` (>= 3072) towards ``end``; return the new position."""
        data = self._data
        d = L.data_node_index(pos)
        last = L.data_node_index(end - 1)
        if d not in data:
            stop = d
            limit = min(last, d + _READ_RUN - 1)
            while stop < limit and stop + 1 not in data:
                stop += 1
            self._load_data_run(d, stop)
            last = stop
        else:
            last = d
        for i in range(d, last + 1):
            node = data[i]
            data.move_to_end(i)
            base = L.data_node_offset(i)
            a, b = pos - base, min(end - base, L.NODE_SIZE)
            parts.append(memoryview(node)[a:b])
            pos = base + b
        return pos

    def _mark_dirty(self, d: int) -> None:
        """Mark data node ``d`` and every MHT node above it dirty."""
        self._dirty_data.add(d)
        self._root_dirty = True
        dirty_mht = self._dirty_mht
        k = d // L.DATA_PER_MHT
        while k and k not in dirty_mht:
            self._get_mht(k)  # resident from now on: dirty nodes are not evicted
            dirty_mht.add(k)
            k = (k - 1) // L.CHILDREN_PER_MHT
        if k == 0:
            self._get_root()

    def _grow_to(self, size: int) -> None:
        if size > self._size:
            self._write_at(self._size, None, size - self._size)

    def _write_at(self, pos: int, view: memoryview | None, length: int = 0) -> None:
        """Write ``view`` (or ``length`` zero bytes) at ``pos``, growing the size as it goes.

        The size grows node by node, so a write-back forced by eviction in the middle always
        describes exactly the nodes that exist.
        """
        end = pos + (len(view) if view is not None else length)
        src = 0
        if pos < L.MD_DATA_SIZE:
            stop = min(end, L.MD_DATA_SIZE)
            n = stop - pos
            self._md[pos:stop] = view[:n] if view is not None else _ZEROS[:n]
            src, pos = n, stop
            self._meta_dirty = True
            if pos > self._size:
                self._size = pos
        if pos >= end:
            return
        # Nodes only partly overwritten are read (and authenticated) before anything changes.
        for edge in (pos, end - 1):
            d = L.data_node_index(edge)
            if not self._full_overwrite(d, pos, end) and d < L.data_node_count(self._size):
                self._get_data(d)
        data = self._data
        dirty = self._dirty_data
        mht_cache = self._mht
        node_size = L.NODE_SIZE
        md_size = L.MD_DATA_SIZE
        per_mht = L.DATA_PER_MHT
        cap_data, cap_mht, batch = self._cap_data, self._cap_mht, self._batch
        zeros = _ZEROS
        while pos < end:
            d = (pos - md_size) // node_size
            base = md_size + d * node_size
            a = pos - base
            b = end - base
            if b > node_size:
                b = node_size
            n = b - a
            node = data.get(d)
            if node is None:
                if n == node_size:  # a whole node: no need to read the old one
                    data[d] = bytearray(view[src:src + n]) if view is not None \
                        else bytearray(node_size)
                else:
                    if d < L.data_node_count(self._size) and \
                            not self._full_overwrite(d, pos, end):
                        node = self._get_data(d)
                    else:
                        node = data[d] = bytearray(node_size)
                    node[a:b] = view[src:src + n] if view is not None else zeros[:n]
            else:
                data.move_to_end(d)
                node[a:b] = view[src:src + n] if view is not None else zeros[:n]
            src += n
            pos = base + b
            if d not in dirty:
                k = d // per_mht
                if (k in self._dirty_mht) if k else self._root_dirty:
                    dirty.add(d)
                else:
                    self._mark_dirty(d)
            if pos > self._size:
                self._size = pos
                self._meta_dirty = True
            if len(dirty) >= batch:
                self._write_back()
            if len(data) > cap_data or len(mht_cache) > cap_mht:
                self._evict()

    def _full_overwrite(self, d: int, pos: int, end: int) -> bool:
        """Whether writing [pos, end) replaces every live byte of data node ``d``."""
        base = L.data_node_offset(d)
        return pos <= base and (end >= base + L.NODE_SIZE or end >= self._size)

    def _evict(self) -> None:
        """Shrink an over-full cache to 3/4 of its capacity (so evictions come in batches).

        A dirty victim forces a full write-back first, after which every node is clean.
        """
        for cache, cap, dirty in ((self._data, self._cap_data, self._dirty_data),
                                  (self._mht, self._cap_mht, self._dirty_mht)):
            if len(cache) > cap:
                excess = len(cache) - (cap - cap // 4)
                if dirty and not dirty.isdisjoint(itertools.islice(cache, excess)):
                    self._write_back()
                popitem = cache.popitem
                for _ in range(excess):
                    popitem(last=False)

    # --- write-back ------------------------------------------------------------------------------

    def _write_back(self, cut_to: int | None = None) -> None:
        """Encrypt every dirty node, seal the metadata and write them (metadata last).

        ``cut_to`` also truncates the host file to that many nodes, before the metadata.
        """
        if self._failed is not None:
            raise self._failed
        if not (self._meta_dirty or self._root_dirty or cut_to is not None):
            return
        try:
            blocks = self._encrypt_dirty() if self._root_dirty else []
            metadata = self._kdf.seal(L.Fields(
                self._path, self._size, self._root_key, self._root_mac, bytes(self._md)),
                os.urandom(L.NONCE_SIZE))
            if self._recovery is not None:
                self._journal([p for p, _ in blocks], cut_to)
            if cut_to is not None and cut_to < self._host_nodes:
                self._host.truncate(cut_to * L.NODE_SIZE)
                self._host_nodes = cut_to
            self._host.write_many(blocks, L.NODE_SIZE)
            self._host.write(0, metadata)
            self._host_nodes = max(self._host_nodes, 1)
            if blocks:
                self._host_nodes = max(self._host_nodes, blocks[-1][0] + 1)
            if self._recovery is not None:
                self._host.flush(sync=True)
                self._recovery.truncate(0)
        except GeodeError as e:
            self._failed = e
            raise
        self._meta_dirty = False

    def _encrypt_dirty(self) -> list[tuple[int, bytes | memoryview]]:
        """Re-encrypt dirty data, MHT and root nodes; return (physical, ciphertext) sorted.

        Data nodes first (one batch), then MHT nodes from the highest number (the deepest)
        down, each node's fresh key and tag going into its parent, then the root into the
        metadata.
        """
        dirty_data = sorted(self._dirty_data)
        dirty_mht = sorted(self._dirty_mht, reverse=True)
        n_data = len(dirty_data)
        keys = os.urandom(L.KEY_SIZE * (n_data + len(dirty_mht) + 1))
        node_size = L.NODE_SIZE
        record = node_size + L.MAC_SIZE  # (ciphertext, tag) of one node in a batch's output
        per_mht = L.DATA_PER_MHT
        blocks: list[tuple[int, bytes | memoryview]] = []
        append = blocks.append
        root = self._get_root()
        mht_cache = self._mht
        data = self._data
        sealed = memoryview(gcm.encrypt_many(keys[:n_data * 16], [data[d] for d in dirty_data]))
        at = 0
        k_cur, parent = -1, root
        for d in dirty_data:
            k = d // per_mht
            if k != k_cur:
                k_cur = k
                parent = root if k == 0 else mht_cache[k]
            slot = (d - k * per_mht) * 32
            parent[slot:slot + 16] = keys[at * 16:at * 16 + 16]
            parent[slot + 16:slot + 32] = sealed[at * record + node_size:(at + 1) * record]
            append((d + 2 + k, sealed[at * record:at * record + node_size]))
            at += 1
        encrypt = gcm.encrypt
        for k in dirty_mht:  # children before parents
            parent_k, slot = L.mht_node_parent(k)
            parent = root if parent_k == 0 else mht_cache[parent_k]
            key = keys[at * 16:at * 16 + 16]
            at += 1
            out = encrypt(key, mht_cache[k])
            parent[slot:slot + 32] = key + out[node_size:]
            append((L.mht_node_physical(k), memoryview(out)[:node_size]))
        key = keys[at * 16:at * 16 + 16]
        out = encrypt(key, root)
        self._root_key, self._root_mac = key, out[node_size:]
        append((1, memoryview(out)[:node_size]))
        self._dirty_data.clear()
        self._dirty_mht.clear()
        self._root_dirty = False
        blocks.sort()  # by physical node: the numbers are unique, so no block is compared
        return blocks

    # --- recovery --------------------------------------------------------------------------------

    def _journal(self, physicals: list[int], cut_to: int | None) -> None:
        """Save the on-disk nodes about to change, then mark the host file as mid-write."""
        assert self._recovery is not None
        if self._host_nodes == 0:  # a file being created has nothing to save
            return
        saved = [p for p in physicals if p < self._host_nodes]
        if cut_to is not None:
            saved.extend(range(cut_to, self._host_nodes))
        records = []
        for p in [0, *saved]:
            block = self._host.read(p * L.NODE_SIZE, L.NODE_SIZE)
            if len(block) != L.NODE_SIZE:
                raise self._error(PfErrorKind.TRUNCATED, f"file is truncated: physical node {p} "
                                  "is missing", node=p)
            records.append(_RECORD.pack(p) + block)
        self._recovery.truncate(0)
        self._recovery.write(0, b"".join(records))
        self._recovery.flush(sync=True)
        self._host.write(L.OFF_FLAGS, bytes([records[0][_RECORD.size + L.OFF_FLAGS]
                                             | L.FLAG_PENDING_WRITE]))
        self._host.flush(sync=True)

    def _replay_recovery(self) -> None:
        """Restore the nodes saved before an interrupted write-back.

        The saved metadata node must authenticate under our key before anything is written.
        """
        assert self._recovery is not None
        raw = self._recovery.read(0, self._recovery.size())
        if not raw or len(raw) % RECORD_SIZE:
            raise self._error(PfErrorKind.BAD_RECOVERY, "an interrupted write left the file "
                              "inconsistent and its recovery file is empty or malformed")
        records = [(_RECORD.unpack_from(raw, at)[0], raw[at + 8:at + RECORD_SIZE])
                   for at in range(0, len(raw), RECORD_SIZE)]
        first, old_meta = records[0]
        if first != 0 or any(p >= 1 << 40 for p, _ in records):
            raise self._error(PfErrorKind.BAD_RECOVERY, "recovery file is malformed")
        header = L.unpack_header(old_meta)
        plain = None
        if header.file_id == L.FILE_ID and header.major in (L.MAJOR_VERSION,
                                                            L.MAJOR_VERSION_V1):
            plain = L.decrypt_node(self._kdf.derive(header.nonce),
                                   L.encrypted_part(old_meta, header), header.mac)
        if plain is None or header.flags & L.FLAG_PENDING_WRITE:
            raise self._error(PfErrorKind.BAD_RECOVERY, "the metadata saved in the recovery "
                              "file does not authenticate (wrong key or corrupt file)", node=0)
        fields, _ = L.unpack_fields(plain)
        for p, block in records[1:]:
            self._host.write(p * L.NODE_SIZE, block)
        # Nodes appended by the interrupted write lie past the old end: cut them off.
        want = L.physical_node_count(fields.size) * L.NODE_SIZE
        if self._host.size() > want:
            self._host.truncate(want)
        self._host.flush(sync=True)
        self._host.write(0, old_meta)  # clears the pending-write flag: last
        self._host.flush(sync=True)
        self._recovery.truncate(0)
        self._recovery.flush(sync=True)


def _encode_path(path: str, label: str) -> bytes:
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise GeodeError("path contains a NUL byte", where=label)
    if len(raw) >= L.PATH_FIELD_SIZE:
        raise GeodeError(f"path is too long for a protected file ({len(raw)} bytes, at most "
                         f"{L.PATH_FIELD_SIZE - 1})", where=label)
    return raw
