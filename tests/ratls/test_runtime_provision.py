"""The supervisor's provisioning step (geode.runtime.provision) against the real server:
SET_KEY into the key table, SECRET_STRING into the environment, the CA chain read as a
trusted file of the view, and the refusals (no backend evidence, untrusted or changed CA)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from ratls_helpers import ProvServer, make_identity

from geode.errors import GeodeError
from geode.runtime.plan import ViewPlan
from geode.runtime.process import ProcessSpec
from geode.runtime.provision import provision_before_start
from geode.tee import TeeBackend
from geode.tee.sim import SimBackend

IDENT = make_identity(3)


@pytest.fixture
def server(tmp_path: Path, collateral: Path) -> Iterator[ProvServer]:
    srv = ProvServer(tmp_path / "srv", b"hello from the server\0", "--collateral",
                     str(collateral), "--allow-simulated", "--mrenclave",
                     IDENT.measurement.hex())
    yield srv
    srv.stop()


def plan_with_ca(tmp_path: Path, ca: bytes, *, trusted: bool = True) -> ViewPlan:
    cadir = tmp_path / "cadir"
    cadir.mkdir(parents=True, exist_ok=True)
    (cadir / "ca.crt").write_bytes(ca)
    manifest: dict[str, object] = {"fs": {"mounts": [{"path": "/ca", "uri": f"file:{cadir}"}]}}
    if trusted:
        manifest["sgx"] = {"trusted_files": [{"uri": f"file:{cadir}/ca.crt",
                                              "sha256": hashlib.sha256(ca).hexdigest()}]}
    return ViewPlan.from_manifest(manifest, base_dir=tmp_path)


def spec(port: int, **env: str) -> ProcessSpec:
    return ProcessSpec(path="/bin/true", argv=("true",), env={
        "SECRET_PROVISION_CONSTRUCTOR": "1", "SECRET_PROVISION_CA_CHAIN_PATH": "/ca/ca.crt",
        "SECRET_PROVISION_SERVERS": f"127.0.0.1:{port}", **env})


def test_secret_string_into_the_environment(server: ProvServer, tmp_path: Path) -> None:
    keys: dict[str, bytes] = {}
    out = provision_before_start(spec(server.port), plan_with_ca(tmp_path, server.ca),
                                 SimBackend(IDENT), keys)
    assert out.env["SECRET_PROVISION_SECRET_STRING"] == "hello from the server"
    assert keys == {}


def test_set_key_needs_16_bytes(server: ProvServer, tmp_path: Path) -> None:
    with pytest.raises(GeodeError, match="the secret is 22 bytes, a key is 16"):
        provision_before_start(spec(server.port, SECRET_PROVISION_SET_KEY="default"),
                               plan_with_ca(tmp_path, server.ca), SimBackend(IDENT), {})


def test_without_constructor_nothing_happens(tmp_path: Path) -> None:
    s = ProcessSpec(path="/bin/true", argv=(), env={"SECRET_PROVISION_SET_KEY": "x"})
    assert provision_before_start(s, plan_with_ca(tmp_path, b""), TeeBackend(IDENT), {}) is s


def test_refusals(server: ProvServer, tmp_path: Path) -> None:
    good = plan_with_ca(tmp_path, server.ca)
    with pytest.raises(GeodeError, match="'none' TEE backend has none"):
        provision_before_start(spec(server.port), good, TeeBackend(IDENT), {})
    with pytest.raises(GeodeError, match="neither a trusted nor an allowed file"):
        provision_before_start(spec(server.port), plan_with_ca(tmp_path / "u", server.ca,
                                                               trusted=False),
                               SimBackend(IDENT), {})
    (tmp_path / "cadir" / "ca.crt").write_bytes(server.ca + b"\n")  # changed after signing
    with pytest.raises(GeodeError, match="does not match its trusted hash"):
        provision_before_start(spec(server.port), good, SimBackend(IDENT), {})
    with pytest.raises(GeodeError, match="CA_CHAIN_PATH is required"):
        provision_before_start(ProcessSpec(path="/x", argv=(), env={
            "SECRET_PROVISION_CONSTRUCTOR": "true"}), good, SimBackend(IDENT), {})
