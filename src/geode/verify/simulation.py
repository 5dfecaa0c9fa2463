"""A DCAP-style quoting authority in software: root CA, PCK chain, TCB signing, collateral.

This is what Geode's ``sim`` backend uses to emit ECDSA quotes (and what the tests use as a
throwaway CA): it produces byte-exact DCAP quotes (v3 SGX, v4/v5 SGX or TDX) signed by an
attestation key, a QE report bound to that key and signed by a PCK key, a type-5 PEM PCK
chain, and the matching collateral (TCB info, QE identity, root and PCK CRLs), all signed
with its own keys. With ``simulated=True`` (the default) everything carries the simulation
markers of :mod:`geode.verify.sim`, so verifiers refuse it unless simulation is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from geode.verify import pki
from geode.verify.quote import (
    BODY_TYPE_SGX,
    BODY_TYPE_TD10,
    BODY_TYPE_TD15,
    INTEL_QE_VENDOR_ID,
    SGX_REPORT_BODY_SIZE,
    TD10_REPORT_BODY_SIZE,
    TD15_REPORT_BODY_SIZE,
    TEE_TYPE_SGX,
    TEE_TYPE_TDX,
)
from geode.verify.sim import SIM_QE_VENDOR_ID

SIM_FMSPC = bytes.fromhex("00906ea10000")
QE_MR_SIGNER = bytes(32)  # the simulated QE's MRSIGNER (zero: nobody signs it)
QE_ISV_PROD_ID = 1
TD_QE_ISV_PROD_ID = 2


def _rs(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)[1:]


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sgx_report_body(*, mr_enclave: bytes = bytes(32), mr_signer: bytes = bytes(32),
                    isv_prod_id: int = 0, isv_svn: int = 0, report_data: bytes = bytes(64),
                    attributes: bytes | None = None, cpu_svn: bytes = bytes(16),
                    misc_select: int = 0, debug: bool = False) -> bytes:
    """A 384-byte SGX REPORT body with the given identity fields."""
    body = bytearray(SGX_REPORT_BODY_SIZE)
    body[0:16] = cpu_svn
    body[16:20] = misc_select.to_bytes(4, "little")
    if attributes is None:
        flags = 0x05 | (0x02 if debug else 0)  # INIT | MODE64 (| DEBUG)
        attributes = flags.to_bytes(8, "little") + (0x03).to_bytes(8, "little")
    body[48:64] = attributes
    body[64:96] = mr_enclave
    body[128:160] = mr_signer
    body[256:258] = isv_prod_id.to_bytes(2, "little")
    body[258:260] = isv_svn.to_bytes(2, "little")
    body[320:384] = report_data.ljust(64, b"\x00")[:64]
    return bytes(body)


def td_report_body(*, mr_td: bytes = bytes(48), rtmrs: Sequence[bytes] = (),
                   report_data: bytes = bytes(64), tee_tcb_svn: bytes | None = None,
                   td_attributes: bytes = bytes(8), td15: bool = False) -> bytes:
    """A TD report body (584 B, or 648 B for TDX 1.5)."""
    body = bytearray(TD15_REPORT_BODY_SIZE if td15 else TD10_REPORT_BODY_SIZE)
    body[0:16] = tee_tcb_svn if tee_tcb_svn is not None else bytes([1, 1] + [0] * 14)
    body[120:128] = td_attributes
    body[136:184] = mr_td
    for i, rtmr in enumerate(rtmrs):
        body[328 + 48 * i:376 + 48 * i] = rtmr
    body[520:584] = report_data.ljust(64, b"\x00")[:64]
    return bytes(body)


@dataclass
class QuotingAuthority:
    """Keys and certificates of a software quoting authority (see module doc)."""

    simulated: bool = True
    name: str = "Geode Simulated"
    fmspc: bytes = SIM_FMSPC
    pceid: bytes = b"\x00\x00"
    tcb_components: tuple[int, ...] = (1,) * 16
    pcesvn: int = 1
    qe_svn: int = 1
    not_before: datetime = field(default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    not_after: datetime = field(default_factory=lambda: datetime(2049, 12, 31, tzinfo=UTC))
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    platform_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    pck_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    tcb_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    attestation_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.root_cert = self._cert(f"{self.name} SGX Root CA", self.root_key, None, ca=True)
        self.platform_cert = self._cert(f"{self.name} SGX PCK Platform CA", self.platform_key,
                                        (self.root_cert, self.root_key), ca=True, path_len=0)
        self.tcb_cert = self._cert(f"{self.name} SGX TCB Signing", self.tcb_key,
                                   (self.root_cert, self.root_key), ca=False)
        ext = pki.encode_sgx_extension(hashlib.sha256(_point(self.pck_key)).digest()[:16],
                                       self.tcb_components, self.pcesvn, self.pceid,
                                       self.fmspc)
        self.pck_cert = self._cert(f"{self.name} SGX PCK Certificate", self.pck_key,
                                   (self.platform_cert, self.platform_key), ca=False,
                                   sgx_extension=ext)

    def _name(self, cn: str) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn),
                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Geode")]
        if self.simulated:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, pki.SIMULATION_OU))
        return x509.Name(attrs)

    def _cert(self, cn: str, key: ec.EllipticCurvePrivateKey,
              issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, ca: bool,
              path_len: int | None = None, sgx_extension: bytes | None = None
              ) -> x509.Certificate:
        subject = self._name(cn)
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(issuer[0].subject if issuer else subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(self.not_before)
                   .not_valid_after(self.not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len),
                                  critical=True))
        if sgx_extension is not None:
            builder = builder.add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier(pki.SGX_EXTENSION_OID), sgx_extension), critical=False)
        signer = issuer[1] if issuer else key
        return builder.sign(signer, hashes.SHA256())

    # --- evidence ------------------------------------------------------------------------------

    @property
    def vendor_id(self) -> bytes:
        return SIM_QE_VENDOR_ID if self.simulated else INTEL_QE_VENDOR_ID

    def pck_chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (self.pck_cert, self.platform_cert, self.root_cert))

    def qe_report(self, auth_data: bytes, *, tdx: bool = False, bind: bool = True) -> bytes:
        digest = hashlib.sha256(_point(self.attestation_key) + auth_data).digest()
        if not bind:
            digest = hashlib.sha256(b"not the attestation key" + auth_data).digest()
        return sgx_report_body(
            mr_signer=QE_MR_SIGNER, isv_prod_id=TD_QE_ISV_PROD_ID if tdx else QE_ISV_PROD_ID,
            isv_svn=self.qe_svn, report_data=digest + bytes(32),
            attributes=(0x15).to_bytes(8, "little") + (0xE7).to_bytes(8, "little"),
            cpu_svn=bytes(self.tcb_components))

    def quote(self, body: bytes, *, version: int = 3, user_data: bytes = bytes(20),
              auth_data: bytes = bytes(range(32)), bind: bool = True,
              cert_data: tuple[int, bytes] | None = None) -> bytes:
        """A signed DCAP quote around ``body`` (384 B SGX, 584/648 B TD report)."""
        tdx = len(body) != SGX_REPORT_BODY_SIZE
        if version == 3 and tdx:
            raise ValueError("version 3 quotes are SGX only")
        if len(body) == TD15_REPORT_BODY_SIZE and version < 5:
            raise ValueError("TD 1.5 report bodies need a version 5 quote")
        tee = TEE_TYPE_TDX if tdx else TEE_TYPE_SGX
        header = (version.to_bytes(2, "little") + (2).to_bytes(2, "little")
                  + tee.to_bytes(4, "little")
                  + (self.qe_svn if version == 3 else 0).to_bytes(2, "little")
                  + (self.pcesvn if version == 3 else 0).to_bytes(2, "little")
                  + self.vendor_id + user_data.ljust(20, b"\x00")[:20])
        if version == 5:
            body_type = (BODY_TYPE_SGX if not tdx else
                         BODY_TYPE_TD15 if len(body) == TD15_REPORT_BODY_SIZE else BODY_TYPE_TD10)
            header += body_type.to_bytes(2, "little") + len(body).to_bytes(4, "little")
        signed = header + body
        qe = self.qe_report(auth_data, tdx=tdx, bind=bind)
        ctype, cdata = cert_data if cert_data is not None else (5, self.pck_chain_pem())
        qe_part = (qe + _rs(self.pck_key, qe) + len(auth_data).to_bytes(2, "little") + auth_data
                   + ctype.to_bytes(2, "little") + len(cdata).to_bytes(4, "little") + cdata)
        sig = _rs(self.attestation_key, signed) + _point(self.attestation_key)
        if version == 3:
            sig += qe_part
        else:
            sig += (6).to_bytes(2, "little") + len(qe_part).to_bytes(4, "little") + qe_part
        return signed + len(sig).to_bytes(4, "little") + sig

    # --- collateral ----------------------------------------------------------------------------

    def sign_json(self, member: str, body: dict[str, object]) -> bytes:
        """``{"<member>":<body>,"signature":"<hex r||s>"}`` signed by the TCB signing key."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        sig = _rs(self.tcb_key, raw).hex()
        return b'{"' + member.encode() + b'":' + raw + b',"signature":"' + sig.encode() + b'"}'

    def tcb_info(self, *, tdx: bool = False, status: str = "UpToDate",
                 advisory_ids: Sequence[str] = (), issue_date: datetime | None = None,
                 next_update: datetime | None = None, extra_levels: Iterable[dict[str, object]]
                 = ()) -> bytes:
        """Signed TCB info v3 whose single level is this authority's TCB, with ``status``."""
        issue = issue_date or self.not_before
        level: dict[str, object] = {"tcb": {
            "sgxtcbcomponents": [{"svn": s} for s in self.tcb_components],
            "pcesvn": self.pcesvn}, "tcbDate": _iso(issue), "tcbStatus": status}
        if tdx:
            level["tcb"]["tdxtcbcomponents"] = [{"svn": 0}] * 16  # type: ignore[index]
        if advisory_ids:
            level["advisoryIDs"] = list(advisory_ids)
        body: dict[str, object] = {
            "id": "TDX" if tdx else "SGX", "version": 3, "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update or self.not_after), "fmspc": self.fmspc.hex(),
            "pceId": self.pceid.hex(), "tcbType": 0, "tcbEvaluationDataNumber": 1,
        }
        if tdx:
            module = {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "ff" * 8}
            body["tdxModule"] = module
            body["tdxModuleIdentities"] = [dict(module, id="TDX_01", tcbLevels=[
                {"tcb": {"isvsvn": 0}, "tcbDate": _iso(issue), "tcbStatus": "UpToDate"}])]
        body["tcbLevels"] = [level, *extra_levels]
        return self.sign_json("tcbInfo", body)

    def qe_identity(self, *, tdx: bool = False, issue_date: datetime | None = None,
                    next_update: datetime | None = None) -> bytes:
        issue = issue_date or self.not_before
        body: dict[str, object] = {
            "id": "TD_QE" if tdx else "QE", "version": 2, "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update or self.not_after), "tcbEvaluationDataNumber": 1,
            "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MR_SIGNER.hex().upper(),
            "isvprodid": TD_QE_ISV_PROD_ID if tdx else QE_ISV_PROD_ID,
            "tcbLevels": [{"tcb": {"isvsvn": self.qe_svn}, "tcbDate": _iso(issue),
                           "tcbStatus": "UpToDate"}],
        }
        return self.sign_json("enclaveIdentity", body)

    def _crl(self, issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey,
             revoked: Iterable[x509.Certificate], this_update: datetime | None,
             next_update: datetime | None) -> bytes:
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(issuer.subject)
                   .last_update(this_update or self.not_before)
                   .next_update(next_update or self.not_after))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(this_update or self.not_before).build())
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def root_crl(self, revoked: Iterable[x509.Certificate] = (), *,
                 this_update: datetime | None = None, next_update: datetime | None = None
                 ) -> bytes:
        return self._crl(self.root_cert, self.root_key, revoked, this_update, next_update)

    def pck_crl(self, revoked: Iterable[x509.Certificate] = (), *,
                this_update: datetime | None = None, next_update: datetime | None = None
                ) -> bytes:
        return self._crl(self.platform_cert, self.platform_key, revoked, this_update,
                         next_update)

    def write_collateral(self, directory: str | os.PathLike[str], *, tdx: bool = False,
                         include_root: bool = True) -> Path:
        """Write TCB info, QE identity, both CRLs and the certificates into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        files = {
            "tcb_info.json": self.tcb_info(tdx=tdx),
            "qe_identity.json": self.qe_identity(tdx=tdx),
            "root_ca.crl": self.root_crl(),
            "pck.crl": self.pck_crl(),
            "tcb_signing_chain.pem": self.tcb_cert.public_bytes(pem)
            + (self.root_cert.public_bytes(pem) if include_root else b""),
        }
        for name, data in files.items():
            (out / name).write_bytes(data)
        return out

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Persist the keys (unencrypted PEM, mode 0600) so the authority can be reloaded."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("root", "platform", "pck", "tcb", "attestation"):
            key: ec.EllipticCurvePrivateKey = getattr(self, f"{name}_key")
            path = out / f"{name}.key.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], **kwargs: object) -> QuotingAuthority:
        """Reload keys written by :meth:`save` (certificates are re-issued deterministically
        from the same keys and parameters, serials aside)."""
        keys = {}
        for name in ("root", "platform", "pck", "tcb", "attestation"):
            key = serialization.load_pem_private_key(
                (Path(directory) / f"{name}.key.pem").read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{name}.key.pem is not an EC key")
            keys[f"{name}_key"] = key
        return cls(**keys, **kwargs)  # type: ignore[arg-type]
