"""Every vector gives the outcome SOURCES.md expects; the source repositories' negative cases."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from verify_helpers import (
    AT_SGX01,
    AT_SGX02,
    AT_SNP,
    AT_TDX01,
    AT_TDX02,
    ROOTS,
    SGX01,
    SGX02,
    SGX04,
    SNP01,
    SNP02,
    TDX01,
    TDX02,
    VECTORS,
    collateral,
    failed,
    statuses,
    verify,
)

from geode.verify import Collateral, Policy, Verifier, parse_snp_report, pki

ALL_INTEL_CHECKS = {
    "format", "qe_vendor", "isv_signature", "qe_report_binding", "certification_data",
    "pck_certificate", "pck_chain", "qe_report_signature", "tcb_info", "tcb_info_validity",
    "qe_identity", "qe_identity_validity", "root_ca_crl", "pck_crl", "tcb_level",
}


def ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- the expected outcome of each vector -------------------------------------------------------

def test_sgx01_swhardening_needed_but_no_crl_for_2022() -> None:
    r = verify(SGX01 / "quote.bin", "sgx01", AT_SGX01)
    assert set(statuses(r)) == ALL_INTEL_CHECKS
    assert r.tcb_status == "SWHardeningNeeded"
    assert r.advisory_ids == ["INTEL-SA-00615", "INTEL-SA-00657"]
    assert r.measurements["mr_enclave"] == (
        "68823bc62f409ee33a32ea270cfe45d4b19a6fb3c8570d7bc186cbe062398e8f")
    assert r.measurements["mr_signer"] == (
        "9affcfae47b848ec2caf1c49b4b283531e1cc425f93582b36806e52a43d78d1a")
    # oasis verifies without revocation; no Root CA or PCK CRL of December 2022 is shipped,
    # so those two checks are "not done" and the result is not verified.
    assert failed(r).keys() == {"root_ca_crl", "pck_crl"}
    assert statuses(r)["root_ca_crl"] == statuses(r)["pck_crl"] == "not done"
    assert "no CRL of 'Intel SGX PCK Platform CA'" in failed(r)["pck_crl"]
    assert not r.verified and not r.debug and not r.simulated


def test_sgx02_fully_verified_swhardening_needed() -> None:
    r = verify(SGX02 / "quote.bin", "sgx02", AT_SGX02)
    assert r.verified, failed(r)
    assert set(statuses(r)) == ALL_INTEL_CHECKS
    assert r.tcb_status == "SWHardeningNeeded"
    assert r.advisory_ids == ["INTEL-SA-00615"]
    assert r.measurements["mr_enclave"] == (
        "a4f45c39dac622cb1dd32ddb35a52ec92db41d0fa88a1c911c49e59c534f61cd")
    assert r.report_data == bytes(64)
    # The 2018-2025 TCB signing certificate has expired by then; the 2025-2032 one is used.
    assert "44 entries" in r.check("pck_crl").reason  # type: ignore[union-attr]
    assert not r.with_policy(Policy()).verified  # UpToDate only by default
    assert r.with_policy(Policy(allowed_tcb_statuses={"UpToDate", "SWHardeningNeeded"})).verified


def test_sgx02_needs_the_2025_tcb_signing_certificate() -> None:
    c = Collateral.load([SGX02, ROOTS / "intel" / "Intel_SGX_TCB_Signing_2018-2025.pem",
                         ROOTS / "intel" / "IntelSGXRootCA_crl_2025-03-20.der"])
    r = Verifier(c).verify((SGX02 / "quote.bin").read_bytes(), AT_SGX02)
    assert statuses(r)["tcb_info"] == "failed"
    assert "expired at 2025-05-21" in failed(r)["tcb_info"]


def test_sgx04_eppid_certification_type_3_is_refused_with_reason() -> None:
    r = verify(SGX04 / "quote.bin", "sgx04", AT_SGX01)
    assert not r.verified
    assert statuses(r) == {"format": "passed", "qe_vendor": "passed", "isv_signature": "passed",
                           "qe_report_binding": "passed", "certification_data": "not done"}
    reason = failed(r)["certification_data"]
    assert "certification data type 3" in reason and "PPID encrypted with RSA-3072" in reason
    assert "type 5" in reason


def test_tdx01_tcb_level_not_supported() -> None:
    r = verify(TDX01 / "quote_trimmed_oasis.bin", "tdx01", AT_TDX01)
    assert not r.verified
    assert failed(r).keys() == {"tcb_level"}
    assert failed(r)["tcb_level"].startswith("TCB level not supported")
    assert r.tcb_status is None
    assert r.kind == "tdx"
    assert r.measurements["mr_td"] == (
        "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f"
        "22fc00b8dcd404bc10d5e119d7215cbb")
    assert "TD_QE ISVSVN 4" in r.check("qe_identity").reason  # type: ignore[union-attr]
    # the collateral itself verifies at go-tdx-guest's time too
    r2 = verify(TDX01 / "quote_trimmed_oasis.bin", "tdx01", datetime(2023, 7, 1, 1, tzinfo=UTC))
    assert failed(r2).keys() == {"tcb_level"}


def test_tdx01_trailered_copy_verifies_like_the_trimmed_one() -> None:
    data = (TDX01 / "quote_with_39B_trailer.dat").read_bytes()
    r = verify(data, "tdx01", AT_TDX01)
    assert failed(r) == {"format": "quote: 39 trailing bytes at offset 4935 after the "
                                   "signature data"}
    r = verify(data, "tdx01", AT_TDX01, allow_trailing=True)
    assert failed(r).keys() == {"tcb_level"}


def test_tdx02_up_to_date_without_pck_crl() -> None:
    r = verify(TDX02 / "quote.bin", "tdx02", AT_TDX02)
    assert r.tcb_status == "UpToDate"
    assert r.advisory_ids == []
    assert failed(r) == {"pck_crl": "no CRL of 'Intel SGX PCK Platform CA' in the collateral"}
    assert statuses(r)["tdx_module"] == "passed"
    assert "TDX_01 ISVSVN 5: UpToDate" in r.check("tdx_module").reason  # type: ignore[union-attr]
    assert r.fields["td_attributes"] == "0000001000000000"  # SEPT_VE_DISABLE
    assert r.report_data.hex() == (
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e")


def test_tdx02_other_quote_with_trailer() -> None:
    data = (TDX02 / "quote_other_with_70B_trailer.bin").read_bytes()
    assert statuses(verify(data, "tdx02", AT_TDX02))["format"] == "failed"
    # Intel re-issued this quote's PCK certificate (same serial and key) on 2024-09-20, so at
    # the first quote's time it is not valid yet ...
    r = verify(data, "tdx02", AT_TDX02, allow_trailing=True)
    assert "is not yet valid at 2024-09-02T07:43:52Z (notBefore 2024-09-20T11:12:20Z)" in \
        failed(r)["pck_chain"]
    # ... and three weeks later, with the same TCB info, it is UpToDate.
    r = verify(data, "tdx02", datetime(2024, 9, 21, tzinfo=UTC), allow_trailing=True)
    assert r.tcb_status == "UpToDate"
    assert failed(r).keys() == {"pck_crl"}
    assert r.report_data.hex().startswith("89eef8aa67fe0f76")
    assert "+70 trailing bytes ignored" in r.check("format").reason  # type: ignore[union-attr]


@pytest.mark.parametrize("folder,name,bl,snp_spl,ucode", [
    (SNP01, "snp01", 2, 5, 68), (SNP02, "snp02", 3, 8, 115)])
def test_snp_vectors(folder: Path, name: str, bl: int, snp_spl: int, ucode: int) -> None:
    r = verify(folder / "report.bin", name, AT_SNP)
    assert r.kind == "snp" and r.tcb_status is None
    # No AMD CRL ships with the vectors: that check is not done, every other one passes.
    assert failed(r) == {"ark_crl": "no CRL of 'ARK-Milan' in the collateral"}
    assert statuses(r) == {"format": "passed", "report_signature": "passed",
                           "signing_key": "passed", "cert_chain": "passed",
                           "ark_crl": "not done", "reported_tcb": "passed", "chip_id": "passed"}
    assert "'SEV-VCEK' -> 'SEV-Milan' -> 'ARK-Milan'" in r.check("cert_chain").reason  # type: ignore[union-attr]
    assert r.fields["signing_cert"]["spl"] == {"bl_spl": bl, "tee_spl": 0, "snp_spl": snp_spl,
                                               "ucode_spl": ucode}
    assert r.fields["signing_cert"]["product"] == "Milan-B0"


def test_snp01_is_a_debug_guest_refused_by_default_policy() -> None:
    r = verify(SNP01 / "report.bin", "snp01", AT_SNP)
    assert r.debug
    checks = {c.name: c.status for c in Policy().evaluate(r)}
    assert checks["policy.debug"] == "failed"
    assert {c.name: c.status for c in Policy(allow_debug=True).evaluate(r)}["policy.debug"] \
        == "passed"
    r2 = verify(SNP02 / "report.bin", "snp02", AT_SNP)
    assert not r2.debug


def test_snp_measurement_policy() -> None:
    r = verify(SNP02 / "report.bin", "snp02", AT_SNP)
    good = Policy(snp_measurement=r.measurements["measurement"],
                  report_data="ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2")
    assert all(c.passed for c in good.evaluate(r))
    bad = Policy(snp_measurement="00" * 48, report_data="ec6c52")
    results = {c.name: c for c in bad.evaluate(r)}
    assert results["policy.snp_measurement"].status == "failed"
    assert results["policy.report_data"].status == "failed"
    assert "expected ec6c52" in results["policy.report_data"].reason


# --- time: expired and not-yet-valid collateral (oasis and go-tdx-guest assertions) -----------

@pytest.mark.parametrize("at,check,message", [
    (ts(1891163522), "pck_chain", "'Intel SGX PCK Certificate' expired at 2029-12-05T11:12:01Z"),
    (ts(1670238720), "pck_chain", "'Intel SGX PCK Certificate' is not yet valid"),
    (ts(1671194735), "qe_identity_validity", "QE identity issue date 2022-12-16T12:45:36Z is "
                                             "in the future"),
    (ts(1673786737), "qe_identity_validity", "QE identity expired: nextUpdate "
                                             "2023-01-15T12:45:36Z"),
])
def test_sgx01_time_window(at: datetime, check: str, message: str) -> None:
    r = verify(SGX01 / "quote.bin", "sgx01", at)
    assert not r.verified
    assert message in failed(r)[check]
    assert statuses(r)[check] == "failed"


def test_tdx01_in_2053_everything_expired() -> None:
    r = verify(TDX01 / "quote_trimmed_oasis.bin", "tdx01", datetime(2053, 7, 1, 1, tzinfo=UTC))
    f = failed(r)
    assert "expired at 2029-09-20T13:20:31Z" in f["pck_chain"]
    assert "TCB info expired" in f["tcb_info_validity"]
    assert "expired" in f["pck_crl"]


def test_future_and_past_for_sgx02() -> None:
    assert "TCB info expired" in failed(verify(SGX02 / "quote.bin", "sgx02",
                                               datetime(2026, 1, 1, tzinfo=UTC)))[
        "tcb_info_validity"]
    past = failed(verify(SGX02 / "quote.bin", "sgx02", datetime(2025, 8, 1, tzinfo=UTC)))
    assert "is in the future" in past["tcb_info_validity"]
    assert statuses(verify(SGX02 / "quote.bin", "sgx02", datetime(2025, 8, 1, tzinfo=UTC)))[
        "pck_crl"] == "not done"


# --- collateral negatives -----------------------------------------------------------------------

def _copy(tmp_path: Path, files: list[Path]) -> Path:
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_bad_tcb_issuer_chain_refused(tmp_path: Path) -> None:
    d = _copy(tmp_path, [SGX01 / "tcb_info_v3_fmspc_00606A000000.json",
                         SGX01 / "qe_identity_v2.json", SGX01 / "tcb_info_issuer_chain_BAD.pem"])
    r = Verifier(Collateral.load([d])).verify((SGX01 / "quote.bin").read_bytes(), AT_SGX01)
    f = failed(r)
    assert "TCB info signature verification failed" in f["tcb_info"]
    assert "QE identity signature verification failed" in f["qe_identity"]
    assert statuses(r)["tcb_level"] == "not done"
    assert r.tcb_status is None


def test_no_collateral_is_reported_not_assumed() -> None:
    r = Verifier(Collateral()).verify((SGX02 / "quote.bin").read_bytes(), AT_SGX02)
    assert statuses(r)["tcb_info"] == "not done"
    assert statuses(r)["qe_identity"] == "not done"
    assert statuses(r)["pck_crl"] == "not done"
    assert statuses(r)["tcb_level"] == "not done"
    assert statuses(r)["pck_chain"] == "passed"  # the quote embeds it; the root is pinned
    assert not r.verified


@pytest.mark.parametrize("member,offset", [("tcbInfo", 16), ("enclaveIdentity", 22)])
def test_mutated_signed_json_fails_signature(tmp_path: Path, member: str, offset: int) -> None:
    name = ("tcb_info_v3_fmspc_00606A000000.json" if member == "tcbInfo"
            else "qe_identity_v2.json")
    raw = bytearray((SGX01 / name).read_bytes())
    start = raw.index(b"{", 1)  # the body object
    raw[start + offset] = ord("9") if raw[start + offset] != ord("9") else ord("8")
    d = _copy(tmp_path, [SGX01 / "tcb_info_issuer_chain.pem",
                         SGX01 / "tcb_info_v3_fmspc_00606A000000.json",
                         SGX01 / "qe_identity_v2.json"])
    (d / name).write_bytes(bytes(raw))
    r = Verifier(Collateral.load([d])).verify((SGX01 / "quote.bin").read_bytes(), AT_SGX01)
    check = "tcb_info" if member == "tcbInfo" else "qe_identity"
    reason = failed(r).get(check, "")
    assert "signature verification failed" in reason or "does not parse" in reason or \
        check not in statuses(r) or statuses(r)[check] != "passed"


def test_wrong_root_is_refused() -> None:
    amd_ark = x509.load_pem_x509_certificates((ROOTS / "amd" / "ask_ark_milan.pem")
                                              .read_bytes())[1]
    v = Verifier(collateral("sgx02"), intel_roots=[amd_ark])
    r = v.verify((SGX02 / "quote.bin").read_bytes(), AT_SGX02)
    reason = failed(r)["pck_chain"]
    assert "ends at 'Intel SGX Root CA' (sha256 44a0196b2b99f889" in reason
    assert "which is not a trusted root" in reason
    assert "TCB info" in failed(r)["tcb_info"]
    assert not r.verified


def test_pinned_roots_are_the_published_ones() -> None:
    intel = pki.pinned_intel_roots()
    assert [a.sha256 for a in intel] == [
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"]
    amd = {pki.common_name(a.cert.subject): a.sha256 for a in pki.pinned_amd_roots()}
    assert amd == {
        "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    }
    # ... and byte-identical to the vectors' copies
    der = (ROOTS / "intel" / "Intel_SGX_Provisioning_Certification_RootCA.der").read_bytes()
    assert pki.cert_sha256(x509.load_der_x509_certificate(der)) == intel[0].sha256


def test_crl_revocation_of_real_pck_chain_is_checked() -> None:
    # The automata PCK CRL has 44 entries; our PCK is not among them, Intel's data says so too.
    r = verify(SGX02 / "quote.bin", "sgx02", AT_SGX02)
    assert statuses(r)["pck_crl"] == "passed"


# --- single-byte mutations (go-tdx-guest abi/verify tests, oasis and trustee) ------------------

@pytest.mark.parametrize("offset,check,message", [
    (0x1343, "certification_data", "PCK certificate chain invalid"),
    (0xF5F, "pck_chain", "the signature of 'Intel SGX PCK Platform CA' does not verify under "
                         "the trusted root 'Intel SGX Root CA'"),
    (0xB77, "pck_chain", "the signature of 'Intel SGX PCK Certificate' does not verify under "
                         "'Intel SGX PCK Platform CA'"),
    (0x1E, "isv_signature", "unable to verify the quote signature with the attestation key"),
    (0x3C, "isv_signature", "unable to verify the quote signature with the attestation key"),
])
def test_tdx01_mutations(offset: int, check: str, message: str) -> None:
    """go-tdx-guest's single-byte mutations, checked with the embedded chain only."""
    data = bytearray((TDX01 / "quote_with_39B_trailer.dat").read_bytes())
    data[offset] = 0x32
    r = Verifier(Collateral()).verify(bytes(data), datetime(2023, 7, 1, 1, tzinfo=UTC),
                                      allow_trailing=True)
    assert not r.verified
    assert statuses(r)[check] == "failed"
    assert message in failed(r)[check]


def test_tdx01_mutated_intermediate_recovered_from_collateral() -> None:
    # With the genuine Platform CA in the collateral, the chain is built through it instead.
    data = bytearray((TDX01 / "quote_with_39B_trailer.dat").read_bytes())
    data[0xF5F] = 0x32
    r = verify(bytes(data), "tdx01", datetime(2023, 7, 1, 1, tzinfo=UTC), allow_trailing=True)
    assert statuses(r)["pck_chain"] == "passed"


def test_tdx01_embedded_root_is_never_trusted() -> None:
    # go-tdx-guest reports a root signature failure for this byte; Geode ignores the embedded
    # root entirely (the pinned one verifies the Platform CA), so the chain still holds.
    data = bytearray((TDX01 / "quote_with_39B_trailer.dat").read_bytes())
    data[0x1329] = 0x32
    r = Verifier(Collateral()).verify(bytes(data), datetime(2023, 7, 1, 1, tzinfo=UTC),
                                      allow_trailing=True)
    assert statuses(r)["pck_chain"] == "passed"
    assert statuses(r)["isv_signature"] == "passed"


def test_qe_report_mutation_breaks_binding_and_signature() -> None:
    data = bytearray((SGX02 / "quote.bin").read_bytes())
    data[884] ^= 1  # QE report_data[0]
    r = verify(bytes(data), "sgx02", AT_SGX02)
    f = failed(r)
    assert "is not sha256(attestation key || auth data)" in f["qe_report_binding"]
    assert "QE report signature does not verify" in f["qe_report_signature"]


def test_isv_report_data_mutation() -> None:
    data = bytearray((SGX02 / "quote.bin").read_bytes())
    data[368] ^= 0xFF  # ISV report_data[0]
    r = verify(bytes(data), "sgx02", AT_SGX02)
    assert failed(r).keys() == {"isv_signature"}


def test_snp_report_byte_42_breaks_signature() -> None:
    data = bytearray((SNP02 / "report.bin").read_bytes())
    data[42] = (data[42] + 1) % 256
    r = verify(bytes(data), "snp02", AT_SNP)
    assert failed(r)["report_signature"].startswith("the report signature does not verify")


def test_snp_reported_tcb_mismatch(tmp_path: Path) -> None:
    # trustee: reported_tcb.bootloader += 1 makes the TCB check fail. Re-signing is
    # impossible, so check the comparison by pairing snp/02's report with snp/01's VCEK
    # whose SPLs differ; the signature check fails first and says so.
    report = (SNP02 / "report.bin").read_bytes()
    v = Verifier(collateral("snp02"))
    vcek01 = pki.load_certificates((SNP01 / "vcek.der").read_bytes())[0]
    r = v.verify_snp(parse_snp_report(report), AT_SNP, signing_cert=vcek01)
    assert "does not verify" in failed(r)["report_signature"]


def test_snp_vcek_byte_42_breaks_chain(tmp_path: Path) -> None:
    raw = bytearray((SNP02 / "vcek.der").read_bytes())
    raw[42] = (raw[42] + 1) % 256
    (tmp_path / "vcek.der").write_bytes(bytes(raw))
    c = Collateral.load([tmp_path, ROOTS / "amd"])
    r = Verifier(c).verify((SNP02 / "report.bin").read_bytes(), AT_SNP)
    assert not r.verified
    assert any(k in failed(r) for k in ("cert_chain", "report_signature"))


def test_snp_without_vcek_points_at_kds() -> None:
    r = Verifier(Collateral.load([ROOTS])).verify((SNP01 / "report.bin").read_bytes(), AT_SNP)
    reason = failed(r)["report_signature"]
    assert statuses(r)["report_signature"] == "not done"
    assert ("https://kdsintf.amd.com/vcek/v1/Milan/3ac3fe21e13fb0990eb28a802e3fb6a29483a6b075"
            "3590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b"
            "006b5d?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68") in reason


def test_snp_without_ask_is_not_done() -> None:
    c = Collateral.load([SNP01])
    r = Verifier(c).verify((SNP01 / "report.bin").read_bytes(), AT_SNP)
    assert statuses(r)["cert_chain"] == "not done"
    assert "'SEV-Milan'" in failed(r)["cert_chain"]


def test_snp_vcek_outside_validity() -> None:
    r = verify(SNP02 / "report.bin", "snp02", datetime(2031, 1, 1, tzinfo=UTC))
    assert "'SEV-VCEK' expired" in failed(r)["cert_chain"]


def test_collateral_recognised_by_content_not_name(tmp_path: Path) -> None:
    names = {SGX02 / "sgx_tcbinfov3_00606a000000.json": "a",
             SGX02 / "sgx_qeidentity_v4.json": "b.bin",
             SGX02 / "pck_platform_crl_2025-08-15.der": "c.txt",
             ROOTS / "intel" / "IntelSGXRootCA_crl_2025-03-20.der": "d",
             ROOTS / "intel" / "Intel_SGX_TCB_Signing_2025-2032.der": "e.json"}
    for src, dst in names.items():
        shutil.copy(src, tmp_path / dst)
    (tmp_path / "notes.md").write_text("hello")
    c = Collateral.load([tmp_path])
    assert len(c.tcb_infos) == 1 and len(c.identities) == 1 and len(c.crls) == 2
    assert len(c.certificates) == 1
    assert [s for s, _ in c.ignored] == [str(tmp_path / "notes.md")]
    r = Verifier(c).verify((SGX02 / "quote.bin").read_bytes(), AT_SGX02)
    assert r.verified, failed(r)


def test_pem_crl_and_url_encoded_chain(tmp_path: Path) -> None:
    import urllib.parse

    from cryptography.hazmat.primitives.serialization import Encoding

    crl = x509.load_der_x509_crl((SGX02 / "pck_platform_crl_2025-08-15.der").read_bytes())
    (tmp_path / "pck.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    root_crl = x509.load_der_x509_crl(
        (ROOTS / "intel" / "IntelSGXRootCA_crl_2025-03-20.der").read_bytes())
    (tmp_path / "root.pem").write_bytes(root_crl.public_bytes(Encoding.PEM))
    signing = x509.load_der_x509_certificate(
        (ROOTS / "intel" / "Intel_SGX_TCB_Signing_2025-2032.der").read_bytes())
    (tmp_path / "chain.txt").write_text(urllib.parse.quote(
        signing.public_bytes(Encoding.PEM).decode()))
    for f in ("sgx_tcbinfov3_00606a000000.json", "sgx_qeidentity_v4.json"):
        shutil.copy(SGX02 / f, tmp_path / f)
    r = Verifier(Collateral.load([tmp_path])).verify((SGX02 / "quote.bin").read_bytes(),
                                                     AT_SGX02)
    assert r.verified, failed(r)


def test_result_json_round_trip() -> None:
    import json

    r = verify(SGX02 / "quote.bin", "sgx02", AT_SGX02)
    d = json.loads(r.to_json())
    assert d["verified"] is True and d["kind"] == "sgx"
    assert d["tcb_status"] == "SWHardeningNeeded" and d["advisory_ids"] == ["INTEL-SA-00615"]
    assert d["mr_enclave"] == d["measurements"]["mr_enclave"]
    assert d["isv_prod_id"] == 0 and d["isv_svn"] == 0
    assert d["report_data"] == "00" * 64
    assert all(set(c) == {"name", "status", "reason"} for c in d["checks"])
    assert d["pck"]["fmspc"] == "00606a000000"


def test_vectors_folder_and_roots_can_be_passed_whole() -> None:
    c = Collateral.load([VECTORS])  # everything at once: selection is by FMSPC, id and time
    for quote, at, status in [(SGX01 / "quote.bin", AT_SGX01, "SWHardeningNeeded"),
                              (SGX02 / "quote.bin", AT_SGX02, "SWHardeningNeeded"),
                              (TDX02 / "quote.bin", AT_TDX02, "UpToDate")]:
        r = Verifier(c).verify(quote.read_bytes(), at)
        assert r.tcb_status == status


@pytest.mark.parametrize("name", ["avr_v4_body_sw_hardening_needed.json",
                                  "avr_v5_body_sw_hardening_needed.json"])
def test_ias_epid_reports_are_refused_clearly(name: str) -> None:
    """EPID/IAS was removed from Gramine after v1.8: the AVRs are recognised and refused."""
    r = Verifier(Collateral()).verify((VECTORS / "ias_epid" / "oasis" / name).read_bytes(),
                                      AT_SGX01)
    assert r.kind == "epid" and not r.verified
    assert "EPID attestation was removed from Gramine" in failed(r)["format"]
