"""The sim TEE backend in-process: SGX REPORTs and local attestation, DCAP quotes verified by
geode.verify, the persisted per-installation authority; the none backend."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import cmac, serialization
from cryptography.hazmat.primitives.ciphers import algorithms

from geode.errors import GeodeError
from geode.formats.sigstruct import Sigstruct
from geode.tee import EnclaveIdentity, TeeBackend, open_backend
from geode.tee import sim as simmod
from geode.tee.sgx import REPORT_SIZE, TARGET_INFO_SIZE, ReportBody, TargetInfo
from geode.tee.sim import SIM_KEYID_PREFIX, SimBackend, write_collateral
from geode.verify import Collateral, Policy, Verifier, parse_quote, pki
from geode.verify.sim import SIM_QE_VENDOR_ID


@pytest.fixture(autouse=True)
def pkglib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "pkglib"
    monkeypatch.setenv("GEODE_PKGLIBDIR", str(path))
    return path


def identity(seed: int, *, debug: bool = False) -> EnclaveIdentity:
    rnd = hashlib.sha256(bytes([seed])).digest()
    sig = Sigstruct(modulus=(rnd * 12), enclave_hash=hashlib.sha256(rnd).digest(),
                    isv_prod_id=7 + seed, isv_svn=3, attribute_flags=0x04 | (2 if debug else 0),
                    attribute_xfrm=0x03, misc_select=1, isv_ext_prod_id=b"E" * 16,
                    isv_family_id=b"F" * 16)
    return EnclaveIdentity(sig.enclave_hash, sig)


def test_report_fields_come_from_the_sigstruct() -> None:
    ident = identity(1)
    b = SimBackend(ident)
    urd = os.urandom(64)
    report = b.report(urd, b.my_target_info())
    assert len(report) == REPORT_SIZE == 432
    body = ReportBody.unpack(report[:384])
    assert body.mr_enclave == ident.measurement
    assert body.mr_signer == hashlib.sha256(ident.sigstruct.modulus).digest()  # type: ignore[union-attr]
    assert (body.isv_prod_id, body.isv_svn) == (8, 3)
    assert body.attribute_flags == 0x05 and body.attribute_xfrm == 0x03  # INIT | MODE64BIT
    assert body.misc_select == 1
    assert body.isv_ext_prod_id == b"E" * 16 and body.isv_family_id == b"F" * 16
    assert body.report_data == urd
    assert not body.debug
    assert report[384:400] == SIM_KEYID_PREFIX  # KEYID says simulated
    ti = TargetInfo.unpack(b.my_target_info())
    assert len(b.my_target_info()) == TARGET_INFO_SIZE
    assert ti.mr_enclave == ident.measurement and ti.attribute_flags == 0x05
    assert ti.misc_select == 1


def test_report_mac_is_checkable_by_the_targeted_party_only() -> None:
    alice, bob = identity(1), identity(2)
    a, b = SimBackend(alice), SimBackend(bob)  # two programs on one installation
    report = a.report(b"hi".ljust(64, b"\0"), b.my_target_info())  # Alice -> Bob
    assert b.verify_report(report, bob)  # Bob's own check (its report key)
    assert a.verify_report(report, bob)  # anyone acting for Bob on this platform
    assert not b.verify_report(report, alice)  # not made for Alice
    tampered = bytearray(report)
    tampered[320] ^= 1  # report data
    assert not b.verify_report(bytes(tampered), bob)
    with pytest.raises(GeodeError):
        b.verify_report(report[:-1], bob)

    # The MAC is plain AES-128-CMAC over the body under the documented report key.
    secret = (simmod.platform_secret_path()).read_bytes()
    ti = TargetInfo.unpack(b.my_target_info())
    keyid = report[384:416]
    key = hmac.new(secret, b"geode-sim-report-key/1\0" + bob.measurement + ti.attributes
                   + struct.pack("<I", ti.misc_select) + keyid, hashlib.sha256).digest()[:16]
    c = cmac.CMAC(algorithms.AES(key))
    c.update(report[:384])
    assert c.finalize() == report[416:432]


def test_report_key_needs_the_installation_secret(pkglib: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bob = identity(2)
    report = SimBackend(identity(1)).report(bytes(64), SimBackend(bob).my_target_info())
    monkeypatch.setenv("GEODE_PKGLIBDIR", str(pkglib.parent / "other-installation"))
    assert not SimBackend(bob).verify_report(report, bob)


def test_bad_sizes_are_refused() -> None:
    b = SimBackend(identity(1))
    with pytest.raises(GeodeError):
        b.report(bytes(63), b.my_target_info())
    with pytest.raises(GeodeError):
        b.report(bytes(64), bytes(511))


def _collateral(tmp: Path) -> tuple[Collateral, list[object]]:
    write_collateral(tmp)
    c = Collateral.load([tmp])
    roots = [x for x in c.certificates if pki.is_simulation_cert(x) and pki.is_self_signed(x)]
    return c, roots


def test_quote_verifies_only_when_simulation_is_allowed(tmp_path: Path) -> None:
    ident = identity(3)
    b = SimBackend(ident)
    urd = b"nonce".ljust(64, b"\0")
    quote = b.evidence(urd).quote
    q = parse_quote(quote)
    assert q.header.version == 3 and quote[12:28] == SIM_QE_VENDOR_ID
    c, roots = _collateral(tmp_path / "coll")
    assert len(roots) == 1
    ok = Verifier(c, simulation_roots=roots, allow_simulated=True).verify(quote)  # type: ignore[arg-type]
    assert ok.verified and ok.simulated and ok.tcb_status == "UpToDate"
    assert ok.report_data == urd
    assert ok.measurements["mr_enclave"] == ident.measurement.hex()
    assert ok.with_policy(Policy(mr_enclave=ident.measurement.hex(), allow_simulated=True,
                                 report_data=urd.hex())).verified
    # default verifiers: no simulation root, no simulation allowed
    assert not Verifier(c).verify(quote).verified
    refused = Verifier(c, simulation_roots=roots).verify(quote)  # type: ignore[arg-type]
    assert not refused.verified and refused.simulated
    assert not ok.with_policy(Policy()).verified  # policy.simulated


def test_authority_is_created_once_and_kept(pkglib: Path, tmp_path: Path) -> None:
    q1 = SimBackend(identity(1)).evidence(bytes(64)).quote
    c, roots = _collateral(tmp_path / "before")
    adir = pkglib / "sim" / "authority"
    assert stat.S_IMODE((pkglib / "sim").stat().st_mode) == 0o700
    keys = sorted(adir.glob("*.key.pem"))
    assert len(keys) == 5 and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    root_pem = (adir / "root.cert.pem").read_bytes()
    simmod._authority_at.cache_clear()  # a new process: reload from disk
    q2 = SimBackend(identity(1)).evidence(bytes(64)).quote
    assert (tmp_path / "before" / "sim_root_ca.pem").read_bytes() == root_pem
    v = Verifier(c, simulation_roots=roots, allow_simulated=True)  # type: ignore[arg-type]
    assert v.verify(q1).verified and v.verify(q2).verified
    write_collateral(tmp_path / "after")
    assert (tmp_path / "after" / "sim_root_ca.pem").read_bytes() == root_pem


def _root_fingerprint(_: int) -> bytes:
    simmod._authority_at.cache_clear()
    return simmod.authority().root_cert.public_bytes(serialization.Encoding.DER)


def test_concurrent_first_use_makes_one_authority(pkglib: Path) -> None:
    with multiprocessing.get_context("fork").Pool(6) as pool:
        roots = pool.map(_root_fingerprint, range(6))
    assert len(set(roots)) == 1
    assert [p.name for p in (pkglib / "sim").iterdir() if p.name.startswith(".")] == []


def test_damaged_authority_is_a_clear_error(pkglib: Path) -> None:
    simmod.authority()
    (pkglib / "sim" / "authority" / "root.cert.pem").write_bytes(
        (pkglib / "sim" / "authority" / "tcb.cert.pem").read_bytes())
    simmod._authority_at.cache_clear()
    with pytest.raises(GeodeError, match="damaged"):
        simmod.authority()


def test_none_backend_has_no_evidence() -> None:
    none = open_backend("none", identity(1))
    assert type(none) is TeeBackend
    assert none.attestation_type == "none" and not none.has_quote
    assert not none.local_attestation
    with pytest.raises(GeodeError):
        none.evidence(bytes(64))
    with pytest.raises(GeodeError):
        none.report(bytes(64), bytes(512))


def test_sim_needs_a_sigstruct() -> None:
    with pytest.raises(GeodeError, match="signed manifest"):
        open_backend("sim", EnclaveIdentity(bytes(32)))


def test_tee_cli_errors_are_one_line(tmp_path: Path, geode_env: dict[str, str]) -> None:
    from geodetest import run

    cases = [
        (["geode", "tee", "report-data"], "exactly one of --measurement and --sig"),
        (["geode", "tee", "report-data", "--measurement", "00" * 32, "--user-data", "00" * 65],
         "at most 64 bytes"),
        (["geode", "tee", "report-data", "--measurement", "00" * 31], "32 bytes"),
        (["geode", "tee", "verify-report", str(tmp_path / "missing"), "--sig", "x.sig"],
         "cannot read"),
    ]
    (tmp_path / "short.report").write_bytes(bytes(100))
    (tmp_path / "app.sig").write_bytes(identity(1).sigstruct.pack())  # type: ignore[union-attr]
    cases.append((["geode", "tee", "verify-report", str(tmp_path / "short.report"), "--sig",
                   str(tmp_path / "app.sig")], "expected 432"))
    for cmd, message in cases:
        proc = run(cmd, geode_env, check=False)
        assert proc.returncode == 1, (cmd, proc.stdout, proc.stderr)
        assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("geode: error: ")
    rd = run(["geode", "tee", "report-data", "--measurement", "11" * 32, "--user-data", "ab"],
             geode_env).stdout.strip()
    m = bytes.fromhex("11" * 32)
    assert rd == (hashlib.sha256(b"geode-tsm-report-data/1\0" + m + b"\xab".ljust(64, b"\0"))
                  .digest() + m).hex()
