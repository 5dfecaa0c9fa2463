"""Optional collateral fetching by URL: a PCCS (or Intel PCS) and the AMD KDS.

Everything fetched goes through the same content recognition as files
(:meth:`Collateral.add_bytes`), and nothing fetched is trusted by itself: signatures and
chains to the pinned roots are checked by the verifier exactly as for offline collateral.
A failed request is recorded in ``Collateral.ignored`` (the checks that needed it then say
"not done"); it never raises.

Intel (PCS/PCCS API v4)::

    {base}/{sgx|tdx}/certification/v4/tcb?fmspc=HEX    body: TCB info; header *-Issuer-Chain
    {base}/{sgx|tdx}/certification/v4/qe/identity      body: QE / TD_QE identity
    {base}/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der
    {base}/sgx/certification/v4/rootcacrl              (PCCS; DER, PEM or hex text)

AMD KDS::

    {base}/vcek/v1/{product}/{chip_id}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=   VCEK (DER)
    {base}/{vcek|vlek}/v1/{product}/cert_chain                            ASK|ASVK + ARK
    {base}/{vcek|vlek}/v1/{product}/crl                                   ARK's CRL
"""

from __future__ import annotations

import string
import urllib.error
import urllib.parse
import urllib.request

from geode.errors import FormatError
from geode.verify import pki, snp
from geode.verify.collateral import Collateral
from geode.verify.quote import (
    CERT_TYPE_PCK_CHAIN,
    TEE_TYPE_TDX,
    looks_like_quote,
    parse_quote,
)

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
AMD_KDS_URL = "https://kdsintf.amd.com"
MAX_RESPONSE = 4 << 20
_HEX = set(string.hexdigits.encode())


def _get(url: str, timeout: float) -> tuple[bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers={"User-Agent": "geode-verify"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (caller's URL)
        body: bytes = resp.read(MAX_RESPONSE + 1)
        if len(body) > MAX_RESPONSE:
            raise ValueError(f"response larger than {MAX_RESPONSE} bytes")
        return body, {k: v for k, v in resp.headers.items()}


def _add_response(collateral: Collateral, url: str, timeout: float) -> bool:
    try:
        body, headers = _get(url, timeout)
    except urllib.error.HTTPError as e:
        collateral.ignored.append((url, f"fetch failed: HTTP {e.code} {e.reason}"))
        return False
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        collateral.ignored.append((url, f"fetch failed: {reason}"))
        return False
    for name, value in headers.items():
        if name.lower().endswith("issuer-chain"):
            collateral.add_bytes(urllib.parse.unquote(value).encode(), f"{url} [{name}]")
    stripped = body.strip()
    if stripped and set(stripped) <= _HEX and len(stripped) % 2 == 0:
        body = bytes.fromhex(stripped.decode())  # PCCS serves the root CA CRL as hex text
    collateral.add_bytes(body, url)
    return True


def fetch_intel(base_url: str, *, fmspc: bytes, tdx: bool, ca: str = "platform",
                timeout: float = 10.0, into: Collateral | None = None) -> Collateral:
    """TCB info, QE identity, PCK CRL and root CA CRL for one platform from a PCS/PCCS."""
    c = into if into is not None else Collateral()
    base = base_url.rstrip("/")
    tee = "tdx" if tdx else "sgx"
    _add_response(c, f"{base}/{tee}/certification/v4/tcb?fmspc={fmspc.hex()}", timeout)
    _add_response(c, f"{base}/{tee}/certification/v4/qe/identity", timeout)
    _add_response(c, f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der", timeout)
    _add_response(c, f"{base}/sgx/certification/v4/rootcacrl", timeout)
    return c


def fetch_amd(base_url: str, report: snp.SnpReport, *, product: str = "Milan",
              timeout: float = 10.0, into: Collateral | None = None) -> Collateral:
    """VCEK (for VCEK-signed reports), ASK/ASVK + ARK chain and CRL from the AMD KDS."""
    c = into if into is not None else Collateral()
    base = base_url.rstrip("/")
    kind = "vlek" if report.signing_key == snp.SIGNING_KEY_VLEK else "vcek"
    if kind == "vcek" and any(report.chip_id):
        p = snp.tcb_parts(report.reported_tcb, product)
        query = f"blSPL={p['bl_spl']}&teeSPL={p['tee_spl']}&snpSPL={p['snp_spl']}" \
                f"&ucodeSPL={p['ucode_spl']}"
        if "fmc_spl" in p:
            query = f"fmcSPL={p['fmc_spl']}&" + query
        _add_response(c, f"{base}/vcek/v1/{product}/{report.chip_id.hex()}?{query}", timeout)
    _add_response(c, f"{base}/{kind}/v1/{product}/cert_chain", timeout)
    _add_response(c, f"{base}/{kind}/v1/{product}/crl", timeout)
    return c


def fetch_for_evidence(evidence: bytes, *, pccs_url: str | None = None,
                       kds_url: str | None = None, product: str | None = None,
                       timeout: float = 10.0, into: Collateral | None = None) -> Collateral:
    """Fetch what ``evidence`` needs from the given services (those left None are skipped)."""
    c = into if into is not None else Collateral()
    if len(evidence) == snp.REPORT_SIZE and not looks_like_quote(evidence):
        if kds_url is None:
            return c
        try:
            report = snp.parse_snp_report(evidence)
        except FormatError:
            return c
        return fetch_amd(kds_url, report, product=product or report.product or "Milan",
                         timeout=timeout, into=c)
    if pccs_url is None:
        return c
    try:
        quote = parse_quote(evidence, allow_trailing=True)
        cert = quote.signature.certification
        if cert.cert_type != CERT_TYPE_PCK_CHAIN:
            c.ignored.append((pccs_url, f"certification data type {cert.cert_type}: no PCK "
                              "certificate to take the FMSPC from"))
            return c
        pck = pki.load_pem_certificates(cert.pem_chain(), "PCK chain")[0]
        ext = pki.sgx_extension(pck)
    except (FormatError, IndexError) as e:
        c.ignored.append((pccs_url, f"cannot tell what to fetch: {e}"))
        return c
    ca = "processor" if "Processor" in pki.common_name(pck.issuer) else "platform"
    return fetch_intel(pccs_url, fmspc=ext.fmspc, tdx=quote.header.tee_type == TEE_TYPE_TDX,
                       ca=ca, timeout=timeout, into=c)
