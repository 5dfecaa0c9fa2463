"""Shared paths and helpers of the attestation verification tests (real vectors, no mocks)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from geode.verify import Collateral, Verifier
from geode.verify.result import VerificationResult

# tests/verify/<file> -> repo -> its parent holds shared/ (CI clones the repo beside shared/)
REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO.parent / "shared" / "vectors" / "attestation"

if not VECTORS.is_dir():  # pragma: no cover - depends on the checkout layout
    pytest.skip(f"attestation vectors not found at {VECTORS}", allow_module_level=True)

SGX01 = VECTORS / "sgx_v3" / "01_oasis_pck_chain"
SGX02 = VECTORS / "sgx_v3" / "02_automata_forge"
SGX04 = VECTORS / "sgx_v3" / "04_oasis_eppid_certtype3"
TDX01 = VECTORS / "tdx_v4" / "01_go-tdx-guest_SPR_E4"
TDX02 = VECTORS / "tdx_v4" / "02_oasis_C0806F"
SNP01 = VECTORS / "snp" / "01_go-sev-guest_milan"
SNP02 = VECTORS / "snp" / "02_trustee_milan_vcek"
ROOTS = VECTORS / "roots"

# Verification times given by SOURCES.md (section 8 and the per-vector source assertions).
AT_SGX01 = datetime.fromtimestamp(1671497404, UTC)  # 2022-12-20T00:50:04Z
AT_SGX02 = datetime.fromtimestamp(1755236700, UTC)  # 2025-08-15T05:45:00Z
AT_TDX01 = datetime.fromtimestamp(1687091776, UTC)  # 2023-06-18T12:36:16Z
AT_TDX02 = datetime.fromtimestamp(1725263032, UTC)  # 2024-09-02T07:43:52Z
AT_SNP = datetime(2024, 1, 1, tzinfo=UTC)

# Collateral each vector is verified with: its own folder plus the roots folder, as the issue
# says; tdx_v4/02 uses sgx_v3/01's TCB issuer chain, as oasis does.
COLLATERAL: dict[str, list[Path]] = {
    "sgx01": [SGX01, ROOTS],
    "sgx02": [SGX02, ROOTS],
    "sgx04": [SGX04, ROOTS],
    "tdx01": [TDX01, ROOTS],
    "tdx02": [TDX02, SGX01 / "tcb_info_issuer_chain.pem", ROOTS],
    "snp01": [SNP01, ROOTS],
    "snp02": [SNP02, ROOTS],
}


@cache
def collateral(name: str) -> Collateral:
    return Collateral.load(COLLATERAL[name])


@cache
def expected_parsed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "expected_parsed.json").read_text())
    return data


def verify(evidence: bytes | Path, name: str, at: datetime, **kwargs: Any) -> VerificationResult:
    data = evidence.read_bytes() if isinstance(evidence, Path) else evidence
    allow_trailing = kwargs.pop("allow_trailing", False)
    return Verifier(collateral(name), **kwargs).verify(data, at, allow_trailing=allow_trailing)


def statuses(result: VerificationResult) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def failed(result: VerificationResult) -> dict[str, str]:
    return {c.name: c.reason for c in result.checks if c.status != "passed"}
