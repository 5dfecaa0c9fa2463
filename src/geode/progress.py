"""A progress bar on stderr for long operations (hashing trusted files).

Shown only when stderr is a terminal and ``$CI`` is unset, unless forced on or off by
the caller (``enabled=True``/``False``). When not shown, nothing is printed and ``rich``
is not even imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Protocol


class Reporter(Protocol):
    """What workers call; safe to call from any thread."""

    def advance(self, nbytes: int, files: int = 0) -> None: ...


class _Silent:
    def advance(self, nbytes: int, files: int = 0) -> None:
        pass


class _Counting:
    """Accumulates progress from worker threads; the bar is refreshed by rich's own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.files = 0

    def advance(self, nbytes: int, files: int = 0) -> None:
        with self._lock:
            self.bytes += nbytes
            self.files += files


def enabled(force: bool | None = None) -> bool:
    """Whether to show progress: ``force`` if given, else stderr is a TTY and no ``$CI``."""
    if force is not None:
        return force
    if os.environ.get("CI"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(
    description: str, *, total_bytes: int, total_files: int, force: bool | None = None
) -> Iterator[Reporter]:
    """Context manager yielding a :class:`Reporter`; draws a bar on stderr if enabled."""
    if not enabled(force):
        yield _Silent()
        return

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counter = _Counting()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[files]}/" + str(total_files) + " files"),
        TimeRemainingColumn(),
    )
    console = Console(stderr=True, force_terminal=True if force else None)
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total_bytes, files=0)
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(0.1):
                bar.update(task, completed=counter.bytes, files=counter.files)

        thread = threading.Thread(target=refresh, name="geode-progress", daemon=True)
        thread.start()
        try:
            yield counter
        finally:
            stop.set()
            thread.join()
            bar.update(task, completed=counter.bytes, files=counter.files)
