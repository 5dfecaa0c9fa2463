"""Attestation evidence: parsing and verification of SGX/TDX DCAP quotes and SEV-SNP reports.

Typical use::

    from geode.verify import Collateral, Policy, Verifier

    collateral = Collateral.load(["collateral/", "roots/"])
    result = Verifier(collateral).verify(quote_bytes, at=when)
    result = result.with_policy(Policy(mr_enclave="68823b...", allowed_tcb_statuses={"UpToDate"}))
    if not result.verified:
        for check in result.failures():
            print(check.name, check.status, check.reason)
"""

from geode.verify.collateral import Collateral, EnclaveIdentity, TcbInfo
from geode.verify.pki import Anchor, pinned_amd_roots, pinned_intel_roots
from geode.verify.quote import Quote, parse_quote
from geode.verify.result import Check, Policy, VerificationResult
from geode.verify.snp import SnpReport, parse_snp_report
from geode.verify.verifier import Verifier, verify

__all__ = [
    "Anchor", "Check", "Collateral", "EnclaveIdentity", "Policy", "Quote", "SnpReport",
    "TcbInfo", "VerificationResult", "Verifier", "parse_quote", "parse_snp_report",
    "pinned_amd_roots", "pinned_intel_roots", "verify",
]
