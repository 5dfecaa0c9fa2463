"""Fixtures of the runtime tests: views served by a subprocess."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from geodetest import StartView, View, is_mounted, wait_ready


@pytest.fixture
def start_view(tmp_path: Path) -> Iterator[StartView]:
    """``start_view(manifest, base_dir=..., extra=(...))`` serves a view at a fresh mountpoint;
    every view is stopped and checked for a stale mount afterwards."""
    views: list[View] = []

    def start(manifest: dict[str, Any], *, base_dir: Path | None = None,
              extra: tuple[str, ...] = ()) -> View:
        n = len(views)
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        mfile = tmp_path / f"view{n}.toml"
        mfile.write_text(tomli_w.dumps(manifest))
        ready = tmp_path / f"ready{n}"
        log = tmp_path / f"view{n}.log"
        stats_file = tmp_path / f"stats{n}.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "geode.runtime.viewfs", str(mfile), str(mnt),
             "--base-dir", str(base_dir or tmp_path), "--ready-file", str(ready),
             "--stats-file", str(stats_file), "--log-level", "info", *extra],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
        view = View(mnt, proc, log, stats_file)
        views.append(view)
        wait_ready(ready, proc, log)
        return view

    yield start
    for v in views:
        v.stop()
    for v in views:
        assert not is_mounted(v.mnt), f"stale mount at {v.mnt}"
