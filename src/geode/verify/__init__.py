"""Attestation evidence: parsing and verification of SGX/TDX DCAP quotes and SEV-SNP reports.

Typical use::

    from geode.verify import Collateral, Policy, Verifier

    collateral = Collateral.load(["collateral/", "roots/"])   # recognised by content
    result = Verifier(collateral).verify(quote_bytes, at=when)  # at: default now
    result = result.with_policy(Policy(mr_enclave="68823b...", allowed_tcb_statuses={"UpToDate"}))
    if not result.verified:
        for check in result.failures():
            print(check.name, check.status, check.reason)

Modules: :mod:`~geode.verify.quote` and :mod:`~geode.verify.snp` (parsers, FormatError
only), :mod:`~geode.verify.collateral` (TCB info, QE identity, CRLs, certificates),
:mod:`~geode.verify.pki` (chains to pinned roots, CRLs, SGX and AMD extensions),
:mod:`~geode.verify.tcb` (Intel TCB matching), :mod:`~geode.verify.verifier`,
:mod:`~geode.verify.result` (results and policy), :mod:`~geode.verify.fetch` (optional PCCS
and KDS), :mod:`~geode.verify.simulation` (a software quoting authority for the sim backend
and tests) and :mod:`~geode.verify.sim` (the markers of simulated evidence).

Why Geode has its own verifier rather than wrapping dcap-qvl (PyPI, Rust): dcap-qvl covers
Intel only (SNP would need a second library anyway); it answers with one status or one error,
while Geode reports every check with its reason, including checks that could not be done
for lack of collateral; it takes exactly one issuer chain and one CRL of each kind, while
Geode selects by content and time among whole folders; its trust root is a parameter of
one call, while Geode needs a root set that can include a per-installation simulation root
under an explicit switch; and it is a compiled wheel for a security decision the project
must be able to read and test. It is used in the tests as an independent cross-check (TCB
status, advisory ids, parsed fields). One difference found that way: dcap-qvl accepts a CRL
whose thisUpdate is after the verification time; Geode does not.
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
