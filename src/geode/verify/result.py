"""Verification results and the policy layer on top of them.

A :class:`VerificationResult` says what the evidence proves (every check, with its reason);
a :class:`Policy` says what the relying party wants (measurements, TCB statuses, debug,
simulation). ``verified`` is True only when every check passed: a check that could not be
done (missing collateral) counts against it, never for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

CheckStatus = Literal["passed", "failed", "not done"]
PASSED: CheckStatus = "passed"
FAILED: CheckStatus = "failed"
NOT_DONE: CheckStatus = "not done"


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "reason": self.reason}


@dataclass
class VerificationResult:
    kind: str  # "sgx" | "tdx" | "snp"
    checks: list[Check] = field(default_factory=list)
    tcb_status: str | None = None
    advisory_ids: list[str] = field(default_factory=list)
    measurements: dict[str, str] = field(default_factory=dict)
    report_data: bytes = b""
    debug: bool = False
    simulated: bool = False
    fields: dict[str, Any] = field(default_factory=dict)  # every parsed field (view)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def add(self, name: str, status: CheckStatus, reason: str) -> Check:
        check = Check(name, status, reason)
        self.checks.append(check)
        return check

    def check(self, name: str) -> Check | None:
        for c in self.checks:
            if c.name == name:
                return c
        return None

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def with_policy(self, policy: Policy) -> VerificationResult:
        """A copy whose checks include the policy's."""
        out = VerificationResult(**{**self.__dict__, "checks": list(self.checks)})
        out.checks.extend(policy.evaluate(self))
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verified": self.verified,
            "kind": self.kind,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "debug": self.debug,
            "simulated": self.simulated,
            "report_data": self.report_data.hex(),
            "measurements": dict(self.measurements),
        }
        for key, value in self.fields.items():
            out.setdefault(key, value)
        out["checks"] = [c.to_dict() for c in self.checks]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _norm_hex(value: str | bytes, name: str) -> str:
    if isinstance(value, bytes):
        return value.hex()
    text = value.strip().lower().removeprefix("0x")
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"policy {name}: {value!r} is not hex") from None
    return text


@dataclass
class Policy:
    """What the relying party expects. ``None`` means "any"."""

    mr_enclave: str | bytes | None = None
    mr_signer: str | bytes | None = None
    isv_prod_id: int | None = None
    isv_svn_min: int | None = None
    mr_td: str | bytes | None = None
    rtmrs: Sequence[str | bytes | None] | Mapping[int, str | bytes] | None = None
    snp_measurement: str | bytes | None = None
    report_data: str | bytes | None = None
    allowed_tcb_statuses: Iterable[str] = field(default_factory=lambda: {"UpToDate"})
    allow_debug: bool = False
    allow_simulated: bool = False

    def _expect(self, result: VerificationResult, name: str, key: str,
                want: str | bytes | None, out: list[Check]) -> None:
        if want is None:
            return
        expected = _norm_hex(want, name)
        actual = result.measurements.get(key)
        if actual is None:
            out.append(Check(f"policy.{name}", FAILED,
                             f"{result.kind} evidence has no {key}"))
        elif actual == expected:
            out.append(Check(f"policy.{name}", PASSED, f"{key} is {expected}"))
        else:
            out.append(Check(f"policy.{name}", FAILED,
                             f"{key} is {actual}, expected {expected}"))

    def evaluate(self, result: VerificationResult) -> list[Check]:
        out: list[Check] = []
        self._expect(result, "mr_enclave", "mr_enclave", self.mr_enclave, out)
        self._expect(result, "mr_signer", "mr_signer", self.mr_signer, out)
        self._expect(result, "mr_td", "mr_td", self.mr_td, out)
        self._expect(result, "snp_measurement", "measurement", self.snp_measurement, out)
        if self.rtmrs is not None:
            items = (self.rtmrs.items() if isinstance(self.rtmrs, Mapping)
                     else enumerate(self.rtmrs))
            for index, want in items:
                self._expect(result, f"rtmr{index}", f"rtmr{index}", want, out)
        for name, want_int in (("isv_prod_id", self.isv_prod_id),):
            if want_int is not None:
                actual = result.fields.get(name)
                ok = actual == want_int
                out.append(Check(f"policy.{name}", PASSED if ok else FAILED,
                                 f"{name} is {actual}" + ("" if ok else f", expected {want_int}")))
        if self.isv_svn_min is not None:
            svn = result.fields.get("isv_svn")
            ok = isinstance(svn, int) and svn >= self.isv_svn_min
            out.append(Check("policy.isv_svn_min", PASSED if ok else FAILED,
                             f"isv_svn is {svn}, minimum {self.isv_svn_min}"))
        if self.report_data is not None:
            want = _norm_hex(self.report_data, "report_data")
            actual = result.report_data.hex()
            ok = actual == want or (len(want) < len(actual) and actual == want.ljust(
                len(actual), "0"))
            out.append(Check("policy.report_data", PASSED if ok else FAILED,
                             "report_data binds the expected value" if ok else
                             f"report_data is {actual}, expected {want}"))
        allowed = set(self.allowed_tcb_statuses)
        if result.kind == "snp":
            out.append(Check("policy.tcb_status", PASSED, "not applicable to SNP (the reported "
                             "TCB is checked against the VCEK/VLEK instead)"))
        elif result.tcb_status is None:
            out.append(Check("policy.tcb_status", FAILED, "no TCB status was established"))
        elif result.tcb_status in allowed:
            out.append(Check("policy.tcb_status", PASSED,
                             f"{result.tcb_status} is allowed ({', '.join(sorted(allowed))})"))
        else:
            out.append(Check("policy.tcb_status", FAILED,
                             f"{result.tcb_status} is not allowed (allowed: "
                             f"{', '.join(sorted(allowed)) or 'none'})"))
        if result.debug and not self.allow_debug:
            out.append(Check("policy.debug", FAILED, "the evidence comes from a debug enclave, "
                             "TD or guest, and debug is not allowed"))
        else:
            out.append(Check("policy.debug", PASSED, "debug allowed" if result.debug
                             else "not a debug enclave, TD or guest"))
        if result.simulated and not self.allow_simulated:
            out.append(Check("policy.simulated", FAILED, "the evidence is simulated (Geode "
                             "software TEE, no hardware protection) and simulation is not "
                             "allowed"))
        else:
            out.append(Check("policy.simulated", PASSED, "simulation allowed" if
                             result.simulated else "hardware evidence"))
        return out
