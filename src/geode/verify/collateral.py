"""Verification collateral: Intel TCB info, enclave (QE) identities, CRLs and certificates.

Files are recognised by content, never by name: JSON with a ``tcbInfo``, ``enclaveIdentity``
or ``tcbEvaluationDataNumbers`` member; PEM certificates (one or a chain, also the
URL-encoded form of PCS response headers); PEM or DER CRLs; DER certificates. Anything else
in a directory is listed as ignored. Intel collateral JSON is signed over the exact bytes of
its body object, so the raw span is kept next to the parsed value.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from geode.errors import FormatError
from geode.verify import pki

MAX_COLLATERAL_FILE = 4 << 20

TCB_STATUSES = (
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
)


# --- signed JSON -------------------------------------------------------------------------------

def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def top_level_spans(text: str, what: str) -> dict[str, tuple[int, int, Any]]:
    """Top-level members of a JSON object: name -> (start, end, value), spans into ``text``."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        raise FormatError(f"{what}: not a JSON object")
    i += 1
    out: dict[str, tuple[int, int, Any]] = {}
    try:
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == "}":
            return out
        while True:
            key, i = dec.raw_decode(text, i)
            if not isinstance(key, str):
                raise FormatError(f"{what}: member name at character {i} is not a string")
            i = _skip_ws(text, i)
            if i >= len(text) or text[i] != ":":
                raise FormatError(f"{what}: expected ':' at character {i}")
            start = _skip_ws(text, i + 1)
            value, end = dec.raw_decode(text, start)
            out[key] = (start, end, value)
            i = _skip_ws(text, end)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
                continue
            if i < len(text) and text[i] == "}":
                break
            raise FormatError(f"{what}: expected ',' or '}}' at character {i}")
    except json.JSONDecodeError as e:
        raise FormatError(f"{what}: invalid JSON at character {e.pos}: {e.msg}") from None
    if _skip_ws(text, i + 1) != len(text):
        raise FormatError(f"{what}: data after the JSON object")
    return out


def _signed_body(data: bytes, member: str, what: str) -> tuple[bytes, bytes, dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what}: not UTF-8 at byte {e.start}") from None
    spans = top_level_spans(text, what)
    if member not in spans:
        raise FormatError(f"{what}: no {member!r} member")
    if "signature" not in spans:
        raise FormatError(f"{what}: no 'signature' member")
    start, end, body = spans[member]
    if not isinstance(body, dict):
        raise FormatError(f"{what}: {member!r} is not an object")
    sig_hex = spans["signature"][2]
    sig = _hex(sig_hex, "signature", what, 64)
    return text[start:end].encode("utf-8"), sig, body


def _hex(value: Any, name: str, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{what}: {name} is not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise FormatError(f"{what}: {name} is not hex") from None
    if size is not None and len(raw) != size:
        raise FormatError(f"{what}: {name} has {len(raw)} bytes, expected {size}")
    return raw


def _int(obj: dict[str, Any], name: str, what: str) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"{what}: {name} is not a non-negative integer")
    return value


def _str(obj: dict[str, Any], name: str, what: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise FormatError(f"{what}: {name} is not a string")
    return value


def parse_time(value: Any, name: str, what: str) -> datetime:
    if not isinstance(value, str):
        raise FormatError(f"{what}: {name} is not a date string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(f"{what}: {name} {value!r} is not an ISO-8601 date") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _advisories(obj: dict[str, Any], what: str) -> tuple[str, ...]:
    ids = obj.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
        raise FormatError(f"{what}: advisoryIDs is not a list of strings")
    return tuple(ids)


def _status(obj: dict[str, Any], what: str) -> str:
    status = _str(obj, "tcbStatus", what)
    if status not in TCB_STATUSES:
        raise FormatError(f"{what}: unknown tcbStatus {status!r}")
    return status


# --- TCB info ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleTcbLevel:
    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[ModuleTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    id: str  # "SGX" or "TDX"
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    levels: tuple[TcbLevel, ...]
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    signed_body: bytes
    signature: bytes
    source: str


def _module_identity(obj: Any, what: str, with_levels: bool) -> TdxModuleIdentity:
    if not isinstance(obj, dict):
        raise FormatError(f"{what}: not an object")
    levels: list[ModuleTcbLevel] = []
    if with_levels:
        raw_levels = obj.get("tcbLevels")
        if not isinstance(raw_levels, list):
            raise FormatError(f"{what}: tcbLevels is not a list")
        for i, lv in enumerate(raw_levels):
            w = f"{what} tcbLevels[{i}]"
            if not isinstance(lv, dict) or not isinstance(lv.get("tcb"), dict):
                raise FormatError(f"{w}: no tcb object")
            levels.append(ModuleTcbLevel(_int(lv["tcb"], "isvsvn", w),
                                         str(lv.get("tcbDate", "")), _status(lv, w),
                                         _advisories(lv, w)))
    return TdxModuleIdentity(
        id=str(obj.get("id", "")),
        mrsigner=_hex(obj.get("mrsigner"), "mrsigner", what, 48),
        attributes=_hex(obj.get("attributes"), "attributes", what, 8),
        attributes_mask=_hex(obj.get("attributesMask"), "attributesMask", what, 8),
        levels=tuple(levels),
    )


def _tcb_level(lv: Any, version: int, is_tdx: bool, what: str) -> TcbLevel:
    if not isinstance(lv, dict) or not isinstance(lv.get("tcb"), dict):
        raise FormatError(f"{what}: no tcb object")
    tcb = lv["tcb"]
    if version == 2:
        sgx = tuple(_int(tcb, f"sgxtcbcomp{i:02d}svn", what) for i in range(1, 17))
        tdx = None
    else:
        comps = tcb.get("sgxtcbcomponents")
        if not isinstance(comps, list) or len(comps) != 16:
            raise FormatError(f"{what}: sgxtcbcomponents is not a list of 16")
        sgx = tuple(_int(c, "svn", what) if isinstance(c, dict) else -1 for c in comps)
        if -1 in sgx:
            raise FormatError(f"{what}: sgxtcbcomponents entry is not an object")
        tdx = None
        if is_tdx:
            tcomps = tcb.get("tdxtcbcomponents")
            if not isinstance(tcomps, list) or len(tcomps) != 16:
                raise FormatError(f"{what}: tdxtcbcomponents is not a list of 16")
            tdx = tuple(_int(c, "svn", what) if isinstance(c, dict) else -1 for c in tcomps)
            if -1 in tdx:
                raise FormatError(f"{what}: tdxtcbcomponents entry is not an object")
    return TcbLevel(sgx, _int(tcb, "pcesvn", what), tdx, str(lv.get("tcbDate", "")),
                    _status(lv, what), _advisories(lv, what))


def parse_tcb_info(data: bytes, source: str = "TCB info") -> TcbInfo:
    """Intel TCB info JSON, version 2 (SGX) or 3 (SGX and TDX)."""
    signed, sig, body = _signed_body(data, "tcbInfo", source)
    what = source
    version = _int(body, "version", what)
    if version not in (2, 3):
        raise FormatError(f"{what}: tcbInfo version {version} is not supported (2 or 3)")
    tcb_id = str(body.get("id", "SGX")) if version == 3 else "SGX"
    if tcb_id not in ("SGX", "TDX"):
        raise FormatError(f"{what}: tcbInfo id {tcb_id!r} is neither SGX nor TDX")
    is_tdx = tcb_id == "TDX"
    raw_levels = body.get("tcbLevels")
    if not isinstance(raw_levels, list) or not raw_levels:
        raise FormatError(f"{what}: tcbLevels is not a non-empty list")
    levels = tuple(_tcb_level(lv, version, is_tdx, f"{what} tcbLevels[{i}]")
                   for i, lv in enumerate(raw_levels))
    module = None
    identities: tuple[TdxModuleIdentity, ...] = ()
    if is_tdx:
        if "tdxModule" in body:
            module = _module_identity(body["tdxModule"], f"{what} tdxModule", False)
        raw_ids = body.get("tdxModuleIdentities", [])
        if not isinstance(raw_ids, list):
            raise FormatError(f"{what}: tdxModuleIdentities is not a list")
        identities = tuple(_module_identity(m, f"{what} tdxModuleIdentities[{i}]", True)
                           for i, m in enumerate(raw_ids))
    return TcbInfo(
        id=tcb_id, version=version,
        issue_date=parse_time(body.get("issueDate"), "issueDate", what),
        next_update=parse_time(body.get("nextUpdate"), "nextUpdate", what),
        fmspc=_hex(body.get("fmspc"), "fmspc", what, 6),
        pce_id=_hex(body.get("pceId"), "pceId", what, 2),
        tcb_type=int(body.get("tcbType", 0)) if isinstance(body.get("tcbType", 0), int) else -1,
        tcb_evaluation_data_number=int(body.get("tcbEvaluationDataNumber", 0) or 0),
        levels=levels, tdx_module=module, tdx_module_identities=identities,
        signed_body=signed, signature=sig, source=source,
    )


# --- enclave identity --------------------------------------------------------------------------

@dataclass(frozen=True)
class IdentityLevel:
    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class EnclaveIdentity:
    id: str  # "QE", "TD_QE", "QVE"
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[IdentityLevel, ...]
    signed_body: bytes
    signature: bytes
    source: str


def parse_enclave_identity(data: bytes, source: str = "enclave identity") -> EnclaveIdentity:
    """Intel enclave identity JSON version 2 (QE, TD_QE, QVE)."""
    signed, sig, body = _signed_body(data, "enclaveIdentity", source)
    what = source
    version = _int(body, "version", what)
    if version != 2:
        raise FormatError(f"{what}: enclaveIdentity version {version} is not supported (2)")
    eid = _str(body, "id", what)
    raw_levels = body.get("tcbLevels")
    if not isinstance(raw_levels, list) or not raw_levels:
        raise FormatError(f"{what}: tcbLevels is not a non-empty list")
    levels = []
    for i, lv in enumerate(raw_levels):
        w = f"{what} tcbLevels[{i}]"
        if not isinstance(lv, dict) or not isinstance(lv.get("tcb"), dict):
            raise FormatError(f"{w}: no tcb object")
        levels.append(IdentityLevel(_int(lv["tcb"], "isvsvn", w), str(lv.get("tcbDate", "")),
                                    _status(lv, w), _advisories(lv, w)))
    return EnclaveIdentity(
        id=eid, version=version,
        issue_date=parse_time(body.get("issueDate"), "issueDate", what),
        next_update=parse_time(body.get("nextUpdate"), "nextUpdate", what),
        tcb_evaluation_data_number=int(body.get("tcbEvaluationDataNumber", 0) or 0),
        miscselect=_hex(body.get("miscselect"), "miscselect", what, 4),
        miscselect_mask=_hex(body.get("miscselectMask"), "miscselectMask", what, 4),
        attributes=_hex(body.get("attributes"), "attributes", what, 16),
        attributes_mask=_hex(body.get("attributesMask"), "attributesMask", what, 16),
        mrsigner=_hex(body.get("mrsigner"), "mrsigner", what, 32),
        isvprodid=_int(body, "isvprodid", what),
        levels=tuple(levels), signed_body=signed, signature=sig, source=source,
    )


# --- the collateral store ----------------------------------------------------------------------

@dataclass
class Collateral:
    """Everything loaded from collateral files, ready for any number of verifications."""

    certificates: list[x509.Certificate] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    tcb_infos: list[TcbInfo] = field(default_factory=list)
    identities: list[EnclaveIdentity] = field(default_factory=list)
    recognised: list[tuple[str, str]] = field(default_factory=list)  # (source, what)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    _der_seen: set[bytes] = field(default_factory=set, repr=False)

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]]) -> Collateral:
        c = cls()
        for p in paths:
            c.add_path(Path(p))
        return c

    def merged(self, other: Collateral) -> Collateral:
        out = Collateral()
        for src in (self, other):
            for cert in src.certificates:
                out.add_certificate(cert)
            out.crls.extend(x for x in src.crls if x not in out.crls)
            out.tcb_infos.extend(src.tcb_infos)
            out.identities.extend(src.identities)
            out.recognised.extend(src.recognised)
            out.ignored.extend(src.ignored)
        return out

    def add_path(self, path: Path) -> None:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    self.add_file(Path(root) / name)
        elif path.exists():
            self.add_file(path)
        else:
            raise FormatError(f"{path}: no such file or directory")

    def add_file(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            if size > MAX_COLLATERAL_FILE:
                self.ignored.append((str(path), f"larger than {MAX_COLLATERAL_FILE} bytes"))
                return
            data = path.read_bytes()
        except OSError as e:
            self.ignored.append((str(path), f"unreadable: {e.strerror}"))
            return
        self.add_bytes(data, str(path))

    def add_certificate(self, cert: x509.Certificate) -> bool:
        from cryptography.hazmat.primitives.serialization import Encoding

        raw = cert.public_bytes(Encoding.DER)
        if raw in self._der_seen:
            return False
        self._der_seen.add(raw)
        self.certificates.append(cert)
        return True

    def add_bytes(self, data: bytes, source: str) -> str | None:
        """Recognise ``data`` by content and keep it; return what it was (None: ignored)."""
        kind = self._classify(data, source)
        if kind is None:
            return None
        self.recognised.append((source, kind))
        return kind

    def _classify(self, data: bytes, source: str) -> str | None:
        from geode.verify.quote import looks_like_quote

        stripped = data.lstrip()
        if looks_like_quote(data):
            self.ignored.append((source, "a DCAP quote (evidence, not collateral)"))
            return None
        try:
            if stripped.startswith(b"{"):
                return self._json(data, source)
            head = data[:4096]
            if b"%2D%2D%2D%2D%2DBEGIN" in head or b"-----BEGIN%20" in head:
                data = urllib.parse.unquote_to_bytes(data.strip())
            if pki.PEM_CERT_BEGIN in data or b"-----BEGIN X509 CRL-----" in data:
                return self._pem(data, source)
            return self._der(data, source)
        except FormatError as e:
            self.ignored.append((source, str(e)))
            return None

    def _json(self, data: bytes, source: str) -> str | None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.ignored.append((source, "JSON that is not UTF-8"))
            return None
        spans = top_level_spans(text, source)
        if "tcbInfo" in spans:
            info = parse_tcb_info(data, source)
            self.tcb_infos.append(info)
            return (f"{info.id} TCB info v{info.version} FMSPC {info.fmspc.hex()} "
                    f"(issued {info.issue_date:%Y-%m-%d})")
        if "enclaveIdentity" in spans:
            ident = parse_enclave_identity(data, source)
            self.identities.append(ident)
            return f"{ident.id} identity v{ident.version} (issued {ident.issue_date:%Y-%m-%d})"
        if "qeIdentity" in spans:
            self.ignored.append((source, "QE identity version 1 is not supported (use v2)"))
            return None
        if "tcbEvaluationDataNumbers" in spans:
            return "TCB evaluation data numbers (not used by the verifier)"
        self.ignored.append((source, "JSON without tcbInfo or enclaveIdentity"))
        return None

    def _pem(self, data: bytes, source: str) -> str:
        kinds = []
        certs = pki.load_pem_certificates(data, source)
        for cert in certs:
            self.add_certificate(cert)
        if certs:
            kinds.append(f"{len(certs)} certificate(s): "
                         + ", ".join(pki.describe(c) for c in certs))
        pos = 0
        n = 0
        while True:
            start = data.find(b"-----BEGIN X509 CRL-----", pos)
            if start < 0:
                break
            end = data.find(b"-----END X509 CRL-----", start)
            if end < 0:
                raise FormatError(f"{source}: CRL at offset {start} has no END line")
            end += len(b"-----END X509 CRL-----")
            try:
                crl = x509.load_pem_x509_crl(data[start:end] + b"\n")
            except ValueError:
                raise FormatError(f"{source}: CRL at offset {start} does not parse") from None
            self.crls.append(pki.checked_crl(crl, source))
            n += 1
            pos = end
        if n:
            kinds.append(f"{n} CRL(s)")
        return "; ".join(kinds)

    def _der(self, data: bytes, source: str) -> str | None:
        if not data.startswith(b"\x30"):
            self.ignored.append((source, "not JSON, PEM or DER"))
            return None
        try:
            cert = pki.load_certificates(data, source)[0]
        except FormatError:
            pass
        else:
            self.add_certificate(cert)
            return f"certificate {pki.describe(cert)} (DER)"
        try:
            crl = pki.checked_crl(x509.load_der_x509_crl(data), source)
        except (ValueError, FormatError):
            self.ignored.append((source, "DER that is neither a certificate nor a CRL"))
            return None
        self.crls.append(crl)
        return f"CRL of {pki.common_name(crl.issuer)!r} (DER, {len(crl)} entries)"

    # --- selection -----------------------------------------------------------------------------

    def tcb_infos_for(self, tee: str, fmspc: bytes) -> list[TcbInfo]:
        return [t for t in self.tcb_infos if t.id == tee and t.fmspc == fmspc]

    def identities_for(self, eid: str) -> list[EnclaveIdentity]:
        return [i for i in self.identities if i.id == eid]


def pick_current(items: Sequence[Any], at: datetime) -> Any:
    """The newest item issued by ``at`` (``issue_date``), else the oldest one (for messages)."""
    issued = [i for i in items if i.issue_date <= at]
    if issued:
        return max(issued, key=lambda i: (i.issue_date, i.tcb_evaluation_data_number))
    return min(items, key=lambda i: i.issue_date)
