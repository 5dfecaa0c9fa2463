"""Docs that are generated from code stay in sync with it."""

from __future__ import annotations

import subprocess
import sys

from geodetest import REPO


def test_manifest_reference_is_current() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-manifest-doc.py"),
                           "--check"], capture_output=True)
    assert proc.returncode == 0, "docs/manifest.md is stale: run scripts/gen-manifest-doc.py"
