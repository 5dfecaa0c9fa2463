"""Verification of SGX (DCAP v3), TDX (v4/v5) quotes and SEV-SNP reports against collateral.

Each step becomes a :class:`~geode.verify.result.Check`. A step that cannot run because the
collateral lacks something is "not done" (and the result is not verified); a step that runs
and finds a problem is "failed". Nothing is fetched here: collateral comes from the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from geode.errors import FormatError
from geode.verify import pki, snp, tcb
from geode.verify.collateral import Collateral, EnclaveIdentity, TcbInfo, pick_current
from geode.verify.quote import (
    CERT_TYPE_PCK_CHAIN,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_TDX,
    Quote,
    looks_like_quote,
    parse_quote,
)
from geode.verify.result import FAILED, NOT_DONE, PASSED, CheckStatus, VerificationResult
from geode.verify.sim import SIM_QE_VENDOR_ID

_FAILURE_ORDER = {PASSED: 0, NOT_DONE: 1, FAILED: 2}


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _p256_key(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        return None


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, rs: bytes, data: bytes,
              algorithm: hashes.HashAlgorithm) -> bool:
    half = len(rs) // 2
    sig = encode_dss_signature(int.from_bytes(rs[:half], "big"), int.from_bytes(rs[half:], "big"))
    try:
        key.verify(sig, data, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


def _as_anchor(c: pki.Anchor | x509.Certificate, simulated: bool = False) -> pki.Anchor:
    if isinstance(c, pki.Anchor):
        return c
    return pki.Anchor(c, f"{'simulation' if simulated else 'trusted'} root "
                      f"{pki.describe(c)}", simulated or pki.is_simulation_cert(c))


@dataclass
class _SignedCollateral:
    status: CheckStatus
    reason: str
    chain: pki.Chain | None = None


class Verifier:
    """Verifies evidence against pre-loaded collateral and a fixed set of trusted roots.

    ``intel_roots`` and ``amd_roots`` default to the roots pinned in the package. A Geode
    simulation root CA is trusted only when it is given in ``simulation_roots`` *and*
    ``allow_simulated`` is true; evidence that chains to one is always marked simulated.
    """

    def __init__(self, collateral: Collateral | None = None, *,
                 intel_roots: Sequence[pki.Anchor | x509.Certificate] | None = None,
                 amd_roots: Sequence[pki.Anchor | x509.Certificate] | None = None,
                 simulation_roots: Iterable[x509.Certificate] = (),
                 allow_simulated: bool = False) -> None:
        self.collateral = collateral or Collateral()
        self.intel_anchors = [_as_anchor(c) for c in
                              (intel_roots if intel_roots is not None
                               else pki.pinned_intel_roots())]
        self.amd_anchors = [_as_anchor(c) for c in
                            (amd_roots if amd_roots is not None else pki.pinned_amd_roots())]
        self.simulation_anchors = [_as_anchor(c, True) for c in simulation_roots]
        self.allow_simulated = allow_simulated

    # --- entry points ---------------------------------------------------------------------------

    def verify(self, evidence: bytes, at: datetime | None = None, *,
               allow_trailing: bool = False) -> VerificationResult:
        """Verify a DCAP quote or an SNP report (recognised by content)."""
        when = _utc(at)
        if evidence.lstrip()[:1] == b"{" and b"isvEnclaveQuoteStatus" in evidence:
            r = VerificationResult("epid")
            r.add("format", FAILED, "an IAS attestation verification report (EPID): EPID "
                  "attestation was removed from Gramine after v1.8 and is not supported; "
                  "use DCAP quotes")
            return r
        if len(evidence) == snp.REPORT_SIZE and not looks_like_quote(evidence):
            try:
                report = snp.parse_snp_report(evidence)
            except FormatError as e:
                r = VerificationResult("snp")
                r.add("format", FAILED, str(e))
                return r
            return self.verify_snp(report, when)
        try:
            quote = parse_quote(evidence, allow_trailing=allow_trailing)
        except FormatError as err:
            message = str(err)
            kind = "tdx" if evidence[4:8] == b"\x81\x00\x00\x00" else "sgx"
            if not looks_like_quote(evidence) and len(evidence) >= 8 and (
                    int.from_bytes(evidence[0:4], "little") in snp.SUPPORTED_VERSIONS):
                kind = "snp"
                try:
                    snp.parse_snp_report(evidence)
                except FormatError as err2:
                    message = str(err2)
            r = VerificationResult(kind)
            r.add("format", FAILED, message)
            return r
        return self.verify_quote(quote, when)

    # --- Intel ----------------------------------------------------------------------------------

    def _intel_anchors(self) -> list[pki.Anchor]:
        return self.intel_anchors + self.simulation_anchors

    def _verify_signed(self, what: str, body: bytes, signature: bytes,
                       extra_pool: Sequence[x509.Certificate], at: datetime) -> _SignedCollateral:
        """Find a TCB signing certificate that signed ``body`` and chains to a root."""
        pool = list(self.collateral.certificates) + [c for c in extra_pool
                                                     if c not in self.collateral.certificates]
        errors: list[str] = []
        anchors = self._intel_anchors()
        signers = 0
        for cert in pool:
            if cert.issuer == cert.subject or not isinstance(cert.public_key(),
                                                             ec.EllipticCurvePublicKey):
                continue
            key = cert.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            if not isinstance(key.curve, ec.SECP256R1) or pki.sgx_extension_present(cert):
                continue  # PCK certificates never sign collateral; skip their ECDSA checks
            if not _ecdsa_ok(key, signature, body, hashes.SHA256()):
                continue
            signers += 1
            chain = pki.build_chain(cert, pool, anchors, at)
            if chain.ok and len(chain.path) != 2:
                errors.append(f"{pki.describe(cert)} signed the {what} but is not issued "
                              "directly by the root CA (only TCB signing certificates are)")
                continue
            if chain.ok and not pki.common_name(cert.subject).endswith("TCB Signing"):
                errors.append(f"{pki.describe(cert)} signed the {what} but is not a TCB "
                              "signing certificate")
                continue
            if chain.ok and chain.simulated and not self.allow_simulated:
                errors.append(f"{chain.names()} ends at a Geode simulation root CA; simulated "
                              "collateral is refused unless simulation is allowed")
                continue
            if chain.ok:
                return _SignedCollateral(PASSED, f"signed by {chain.names()}", chain)
            errors.append(chain.error or "no chain")
        if signers == 0:
            return _SignedCollateral(FAILED, f"{what} signature verification failed: no "
                                     f"certificate in the collateral ({len(pool)} loaded) "
                                     "verifies it")
        return _SignedCollateral(FAILED, f"{what} signing chain: {errors[0]}")

    def verify_quote(self, quote: Quote, at: datetime | None = None) -> VerificationResult:
        when = _utc(at)
        is_tdx = quote.header.tee_type == TEE_TYPE_TDX
        r = VerificationResult("tdx" if is_tdx else "sgx")
        r.fields = quote.fields()
        r.report_data = quote.report_data
        r.debug = quote.body.debug
        if is_tdx:
            td = quote.td_body
            r.measurements = {k: td.get(k).hex() for k in (
                "mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam", "mr_signer_seam",
                "mr_config_id", "mr_owner", "mr_owner_config")}
        else:
            body = quote.sgx_body
            r.measurements = {"mr_enclave": body.mr_enclave.hex(),
                              "mr_signer": body.mr_signer.hex()}
        r.add("format", PASSED, f"{r.kind.upper()} DCAP quote version {quote.header.version}, "
              f"{quote.size} bytes" + (f" (+{quote.trailing} trailing bytes ignored)"
                                       if quote.trailing else ""))

        vendor = quote.header.qe_vendor_id
        if vendor == INTEL_QE_VENDOR_ID:
            r.add("qe_vendor", PASSED, "Intel quoting enclave")
        elif vendor == SIM_QE_VENDOR_ID:
            r.simulated = True
            r.add("qe_vendor", PASSED, "Geode simulated quoting enclave (simulated evidence)")
        else:
            r.add("qe_vendor", FAILED, f"unknown QE vendor id {vendor.hex()}")

        sig = quote.signature
        att_key = _p256_key(sig.attestation_key)
        if att_key is None:
            r.add("isv_signature", FAILED, "the attestation key is not a P-256 point")
        elif _ecdsa_ok(att_key, sig.signature, quote.signed_data, hashes.SHA256()):
            r.add("isv_signature", PASSED, "the attestation key signed the header and "
                  f"{'TD' if is_tdx else 'enclave'} report body")
        else:
            r.add("isv_signature", FAILED, "unable to verify the quote signature with the "
                  "attestation key (header or report body altered)")

        digest = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest()
        if sig.qe_report.report_data[:32] == digest:
            r.add("qe_report_binding", PASSED, "QE report_data = sha256(attestation key || "
                  f"{len(sig.qe_auth_data)}-byte auth data)")
        else:
            r.add("qe_report_binding", FAILED, "QE report_data[0:32] "
                  f"{sig.qe_report.report_data[:32].hex()} is not sha256(attestation key || "
                  f"auth data) {digest.hex()}: the attestation key is not bound to the QE")

        cert = sig.certification
        if cert.cert_type != CERT_TYPE_PCK_CHAIN:
            reason = (f"certification data type {cert.cert_type} ({cert.type_name}) carries no "
                      "PCK certificate chain; Geode verifies type 5 only, so the QE report "
                      "signature, PCK chain, CRLs, TCB and QE identity cannot be checked")
            r.add("certification_data", NOT_DONE, reason)
            return r
        try:
            chain_certs = pki.load_pem_certificates(cert.pem_chain(), "PCK chain")
        except FormatError as e:
            r.add("certification_data", FAILED, f"PCK certificate chain invalid: {e}")
            return r
        if not chain_certs:
            r.add("certification_data", FAILED, "PCK certificate chain invalid: no "
                  "certificate in certification data type 5")
            return r
        r.add("certification_data", PASSED, f"type 5: PEM chain of {len(chain_certs)} "
              "certificates")

        pck = chain_certs[0]
        try:
            ext = pki.sgx_extension(pck)
        except FormatError as e:
            r.add("pck_certificate", FAILED, str(e))
            return r
        if "SGX PCK Certificate" not in pki.common_name(pck.subject):
            r.add("pck_certificate", FAILED, f"leaf {pki.describe(pck)} is not an SGX PCK "
                  "certificate")
            return r
        r.fields["pck"] = {"fmspc": ext.fmspc.hex(), "pceid": ext.pceid.hex(),
                           "pcesvn": ext.pcesvn, "tcb_components": list(ext.tcb_components),
                           "cpusvn": ext.cpusvn.hex(), "ppid": ext.ppid.hex(),
                           "sgx_type": ext.sgx_type, "serial": f"{pck.serial_number:x}"}
        r.add("pck_certificate", PASSED, f"FMSPC {ext.fmspc.hex()}, PCEID {ext.pceid.hex()}, "
              f"PCESVN {ext.pcesvn}, TCB components {list(ext.tcb_components)}")

        pool = chain_certs[1:] + self.collateral.certificates
        chain = pki.build_chain(pck, pool, self._intel_anchors(), when)
        if chain.simulated:
            r.simulated = True
        if not chain.ok:
            r.add("pck_chain", FAILED, f"PCK chain: {chain.error}")
        elif chain.simulated and not self.allow_simulated:
            r.add("pck_chain", FAILED, f"{chain.names()} ends at a Geode simulation root CA; "
                  "simulated evidence is refused unless simulation is allowed")
        else:
            r.add("pck_chain", PASSED, f"{chain.names()}, all valid at {_fmt(when)}")

        pck_key = pck.public_key()
        if not isinstance(pck_key, ec.EllipticCurvePublicKey) or not isinstance(
                pck_key.curve, ec.SECP256R1):
            r.add("qe_report_signature", FAILED, "the PCK key is not ECDSA P-256")
        elif _ecdsa_ok(pck_key, sig.qe_report_signature, sig.qe_report.raw, hashes.SHA256()):
            r.add("qe_report_signature", PASSED, "the PCK key signed the QE report")
        else:
            r.add("qe_report_signature", FAILED, "the QE report signature does not verify "
                  "under the PCK certificate's key")

        # revocation: CAs under the root (root CA CRL) and the PCK (platform/processor CRL)
        root_crl_pairs: list[tuple[x509.Certificate, x509.Certificate]] = []
        pck_issuer: x509.Certificate | None = None
        if chain.anchor is not None and len(chain.path) >= 3:
            pck_issuer = chain.path[1]
            root_crl_pairs.append((chain.path[-2], chain.path[-1]))

        # TCB info
        tee = "TDX" if is_tdx else "SGX"
        infos = self.collateral.tcb_infos_for(tee, ext.fmspc)
        info: TcbInfo | None = None
        if not infos:
            others = [t for t in self.collateral.tcb_infos if t.fmspc == ext.fmspc]
            extra = f" (found {others[0].id} TCB info instead)" if others else ""
            r.add("tcb_info", NOT_DONE, f"no {tee} TCB info for FMSPC {ext.fmspc.hex()} in "
                  f"the collateral{extra}")
        else:
            info = pick_current(infos, when)
            assert info is not None
            r.add("tcb_info_validity", *_window("TCB info", info.issue_date, info.next_update,
                                                when))
            signed = self._verify_signed("TCB info", info.signed_body, info.signature,
                                         chain_certs, when)
            if signed.status != PASSED:
                r.add("tcb_info", signed.status, f"{info.source}: {signed.reason}")
                info = None
            elif info.pce_id != ext.pceid:
                r.add("tcb_info", FAILED, f"TCB info PCEID {info.pce_id.hex()} is not the PCK "
                      f"certificate's {ext.pceid.hex()}")
                info = None
            else:
                assert signed.chain is not None
                if len(signed.chain.path) == 2:
                    root_crl_pairs.append((signed.chain.path[0], signed.chain.path[1]))
                if signed.chain.simulated:
                    r.simulated = True
                r.add("tcb_info", PASSED, f"{tee} TCB info v{info.version} for FMSPC "
                      f"{info.fmspc.hex()} (evaluation data number "
                      f"{info.tcb_evaluation_data_number}), {signed.reason}")

        # QE identity
        eid = "TD_QE" if is_tdx else "QE"
        idents = self.collateral.identities_for(eid)
        ident: EnclaveIdentity | None = None
        qe_eval: tcb.IdentityEvaluation | None = None
        if not idents:
            r.add("qe_identity", NOT_DONE, f"no {eid} identity in the collateral")
        else:
            ident = pick_current(idents, when)
            assert ident is not None
            r.add("qe_identity_validity", *_window("QE identity", ident.issue_date,
                                                   ident.next_update, when))
            signed = self._verify_signed("QE identity", ident.signed_body, ident.signature,
                                         chain_certs, when)
            if signed.status != PASSED:
                r.add("qe_identity", signed.status, f"{ident.source}: {signed.reason}")
            else:
                assert signed.chain is not None
                if len(signed.chain.path) == 2:
                    root_crl_pairs.append((signed.chain.path[0], signed.chain.path[1]))
                qe_eval = tcb.check_identity(ident, sig.qe_report)
                if not qe_eval.ok:
                    r.add("qe_identity", FAILED, f"QE identity mismatch: {qe_eval.reason}")
                    qe_eval = None
                elif qe_eval.status is None:
                    r.add("qe_identity", FAILED, qe_eval.reason)
                    qe_eval = None
                else:
                    r.add("qe_identity", PASSED, f"{qe_eval.reason}; {signed.reason}")

        # CRLs
        crls = self.collateral.crls
        if root_crl_pairs:
            seen: list[x509.Certificate] = []
            statuses = []
            for c, issuer in root_crl_pairs:
                if c in seen:
                    continue
                seen.append(c)
                statuses.append(pki.check_revocation(c, issuer, crls, when))
            worst = max(statuses, key=lambda s: _FAILURE_ORDER[s.status])
            if worst.status == PASSED:
                r.add("root_ca_crl", PASSED, "; ".join(s.reason for s in statuses))
            else:
                r.add("root_ca_crl", worst.status, worst.reason)
        else:
            r.add("root_ca_crl", NOT_DONE, "no chain to the root CA to check")
        if pck_issuer is not None:
            st = pki.check_revocation(pck, pck_issuer, crls, when)
            r.add("pck_crl", st.status, st.reason)
        else:
            r.add("pck_crl", NOT_DONE, "no PCK issuer to check the PCK CRL against")

        # TDX module
        module: tcb.ModuleEvaluation | None = None
        if is_tdx and info is not None:
            module = tcb.check_tdx_module(info, quote.td_body, quote.header.version)
            if not module.ok:
                r.add("tdx_module", FAILED, f"TDX module mismatch: {module.reason}")
            elif module.status is None:
                r.add("tdx_module", FAILED, module.reason)
            else:
                r.add("tdx_module", PASSED, module.reason)

        # TCB level
        if info is None:
            r.add("tcb_level", NOT_DONE, "no verified TCB info to match against")
        else:
            ev = tcb.match_platform(info, ext.tcb_components, ext.pcesvn,
                                    quote.td_body.tee_tcb_svn if is_tdx else None)
            if ev.status is None:
                r.add("tcb_level", FAILED, ev.detail)
            else:
                status = ev.status
                advisories = list(ev.advisory_ids)
                notes = [ev.detail]
                if module is not None and module.ok and module.status is not None:
                    status = tcb.converge(status, module.status)
                    advisories += [a for a in module.advisory_ids if a not in advisories]
                if qe_eval is not None and qe_eval.status is not None:
                    status = tcb.converge(status, qe_eval.status)
                    advisories += [a for a in qe_eval.advisory_ids if a not in advisories]
                    notes.append(f"QE {qe_eval.status}")
                r.tcb_status = status
                r.advisory_ids = advisories
                if status == "Revoked":
                    r.add("tcb_level", FAILED, "TCB status Revoked: " + "; ".join(notes))
                else:
                    r.add("tcb_level", PASSED, f"TCB status {status}: " + "; ".join(notes)
                          + (f"; advisories {', '.join(advisories)}" if advisories else ""))
        return r

    # --- AMD SEV-SNP ----------------------------------------------------------------------------

    def verify_snp(self, report: snp.SnpReport, at: datetime | None = None,
                   signing_cert: x509.Certificate | None = None) -> VerificationResult:
        when = _utc(at)
        r = VerificationResult("snp")
        r.fields = report.fields()
        r.report_data = report.report_data
        r.debug = report.debug
        r.measurements = {"measurement": report.measurement.hex(),
                          "host_data": report.host_data.hex(),
                          "id_key_digest": report.id_key_digest.hex(),
                          "author_key_digest": report.author_key_digest.hex(),
                          "family_id": report.family_id.hex(),
                          "image_id": report.image_id.hex()}
        r.add("format", PASSED, f"SEV-SNP report version {report.version}, signed by the "
              f"{report.signing_key_name}")

        want_cn = "SEV-VCEK" if report.signing_key == snp.SIGNING_KEY_VCEK else "SEV-VLEK"
        candidates = [signing_cert] if signing_cert is not None else [
            c for c in self.collateral.certificates
            if isinstance(c.public_key(), ec.EllipticCurvePublicKey)
            and c.issuer != c.subject]
        der_sig = encode_dss_signature(report.signature_r, report.signature_s)
        signers: list[x509.Certificate] = []
        for c in candidates:
            key = c.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            if not isinstance(key.curve, ec.SECP384R1):
                continue
            try:
                key.verify(der_sig, report.signed_data, ec.ECDSA(hashes.SHA384()))
            except InvalidSignature:
                continue
            signers.append(c)
        key_certs = [c for c in candidates if pki.common_name(c.subject) in ("SEV-VCEK",
                                                                             "SEV-VLEK")]
        if not signers:
            if key_certs:
                r.add("report_signature", FAILED, f"the report signature does not verify under "
                      f"any of the {len(key_certs)} VCEK/VLEK certificate(s) in the collateral")
            else:
                r.add("report_signature", NOT_DONE, f"no {want_cn[4:]} certificate in the "
                      f"collateral{self._kds_hint(report)}")
            return r
        # Several certificates may carry the key (anyone can wrap a public key in a
        # certificate): prefer one whose chain holds.
        anchors = self.amd_anchors + self.simulation_anchors
        pool = self.collateral.certificates
        chains = [pki.build_chain(c, pool, anchors, when) for c in signers]
        chain = next((ch for ch in chains if ch.ok), chains[0])
        signer = chain.path[0]
        cn = pki.common_name(signer.subject)
        r.add("report_signature", PASSED, f"ECDSA P-384/SHA-384 signature over [0, 0x2A0) "
              f"verifies under {pki.describe(signer)}")
        try:
            info = pki.amd_key_info(signer)
        except FormatError as e:
            r.add("signing_key", FAILED, f"{pki.describe(signer)}: bad AMD extension: {e}")
            return r
        r.fields["signing_cert"] = {"subject": cn, "product": info.product_name,
                                    "spl": info.spl, "sha256": pki.cert_sha256(signer)}
        if cn != want_cn:
            r.add("signing_key", FAILED, f"the report says it is signed by the {want_cn[4:]} "
                  f"but the key that verifies it is {pki.describe(signer)}")
        else:
            r.add("signing_key", PASSED, f"signed by the {want_cn[4:]} as the report states")

        if chain.simulated:
            r.simulated = True
        if not chain.ok:
            r.add("cert_chain", NOT_DONE if chain.error and "no certificate for issuer" in
                  chain.error else FAILED, f"{want_cn[4:]} chain: {chain.error}")
        elif chain.simulated and not self.allow_simulated:
            r.add("cert_chain", FAILED, f"{chain.names()} ends at a simulation root; refused")
        else:
            r.add("cert_chain", PASSED, f"{chain.names()} (RSA-PSS), all valid at {_fmt(when)}")
        if chain.ok and len(chain.path) == 3:
            st = pki.check_revocation(chain.path[1], chain.path[2], self.collateral.crls, when)
            r.add("ark_crl", st.status, st.reason)
        else:
            r.add("ark_crl", NOT_DONE, "no ASK/ASVK -> ARK chain to check against the ARK CRL")

        product = (info.product_name or "").split("-")[0] or report.product or "Milan"
        reported = snp.tcb_parts(report.reported_tcb, product)
        if not info.spl:
            r.add("reported_tcb", NOT_DONE, f"{pki.describe(signer)} has no TCB extensions")
        else:
            diffs = [f"{k} {reported.get(k)} != {v}" for k, v in info.spl.items()
                     if reported.get(k) != v]
            if diffs:
                r.add("reported_tcb", FAILED, f"reported TCB 0x{report.reported_tcb:016x} does "
                      f"not match the {want_cn[4:]}: " + ", ".join(diffs))
            else:
                r.add("reported_tcb", PASSED, "reported TCB " + ", ".join(
                    f"{k} {v}" for k, v in reported.items()) + f" = the {want_cn[4:]}'s")

        if cn == "SEV-VCEK":
            if report.mask_chip_key or not any(report.chip_id):
                r.add("chip_id", NOT_DONE, "the report hides its chip id (MASK_CHIP_ID), so the "
                      "VCEK cannot be tied to the chip")
            elif info.hwid is None:
                r.add("chip_id", FAILED, "the VCEK has no hwID extension")
            elif info.hwid == report.chip_id:
                r.add("chip_id", PASSED, "the VCEK's hwID is the report's chip id")
            else:
                r.add("chip_id", FAILED, f"the VCEK's hwID {info.hwid.hex()[:16]}... is not the "
                      f"report's chip id {report.chip_id.hex()[:16]}...")
        else:
            r.add("chip_id", PASSED, f"VLEK (CSP {info.csp_id or 'unknown'}): not tied to a chip")
        if report.vmpl > 3:
            r.add("vmpl", FAILED, f"VMPL {report.vmpl} is not 0-3")
        return r

    @staticmethod
    def _kds_hint(report: snp.SnpReport) -> str:
        if report.signing_key != snp.SIGNING_KEY_VCEK or not any(report.chip_id):
            return ""
        product = report.product or "Milan"
        p = snp.tcb_parts(report.reported_tcb, product)
        return (f" (AMD KDS: https://kdsintf.amd.com/vcek/v1/{product}/{report.chip_id.hex()}"
                f"?blSPL={p['bl_spl']}&teeSPL={p['tee_spl']}&snpSPL={p['snp_spl']}"
                f"&ucodeSPL={p['ucode_spl']})")


def _window(what: str, issued: datetime, next_update: datetime,
            at: datetime) -> tuple[CheckStatus, str]:
    if at < issued:
        return FAILED, (f"{what} issue date {_fmt(issued)} is in the future at {_fmt(at)}")
    if at > next_update:
        return FAILED, (f"{what} expired: nextUpdate {_fmt(next_update)} is before {_fmt(at)}")
    return PASSED, f"{what} current at {_fmt(at)} (issued {_fmt(issued)}, next update " \
                   f"{_fmt(next_update)})"


def verify(evidence: bytes, collateral: Collateral | None = None, *,
           at: datetime | None = None, allow_simulated: bool = False,
           simulation_roots: Iterable[x509.Certificate] = (),
           allow_trailing: bool = False) -> VerificationResult:
    """One-shot verification with the pinned roots."""
    v = Verifier(collateral, simulation_roots=simulation_roots, allow_simulated=allow_simulated)
    return v.verify(evidence, at, allow_trailing=allow_trailing)
