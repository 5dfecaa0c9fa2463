"""Fixtures of the RA-TLS tests: a private sim installation, its collateral, identities."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from geode.formats.sigstruct import Sigstruct
from geode.tee import EnclaveIdentity


def make_identity(seed: int, *, debug: bool = False, isv_svn: int = 3) -> EnclaveIdentity:
    rnd = hashlib.sha256(b"ratls" + bytes([seed])).digest()
    sig = Sigstruct(modulus=rnd * 12, enclave_hash=hashlib.sha256(rnd).digest(),
                    isv_prod_id=7, isv_svn=isv_svn,
                    attribute_flags=0x04 | (2 if debug else 0), attribute_xfrm=0x03)
    return EnclaveIdentity(sig.enclave_hash, sig)


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
