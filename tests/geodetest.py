"""Helpers shared by the tests (import as ``from geodetest import ...``).

They live here, not in conftest.py: several test folders have a conftest.py of their own,
and ``from conftest import`` would pick whichever was imported first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "vectors"
BIN = Path(sys.executable).parent


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_example(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(REPO / "examples" / name, target)
    # A developer's earlier build in examples/ would be copied too and look up to date.
    subprocess.run(["make", "-s", "clean"], cwd=target, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    return target


@contextlib.contextmanager
def view_served_in_thread(fs: Any, mnt: Path, timeout: float = 30.0) -> Iterator[None]:
    """Serve the view ``fs`` at ``mnt`` from a thread of this process for the body.

    The body runs once the view answers; afterwards the view is unmounted, which ends the
    server, and a lazy unmount sweeps up after a failure, so no test leaves a stale mount.
    """
    from geode.runtime import fuse
    from geode.runtime.viewfs import serve

    ready = threading.Event()
    holder: dict[str, Any] = {}

    def thread() -> None:
        try:
            serve(fs, mnt, ready=ready.set)
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            holder["error"] = e
            ready.set()

    t = threading.Thread(target=thread, daemon=True)
    t.start()
    try:
        assert ready.wait(timeout) and "error" not in holder, holder.get("error")
        yield
    finally:
        fuse.unmount(str(mnt))
        t.join(timeout)
        subprocess.run(["umount", "-l", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    assert not t.is_alive(), "the view server did not stop"


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@dataclass
class View:
    """A FUSE server in a subprocess (a view, or a stand-in), mounted at ``mnt``."""

    mnt: Path
    proc: subprocess.Popen[bytes]
    log: Path
    stats_file: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text()

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], stderr=subprocess.DEVNULL,
                       check=False)
        if self.stats_file is not None and self.stats_file.exists():
            self.stats = json.loads(self.stats_file.read_text())
        return self.stats


StartView = Callable[..., View]


def wait_ready(ready: Path, proc: subprocess.Popen[bytes], log: Path,
               timeout: float = 30.0) -> None:
    """Wait until a server subprocess creates ``ready``; fail with its log if it dies."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"server did not come up: {log.read_text()}")
        time.sleep(0.01)
