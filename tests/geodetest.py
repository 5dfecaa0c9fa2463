"""Helpers shared by the tests (import as ``from geodetest import ...``).

They live here, not in conftest.py: several test folders have a conftest.py of their own,
and ``from conftest import`` would pick whichever was imported first.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
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
    return target


@contextlib.contextmanager
def view_served_in_thread(fs: Any, mnt: Path, timeout: float = 30.0) -> Iterator[None]:
    """Serve the view ``fs`` at ``mnt`` from a trio thread in this process for the body.

    The body runs once the view answers; afterwards the server is cancelled (which unmounts)
    and a lazy unmount sweeps up after a failure, so no test leaves a stale mount.
    """
    import trio

    from geode.runtime.viewfs import serve

    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        with trio.CancelScope() as cs:
            holder["cs"] = cs
            holder["token"] = trio.lowlevel.current_trio_token()
            await serve(fs, mnt, ready=ready.set)

    def thread() -> None:
        try:
            trio.run(main)
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            holder["error"] = e
            ready.set()

    t = threading.Thread(target=thread, daemon=True)
    t.start()
    try:
        assert ready.wait(timeout) and "error" not in holder, holder.get("error")
        yield
    finally:
        if "token" in holder:
            trio.from_thread.run_sync(holder["cs"].cancel, trio_token=holder["token"])
        t.join(timeout)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], stderr=subprocess.DEVNULL,
                       check=False)
    assert not t.is_alive(), "the view server did not stop"
