"""X.509 for attestation: loading, chain building to a pinned root, CRLs, vendor extensions.

Trust never comes from the evidence or the collateral: a chain is accepted only when it ends
at one of the caller's :class:`Anchor` certificates (by default the roots pinned in
``geode/verify/roots``). Everything else found in quotes or collateral directories is merely
a candidate intermediate.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from geode.errors import FormatError, GeodeError
from geode.verify import der
from geode.verify.result import CheckStatus

_T = TypeVar("_T")

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
AMD_OID_PREFIX = "1.3.6.1.4.1.3704.1."

PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
PEM_CRL_BEGIN = b"-----BEGIN X509 CRL-----"

# Subject OU that marks a Geode simulation certificate (see geode.verify.sim).
SIMULATION_OU = "Geode simulated TEE - NOT SECURE"


# --- loading -----------------------------------------------------------------------------------

def _checked(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Touch every lazily parsed part now, so later use cannot fail on a malformed field."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            _ = cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc
            _ = cert.signature_hash_algorithm, cert.signature_algorithm_parameters
            cert.public_key()
            for _ext in cert.extensions:
                pass
    except Exception as e:  # cryptography's lazy parsing of untrusted DER raises many types
        raise FormatError(f"{what}: malformed certificate ({_first_line(e)})") from None
    return cert


def checked_crl(crl: x509.CertificateRevocationList,
                what: str) -> x509.CertificateRevocationList:
    """Parse every lazily decoded field of a CRL now (see :func:`_checked`)."""
    try:
        crl.issuer.rfc4514_string()
        _ = crl.last_update_utc, crl.next_update_utc, crl.signature_hash_algorithm
        for entry in crl:
            _ = entry.serial_number, entry.revocation_date_utc
        for _ext in crl.extensions:
            pass
    except Exception as e:  # as above
        raise FormatError(f"{what}: malformed CRL ({_first_line(e)})") from None
    return crl


def _quiet_der_cert(data: bytes) -> x509.Certificate:
    # AMD VCEKs have serial number 0, which cryptography flags with a deprecation warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cert = x509.load_der_x509_certificate(data)
    return _checked(cert, "certificate")


def load_pem_certificates(data: bytes, what: str = "PEM") -> list[x509.Certificate]:
    """Every certificate in a PEM blob (order kept); :class:`FormatError` on a bad one."""
    out: list[x509.Certificate] = []
    pos = 0
    while True:
        start = data.find(PEM_CERT_BEGIN, pos)
        if start < 0:
            break
        end = data.find(b"-----END CERTIFICATE-----", start)
        if end < 0:
            raise FormatError(f"{what}: certificate at offset {start} has no END line")
        end += len(b"-----END CERTIFICATE-----")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cert = x509.load_pem_x509_certificate(data[start:end] + b"\n")
        except Exception as e:  # see _checked
            raise FormatError(f"{what}: certificate at offset {start} does not parse "
                              f"({_first_line(e)})") from None
        out.append(_checked(cert, f"{what}: certificate at offset {start}"))
        pos = end
    return out


def load_certificates(data: bytes, what: str = "certificate") -> list[x509.Certificate]:
    """PEM (any number) or a single DER certificate."""
    if PEM_CERT_BEGIN in data:
        return load_pem_certificates(data, what)
    try:
        return [_quiet_der_cert(data)]
    except ValueError as e:
        raise FormatError(f"{what}: not a PEM or DER certificate ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if attrs:
        value = attrs[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return name.rfc4514_string()


def describe(cert: x509.Certificate) -> str:
    return f"'{common_name(cert.subject)}'"


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and issued_by(cert, cert) is None


def is_simulation_cert(cert: x509.Certificate) -> bool:
    return any(a.value == SIMULATION_OU
               for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))


# Signature checks are pure functions of the two objects: memoised by identity (the objects
# are kept in the entry, so their ids cannot be reused while it lives). This is what makes
# repeated verifications against the same loaded collateral cheap.
_MEMO: dict[tuple[str, int, int], tuple[object, object, object]] = {}
_MEMO_MAX = 8192


def _memo(kind: str, a: object, b: object, compute: Callable[[], _T]) -> _T:
    key = (kind, id(a), id(b))
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is a and hit[1] is b:
        return hit[2]  # type: ignore[return-value]
    value = compute()
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[key] = (a, b, value)
    return value


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None when ``issuer`` signed ``cert`` (names and signature); else the reason."""
    return _memo("cert", cert, issuer, lambda: _issued_by(cert, issuer))


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    if cert.issuer != issuer.subject:
        return (f"{describe(cert)} names issuer {common_name(cert.issuer)!r}, "
                f"not {describe(issuer)}")
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return f"the signature of {describe(cert)} does not verify under {describe(issuer)}"
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        return f"cannot check the signature of {describe(cert)}: {_first_line(e)}"
    return None


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    return _memo("crl", crl, issuer, lambda: _crl_signed_by(crl, issuer))


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return False
    try:
        return crl.is_signature_valid(key)
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
        return False


def _fmt_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def validity_error(cert: x509.Certificate, at: datetime) -> str | None:
    if at < cert.not_valid_before_utc:
        return (f"{describe(cert)} is not yet valid at {_fmt_time(at)} (notBefore "
                f"{_fmt_time(cert.not_valid_before_utc)})")
    if at > cert.not_valid_after_utc:
        return (f"{describe(cert)} expired at {_fmt_time(cert.not_valid_after_utc)} "
                f"(verification time {_fmt_time(at)})")
    return None


def _ca_info(cert: x509.Certificate) -> tuple[bool, int | None]:
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return False, None
    assert isinstance(bc, x509.BasicConstraints)
    return bc.ca, bc.path_length


# --- trust anchors and chains ------------------------------------------------------------------

@dataclass(frozen=True)
class Anchor:
    """A trusted root certificate; ``simulated`` marks a Geode simulation root."""

    cert: x509.Certificate
    label: str
    simulated: bool = False

    @property
    def sha256(self) -> str:
        return cert_sha256(self.cert)


# SHA-256 of the DER of every root shipped in geode/verify/roots (published values; see
# shared/vectors/attestation/SOURCES.md section 1). A root file that does not match is refused.
PINNED_SHA256 = {
    "intel_sgx_root_ca.pem": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
    "amd_ark_milan.pem": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "amd_ark_genoa.pem": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "amd_ark_turin.pem": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}


@cache
def _package_roots(prefix: str) -> tuple[x509.Certificate, ...]:
    out: list[x509.Certificate] = []
    folder = resources.files("geode.verify").joinpath("roots")
    for name, digest in sorted(PINNED_SHA256.items()):
        if not name.startswith(prefix):
            continue
        try:
            data = folder.joinpath(name).read_bytes()
        except OSError:
            raise GeodeError(f"pinned root geode/verify/roots/{name} is missing from the "
                             "installation (package data); reinstall Geode") from None
        certs = load_pem_certificates(data, name)
        if len(certs) != 1 or cert_sha256(certs[0]) != digest:
            raise GeodeError(f"pinned root geode/verify/roots/{name} does not have the "
                             f"expected SHA-256 {digest}")
        out.append(certs[0])
    return tuple(out)


def pinned_intel_roots() -> list[Anchor]:
    """The Intel SGX Root CA shipped in the package (sha256 44a0196b...)."""
    return [Anchor(c, f"pinned {common_name(c.subject)}") for c in _package_roots("intel_")]


def pinned_amd_roots() -> list[Anchor]:
    """The AMD ARKs (Milan, Genoa, Turin) shipped in the package."""
    return [Anchor(c, f"pinned {common_name(c.subject)}") for c in _package_roots("amd_")]


@dataclass
class Chain:
    """Result of building ``leaf -> ... -> anchor``; ``error`` is None when it holds."""

    path: list[x509.Certificate]
    anchor: Anchor | None
    error: str | None = None
    simulated: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.anchor is not None

    def names(self) -> str:
        return " -> ".join(describe(c) for c in self.path)


def _check_path(full: list[x509.Certificate], at: datetime) -> str | None:
    """CA constraints of the issuers and validity of every certificate of a full path."""
    for depth, ca_cert in enumerate(full[1:]):
        is_ca, path_len = _ca_info(ca_cert)
        if not is_ca:
            return f"{describe(ca_cert)} issues certificates but is not a CA (basicConstraints)"
        if path_len is not None and depth > path_len:
            return (f"{describe(ca_cert)} allows {path_len} intermediate CAs below it, the "
                    f"chain has {depth}")
    for c in full:
        err = validity_error(c, at)
        if err:
            return err
    return None


def build_chain(leaf: x509.Certificate, pool: Iterable[x509.Certificate],
                anchors: Sequence[Anchor], at: datetime, *, max_depth: int = 4) -> Chain:
    """Link ``leaf`` to an anchor through CA certificates of ``pool``; check validity at ``at``.

    Every candidate path is tried (depth first) until one reaches an anchor with all
    certificates valid at ``at``; otherwise the error of the first attempt is reported.
    Self-signed certificates in the pool are never trusted; a chain that reaches one that is
    not an anchor is reported as ending at an untrusted root.
    """
    pool = list(pool)
    candidates = [c for c in pool if c.issuer != c.subject]
    untrusted_roots = [c for c in pool if c.issuer == c.subject]
    errors: list[Chain] = []

    def dead_end(path: list[x509.Certificate], reasons: list[str]) -> Chain:
        cur = path[-1]
        names = " -> ".join(describe(c) for c in path)
        if reasons:
            return Chain(path, None, reasons[0])
        for r in untrusted_roots:
            if cur.issuer == r.subject and issued_by(cur, r) is None:
                trusted = ", ".join(f"{a.label} (sha256 {a.sha256[:16]}...)" for a in anchors)
                return Chain(path + [r], None,
                             f"chain {names} ends at {describe(r)} (sha256 "
                             f"{cert_sha256(r)[:16]}...), which is not a trusted root; "
                             f"trusted: {trusted or 'none'}")
        if any(cur.issuer == a.cert.subject for a in anchors):
            return Chain(path, None, f"the signature of {describe(cur)} does not verify under "
                         f"the trusted root {common_name(cur.issuer)!r}")
        return Chain(path, None, f"chain {names}: no certificate for issuer "
                     f"{common_name(cur.issuer)!r} and no trusted root issued it")

    def extend(path: list[x509.Certificate]) -> Chain | None:
        cur = path[-1]
        for a in anchors:
            if cur.issuer == a.cert.subject and issued_by(cur, a.cert) is None:
                full = path + [a.cert]
                simulated = a.simulated or any(is_simulation_cert(c) for c in full)
                err = _check_path(full, at)
                chain = Chain(full, a, err, simulated)
                if err is None:
                    return chain
                errors.append(chain)
        if len(path) > max_depth:
            errors.append(Chain(path, None, f"chain longer than {max_depth} certificates"))
            return None
        reasons: list[str] = []
        found = False
        for c in candidates:
            if c.subject != cur.issuer or c in path:
                continue
            why = issued_by(cur, c)
            if why is not None:
                reasons.append(why)
                continue
            found = True
            done = extend(path + [c])
            if done is not None:
                return done
        if not found:
            errors.append(dead_end(path, reasons))
        return None

    result = extend([leaf])
    if result is not None:
        return result
    # prefer an error found on a path that reached an anchor (validity, CA constraints)
    for e in errors:
        if e.anchor is not None:
            return e
    return errors[0] if errors else Chain([leaf], None, "no chain")


# --- CRLs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RevocationStatus:
    status: CheckStatus
    reason: str


def check_revocation(cert: x509.Certificate, issuer: x509.Certificate,
                     crls: Iterable[x509.CertificateRevocationList],
                     at: datetime) -> RevocationStatus:
    """Is ``cert`` revoked according to a CRL of ``issuer`` current at ``at``?

    The newest CRL signed by ``issuer`` with ``thisUpdate <= at`` is used. If it is past its
    ``nextUpdate`` the check fails (expired collateral); if there is none it is not done.
    """
    mine = [c for c in crls if crl_signed_by(c, issuer)]
    issued = [c for c in mine if c.last_update_utc <= at]
    who = common_name(issuer.subject)
    if not issued:
        if mine:
            first = min(c.last_update_utc for c in mine)
            return RevocationStatus("not done", f"no CRL of {who!r} issued by {_fmt_time(at)} "
                                    f"(the loaded ones start {_fmt_time(first)})")
        return RevocationStatus("not done", f"no CRL of {who!r} in the collateral")
    crl = max(issued, key=lambda c: c.last_update_utc)
    next_update = crl.next_update_utc
    if next_update is None or at > next_update:
        until = _fmt_time(next_update) if next_update else "no nextUpdate"
        return RevocationStatus("failed", f"the newest CRL of {who!r} (thisUpdate "
                                f"{_fmt_time(crl.last_update_utc)}) expired: nextUpdate {until} "
                                f"is before {_fmt_time(at)}")
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if revoked is not None:
        return RevocationStatus("failed", f"{describe(cert)} (serial {cert.serial_number:x}) "
                                f"is revoked by the CRL of {who!r} since "
                                f"{_fmt_time(revoked.revocation_date_utc)}")
    return RevocationStatus("passed", f"{describe(cert)} not in the CRL of {who!r} "
                            f"({_fmt_time(crl.last_update_utc)}, {len(crl)} entries)")


# --- Intel SGX PCK extension -------------------------------------------------------------------

@dataclass(frozen=True)
class SgxExtension:
    """The SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1)."""

    ppid: bytes
    tcb_components: tuple[int, ...]  # 16 SGX TCB component SVNs
    pcesvn: int
    cpusvn: bytes
    pceid: bytes
    fmspc: bytes
    sgx_type: int


def sgx_extension_present(cert: x509.Certificate) -> bool:
    return any(e.oid.dotted_string == SGX_EXTENSION_OID for e in cert.extensions)


def sgx_extension(cert: x509.Certificate) -> SgxExtension:
    """Parse the PCK certificate's SGX extension; :class:`FormatError` if absent or bad."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound:
        raise FormatError(f"{describe(cert)} has no SGX extension "
                          f"({SGX_EXTENSION_OID})") from None
    value = ext.value
    assert isinstance(value, x509.UnrecognizedExtension)
    top, _ = der.parse_one(value.value)
    if top.tag != der.TAG_SEQUENCE:
        raise FormatError("SGX extension: not a SEQUENCE")
    items: dict[str, der.Tlv] = {}
    for pair in top.children():
        parts = pair.children()
        if len(parts) != 2:
            raise FormatError(f"SGX extension: entry at offset {pair.offset} is not "
                              "(OID, value)")
        items[parts[0].as_oid()] = parts[1]
    base = SGX_EXTENSION_OID

    def get(sub: str) -> der.Tlv:
        if f"{base}.{sub}" not in items:
            raise FormatError(f"SGX extension: missing {base}.{sub}")
        return items[f"{base}.{sub}"]

    def octets(sub: str, size: int) -> bytes:
        tlv = get(sub)
        if tlv.tag != der.TAG_OCTET_STRING or len(tlv.value) != size:
            raise FormatError(f"SGX extension: {base}.{sub} is not a {size}-byte OCTET STRING")
        return tlv.value

    tcb: dict[str, der.Tlv] = {}
    for pair in get("2").children():
        parts = pair.children()
        if len(parts) != 2:
            raise FormatError(f"SGX extension: TCB entry at offset {pair.offset} is not "
                              "(OID, value)")
        tcb[parts[0].as_oid()] = parts[1]
    comps = []
    for i in range(1, 17):
        key = f"{base}.2.{i}"
        if key not in tcb:
            raise FormatError(f"SGX extension: missing TCB component {key}")
        comps.append(tcb[key].as_int())
    if f"{base}.2.17" not in tcb:
        raise FormatError(f"SGX extension: missing PCESVN {base}.2.17")
    pcesvn = tcb[f"{base}.2.17"].as_int()
    cpusvn_tlv = tcb.get(f"{base}.2.18")
    cpusvn = cpusvn_tlv.value if cpusvn_tlv is not None else bytes(comps)
    return SgxExtension(
        ppid=octets("1", 16), tcb_components=tuple(comps), pcesvn=pcesvn, cpusvn=cpusvn,
        pceid=octets("3", 2), fmspc=octets("4", 6), sgx_type=get("5").as_int(),
    )


def encode_sgx_extension(ppid: bytes, tcb_components: Sequence[int], pcesvn: int,
                         pceid: bytes, fmspc: bytes, sgx_type: int = 0) -> bytes:
    """DER of an SGX extension (for simulated PCK certificates and tests)."""
    base = SGX_EXTENSION_OID

    def pair(oid: str, value: bytes) -> bytes:
        return der.encode(der.TAG_SEQUENCE, der.encode_oid(oid) + value)

    tcb = b"".join(pair(f"{base}.2.{i + 1}", der.encode_int(v))
                   for i, v in enumerate(tcb_components))
    tcb += pair(f"{base}.2.17", der.encode_int(pcesvn))
    tcb += pair(f"{base}.2.18", der.encode(der.TAG_OCTET_STRING, bytes(tcb_components)))
    body = (pair(f"{base}.1", der.encode(der.TAG_OCTET_STRING, ppid))
            + pair(f"{base}.2", der.encode(der.TAG_SEQUENCE, tcb))
            + pair(f"{base}.3", der.encode(der.TAG_OCTET_STRING, pceid))
            + pair(f"{base}.4", der.encode(der.TAG_OCTET_STRING, fmspc))
            + pair(f"{base}.5", der.encode_int(sgx_type, der.TAG_ENUMERATED)))
    return der.encode(der.TAG_SEQUENCE, body)


# --- AMD VCEK / VLEK extensions ----------------------------------------------------------------

@dataclass(frozen=True)
class AmdKeyInfo:
    product_name: str | None
    spl: dict[str, int]  # bl_spl, tee_spl, snp_spl, ucode_spl (+ fmc_spl on Turin)
    hwid: bytes | None
    csp_id: str | None


_AMD_SPL = {"3.1": "bl_spl", "3.2": "tee_spl", "3.3": "snp_spl", "3.8": "ucode_spl",
            "3.9": "fmc_spl"}


def amd_key_info(cert: x509.Certificate) -> AmdKeyInfo:
    """The AMD extensions of a VCEK or VLEK (product, TCB SPLs, hwID, CSP id)."""
    product = None
    hwid = None
    csp = None
    spl: dict[str, int] = {}
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if not oid.startswith(AMD_OID_PREFIX) or not isinstance(ext.value,
                                                                 x509.UnrecognizedExtension):
            continue
        sub = oid[len(AMD_OID_PREFIX):]
        raw = ext.value.value
        if sub in _AMD_SPL:
            tlv, _ = der.parse_one(raw)
            spl[_AMD_SPL[sub]] = tlv.as_int()
        elif sub == "2":
            tlv, _ = der.parse_one(raw)
            product = tlv.value.decode("ascii", errors="replace")
        elif sub == "4":
            hwid = raw
        elif sub == "5":
            tlv, _ = der.parse_one(raw)
            csp = tlv.value.decode("ascii", errors="replace")
    return AmdKeyInfo(product, spl, hwid, csp)


def ecdsa_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FormatError(f"{describe(cert)}: public key is not ECDSA")
    return key


__all__ = [
    "Anchor", "AmdKeyInfo", "Chain", "RevocationStatus", "SgxExtension", "amd_key_info",
    "build_chain", "cert_sha256", "check_revocation", "common_name", "crl_signed_by",
    "describe", "ecdsa_public_key", "encode_sgx_extension", "is_self_signed",
    "is_simulation_cert", "issued_by", "load_certificates", "load_pem_certificates",
    "pinned_amd_roots", "pinned_intel_roots", "sgx_extension", "validity_error",
]
