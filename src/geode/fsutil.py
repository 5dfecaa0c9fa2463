"""Writing output files so that a failure never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geode.errors import GeodeError


def _tempfile_beside(path: Path, mode: int) -> tuple[int, Path]:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError:
        raise GeodeError("output directory does not exist", where=str(directory)) from None
    except PermissionError:
        raise GeodeError("output directory is not writable", where=str(directory)) from None
    except OSError as e:
        raise GeodeError(f"cannot create output file: {e.strerror}", where=str(path)) from None
    os.fchmod(fd, mode & ~_umask())
    return fd, Path(tmp)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@contextlib.contextmanager
def output_files(*paths: Path, mode: int = 0o644) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; on success rename them all into place.

    If the body raises, or any rename fails, every temporary file and every output
    already renamed in this call is removed, so callers produce all outputs or none.
    """
    temps: list[Path] = []
    try:
        for path in paths:
            fd, tmp = _tempfile_beside(path, mode)
            os.close(fd)
            temps.append(tmp)
        yield temps
        done: list[Path] = []
        try:
            for tmp, path in zip(temps, paths, strict=True):
                os.replace(tmp, path)
                done.append(path)
        except OSError as e:
            for path in done:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise GeodeError(f"cannot write output: {e.strerror}", where=str(path)) from None
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + rename)."""
    with output_files(path, mode=mode) as (tmp,):
        tmp.write_bytes(data)
