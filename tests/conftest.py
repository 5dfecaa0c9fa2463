"""Shared fixtures: a signing key, a private Geode library dir, paths of the repo and vectors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "vectors"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def geode_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for CLI subprocesses: console scripts on PATH, a fresh signing key."""
    home = tmp_path_factory.mktemp("xdg")
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["XDG_CONFIG_HOME"] = str(home)
    # A private library dir: runs of the suite (and code edits between them) do not share
    # the runtime identity file or the runtime dir.
    env["GEODE_PKGLIBDIR"] = str(tmp_path_factory.mktemp("pkglib"))
    env.pop("CI", None)
    subprocess.run(["gramine-sgx-gen-private-key", "-q"], env=env, check=True)
    yield env


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
