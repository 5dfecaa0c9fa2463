"""Cross-check against dcap-qvl (Phala's Rust QVL port, PyPI) where the collateral allows.

dcap-qvl needs a PCK CRL and a Root CA CRL for every verification. Only sgx_v3/02 ships a
matching pair; for sgx_v3/01 and tdx_v4/02 a CRL from outside the verification time is given
to dcap-qvl (it checks nextUpdate but not thisUpdate), while Geode, stricter, reports the PCK
CRL check as not done. TCB status and advisory ids must agree in every case.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from verify_helpers import (
    AT_SGX01,
    AT_SGX02,
    AT_TDX01,
    AT_TDX02,
    ROOTS,
    SGX01,
    SGX02,
    TDX01,
    TDX02,
    verify,
)

from geode.verify.collateral import top_level_spans

dcap_qvl = pytest.importorskip("dcap_qvl")

INTEL = ROOTS / "intel"


def _body(path: Path, member: str) -> tuple[str, bytes]:
    text = path.read_text()
    spans = top_level_spans(text, path.name)
    start, end, _ = spans[member]
    return text[start:end], bytes.fromhex(spans["signature"][2])


def _chain(at: datetime) -> str:
    """dcap-qvl takes one issuer chain: the TCB signing certificate valid at ``at``."""
    if at.year < 2025:
        signing = (INTEL / "Intel_SGX_TCB_Signing_2018-2025.pem").read_text()
    else:
        der = (INTEL / "Intel_SGX_TCB_Signing_2025-2032.der").read_bytes()
        signing = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
    return signing + (INTEL / "Intel_SGX_Provisioning_Certification_RootCA.pem").read_text()


def _collateral(at: datetime, tcb: Path, qe: Path, pck_crl: Path, root_crl: Path) -> Any:
    tcb_body, tcb_sig = _body(tcb, "tcbInfo")
    qe_body, qe_sig = _body(qe, "enclaveIdentity")
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=_chain(at), root_ca_crl=root_crl.read_bytes(),
        pck_crl=pck_crl.read_bytes(), tcb_info_issuer_chain=_chain(at), tcb_info=tcb_body,
        tcb_info_signature=tcb_sig, qe_identity_issuer_chain=_chain(at), qe_identity=qe_body,
        qe_identity_signature=qe_sig)


CASES = [
    ("sgx02", SGX02 / "quote.bin", AT_SGX02,
     (SGX02 / "sgx_tcbinfov3_00606a000000.json", SGX02 / "sgx_qeidentity_v4.json",
      SGX02 / "pck_platform_crl_2025-08-15.der", INTEL / "IntelSGXRootCA_crl_2025-03-20.der")),
    ("sgx01", SGX01 / "quote.bin", AT_SGX01,
     (SGX01 / "tcb_info_v3_fmspc_00606A000000.json", SGX01 / "qe_identity_v2.json",
      TDX01 / "pck_platform_crl_2023-06-08.der", INTEL / "IntelSGXRootCA_crl_2023-04-03.der")),
    ("tdx02", TDX02 / "quote.bin", AT_TDX02,
     (TDX02 / "tcb_info_v3_tdx_fmspc_C0806F000000.json", TDX02 / "qe_identity_v2_tdx2.json",
      SGX02 / "pck_platform_crl_2025-08-15.der", INTEL / "IntelSGXRootCA_crl_2024-03-20.der")),
]


@pytest.mark.parametrize("name,quote,at,files", CASES, ids=[c[0] for c in CASES])
def test_status_and_advisories_agree(name: str, quote: Path, at: datetime,
                                     files: tuple[Path, Path, Path, Path]) -> None:
    theirs = dcap_qvl.verify(quote.read_bytes(), _collateral(at, *files), int(at.timestamp()))
    ours = verify(quote, name, at)
    assert ours.tcb_status == theirs.status
    assert ours.advisory_ids == list(theirs.advisory_ids)
    assert ours.verified == (name == "sgx02")


def test_tcb_not_supported_agrees() -> None:
    files = (TDX01 / "tcb_info_v3_tdx_fmspc_50806F000000.json", TDX01 / "qe_identity_v2_tdx.json",
             TDX01 / "pck_platform_crl_2023-06-08.der", INTEL / "IntelSGXRootCA_crl_2023-04-03.der")
    with pytest.raises(ValueError, match="No matching TCB level"):
        dcap_qvl.verify((TDX01 / "quote_trimmed_oasis.bin").read_bytes(),
                        _collateral(AT_TDX01, *files),
                        int(AT_TDX01.timestamp()))
    ours = verify(TDX01 / "quote_trimmed_oasis.bin", "tdx01", AT_TDX01)
    assert ours.check("tcb_level").status == "failed"  # type: ignore[union-attr]


def test_parsed_fields_agree() -> None:
    for quote in (SGX01 / "quote.bin", SGX02 / "quote.bin", TDX02 / "quote.bin"):
        theirs = dcap_qvl.parse_quote(quote.read_bytes())
        ours = verify(quote, "sgx02", AT_SGX02)
        report = theirs.report
        if theirs.is_tdx():
            assert report.mr_td.hex() == ours.measurements["mr_td"]
            assert [getattr(report, f"rt_mr{i}").hex() for i in range(4)] == [
                ours.measurements[f"rtmr{i}"] for i in range(4)]
        else:
            assert report.mr_enclave.hex() == ours.measurements["mr_enclave"]
            assert report.mr_signer.hex() == ours.measurements["mr_signer"]
        assert report.report_data == ours.report_data
        assert theirs.fmspc().lower() == ours.fields["pck"]["fmspc"]
