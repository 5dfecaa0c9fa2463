"""RA-TLS certificate verification, for ``ssl`` servers and clients.

::

    from geode.ratls.verify import RatlsPolicy, RatlsVerifier

    verifier = RatlsVerifier(["collateral/"], policy=RatlsPolicy.from_env(),
                             allow_simulated=False)
    outcome = verifier.verify_der(ssl_object.getpeercert(binary_form=True))
    if not outcome.ok:
        print("refused:", outcome.reason)

Steps (each failure is a refusal with its reason): the certificate parses, is signed by its
own key and is valid now; it carries the tagged-evidence extension (2.23.133.5.4.9; the legacy
1.2.840.113741.1337.6 is accepted with a warning); the ``pubkey-hash`` claim is the hash of
the certificate's SubjectPublicKeyInfo (SHA-256/384/512); the evidence verifies
(:class:`geode.verify.Verifier`: signatures, chains, collateral, TCB); its report data binds
the claims (SGX: ``SHA-256(claims) || 0^32``; TDX/SNP: the Geode construction over it, see
docs/attestation.md); then the policy (:class:`RatlsPolicy`: measurements, TCB statuses,
debug, simulation) and the custom callback, if any.

**The Geode measurement** is what ``RA_TLS_MRENCLAVE`` compares on every backend: MRENCLAVE of
an SGX-format (sim) quote, and the second half of the report data of TDX and SNP evidence
(which the construction binds). TDX and SNP evidence has no MRSIGNER, ISV_PROD_ID or ISV_SVN:
those variables must be ``any`` for it. The TD or guest itself is checked with
``RA_TLS_MRTD``, ``RA_TLS_RTMR0``..``3`` and ``RA_TLS_SNP_MEASUREMENT`` (optional: unset or
``any`` skips them).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.errors import GeodeError
from geode.log import get_logger
from geode.ratls.cert import (
    CBOR_TAG_EVIDENCE,
    CLAIM_CERTS,
    CLAIM_NONCE,
    CLAIM_PUBKEY_HASH,
    HASH_ALGS,
    OID_LEGACY_QUOTE,
    OID_TAGGED_EVIDENCE,
    report_data_for,
    spki_der,
)
from geode.verify.collateral import Collateral
from geode.verify.result import FAILED, PASSED, Check, Policy, VerificationResult

log = get_logger("geode.ratls")

#: SGX-style measurement variables: Gramine requires all four (``any`` skips one)
SGX_VARS = ("RA_TLS_MRENCLAVE", "RA_TLS_MRSIGNER", "RA_TLS_ISV_PROD_ID", "RA_TLS_ISV_SVN")
#: Geode's TDX/SNP counterparts (optional)
TEE_VARS = ("RA_TLS_MRTD", "RA_TLS_RTMR0", "RA_TLS_RTMR1", "RA_TLS_RTMR2", "RA_TLS_RTMR3",
            "RA_TLS_SNP_MEASUREMENT")
FLAG_VARS = {
    "RA_TLS_ALLOW_OUTDATED_TCB_INSECURE": "allow_outdated_tcb",
    "RA_TLS_ALLOW_HW_CONFIG_NEEDED": "allow_hw_config_needed",
    "RA_TLS_ALLOW_SW_HARDENING_NEEDED": "allow_sw_hardening_needed",
    "RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE": "allow_debug",
}

#: a custom policy: given the verified evidence, True/None accepts, False or a reason refuses
PolicyCallback = Callable[["RatlsOutcome"], "bool | str | None"]


def _hex(env: Mapping[str, str], name: str, size: int | None = None) -> str | None:
    value = env.get(name)
    if value is None or value.strip().lower() == "any":
        return None
    text = value.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise GeodeError(f"{name}={value!r} is not hex (or 'any')") from None
    if size is not None and len(raw) != size:
        raise GeodeError(f"{name} is {len(raw)} bytes, expected {size}")
    return text


def _dec(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value.strip().lower() == "any":
        return None
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise GeodeError(f"{name}={value!r} is not a decimal number (or 'any')") from None
    if not 0 <= number <= 0xFFFF:
        raise GeodeError(f"{name}={value!r} is not 0..65535")
    return number


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass
class RatlsPolicy:
    """What a relying party accepts. ``None`` measurement fields are not checked."""

    mr_enclave: str | None = None  #: the Geode measurement (see the module doc)
    mr_signer: str | None = None
    isv_prod_id: int | None = None
    isv_svn_min: int | None = None
    mr_td: str | None = None
    rtmrs: dict[int, str] = field(default_factory=dict)
    snp_measurement: str | None = None
    allow_outdated_tcb: bool = False
    allow_hw_config_needed: bool = False
    allow_sw_hardening_needed: bool = False
    allow_debug: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 require_measurements: bool = True) -> RatlsPolicy:
        """Gramine's ``RA_TLS_*`` variables (and Geode's TDX/SNP ones). As in Gramine, the four
        SGX-style variables must all be set (``any`` skips one) unless ``require_measurements``
        is false (a custom callback decides instead)."""
        env = os.environ if env is None else env
        if require_measurements:
            missing = [n for n in SGX_VARS if n not in env]
            if missing:
                raise GeodeError(f"{', '.join(missing)} not set: set each to a value or 'any' "
                                 "(RA_TLS_MRENCLAVE, RA_TLS_MRSIGNER, RA_TLS_ISV_PROD_ID, "
                                 "RA_TLS_ISV_SVN)")
        policy = cls(
            mr_enclave=_hex(env, "RA_TLS_MRENCLAVE", 32),
            mr_signer=_hex(env, "RA_TLS_MRSIGNER", 32),
            isv_prod_id=_dec(env, "RA_TLS_ISV_PROD_ID"),
            isv_svn_min=_dec(env, "RA_TLS_ISV_SVN"),
            mr_td=_hex(env, "RA_TLS_MRTD", 48),
            snp_measurement=_hex(env, "RA_TLS_SNP_MEASUREMENT", 48),
        )
        for i in range(4):
            value = _hex(env, f"RA_TLS_RTMR{i}", 48)
            if value is not None:
                policy.rtmrs[i] = value
        for var, attr in FLAG_VARS.items():
            setattr(policy, attr, _flag(env, var))
        return policy

    def allowed_tcb_statuses(self) -> set[str]:
        """Intel TCB statuses accepted, from the flags as Gramine combines them."""
        out = {"UpToDate"}
        if self.allow_outdated_tcb:
            out.add("OutOfDate")
        if self.allow_hw_config_needed:
            out.add("ConfigurationNeeded")
        if self.allow_outdated_tcb and self.allow_hw_config_needed:
            out.add("OutOfDateConfigurationNeeded")
        if self.allow_sw_hardening_needed:
            out.add("SWHardeningNeeded")
        if self.allow_hw_config_needed and self.allow_sw_hardening_needed:
            out.add("ConfigurationAndSWHardeningNeeded")
        return out

    def describe(self) -> str:
        parts = [f"mrenclave={self.mr_enclave or 'any'}", f"mrsigner={self.mr_signer or 'any'}",
                 f"isv_prod_id={'any' if self.isv_prod_id is None else self.isv_prod_id}",
                 f"isv_svn>={'any' if self.isv_svn_min is None else self.isv_svn_min}"]
        if self.mr_td:
            parts.append(f"mrtd={self.mr_td}")
        if self.snp_measurement:
            parts.append(f"snp_measurement={self.snp_measurement}")
        parts.append("tcb=" + ",".join(sorted(self.allowed_tcb_statuses())))
        if self.allow_debug:
            parts.append("debug allowed")
        return " ".join(parts)


@dataclass
class RatlsOutcome:
    """The verdict on one RA-TLS certificate."""

    ok: bool = False
    #: why it was refused (the first failing step), or a one-line summary when accepted
    reason: str = ""
    kind: str | None = None  #: "sgx" | "tdx" | "snp"
    legacy: bool = False
    #: the Geode measurement the evidence binds (hex), when known
    measurement: str | None = None
    evidence: bytes = b""
    claims: dict[str, Any] = field(default_factory=dict)
    result: VerificationResult | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def simulated(self) -> bool:
        return bool(self.result and self.result.simulated)

    def field(self, name: str) -> Any:
        """A parsed evidence field (``mr_signer`` and ``isv_svn`` for SGX, ...)."""
        if self.result is None:
            return None
        return self.result.measurements.get(name, self.result.fields.get(name))


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _load_collateral(collateral: Collateral | Iterable[str | os.PathLike[str]] | None
                     ) -> Collateral:
    if collateral is None:
        return Collateral()
    if isinstance(collateral, Collateral):
        return collateral
    paths = [Path(p) for p in collateral]
    for p in paths:
        if not p.exists():
            raise GeodeError("no such collateral file or directory", where=str(p))
    return Collateral.load(paths)


class RatlsVerifier:
    """Verifies RA-TLS certificates against collateral and a policy (thread-safe to share).

    ``collateral``: a :class:`~geode.verify.Collateral` or paths of collateral. Simulation
    root CAs found in it are trusted only with ``allow_simulated``. ``policy`` defaults to
    :meth:`RatlsPolicy.from_env` (without required measurements when ``callback`` is set).
    ``at``: verification time (default: now, at each call).
    """

    def __init__(self, collateral: Collateral | Iterable[str | os.PathLike[str]] | None = None,
                 *, policy: RatlsPolicy | None = None, allow_simulated: bool = False,
                 callback: PolicyCallback | None = None, at: datetime | None = None,
                 expected_nonce: bytes | None = None) -> None:
        from geode.verify import pki
        from geode.verify.verifier import Verifier

        self.collateral = _load_collateral(collateral)
        self.policy = policy if policy is not None else RatlsPolicy.from_env(
            require_measurements=callback is None)
        self.allow_simulated = allow_simulated
        self.callback = callback
        self.at = at
        self.expected_nonce = expected_nonce
        self._sim_roots = [c for c in self.collateral.certificates
                           if pki.is_simulation_cert(c) and pki.is_self_signed(c)]
        self._verifier = Verifier(self.collateral, simulation_roots=self._sim_roots,
                                  allow_simulated=allow_simulated)

    # --- entry points ------------------------------------------------------------------------

    def verify_der(self, cert_der: bytes | None) -> RatlsOutcome:
        """Verify a DER certificate (``getpeercert(binary_form=True)``)."""
        if not cert_der:
            return RatlsOutcome(reason="no client certificate")
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError as e:
            return RatlsOutcome(reason=f"not an X.509 certificate: {e}")
        except Exception as e:  # noqa: BLE001 - fail closed on anything unforeseen
            return RatlsOutcome(
                reason=f"cannot verify the certificate: {e.__class__.__name__}: {e}")
        return self.verify_certificate(cert)

    def verify_certificate(self, cert: x509.Certificate) -> RatlsOutcome:
        out = RatlsOutcome()
        try:
            self._verify(cert, out)
        except Refused as r:
            out.ok = False
            out.reason = r.reason
        except Exception as e:  # noqa: BLE001 - fail closed on anything unforeseen
            out.ok = False
            out.reason = f"cannot verify the certificate: {e.__class__.__name__}: {e}"
        return out

    # --- steps ---------------------------------------------------------------------------------

    def _when(self) -> datetime:
        at = self.at or datetime.now(UTC)
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    def _verify(self, cert: x509.Certificate, out: RatlsOutcome) -> None:
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise Refused("the certificate key is not ECDSA")
        try:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(
                cert.signature_hash_algorithm or hashes.SHA256()))
        except InvalidSignature:
            raise Refused("the certificate is not signed by its own key") from None
        when = self._when()
        nb, na = _validity(cert)
        if not nb <= when <= na:
            raise Refused(f"the certificate is not valid at {when:%Y-%m-%dT%H:%M:%SZ} "
                          f"({nb:%Y-%m-%d} .. {na:%Y-%m-%d})")
        spki = spki_der(key)

        evidence, expected_user_data = self._extract(cert, spki, out)
        out.evidence = evidence
        certs = out.claims.get(CLAIM_CERTS)
        verifier = self._verifier
        if isinstance(certs, bytes) and certs:
            verifier = self._with_certs(certs)
        result = verifier.verify(evidence, when)
        out.kind = result.kind
        out.result = result
        fmt = result.check("format")
        if fmt is None or not fmt.passed:
            raise Refused(f"evidence: {fmt.reason if fmt else 'not recognised'}")
        self._check_binding(result, expected_user_data, out)
        result = result.with_policy(self._policy_for(result))
        result.checks.extend(self._extra_checks(result, out))
        out.result = result
        failures = result.failures()
        if failures:
            first = failures[0]
            raise Refused(f"{first.name}: {first.reason}")
        if self.callback is not None:
            verdict = self.callback(out)
            if verdict is False or isinstance(verdict, str):
                why = verdict if isinstance(verdict, str) else "refused"
                raise Refused(f"custom policy: {why}")
        out.ok = True
        tcb = f", TCB {result.tcb_status}" if result.tcb_status else ""
        out.reason = (f"{result.kind} evidence{tcb}{', SIMULATED' if result.simulated else ''}"
                      f"{', legacy OID' if out.legacy else ''}")

    def _extract(self, cert: x509.Certificate, spki: bytes, out: RatlsOutcome
                 ) -> tuple[bytes, bytes]:
        """(evidence, the user report data it must bind)."""
        exts = {e.oid.dotted_string: e.value for e in cert.extensions}
        tagged = exts.get(OID_TAGGED_EVIDENCE)
        if tagged is not None:
            value = getattr(tagged, "value", b"")
            try:
                obj = cbor2.loads(value)
            except Exception as e:  # noqa: BLE001 - any decoding problem is a refusal
                raise Refused(f"tagged evidence is not CBOR: {e}") from None
            if (not isinstance(obj, cbor2.CBORTag) or obj.tag != CBOR_TAG_EVIDENCE
                    or not isinstance(obj.value, (list, tuple)) or len(obj.value) != 2
                    or not all(isinstance(x, bytes) for x in obj.value)):
                raise Refused(f"tagged evidence is not CBOR tag {CBOR_TAG_EVIDENCE} over "
                              "[bstr evidence, bstr claims]")
            evidence, claims_raw = obj.value
            try:
                claims = cbor2.loads(claims_raw)
            except Exception as e:  # noqa: BLE001
                raise Refused(f"claims are not CBOR: {e}") from None
            if not isinstance(claims, dict):
                raise Refused("claims are not a CBOR map")
            out.claims = claims
            self._check_pubkey_hash(claims, spki)
            nonce = claims.get(CLAIM_NONCE)
            if self.expected_nonce is not None and nonce != self.expected_nonce:
                raise Refused("the nonce claim is not the expected one")
            return bytes(evidence), report_data_for(claims_raw)
        legacy = exts.get(OID_LEGACY_QUOTE)
        if legacy is not None:
            out.legacy = True
            warning = ("certificate uses the legacy RA-TLS OID 1.2.840.113741.1337.6 "
                       "(deprecated; report data = SHA-256 of the public key)")
            out.warnings.append(warning)
            log.warning("%s", warning)
            return bytes(getattr(legacy, "value", b"")), report_data_for(spki)
        raise Refused("no RA-TLS evidence extension (2.23.133.5.4.9 or legacy "
                      "1.2.840.113741.1337.6)")

    @staticmethod
    def _check_pubkey_hash(claims: dict[str, Any], spki: bytes) -> None:
        raw = claims.get(CLAIM_PUBKEY_HASH)
        if not isinstance(raw, bytes):
            raise Refused("no pubkey-hash claim")
        try:
            pair = cbor2.loads(raw)
        except Exception:  # noqa: BLE001
            raise Refused("the pubkey-hash claim is not CBOR") from None
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[1], bytes)
                or pair[0] not in HASH_ALGS):
            raise Refused("the pubkey-hash claim is not [alg 1|7|8, bstr hash]")
        digest = hashlib.new(HASH_ALGS[pair[0]], spki).digest()
        if digest != pair[1]:
            raise Refused("the pubkey-hash claim does not match the certificate's public key")

    def _with_certs(self, pem: bytes) -> Any:
        from geode.verify import pki
        from geode.verify.verifier import Verifier

        extra = Collateral()
        try:
            for c in pki.load_certificates(pem, "evidence certificates"):
                extra.add_certificate(c)
        except GeodeError as e:
            raise Refused(f"the evidence certificates do not parse: {e}") from None
        return Verifier(self.collateral.merged(extra), simulation_roots=self._sim_roots,
                        allow_simulated=self.allow_simulated)

    @staticmethod
    def _check_binding(result: VerificationResult, user_data: bytes, out: RatlsOutcome) -> None:
        rd = result.report_data
        if result.kind == "sgx":
            out.measurement = result.measurements.get("mr_enclave")
            ok = rd == user_data
        else:
            from geode.tee.tsm import report_data

            measurement = rd[32:64]
            out.measurement = measurement.hex()
            ok = len(rd) == 64 and rd == report_data(measurement, user_data)
        if not ok:
            what = "the public key" if out.legacy else "the claims"
            raise Refused(f"report_data does not bind {what} (evidence made for another "
                          "certificate)")

    def _policy_for(self, result: VerificationResult) -> Policy:
        p = self.policy
        sgx = result.kind == "sgx"
        return Policy(
            mr_enclave=p.mr_enclave if sgx else None,
            mr_signer=p.mr_signer if sgx else None,
            isv_prod_id=p.isv_prod_id if sgx else None,
            isv_svn_min=p.isv_svn_min if sgx else None,
            mr_td=p.mr_td, rtmrs=p.rtmrs or None, snp_measurement=p.snp_measurement,
            allowed_tcb_statuses=p.allowed_tcb_statuses(),
            allow_debug=p.allow_debug, allow_simulated=self.allow_simulated,
        )

    def _extra_checks(self, result: VerificationResult, out: RatlsOutcome) -> list[Check]:
        """TDX/SNP: the Geode measurement, and SGX-only variables that cannot apply."""
        if result.kind == "sgx":
            return []
        p = self.policy
        checks: list[Check] = []
        for name, value in (("RA_TLS_MRSIGNER", p.mr_signer),
                            ("RA_TLS_ISV_PROD_ID", p.isv_prod_id),
                            ("RA_TLS_ISV_SVN", p.isv_svn_min)):
            if value is not None:
                checks.append(Check("policy.sgx_only", FAILED, f"{name} is set but "
                                    f"{result.kind} evidence has no such field (use 'any')"))
        if p.mr_enclave is not None:
            ok = out.measurement == p.mr_enclave
            checks.append(Check("policy.mr_enclave", PASSED if ok else FAILED,
                                f"Geode measurement is {out.measurement}"
                                + ("" if ok else f", expected {p.mr_enclave}")))
        return checks


def _validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    nb = getattr(cert, "not_valid_before_utc", None)
    na = getattr(cert, "not_valid_after_utc", None)
    if nb is None or na is None:  # cryptography < 42
        nb = cert.not_valid_before.replace(tzinfo=UTC)
        na = cert.not_valid_after.replace(tzinfo=UTC)
    return nb, na
