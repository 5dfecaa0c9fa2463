"""Intel DCAP ECDSA quotes: SGX version 3, TDX version 4 and 5 (pure parsing, no crypto).

Layouts (absolute offsets, integers little-endian; Intel "SGX ECDSA Quote Library API"
and "TDX DCAP Quoting Library API", confirmed on the vectors in shared/vectors)::

    header (48)      version u16, att_key_type u16, tee_type u32 (v3: 0), qe_svn u16
                     (v4+: reserved), pce_svn u16 (v4+: reserved), qe_vendor_id 16, user_data 20
    v5 only          body_type u16 (1 SGX, 2 TD 1.0, 3 TD 1.5), body_size u32
    body             SGX enclave report 384 | TD report 1.0 584 | TD report 1.5 648
    sig_data_len u32 then signature data:
        v3           signature 64 (r||s, big-endian), attestation key 64 (x||y), QE report 384,
                     QE report signature 64, auth_len u16, auth data, cert type u16, size u32, data
        v4/v5        signature 64, attestation key 64, cert type u16 = 6, size u32, then the
                     QE report certification data: QE report, signature, auth data, and an
                     inner certification data (type 5: PEM PCK chain)

The ISV signature covers everything before ``sig_data_len``. Parsing is strict: every size
must be consistent and no byte may follow the signature data unless ``allow_trailing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geode.errors import FormatError
from geode.verify.binary import Reader

HEADER_SIZE = 48
SGX_REPORT_BODY_SIZE = 384
TD10_REPORT_BODY_SIZE = 584
TD15_REPORT_BODY_SIZE = 648

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
_BODY_SIZES = {BODY_TYPE_SGX: SGX_REPORT_BODY_SIZE, BODY_TYPE_TD10: TD10_REPORT_BODY_SIZE,
               BODY_TYPE_TD15: TD15_REPORT_BODY_SIZE}

CERT_TYPE_NAMES = {
    1: "PPID in plain text, CPUSVN, PCESVN",
    2: "PPID encrypted with RSA-2048, CPUSVN, PCESVN",
    3: "PPID encrypted with RSA-3072, CPUSVN, PCESVN",
    4: "PCK leaf certificate",
    5: "PCK certificate chain (PEM)",
    6: "QE report certification data",
    7: "platform manifest",
}
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6

# SGX enclave report body (384 B) field offsets, relative to the body.
_SGX_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("cpu_svn", 0, 16), ("misc_select", 16, 4), ("isv_ext_prod_id", 32, 16),
    ("attributes", 48, 16), ("mr_enclave", 64, 32), ("mr_signer", 128, 32),
    ("config_id", 192, 64), ("isv_prod_id", 256, 2), ("isv_svn", 258, 2),
    ("config_svn", 260, 2), ("isv_family_id", 304, 16), ("report_data", 320, 64),
)

# TD report body field offsets (TD 1.0 is the first 584 B of TD 1.5).
_TD_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("tee_tcb_svn", 0, 16), ("mr_seam", 16, 48), ("mr_signer_seam", 64, 48),
    ("seam_attributes", 112, 8), ("td_attributes", 120, 8), ("xfam", 128, 8),
    ("mr_td", 136, 48), ("mr_config_id", 184, 48), ("mr_owner", 232, 48),
    ("mr_owner_config", 280, 48), ("rtmr0", 328, 48), ("rtmr1", 376, 48),
    ("rtmr2", 424, 48), ("rtmr3", 472, 48), ("report_data", 520, 64),
)
_TD15_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("tee_tcb_svn2", 584, 16), ("mr_service_td", 600, 48),
)

SGX_FLAG_DEBUG = 0x02
TD_ATTR_DEBUG = 0x01


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    raw: bytes


@dataclass(frozen=True)
class EnclaveReportBody:
    """An SGX REPORT body (the ISV enclave's in an SGX quote, or the QE's)."""

    raw: bytes
    offset: int

    @property
    def cpu_svn(self) -> bytes:
        return self.raw[0:16]

    @property
    def misc_select_raw(self) -> bytes:
        return self.raw[16:20]

    @property
    def misc_select(self) -> int:
        return int.from_bytes(self.raw[16:20], "little")

    @property
    def attributes(self) -> bytes:
        return self.raw[48:64]

    @property
    def flags(self) -> int:
        return int.from_bytes(self.raw[48:56], "little")

    @property
    def xfrm(self) -> int:
        return int.from_bytes(self.raw[56:64], "little")

    @property
    def mr_enclave(self) -> bytes:
        return self.raw[64:96]

    @property
    def mr_signer(self) -> bytes:
        return self.raw[128:160]

    @property
    def isv_prod_id(self) -> int:
        return int.from_bytes(self.raw[256:258], "little")

    @property
    def isv_svn(self) -> int:
        return int.from_bytes(self.raw[258:260], "little")

    @property
    def report_data(self) -> bytes:
        return self.raw[320:384]

    @property
    def debug(self) -> bool:
        return bool(self.flags & SGX_FLAG_DEBUG)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, off, size in _SGX_FIELDS:
            value = self.raw[off:off + size]
            out[name] = int.from_bytes(value, "little") if size == 2 else value.hex()
        return out


@dataclass(frozen=True)
class TdReportBody:
    """A TD report body, TDX 1.0 (584 B) or 1.5 (648 B)."""

    raw: bytes
    offset: int

    def get(self, name: str) -> bytes:
        for fname, off, size in _TD_FIELDS + _TD15_FIELDS:
            if fname == name:
                if off + size > len(self.raw):
                    raise KeyError(name)
                return self.raw[off:off + size]
        raise KeyError(name)

    @property
    def is_td15(self) -> bool:
        return len(self.raw) == TD15_REPORT_BODY_SIZE

    @property
    def tee_tcb_svn(self) -> bytes:
        return self.raw[0:16]

    @property
    def mr_seam(self) -> bytes:
        return self.raw[16:64]

    @property
    def mr_signer_seam(self) -> bytes:
        return self.raw[64:112]

    @property
    def seam_attributes(self) -> bytes:
        return self.raw[112:120]

    @property
    def td_attributes(self) -> bytes:
        return self.raw[120:128]

    @property
    def mr_td(self) -> bytes:
        return self.raw[136:184]

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.raw[328:376], self.raw[376:424], self.raw[424:472], self.raw[472:520])

    @property
    def report_data(self) -> bytes:
        return self.raw[520:584]

    @property
    def debug(self) -> bool:
        return bool(self.raw[120] & TD_ATTR_DEBUG)

    def fields(self) -> dict[str, Any]:
        fields = _TD_FIELDS + (_TD15_FIELDS if self.is_td15 else ())
        return {name: self.raw[off:off + size].hex() for name, off, size in fields}


@dataclass(frozen=True)
class CertificationData:
    cert_type: int
    data: bytes
    offset: int  # absolute offset of the type field

    @property
    def type_name(self) -> str:
        return CERT_TYPE_NAMES.get(self.cert_type, "unknown")

    def pem_chain(self) -> bytes:
        """The type-5 PEM chain without the NUL padding some quoting libraries append."""
        return self.data.rstrip(b"\x00")


@dataclass(frozen=True)
class QuoteSignatureData:
    signature: bytes  # r || s, big-endian, 64 B
    attestation_key: bytes  # x || y, 64 B
    qe_report: EnclaveReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification: CertificationData  # type 5 (or whatever the quote carries) after the QE data
    outer_cert_type: int | None  # v4/v5: 6; v3: None


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body_type: int  # BODY_TYPE_*
    body: EnclaveReportBody | TdReportBody
    signed_data: bytes  # header (+ v5 descriptor) + body: what the attestation key signs
    signature_data_len: int
    signature: QuoteSignatureData
    size: int  # bytes consumed; trailing bytes after it were allowed by the caller
    trailing: int

    @property
    def kind(self) -> str:
        return "tdx" if self.header.tee_type == TEE_TYPE_TDX else "sgx"

    @property
    def sgx_body(self) -> EnclaveReportBody:
        assert isinstance(self.body, EnclaveReportBody)
        return self.body

    @property
    def td_body(self) -> TdReportBody:
        assert isinstance(self.body, TdReportBody)
        return self.body

    @property
    def report_data(self) -> bytes:
        return self.body.report_data

    def fields(self) -> dict[str, Any]:
        """Every parsed field, hex for byte strings (what ``geode quote view --json`` shows)."""
        h = self.header
        out: dict[str, Any] = {
            "kind": self.kind,
            "version": h.version,
            "att_key_type": h.att_key_type,
            "tee_type": f"0x{h.tee_type:08x}",
        }
        if h.version == 3:
            out["qe_svn"] = h.qe_svn
            out["pce_svn"] = h.pce_svn
        out["qe_vendor_id"] = h.qe_vendor_id.hex()
        out["user_data"] = h.user_data.hex()
        if h.version >= 5:
            out["body_type"] = self.body_type
        out.update(self.body.fields())
        sig = self.signature
        out["attestation_key"] = sig.attestation_key.hex()
        qe = sig.qe_report
        out["qe_report"] = {
            "cpu_svn": qe.cpu_svn.hex(), "misc_select": qe.misc_select_raw.hex(),
            "attributes": qe.attributes.hex(), "mr_enclave": qe.mr_enclave.hex(),
            "mr_signer": qe.mr_signer.hex(), "isv_prod_id": qe.isv_prod_id,
            "isv_svn": qe.isv_svn, "report_data": qe.report_data.hex(),
        }
        out["qe_auth_data"] = sig.qe_auth_data.hex()
        out["certification_data_type"] = sig.certification.cert_type
        out["certification_data_size"] = len(sig.certification.data)
        if self.trailing:
            out["trailing_bytes"] = self.trailing
        return out


def looks_like_quote(data: bytes) -> bool:
    """Cheap content sniffing: a DCAP quote header (version 3-5, ECDSA key type)."""
    if len(data) < HEADER_SIZE:
        return False
    version = int.from_bytes(data[0:2], "little")
    key_type = int.from_bytes(data[2:4], "little")
    return version in (3, 4, 5) and key_type in (2, 3)


def _header(r: Reader) -> QuoteHeader:
    raw = r.data[0:HEADER_SIZE]
    version = r.u16("header.version")
    if version not in (3, 4, 5):
        raise FormatError(f"quote: header.version {version} at offset 0 is not supported "
                          "(3 = SGX, 4/5 = SGX or TDX)")
    att_key_type = r.u16("header.att_key_type")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise FormatError(f"quote: header.att_key_type {att_key_type} at offset 2 is not "
                          "supported (2 = ECDSA-256-with-P-256)")
    tee_type = r.u32("header.tee_type")
    if version == 3 and tee_type != TEE_TYPE_SGX:
        raise FormatError(f"quote: header.tee_type 0x{tee_type:08x} at offset 4 must be 0 in a "
                          "version 3 (SGX) quote")
    if tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
        raise FormatError(f"quote: header.tee_type 0x{tee_type:08x} at offset 4 is neither "
                          "SGX (0x00000000) nor TDX (0x00000081)")
    qe_svn = r.u16("header.qe_svn")
    pce_svn = r.u16("header.pce_svn")
    qe_vendor_id = r.bytes(16, "header.qe_vendor_id")
    user_data = r.bytes(20, "header.user_data")
    return QuoteHeader(version, att_key_type, tee_type, qe_svn, pce_svn, qe_vendor_id,
                       user_data, raw)


def _cert_data(r: Reader, what: str) -> CertificationData:
    offset = r.pos
    cert_type = r.u16(f"{what}.type")
    size = r.u32(f"{what}.size")
    if size > r.remaining():
        raise FormatError(f"quote: {what}.size {size} at offset {offset + 2} exceeds the "
                          f"{r.remaining()} bytes left in the signature data")
    data = r.bytes(size, f"{what}.data")
    return CertificationData(cert_type, data, offset)


def _qe_part(r: Reader) -> tuple[EnclaveReportBody, bytes, bytes]:
    qe_off = r.pos
    qe_report = EnclaveReportBody(r.bytes(SGX_REPORT_BODY_SIZE, "qe_report"), qe_off)
    qe_sig = r.bytes(64, "qe_report_signature")
    auth_off = r.pos
    auth_len = r.u16("qe_auth_data.size")
    if auth_len > r.remaining():
        raise FormatError(f"quote: qe_auth_data.size {auth_len} at offset {auth_off} exceeds "
                          f"the {r.remaining()} bytes left in the signature data")
    auth = r.bytes(auth_len, "qe_auth_data")
    return qe_report, qe_sig, auth


def parse_quote(data: bytes, *, allow_trailing: bool = False) -> Quote:
    """Parse a DCAP quote; raise :class:`FormatError` naming the field and offset."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError("quote: expected bytes")
    data = bytes(data)
    r = Reader(data, "quote")
    header = _header(r)

    if header.version == 5:
        desc_off = r.pos
        body_type = r.u16("body_descriptor.type")
        body_size = r.u32("body_descriptor.size")
        expected = _BODY_SIZES.get(body_type)
        if expected is None:
            raise FormatError(f"quote: body_descriptor.type {body_type} at offset {desc_off} "
                              "is not supported (1 SGX, 2 TD 1.0, 3 TD 1.5)")
        if body_size != expected:
            raise FormatError(f"quote: body_descriptor.size {body_size} at offset "
                              f"{desc_off + 2} does not match body type {body_type} "
                              f"({expected} bytes)")
        if (body_type == BODY_TYPE_SGX) != (header.tee_type == TEE_TYPE_SGX):
            raise FormatError(f"quote: body_descriptor.type {body_type} at offset {desc_off} "
                              f"does not match header.tee_type 0x{header.tee_type:08x}")
    else:
        body_type = BODY_TYPE_SGX if header.tee_type == TEE_TYPE_SGX else BODY_TYPE_TD10

    body_off = r.pos
    body_raw = r.bytes(_BODY_SIZES[body_type], "report_body")
    body: EnclaveReportBody | TdReportBody
    if body_type == BODY_TYPE_SGX:
        body = EnclaveReportBody(body_raw, body_off)
    else:
        body = TdReportBody(body_raw, body_off)
    signed_data = data[:r.pos]

    len_off = r.pos
    sig_len = r.u32("signature_data_len")
    if sig_len > r.remaining():
        raise FormatError(f"quote: signature_data_len {sig_len} at offset {len_off} exceeds "
                          f"the {r.remaining()} bytes that follow")
    sig_end = r.pos + sig_len
    s = Reader(data[:sig_end], "quote", r.pos)
    signature = s.bytes(64, "signature")
    att_key = s.bytes(64, "attestation_key")
    outer_type: int | None = None
    if header.version == 3:
        qe_report, qe_sig, auth = _qe_part(s)
        cert = _cert_data(s, "certification_data")
    else:
        outer = _cert_data(s, "certification_data")
        outer_type = outer.cert_type
        if outer.cert_type != CERT_TYPE_QE_REPORT:
            raise FormatError(f"quote: certification_data.type {outer.cert_type} at offset "
                              f"{outer.offset} must be 6 (QE report certification data) in a "
                              f"version {header.version} quote")
        inner = Reader(data[:outer.offset + 6 + len(outer.data)], "quote", outer.offset + 6)
        qe_report, qe_sig, auth = _qe_part(inner)
        cert = _cert_data(inner, "qe_certification_data")
        if inner.remaining():
            raise FormatError(f"quote: {inner.remaining()} unexpected bytes at offset "
                              f"{inner.pos} after the QE certification data")
    if s.remaining():
        raise FormatError(f"quote: {s.remaining()} unexpected bytes at offset {s.pos} between "
                          "the certification data and the end of the signature data")
    trailing = len(data) - sig_end
    if trailing and not allow_trailing:
        raise FormatError(f"quote: {trailing} trailing bytes at offset {sig_end} after the "
                          "signature data")
    sig = QuoteSignatureData(signature, att_key, qe_report, qe_sig, auth, cert, outer_type)
    return Quote(header, body_type, body, signed_data, sig_len, sig, sig_end, trailing)
