"""Parsers against the vectors: every field of expected_parsed.json, strictness, PCK extension."""

from __future__ import annotations

from typing import Any

import pytest
from verify_helpers import SGX04, VECTORS, expected_parsed

from geode.errors import FormatError
from geode.verify import parse_quote, parse_snp_report, pki
from geode.verify.quote import EnclaveReportBody, TdReportBody

QUOTES = sorted(expected_parsed()["quotes"])
REPORTS = sorted(expected_parsed()["snp_reports"])


def _quote(rel: str) -> Any:
    data = (VECTORS / rel).read_bytes()
    exp = expected_parsed()["quotes"][rel]
    return parse_quote(data, allow_trailing=True), exp


def test_every_vector_is_covered() -> None:
    on_disk = {str(p.relative_to(VECTORS)) for p in VECTORS.rglob("*")
               if p.name.startswith("quote") or p.name == "report.bin"}
    assert on_disk == set(QUOTES) | set(REPORTS)


@pytest.mark.parametrize("rel", QUOTES)
def test_header(rel: str) -> None:
    q, exp = _quote(rel)
    h = exp["header"]
    assert q.header.version == h["version"]
    assert q.header.att_key_type == h["att_key_type"]
    assert q.header.tee_type == h["tee_type_u32"]
    assert q.header.qe_svn == h["qe_svn_or_reserved"]
    assert q.header.pce_svn == h["pce_svn_or_reserved"]
    assert q.header.qe_vendor_id.hex() == h["qe_vendor_id"]
    assert q.header.user_data.hex() == h["user_data"]


@pytest.mark.parametrize("rel", [r for r in QUOTES if r.startswith("sgx")])
def test_sgx_body(rel: str) -> None:
    q, exp = _quote(rel)
    b = exp["sgx_report_body"]
    body = q.body
    assert isinstance(body, EnclaveReportBody) and q.kind == "sgx"
    assert body.offset == b["offset"]
    assert body.cpu_svn.hex() == b["cpu_svn"]
    assert body.misc_select == b["misc_select_u32"]
    assert body.misc_select_raw.hex() == b["misc_select_raw"]
    assert body.attributes.hex() == b["attributes"]
    assert body.mr_enclave.hex() == b["mr_enclave"]
    assert body.mr_signer.hex() == b["mr_signer"]
    assert body.isv_prod_id == b["isv_prod_id"]
    assert body.isv_svn == b["isv_svn"]
    assert body.report_data.hex() == b["report_data"]
    assert q.fields()["mr_enclave"] == b["mr_enclave"]


@pytest.mark.parametrize("rel", [r for r in QUOTES if r.startswith("tdx")])
def test_td_body(rel: str) -> None:
    q, exp = _quote(rel)
    b = exp["td_report_body"]
    body = q.body
    assert isinstance(body, TdReportBody) and q.kind == "tdx"
    assert body.offset == b["offset"]
    for name in ("tee_tcb_svn", "mr_seam", "mr_signer_seam", "seam_attributes", "td_attributes",
                 "xfam", "mr_td", "mr_config_id", "mr_owner", "mr_owner_config", "rtmr0",
                 "rtmr1", "rtmr2", "rtmr3", "report_data"):
        assert body.get(name).hex() == b[name], name
    assert body.mr_td.hex() == b["mr_td"]
    assert [r.hex() for r in body.rtmrs] == [b[f"rtmr{i}"] for i in range(4)]
    assert body.report_data.hex() == b["report_data"]


@pytest.mark.parametrize("rel", QUOTES)
def test_signature_data(rel: str) -> None:
    q, exp = _quote(rel)
    s = exp["signature_data"]
    assert q.signature_data_len == s["len"]
    assert q.size == s["end"]
    assert q.trailing == s["trailing_bytes_after_sig_data"] == exp["size"] - s["end"]
    assert q.signature.attestation_key.hex() == s["attest_pub_key"]
    cert = q.signature.certification
    outer = s["cert_data"]
    if q.header.version == 3:
        assert q.signature.outer_cert_type is None
        qe, inner, auth = s["qe_report"], outer, s
    else:  # v4: type 6 (QE report certification data) wraps the QE report and type 5
        assert q.signature.outer_cert_type == outer["type"] == 6
        qe, inner, auth = outer["qe_report"], outer["inner"], outer
    assert q.signature.qe_report.offset == qe["offset"]
    assert q.signature.qe_report.cpu_svn.hex() == qe["cpu_svn"]
    assert q.signature.qe_report.misc_select_raw.hex() == qe["misc_select_raw"]
    assert q.signature.qe_report.attributes.hex() == qe["attributes"]
    assert q.signature.qe_report.mr_enclave.hex() == qe["mr_enclave"]
    assert q.signature.qe_report.mr_signer.hex() == qe["mr_signer"]
    assert q.signature.qe_report.isv_prod_id == qe["isv_prod_id"]
    assert q.signature.qe_report.isv_svn == qe["isv_svn"]
    assert q.signature.qe_report.report_data.hex() == qe["report_data"]
    assert q.signature.qe_auth_data.hex() == auth["qe_auth_data"]
    assert len(q.signature.qe_auth_data) == auth["qe_auth_data_len"]
    assert cert.cert_type == inner["type"]
    assert cert.offset == inner["offset"]
    assert len(cert.data) == inner["size"]
    if cert.cert_type == 5:
        certs = pki.load_pem_certificates(cert.pem_chain())
        assert [c.subject.rfc4514_string() for c in certs] == inner["pem_certs"]
        assert f"{certs[0].serial_number:x}" == exp["pck_serial_hex"]
        assert certs[0].issuer.rfc4514_string() == exp["pck_issuer"]
        assert pki.cert_sha256(certs[-1]) == exp["checks"]["embedded_root_sha256"]


@pytest.mark.parametrize("rel", [r for r in QUOTES if r.startswith("sgx_v3/0") and "04" not in r])
def test_pck_extension(rel: str) -> None:
    q, exp = _quote(rel)
    want = exp["signature_data"]["cert_data"]["pck_ext"]
    pck = pki.load_pem_certificates(q.signature.certification.pem_chain())[0]
    ext = pki.sgx_extension(pck)
    assert ext.fmspc.hex() == want["fmspc"]
    assert ext.pceid.hex() == want["pceid"]
    assert ext.ppid.hex() == want["ppid"]
    assert ext.sgx_type == int(want["sgx_type"], 16)
    assert list(ext.tcb_components) == want["tcb_comp_svns"]
    assert ext.pcesvn == want["pcesvn"]
    assert ext.cpusvn.hex() == want["cpusvn"]


def test_tdx01_pck_extension_matches_go_tdx_guest() -> None:
    q, _ = _quote("tdx_v4/01_go-tdx-guest_SPR_E4/quote_trimmed_oasis.bin")
    ext = pki.sgx_extension(pki.load_pem_certificates(q.signature.certification.pem_chain())[0])
    assert ext.ppid.hex() == "089ddfdb9c0359c82a3bc7719239574e"
    assert ext.fmspc.hex() == "50806f000000" and ext.pceid.hex() == "0000"
    assert ext.pcesvn == 11
    assert bytes(ext.tcb_components).hex() == "03030202020100020000000000000000"


def test_eppid_certification_data_type_3() -> None:
    q = parse_quote((SGX04 / "quote.bin").read_bytes())
    cert = q.signature.certification
    assert cert.cert_type == 3 and len(cert.data) == 404
    assert cert.data[384:400].hex() == "05050c0cffff01000000000000000000"  # cpusvn
    assert int.from_bytes(cert.data[400:402], "little") == 12  # PCESVN
    assert cert.data[402:404] == b"\x00\x00"  # PCEID
    assert q.header.qe_svn == 7 and q.header.pce_svn == 12
    assert q.sgx_body.mr_enclave.hex() == (
        "9479d8eddfd7b1b700319419551dc340f688c2ef519a5e18657ecf32981dbd9e")
    assert q.signature.qe_report.flags == 0x15  # INIT | MODE64 | PROVISIONKEY
    assert q.signature.qe_report.xfrm == 231


@pytest.mark.parametrize("rel,trailing", [
    ("tdx_v4/01_go-tdx-guest_SPR_E4/quote_with_39B_trailer.dat", 39),
    ("tdx_v4/02_oasis_C0806F/quote_other_with_70B_trailer.bin", 70),
])
def test_trailing_bytes_refused_unless_allowed(rel: str, trailing: int) -> None:
    data = (VECTORS / rel).read_bytes()
    with pytest.raises(FormatError, match=rf"{trailing} trailing bytes at offset"):
        parse_quote(data)
    q = parse_quote(data, allow_trailing=True)
    assert q.trailing == trailing
    assert parse_quote(data[:q.size]).fields() == {k: v for k, v in q.fields().items()
                                                  if k != "trailing_bytes"}


def test_trimmed_copy_is_the_prefix_of_the_trailered_file() -> None:
    trimmed = (VECTORS / "tdx_v4/01_go-tdx-guest_SPR_E4/quote_trimmed_oasis.bin").read_bytes()
    full = (VECTORS / "tdx_v4/01_go-tdx-guest_SPR_E4/quote_with_39B_trailer.dat").read_bytes()
    assert parse_quote(full, allow_trailing=True).size == len(trimmed) == 4935
    assert full[len(trimmed):] == b"\nextra bytes(only for testing purpose)\n"


@pytest.mark.parametrize("rel", REPORTS)
def test_snp_fields(rel: str) -> None:
    exp = expected_parsed()["snp_reports"][rel]
    f = exp["fields"]
    r = parse_snp_report((VECTORS / rel).read_bytes())
    assert r.version == f["version"]
    assert r.guest_svn == f["guest_svn"]
    assert f"0x{r.policy:016x}" == f["policy"]
    assert r.family_id.hex() == f["family_id"]
    assert r.image_id.hex() == f["image_id"]
    assert r.vmpl == f["vmpl"]
    assert r.signature_algo == f["signature_algo"]
    assert f"0x{r.current_tcb:016x}" == f["current_tcb"]
    assert f"0x{r.platform_info:016x}" == f["platform_info"]
    assert f"0x{r.flags:08x}" == f["flags_0x48"]
    assert r.report_data.hex() == f["report_data"]
    assert r.measurement.hex() == f["measurement"]
    assert r.host_data.hex() == f["host_data"]
    assert r.id_key_digest.hex() == f["id_key_digest"]
    assert r.author_key_digest.hex() == f["author_key_digest"]
    assert r.report_id.hex() == f["report_id"]
    assert r.report_id_ma.hex() == f["report_id_ma"]
    assert f"0x{r.reported_tcb:016x}" == f["reported_tcb"]
    assert bytes(r.cpuid).hex() == f["cpuid_fam_mod_step_0x188"]
    assert r.chip_id.hex() == f["chip_id"]
    assert f"0x{r.committed_tcb:016x}" == f["committed_tcb"]
    assert list(r.current_version[::-1]) == f["current_build_minor_major"]
    assert list(r.committed_version[::-1]) == f["committed_build_minor_major"]
    assert f"0x{r.launch_tcb:016x}" == f["launch_tcb"]
    assert r.signature_r == int.from_bytes(bytes.fromhex(f["sig_r_le"]), "little")
    assert r.signature_s == int.from_bytes(bytes.fromhex(f["sig_s_le"]), "little")
    assert r.signing_key_name == "VCEK"


def test_snp_policy_and_tcb_decoding() -> None:
    r1 = parse_snp_report((VECTORS / REPORTS[0]).read_bytes())
    r2 = parse_snp_report((VECTORS / REPORTS[1]).read_bytes())
    assert r1.debug is True  # policy 0xb0000: bit 19 DEBUG
    assert r2.debug is False  # policy 0x3001f
    assert r1.fields()["reported_tcb_parts"] == {"bl_spl": 2, "tee_spl": 0, "snp_spl": 5,
                                                 "ucode_spl": 68}
    assert r2.fields()["reported_tcb_parts"] == {"bl_spl": 3, "tee_spl": 0, "snp_spl": 8,
                                                 "ucode_spl": 115}
    assert r1.fields()["current_firmware"] == "1.49 build 3"


@pytest.mark.parametrize("size", [0, 1183, 1185, 2048])
def test_snp_wrong_size(size: int) -> None:
    data = (VECTORS / REPORTS[0]).read_bytes()
    data = (data * 2)[:size]
    with pytest.raises(FormatError, match="SNP report: size"):
        parse_snp_report(data)


def test_snp_bad_version_and_algo() -> None:
    data = bytearray((VECTORS / REPORTS[0]).read_bytes())
    data[0] = 9
    with pytest.raises(FormatError, match="version 9 at offset 0x0"):
        parse_snp_report(bytes(data))
    data[0] = 2
    data[0x34] = 2
    with pytest.raises(FormatError, match="signature_algo 2 at offset 0x34"):
        parse_snp_report(bytes(data))


@pytest.mark.parametrize("offset,value,message", [
    (0x00, 3, None),  # v3 header on a TDX quote: tee_type must be 0
    (0x00, 6, "header.version 6 at offset 0"),
    (0x02, 3, "att_key_type 3 at offset 2"),
    (0x04, 0x82, "tee_type 0x00000082 at offset 4"),
    (0x278, 0x10, "certification_data.size 4165 at offset 766 exceeds"),
])
def test_tdx_header_mutations(offset: int, value: int, message: str | None) -> None:
    data = bytearray((VECTORS / "tdx_v4/01_go-tdx-guest_SPR_E4/quote_trimmed_oasis.bin")
                     .read_bytes())
    data[offset] = value
    with pytest.raises(FormatError, match=message or "tee_type 0x00000081 at offset 4 must be 0"):
        parse_quote(bytes(data))
