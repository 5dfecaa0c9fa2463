"""The tdx and snp backends against the configfs-tsm stand-in (tsm_standin.py), in-process:
the ABI steps, the documented report-data construction, racing writers, wrong providers,
missing configfs, and SEV-SNP certificate tables."""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from att_helpers import Server, needs_fuse, start_standin
from cryptography import x509

from geode.errors import FormatError, GeodeError
from geode.tee import EnclaveIdentity, open_backend
from geode.tee.tsm import TsmBackend, parse_cert_table, report_data
from geode.verify import Collateral, Verifier, parse_quote, parse_snp_report

MEASUREMENT = hashlib.sha256(b"a manifest").digest()
IDENTITY = EnclaveIdentity(MEASUREMENT)


def expected_report_data(user_data: bytes) -> bytes:
    """docs/attestation.md, recomputed here without geode's code."""
    return hashlib.sha256(b"geode-tsm-report-data/1\x00" + MEASUREMENT + user_data).digest() \
        + MEASUREMENT


def test_report_data_construction() -> None:
    urd = os.urandom(64)
    assert report_data(MEASUREMENT, urd) == expected_report_data(urd)
    with pytest.raises(GeodeError):
        report_data(MEASUREMENT, urd[:63])
    with pytest.raises(GeodeError):
        report_data(MEASUREMENT[:31], urd)


@pytest.fixture(scope="module")
def tdx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    server, out = start_standin(tmp_path_factory.mktemp("tdx"), "tdx_guest")
    yield server, out
    server.stop()


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    server, out = start_standin(tmp_path_factory.mktemp("snp"), "sev_guest")
    yield server, out
    server.stop()


@needs_fuse
def test_tdx_quote_binds_measurement_and_user_data(tdx: tuple[Server, Path]) -> None:
    server, out = tdx
    backend = TsmBackend("tdx", IDENTITY, server.mnt)
    assert backend.attestation_type == "dcap" and backend.has_quote
    assert not backend.local_attestation and not backend.evidence_certs
    urd = os.urandom(64)
    evidence = backend.evidence(urd)
    q = parse_quote(evidence.quote)
    assert q.header.version == 4 and q.report_data == expected_report_data(urd)
    assert evidence.certs == b""
    assert os.listdir(server.mnt) == []  # the instance was removed
    c = Collateral.load([out])
    roots = [x for x in c.certificates if x.issuer == x.subject]
    r = Verifier(c, simulation_roots=roots, allow_simulated=True).verify(evidence.quote)
    assert r.verified and r.kind == "tdx" and r.report_data == expected_report_data(urd)


@needs_fuse
def test_snp_report_and_certificates(snp: tuple[Server, Path]) -> None:
    server, out = snp
    backend = TsmBackend("snp", IDENTITY, server.mnt)
    assert backend.attestation_type == "snp" and backend.evidence_certs
    urd = b"snp".ljust(64, b"\0")
    evidence = backend.evidence(urd)
    assert parse_snp_report(evidence.quote).report_data == expected_report_data(urd)
    certs = x509.load_pem_x509_certificates(evidence.certs)
    assert [c.subject.rfc4514_string().split(",")[-1] for c in certs] == [
        "CN=SEV-VCEK", "CN=SEV-Milan", "CN=ARK-Milan"]
    ark = x509.load_pem_x509_certificate((out / "ark.pem").read_bytes())
    (out / "certs.pem").write_bytes(evidence.certs)
    c = Collateral.load([out])
    assert not Verifier(c).verify(evidence.quote).verified  # simulated AMD PKI
    r = Verifier(c, simulation_roots=[ark], allow_simulated=True).verify(evidence.quote)
    assert r.verified and r.simulated, [(c.name, c.reason) for c in r.failures()]


@needs_fuse
def test_wrong_provider_is_refused(tdx: tuple[Server, Path]) -> None:
    with pytest.raises(GeodeError, match="provider is 'tdx_guest', expected 'sev_guest'"):
        TsmBackend("snp", IDENTITY, tdx[0].mnt)


def test_missing_configfs_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_TSM_DIR", str(tmp_path / "nope"))
    with pytest.raises(GeodeError, match="no configfs-tsm report directory") as e:
        open_backend("tdx", IDENTITY)
    assert str(tmp_path / "nope") in str(e.value) and "\n" not in str(e.value)


@needs_fuse
@pytest.mark.parametrize(("races", "ok"), [(1, True), (2, True), (3, False)])
def test_racing_writers_are_detected(tmp_path: Path, races: int, ok: bool) -> None:
    server, _ = start_standin(tmp_path, "tdx_guest", race=races)
    try:
        backend = TsmBackend("tdx", IDENTITY, server.mnt)
        if ok:
            urd = bytes(64)
            assert parse_quote(backend.evidence(urd).quote).report_data == \
                expected_report_data(urd)
        else:
            with pytest.raises(GeodeError, match="another writer"):
                backend.evidence(bytes(64))
        assert os.listdir(server.mnt) == []
    finally:
        server.stop()


def _entry(guid: str, offset: int, length: int) -> bytes:
    return uuid.UUID(guid).bytes + struct.pack("<II", offset, length)


def test_cert_table_parsing() -> None:
    vcek = "63da758d-e664-4564-adc5-f4b93be8accd"
    odd = "00000000-0000-0000-0000-000000000001"
    table = _entry(vcek, 72, 3) + _entry(odd, 75, 2) + bytes(24) + b"abcde"
    assert parse_cert_table(table) == [("VCEK", b"abc"), (odd, b"de")]
    assert parse_cert_table(bytes(24)) == []
    with pytest.raises(FormatError, match="terminating"):
        parse_cert_table(_entry(vcek, 24, 0))
    with pytest.raises(FormatError, match="past the end"):
        parse_cert_table(_entry(vcek, 48, 100) + bytes(24))
