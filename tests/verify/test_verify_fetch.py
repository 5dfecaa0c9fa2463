"""Collateral fetched by URL from a local PCCS / KDS stand-in (http.server on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from verify_helpers import AT_SGX02, AT_SNP, ROOTS, SGX02, SNP02, failed, statuses

from geode.verify import Collateral, Verifier
from geode.verify.fetch import fetch_for_evidence

INTEL = ROOTS / "intel"


def _chain() -> str:
    signing = x509.load_der_x509_certificate(
        (INTEL / "Intel_SGX_TCB_Signing_2025-2032.der").read_bytes())
    return urllib.parse.quote(signing.public_bytes(Encoding.PEM).decode()
                              + (INTEL / "Intel_SGX_Provisioning_Certification_RootCA.pem")
                              .read_text())


ROUTES: dict[str, tuple[bytes, dict[str, str]]] = {
    "/sgx/certification/v4/tcb?fmspc=00606a000000": (
        (SGX02 / "sgx_tcbinfov3_00606a000000.json").read_bytes(),
        {"TCB-Info-Issuer-Chain": _chain()}),
    "/sgx/certification/v4/qe/identity": (
        (SGX02 / "sgx_qeidentity_v4.json").read_bytes(),
        {"SGX-Enclave-Identity-Issuer-Chain": _chain()}),
    "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": (
        (SGX02 / "pck_platform_crl_2025-08-15.der").read_bytes(),
        {"SGX-PCK-CRL-Issuer-Chain": _chain()}),
    "/sgx/certification/v4/rootcacrl": (
        (INTEL / "IntelSGXRootCA_crl_2025-03-20.der").read_bytes().hex().encode(), {}),
    "/vcek/v1/Milan/c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f8e8c0bcd9a5d"
    "9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115": (
        (SNP02 / "vcek.der").read_bytes(), {}),
    "/vcek/v1/Milan/cert_chain": ((ROOTS / "amd" / "ask_ark_milan.pem").read_bytes(), {}),
}
REQUESTS: list[str] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        REQUESTS.append(self.path)
        if self.path not in ROUTES:
            self.send_error(404)
            return
        body, headers = ROUTES[self.path]
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_pccs_fetch_gives_a_full_verification(server: str) -> None:
    quote = (SGX02 / "quote.bin").read_bytes()
    c = fetch_for_evidence(quote, pccs_url=server)
    assert len(c.tcb_infos) == 1 and len(c.identities) == 1 and len(c.crls) == 2
    assert not c.ignored
    r = Verifier(c).verify(quote, AT_SGX02)
    assert r.verified, failed(r)
    assert r.tcb_status == "SWHardeningNeeded"


def test_kds_fetch(server: str) -> None:
    report = (SNP02 / "report.bin").read_bytes()
    c = fetch_for_evidence(report, kds_url=server)
    r = Verifier(c).verify(report, AT_SNP)
    assert statuses(r)["report_signature"] == statuses(r)["cert_chain"] == "passed"
    # the stand-in has no CRL: recorded as a failed fetch, and the check is not done
    assert any("crl" in url and "404" in why for url, why in c.ignored)
    assert statuses(r)["ark_crl"] == "not done"


def test_unreachable_service_is_not_done() -> None:
    quote = (SGX02 / "quote.bin").read_bytes()
    c = fetch_for_evidence(quote, pccs_url="http://127.0.0.1:9", timeout=2)
    assert len(c.ignored) == 4 and all("fetch failed" in why for _, why in c.ignored)
    r = Verifier(c).verify(quote, AT_SGX02)
    assert statuses(r)["tcb_info"] == "not done"


def test_cli_pccs(server: str, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "geode.cli.quote", "verify", str(SGX02 / "quote.bin"),
                        "--pccs", server, "--at", "2025-08-15T05:45:00Z", "--allow-tcb",
                        "SWHardeningNeeded"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1].startswith("verified: SGX")


def test_fetched_collateral_merges_with_files(server: str) -> None:
    c = Collateral.load([ROOTS / "amd"])
    fetch_for_evidence((SGX02 / "quote.bin").read_bytes(), pccs_url=server, into=c)
    assert len(c.tcb_infos) == 1 and any("ARK" in str(w) for _, w in c.recognised)
