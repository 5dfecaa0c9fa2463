"""The real verification path with a throwaway or simulated quoting authority (no mocks).

QuotingAuthority produces byte-exact DCAP quotes and signed collateral with its own keys:
with ``simulated=False`` it stands in for Intel (passed as ``intel_roots``) so revocation,
expiry, TCB statuses and binding failures can be exercised on every code path; with
``simulated=True`` it is what the sim backend emits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from verify_helpers import failed, statuses

from geode.verify import Collateral, Policy, Verifier
from geode.verify.collateral import TCB_STATUSES
from geode.verify.simulation import QuotingAuthority, sgx_report_body, td_report_body

AT = datetime(2025, 6, 1, tzinfo=UTC)
MRENCLAVE = bytes(range(32))
MRSIGNER = bytes(range(32, 64))


@pytest.fixture(scope="module")
def intel_like() -> QuotingAuthority:
    return QuotingAuthority(simulated=False, name="Throwaway")


@pytest.fixture(scope="module")
def sim() -> QuotingAuthority:
    return QuotingAuthority()


def _body(**kw: object) -> bytes:
    return sgx_report_body(mr_enclave=MRENCLAVE, mr_signer=MRSIGNER, isv_prod_id=7,
                           isv_svn=3, report_data=b"nonce", **kw)  # type: ignore[arg-type]


def _collateral(a: QuotingAuthority, tmp: Path, *, tdx: bool = False, **files: bytes) -> Collateral:
    d = a.write_collateral(tmp, tdx=tdx)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return Collateral.load([d])


def _verifier(a: QuotingAuthority, c: Collateral) -> Verifier:
    return Verifier(c, intel_roots=[a.root_cert])


def test_throwaway_authority_passes_every_check(intel_like: QuotingAuthority,
                                                tmp_path: Path) -> None:
    r = _verifier(intel_like, _collateral(intel_like, tmp_path)).verify(
        intel_like.quote(_body()), AT)
    assert r.verified, failed(r)
    assert r.tcb_status == "UpToDate" and not r.simulated
    assert r.measurements == {"mr_enclave": MRENCLAVE.hex(), "mr_signer": MRSIGNER.hex()}
    assert r.report_data == b"nonce".ljust(64, b"\0")
    policy = Policy(mr_enclave=MRENCLAVE.hex(), mr_signer=MRSIGNER, isv_prod_id=7,
                    isv_svn_min=3, report_data=b"nonce".hex())
    assert r.with_policy(policy).verified
    bad = r.with_policy(Policy(mr_enclave="00" * 32, isv_prod_id=8, isv_svn_min=4,
                               report_data="6e6f6e63"))
    assert {c.name for c in bad.failures()} == {"policy.mr_enclave", "policy.isv_prod_id",
                                                "policy.isv_svn_min", "policy.report_data"}


@pytest.mark.parametrize("version", [3, 4, 5])
def test_sgx_quote_versions(intel_like: QuotingAuthority, tmp_path: Path, version: int) -> None:
    r = _verifier(intel_like, _collateral(intel_like, tmp_path)).verify(
        intel_like.quote(_body(), version=version), AT)
    assert r.verified, failed(r)
    assert r.fields["version"] == version


@pytest.mark.parametrize("version,td15", [(4, False), (5, False), (5, True)])
def test_tdx_quote_versions(intel_like: QuotingAuthority, tmp_path: Path, version: int,
                            td15: bool) -> None:
    rtmrs = [bytes([i]) * 48 for i in range(4)]
    body = td_report_body(mr_td=b"\x42" * 48, rtmrs=rtmrs, report_data=b"td", td15=td15)
    r = _verifier(intel_like, _collateral(intel_like, tmp_path, tdx=True)).verify(
        intel_like.quote(body, version=version), AT)
    assert r.verified, failed(r)
    assert r.kind == "tdx" and r.tcb_status == "UpToDate"
    assert r.measurements["mr_td"] == "42" * 48
    assert [r.measurements[f"rtmr{i}"] for i in range(4)] == [x.hex() for x in rtmrs]
    assert ("tee_tcb_svn2" in r.fields) == td15
    assert r.with_policy(Policy(mr_td="42" * 48, rtmrs=[x.hex() for x in rtmrs])).verified
    assert not r.with_policy(Policy(rtmrs={3: "00" * 48})).verified


def test_revoked_pck(intel_like: QuotingAuthority, tmp_path: Path) -> None:
    c = _collateral(intel_like, tmp_path, **{"pck.crl": intel_like.pck_crl([intel_like.pck_cert])})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    assert not r.verified
    assert failed(r).keys() == {"pck_crl"}
    assert "is revoked by the CRL of 'Throwaway SGX PCK Platform CA'" in failed(r)["pck_crl"]


@pytest.mark.parametrize("which", ["platform_cert", "tcb_cert"])
def test_revoked_by_root_crl(intel_like: QuotingAuthority, tmp_path: Path, which: str) -> None:
    cert = getattr(intel_like, which)
    c = _collateral(intel_like, tmp_path, **{"root_ca.crl": intel_like.root_crl([cert])})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    assert failed(r).keys() == {"root_ca_crl"}
    assert "is revoked by the CRL of 'Throwaway SGX Root CA'" in failed(r)["root_ca_crl"]


def test_expired_and_future_crl(intel_like: QuotingAuthority, tmp_path: Path) -> None:
    old = intel_like.pck_crl(this_update=datetime(2024, 1, 1, tzinfo=UTC),
                             next_update=datetime(2024, 2, 1, tzinfo=UTC))
    r = _verifier(intel_like, _collateral(intel_like, tmp_path, **{"pck.crl": old})).verify(
        intel_like.quote(_body()), AT)
    assert statuses(r)["pck_crl"] == "failed"
    assert "expired: nextUpdate 2024-02-01T00:00:00Z" in failed(r)["pck_crl"]
    future = intel_like.pck_crl(this_update=datetime(2026, 1, 1, tzinfo=UTC))
    r = _verifier(intel_like, _collateral(intel_like, tmp_path, **{"pck.crl": future})).verify(
        intel_like.quote(_body()), AT)
    assert statuses(r)["pck_crl"] == "not done"


def test_qe_report_not_binding_the_attestation_key(intel_like: QuotingAuthority,
                                                   tmp_path: Path) -> None:
    r = _verifier(intel_like, _collateral(intel_like, tmp_path)).verify(
        intel_like.quote(_body(), bind=False), AT)
    assert failed(r).keys() == {"qe_report_binding"}
    assert "the attestation key is not bound to the QE" in failed(r)["qe_report_binding"]


@pytest.mark.parametrize("status", TCB_STATUSES)
def test_every_tcb_status(intel_like: QuotingAuthority, tmp_path: Path, status: str) -> None:
    info = intel_like.tcb_info(status=status, advisory_ids=["INTEL-SA-00001", "INTEL-SA-00002"])
    r = _verifier(intel_like, _collateral(intel_like, tmp_path, **{"tcb_info.json": info})
                  ).verify(intel_like.quote(_body()), AT)
    assert r.tcb_status == status
    assert r.advisory_ids == ["INTEL-SA-00001", "INTEL-SA-00002"]
    assert r.verified == (status != "Revoked")
    allowed = r.with_policy(Policy(allowed_tcb_statuses={status}))
    assert allowed.verified == (status != "Revoked")
    assert r.with_policy(Policy()).verified == (status == "UpToDate")


@pytest.mark.parametrize("platform,expected", [
    ("UpToDate", "OutOfDate"), ("SWHardeningNeeded", "OutOfDate"),
    ("ConfigurationNeeded", "OutOfDateConfigurationNeeded"),
    ("ConfigurationAndSWHardeningNeeded", "OutOfDateConfigurationNeeded"),
])
def test_out_of_date_qe_converges(intel_like: QuotingAuthority, tmp_path: Path, platform: str,
                                  expected: str) -> None:
    ident = intel_like.qe_identity()
    import json

    body = json.loads(ident)["enclaveIdentity"]
    body["tcbLevels"] = [
        {"tcb": {"isvsvn": intel_like.qe_svn + 1}, "tcbDate": "2025-01-01T00:00:00Z",
         "tcbStatus": "UpToDate"},
        {"tcb": {"isvsvn": intel_like.qe_svn}, "tcbDate": "2024-01-01T00:00:00Z",
         "tcbStatus": "OutOfDate", "advisoryIDs": ["INTEL-SA-00999"]}]
    c = _collateral(intel_like, tmp_path, **{
        "qe_identity.json": intel_like.sign_json("enclaveIdentity", body),
        "tcb_info.json": intel_like.tcb_info(status=platform, advisory_ids=["INTEL-SA-00001"])})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    assert r.tcb_status == expected
    assert r.advisory_ids == ["INTEL-SA-00001", "INTEL-SA-00999"]


def test_tcb_level_not_supported(intel_like: QuotingAuthority, tmp_path: Path) -> None:
    import json

    body = json.loads(intel_like.tcb_info())["tcbInfo"]
    body["tcbLevels"][0]["tcb"]["sgxtcbcomponents"] = [{"svn": 99}] * 16
    c = _collateral(intel_like, tmp_path, **{
        "tcb_info.json": intel_like.sign_json("tcbInfo", body)})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    assert failed(r)["tcb_level"].startswith("TCB level not supported")
    assert r.tcb_status is None


def test_tcb_info_for_another_fmspc(intel_like: QuotingAuthority, tmp_path: Path) -> None:
    import json

    body = json.loads(intel_like.tcb_info())["tcbInfo"]
    body["fmspc"] = "00606a000000"
    c = _collateral(intel_like, tmp_path, **{
        "tcb_info.json": intel_like.sign_json("tcbInfo", body)})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    assert statuses(r)["tcb_info"] == "not done"
    assert "no SGX TCB info for FMSPC 00906ea10000" in failed(r)["tcb_info"]


def test_tcb_info_signed_by_a_pck_key_is_refused(intel_like: QuotingAuthority,
                                                 tmp_path: Path) -> None:
    """A platform that leaks its PCK key must not be able to vouch for its own TCB."""
    import json

    from geode.verify.simulation import _rs

    body = json.loads(intel_like.tcb_info())["tcbInfo"]
    raw = json.dumps(body, separators=(",", ":")).encode()
    forged = (b'{"tcbInfo":' + raw + b',"signature":"' + _rs(intel_like.pck_key, raw).hex().encode()
              + b'"}')
    c = _collateral(intel_like, tmp_path, **{"tcb_info.json": forged})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    # PCK certificates are never candidates for signing collateral
    assert "TCB info signature verification failed" in failed(r)["tcb_info"]
    assert r.tcb_status is None and not r.verified


def test_collateral_window(intel_like: QuotingAuthority, tmp_path: Path) -> None:
    info = intel_like.tcb_info(issue_date=datetime(2025, 1, 1, tzinfo=UTC),
                               next_update=datetime(2025, 2, 1, tzinfo=UTC))
    c = _collateral(intel_like, tmp_path, **{"tcb_info.json": info})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    assert "TCB info expired: nextUpdate 2025-02-01T00:00:00Z" in failed(r)["tcb_info_validity"]
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()),
                                        datetime(2024, 12, 1, tzinfo=UTC))
    assert "is in the future" in failed(r)["tcb_info_validity"]


def test_debug_enclave_and_td(intel_like: QuotingAuthority, tmp_path: Path) -> None:
    c = _collateral(intel_like, tmp_path)
    r = _verifier(intel_like, c).verify(intel_like.quote(_body(debug=True)), AT)
    assert r.debug
    # the QE identity has nothing to say about the ISV enclave's debug bit; policy does
    assert r.verified
    assert not r.with_policy(Policy()).verified
    assert r.with_policy(Policy(allow_debug=True)).verified
    ctd = _collateral(intel_like, tmp_path / "td", tdx=True)
    td = td_report_body(td_attributes=b"\x01" + bytes(7))
    assert _verifier(intel_like, ctd).verify(intel_like.quote(td, version=4), AT).debug


# --- simulation ---------------------------------------------------------------------------------

def test_simulated_quote_refused_by_default(sim: QuotingAuthority, tmp_path: Path) -> None:
    c = _collateral(sim, tmp_path)
    quote = sim.quote(_body())
    # pinned Intel roots only: the simulation root is just an untrusted root
    r = Verifier(c).verify(quote, AT)
    assert r.simulated and not r.verified
    assert "ends at 'Geode Simulated SGX Root CA'" in failed(r)["pck_chain"]
    assert "not a trusted root" in failed(r)["pck_chain"]
    # the simulation root is known but simulation is not allowed
    r = Verifier(c, simulation_roots=[sim.root_cert]).verify(quote, AT)
    assert r.simulated and not r.verified
    assert "simulated evidence is refused" in failed(r)["pck_chain"]
    assert "simulated collateral is refused" in failed(r)["tcb_info"]
    assert statuses(r.with_policy(Policy()))["policy.simulated"] == "failed"
    # a simulation root passed as if it were Intel's is still recognised as simulated
    r = Verifier(c, intel_roots=[sim.root_cert]).verify(quote, AT)
    assert r.simulated
    assert not r.with_policy(Policy()).verified


def test_simulated_quote_accepted_when_allowed(sim: QuotingAuthority, tmp_path: Path) -> None:
    c = _collateral(sim, tmp_path)
    r = Verifier(c, simulation_roots=[sim.root_cert], allow_simulated=True).verify(
        sim.quote(_body()), AT)
    assert r.verified, failed(r)
    assert r.simulated
    assert r.check("qe_vendor").reason.startswith("Geode simulated")  # type: ignore[union-attr]
    assert not r.with_policy(Policy(mr_enclave=MRENCLAVE)).verified
    assert r.with_policy(Policy(mr_enclave=MRENCLAVE, allow_simulated=True)).verified


def test_authority_save_and_load(sim: QuotingAuthority, tmp_path: Path) -> None:
    sim.save(tmp_path / "keys")
    assert oct((tmp_path / "keys" / "root.key.pem").stat().st_mode & 0o777) == "0o600"
    again = QuotingAuthority.load(tmp_path / "keys")
    # certificates are re-issued from the same keys: the old root still anchors new quotes
    c = _collateral(again, tmp_path / "c")
    r = Verifier(c, simulation_roots=[sim.root_cert], allow_simulated=True).verify(
        again.quote(_body()), AT)
    assert r.verified, failed(r)


def test_tcb_info_version_2(intel_like: QuotingAuthority, tmp_path: Path) -> None:
    """SGX TCB info v2 (sgxtcbcompNNsvn fields, no advisories) is matched the same way."""
    import json

    v3 = json.loads(intel_like.tcb_info())["tcbInfo"]
    comps = {f"sgxtcbcomp{i + 1:02d}svn": s for i, s in enumerate(intel_like.tcb_components)}
    levels = [
        {"tcb": {**{k: v + 1 for k, v in comps.items()}, "pcesvn": intel_like.pcesvn},
         "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
        {"tcb": {**comps, "pcesvn": intel_like.pcesvn}, "tcbDate": "2024-01-01T00:00:00Z",
         "tcbStatus": "OutOfDate"},
    ]
    body = {k: v3[k] for k in ("issueDate", "nextUpdate", "fmspc", "pceId", "tcbType",
                               "tcbEvaluationDataNumber")}
    body = {"version": 2, **body, "tcbLevels": levels}
    c = _collateral(intel_like, tmp_path, **{
        "tcb_info.json": intel_like.sign_json("tcbInfo", body)})
    r = _verifier(intel_like, c).verify(intel_like.quote(_body()), AT)
    assert r.tcb_status == "OutOfDate" and r.verified
    assert "SGX TCB info v2" in r.check("tcb_info").reason  # type: ignore[union-attr]
