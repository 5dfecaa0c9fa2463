"""Fixtures of the RA-TLS tests: a private sim installation and its collateral."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def pkglib(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "ratls-pkglib"
    monkeypatch.setenv("GEODE_PKGLIBDIR", str(path))
    return path


@pytest.fixture
def collateral(pkglib: Path) -> Path:
    from geode.tee.sim import write_collateral

    out = pkglib.parent / "ratls-collateral"
    if not out.exists():
        out.mkdir()
        write_collateral(out)
    return out
