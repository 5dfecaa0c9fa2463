"""Intel TCB matching: platform TCB levels (SGX and TDX), TDX module and QE identity.

The rules follow Intel's DCAP quote verification (QVL) as publicly documented:

* TCB levels are ordered from the highest down (SGX component SVNs compared as a vector,
  then PCESVN, then for TDX the TDX component SVNs); the platform's level is the first one
  whose 16 SGX component SVNs are all <= the PCK certificate's and whose PCESVN is <= the
  PCK certificate's.
* For TDX, the TDX level is the first of those SGX-matching levels whose TDX component SVNs
  are all <= the TD report's TEE_TCB_SVN (bytes 0 and 1 are skipped when byte 1, the TDX
  module major version, is non-zero: they are judged by the TDX module identity instead).
* The TDX module identity ``TDX_<major as 2 hex digits>`` gives a status from its own
  ISVSVN levels (byte 0 of TEE_TCB_SVN); an OutOfDate module turns UpToDate or
  SWHardeningNeeded into OutOfDate, and the Configuration* statuses into
  OutOfDateConfigurationNeeded; a Revoked module makes the result Revoked.
* The QE identity's status (first level whose ISVSVN <= the QE's) converges the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from geode.verify.collateral import EnclaveIdentity, TcbInfo, TcbLevel, TdxModuleIdentity
from geode.verify.quote import EnclaveReportBody, TdReportBody


def _sort_key(level: TcbLevel) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    return (level.sgx_components, level.pcesvn, level.tdx_components or ())


def ordered_levels(info: TcbInfo) -> list[TcbLevel]:
    return sorted(info.levels, key=_sort_key, reverse=True)


def sgx_level_matches(level: TcbLevel, components: Sequence[int], pcesvn: int) -> bool:
    return (all(mine >= theirs for mine, theirs in zip(components, level.sgx_components,
                                                      strict=True))
            and pcesvn >= level.pcesvn)


def tdx_level_matches(level: TcbLevel, tee_tcb_svn: bytes) -> bool:
    assert level.tdx_components is not None
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16))


@dataclass
class TcbEvaluation:
    """Outcome of TCB matching; ``status`` None means no level matched (not supported)."""

    status: str | None
    advisory_ids: list[str] = field(default_factory=list)
    detail: str = ""
    sgx_level: TcbLevel | None = None
    tdx_level: TcbLevel | None = None


def _svns(components: Sequence[int]) -> str:
    return "[" + ",".join(str(c) for c in components) + "]"


def match_platform(info: TcbInfo, components: Sequence[int], pcesvn: int,
                   tee_tcb_svn: bytes | None) -> TcbEvaluation:
    """Platform TCB level (SGX, or SGX+TDX when ``tee_tcb_svn`` is given)."""
    sgx_level: TcbLevel | None = None
    for level in ordered_levels(info):
        if not sgx_level_matches(level, components, pcesvn):
            continue
        if tee_tcb_svn is None:
            return TcbEvaluation(level.status, list(level.advisory_ids),
                                 f"PCK TCB {_svns(components)} PCESVN {pcesvn} matches the "
                                 f"level of {level.tcb_date[:10]}: {level.status}",
                                 sgx_level=level)
        if sgx_level is None:
            sgx_level = level
        if level.tdx_components is not None and tdx_level_matches(level, tee_tcb_svn):
            return TcbEvaluation(level.status, list(level.advisory_ids),
                                 f"PCK TCB {_svns(components)} PCESVN {pcesvn} and TEE_TCB_SVN "
                                 f"{tee_tcb_svn.hex()} match the level of "
                                 f"{level.tcb_date[:10]}: {level.status} (SGX level "
                                 f"{sgx_level.tcb_date[:10]}: {sgx_level.status})",
                                 sgx_level=sgx_level, tdx_level=level)
    if sgx_level is None:
        return TcbEvaluation(None, [], f"TCB level not supported: PCK TCB {_svns(components)} "
                             f"PCESVN {pcesvn} is below every level of the {info.id} TCB info "
                             f"for FMSPC {info.fmspc.hex()}")
    return TcbEvaluation(None, [], f"TDX TCB level not supported: TEE_TCB_SVN "
                         f"{tee_tcb_svn.hex() if tee_tcb_svn else ''} is below every TDX level "
                         f"at or under the SGX level of {sgx_level.tcb_date[:10]}",
                         sgx_level=sgx_level)


def converge(status: str, other: str) -> str:
    """Converge a platform status with an OutOfDate/Revoked QE or TDX module status."""
    if other == "Revoked":
        return "Revoked"
    if other == "OutOfDate":
        if status in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return status


@dataclass(frozen=True)
class ModuleEvaluation:
    ok: bool  # identity found and matching
    status: str | None  # None: no module TCB level matched / not applicable
    advisory_ids: tuple[str, ...]
    reason: str


def check_tdx_module(info: TcbInfo, body: TdReportBody, quote_version: int) -> ModuleEvaluation:
    """MRSIGNERSEAM / SEAM attributes against the TDX module identity, then its TCB level."""
    major = body.tee_tcb_svn[1]
    isvsvn = body.tee_tcb_svn[0]
    identity: TdxModuleIdentity | None = info.tdx_module
    if quote_version > 3 and major > 0:
        wanted = f"TDX_{major:02X}"
        found = [m for m in info.tdx_module_identities if m.id.upper() == wanted]
        if not found:
            return ModuleEvaluation(False, None, (), f"TDX module {wanted} (TEE_TCB_SVN[1] = "
                                    f"{major}) has no identity in the TCB info")
        identity = found[0]
    if identity is None:
        return ModuleEvaluation(False, None, (), "the TDX TCB info has no tdxModule")
    if body.mr_signer_seam != identity.mrsigner:
        return ModuleEvaluation(False, None, (), f"MRSIGNERSEAM {body.mr_signer_seam.hex()} is "
                                f"not the TDX module signer {identity.mrsigner.hex()}")
    attrs = bytes(a & m for a, m in zip(body.seam_attributes, identity.attributes_mask,
                                        strict=True))
    want = bytes(a & m for a, m in zip(identity.attributes, identity.attributes_mask,
                                       strict=True))
    if attrs != want:
        return ModuleEvaluation(False, None, (), f"SEAM attributes {body.seam_attributes.hex()} "
                                f"do not match {identity.attributes.hex()} under mask "
                                f"{identity.attributes_mask.hex()}")
    if not (quote_version > 3 and major > 0):
        return ModuleEvaluation(True, "UpToDate", (), "TDX module signer and attributes match "
                                "(module version 0: no module TCB levels)")
    for lv in sorted(identity.levels, key=lambda m: m.isvsvn, reverse=True):
        if isvsvn >= lv.isvsvn:
            return ModuleEvaluation(True, lv.status, lv.advisory_ids,
                                    f"TDX module {identity.id} ISVSVN {isvsvn}: {lv.status}")
    return ModuleEvaluation(True, None, (), f"TDX module {identity.id} ISVSVN {isvsvn} is "
                            "below every module TCB level")


@dataclass(frozen=True)
class IdentityEvaluation:
    ok: bool  # identity matches (signer, product, masks)
    status: str | None  # level status; None = ISVSVN below every level
    advisory_ids: tuple[str, ...]
    reason: str


def check_identity(identity: EnclaveIdentity, report: EnclaveReportBody) -> IdentityEvaluation:
    misc = bytes(a & m for a, m in zip(report.misc_select_raw, identity.miscselect_mask,
                                       strict=True))
    if misc != identity.miscselect:
        return IdentityEvaluation(False, None, (), f"MISCSELECT {report.misc_select_raw.hex()} "
                                  f"under mask {identity.miscselect_mask.hex()} is not "
                                  f"{identity.miscselect.hex()}")
    attrs = bytes(a & m for a, m in zip(report.attributes, identity.attributes_mask,
                                        strict=True))
    if attrs != identity.attributes:
        return IdentityEvaluation(False, None, (), f"attributes {report.attributes.hex()} "
                                  f"under mask {identity.attributes_mask.hex()} are not "
                                  f"{identity.attributes.hex()}")
    if report.mr_signer != identity.mrsigner:
        return IdentityEvaluation(False, None, (), f"MRSIGNER {report.mr_signer.hex()} is not "
                                  f"{identity.mrsigner.hex()}")
    if report.isv_prod_id != identity.isvprodid:
        return IdentityEvaluation(False, None, (), f"ISVPRODID {report.isv_prod_id} is not "
                                  f"{identity.isvprodid}")
    for lv in sorted(identity.levels, key=lambda x: x.isvsvn, reverse=True):
        if report.isv_svn >= lv.isvsvn:
            return IdentityEvaluation(True, lv.status, lv.advisory_ids,
                                      f"{identity.id} ISVSVN {report.isv_svn} matches the level "
                                      f"of {lv.tcb_date[:10]}: {lv.status}")
    return IdentityEvaluation(True, None, (), f"{identity.id} ISVSVN {report.isv_svn} is below "
                              "every TCB level of the identity")
