"""Shared fixtures: a signing key and a private Geode library dir (helpers: geodetest.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from geodetest import BIN


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's own geode.cache directory, for this process and every command it runs:
    runs of the suite share no entries with each other or with a developer's runs."""
    old = os.environ.get("GEODE_CACHE_DIR")
    os.environ["GEODE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("GEODE_CACHE_DIR", None)
    else:
        os.environ["GEODE_CACHE_DIR"] = old


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
