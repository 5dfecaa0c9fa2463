"""The host side of a protected file: positional I/O on a binary file object or an fd."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

from geode.formats.pf.errors import PfIOError

HostFile = BinaryIO | int
_IOV_MAX = 1024


class Host:
    """Exact positional reads and writes, truncation, size and flush on one host file.

    ``target`` is an OS-level file descriptor (used with pread/pwrite) or a seekable binary
    file object (used with seek/read/write/truncate/flush). OS errors become
    :class:`PfIOError` naming ``name``.
    """

    def __init__(self, target: HostFile, name: str) -> None:
        self._fd = target if isinstance(target, int) else None
        self._obj = None if isinstance(target, int) else target
        self._name = name

    def _fail(self, what: str, e: OSError) -> PfIOError:
        return PfIOError(f"{what} failed: {e.strerror or e}", where=self._name, errno=e.errno)

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer only at end of file."""
        chunks: list[bytes] = []
        try:
            while size > 0:
                if self._fd is not None:
                    chunk = os.pread(self._fd, size, offset)
                else:
                    assert self._obj is not None
                    self._obj.seek(offset)
                    chunk = self._obj.read(size)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                size -= len(chunk)
        except OSError as e:
            raise self._fail("read", e) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            while len(view):
                if self._fd is not None:
                    n = os.pwrite(self._fd, view, offset)
                else:
                    assert self._obj is not None
                    self._obj.seek(offset)
                    written = self._obj.write(view)
                    n = len(view) if written is None else written
                if n <= 0:
                    raise OSError(0, "short write")
                view = view[n:]
                offset += n
        except OSError as e:
            raise self._fail("write", e) from None

    def write_many(self, items: Sequence[tuple[int, bytes | memoryview]], size: int) -> None:
        """Write ``size``-byte blocks at block numbers, one call per run of consecutive blocks."""
        i = 0
        while i < len(items):
            j = i + 1
            while j < len(items) and items[j][0] == items[j - 1][0] + 1:
                j += 1
            first = items[i][0]
            if j - i == 1:
                self.write(first * size, items[i][1])
            elif self._fd is not None:  # vectored, IOV_MAX blocks at a time: no copy
                for k in range(i, j, _IOV_MAX):
                    end = min(k + _IOV_MAX, j)
                    self._writev(items[k][0] * size, [block for _, block in items[k:end]])
            else:
                self.write(first * size, b"".join(block for _, block in items[i:j]))
            i = j

    def _writev(self, offset: int, blocks: list[bytes | memoryview]) -> None:
        assert self._fd is not None
        total = sum(len(b) for b in blocks)
        try:
            n = os.pwritev(self._fd, blocks, offset)
        except OSError as e:
            raise self._fail("write", e) from None
        if n < total:  # a short vectored write: finish the rest plainly
            self.write(offset + n, b"".join(blocks)[n:])

    def truncate(self, size: int) -> None:
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, size)
            else:
                assert self._obj is not None
                self._obj.truncate(size)
        except OSError as e:
            raise self._fail("truncate", e) from None

    def size(self) -> int:
        try:
            if self._fd is not None:
                return os.fstat(self._fd).st_size
            assert self._obj is not None
            return self._obj.seek(0, os.SEEK_END)
        except OSError as e:
            raise self._fail("stat", e) from None

    def flush(self, sync: bool = False) -> None:
        """Push buffered writes to the OS; with ``sync``, also to stable storage.

        ``fdatasync``: the data and the size reach the disk, which is all a protected file
        needs (its times do not matter); it is much cheaper than ``fsync`` on ext4.
        """
        try:
            fd = self._fd
            if self._obj is not None:
                self._obj.flush()
                if sync:
                    try:
                        fd = self._obj.fileno()
                    except (OSError, AttributeError, ValueError):
                        fd = None  # in-memory file objects have nothing to sync
            if sync and fd is not None:
                os.fdatasync(fd)
        except OSError as e:
            raise self._fail("flush", e) from None
