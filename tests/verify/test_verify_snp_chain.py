"""SEV-SNP verification on a throwaway AMD-style PKI: RSA-PSS ARK/ASK, P-384 VCEK/VLEK, CRL.

The real vectors ship no AMD CRL, so the fully verified path, ASK revocation and the VLEK path
are exercised here with keys made in the test (the same code path as for AMD's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from verify_helpers import ROOTS, failed, statuses

from geode.verify import Collateral, Verifier, parse_snp_report, pki

AT = datetime(2025, 6, 1, tzinfo=UTC)
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2040, 1, 1, tzinfo=UTC)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
CHIP = bytes(range(64))
TCB = {"bl_spl": 3, "tee_spl": 0, "snp_spl": 8, "ucode_spl": 115}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Throwaway Micro Devices")])


def _cert(cn: str, key: object, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
          ca: bool, extensions: list[x509.UnrecognizedExtension] = ()) -> x509.Certificate:
    pub = key.public_key()  # type: ignore[attr-defined]
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(issuer[0].subject if issuer else _name(cn)).public_key(pub)
         .serial_number(x509.random_serial_number()).not_valid_before(START)
         .not_valid_after(END)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if issuer and ca else None),
                        critical=True))
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    signer = issuer[1] if issuer else key
    return b.sign(signer, hashes.SHA384(), rsa_padding=PSS)  # type: ignore[arg-type]


def _amd_ext(sub: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.{sub}"), value)


@dataclass
class Pki:
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate
    vlek_key: ec.EllipticCurvePrivateKey
    vlek: x509.Certificate

    def crl(self, revoked: list[x509.Certificate] = (), next_update: datetime = END) -> bytes:
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
             .last_update(START).next_update(next_update))
        for c in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder()
                                          .serial_number(c.serial_number)
                                          .revocation_date(START).build())
        return b.sign(self.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(
            serialization.Encoding.DER)


def _spl_exts(tcb: dict[str, int]) -> list[x509.UnrecognizedExtension]:
    subs = {"bl_spl": "3.1", "tee_spl": "3.2", "snp_spl": "3.3", "ucode_spl": "3.8"}
    return [_amd_ext(subs[k], bytes([2, 1, v])) for k, v in tcb.items()] + [
        _amd_ext("2", b"\x16\x08Milan-B0")]


@pytest.fixture(scope="module")
def amd() -> Pki:
    ark_key = rsa.generate_private_key(65537, 2048)
    ark = _cert("ARK-Throwaway", ark_key, None, True)
    ask_key = rsa.generate_private_key(65537, 2048)
    ask = _cert("SEV-Throwaway", ask_key, (ark, ark_key), True)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    vcek = _cert("SEV-VCEK", vcek_key, (ask, ask_key), False,
                 _spl_exts(TCB) + [_amd_ext("4", CHIP)])
    vlek_key = ec.generate_private_key(ec.SECP384R1())
    vlek = _cert("SEV-VLEK", vlek_key, (ask, ask_key), False,
                 _spl_exts(TCB) + [_amd_ext("5", b"\x16\x04test")])
    return Pki(ark_key, ark, ask_key, ask, vcek_key, vcek, vlek_key, vlek)


def report(key: ec.EllipticCurvePrivateKey, *, tcb: dict[str, int] = TCB, chip: bytes = CHIP,
           policy: int = 0x30000, signing_key: int = 0, mask_chip: bool = False) -> bytes:
    raw = bytearray(0x4A0)
    raw[0:4] = (2).to_bytes(4, "little")
    raw[0x08:0x10] = policy.to_bytes(8, "little")
    raw[0x34:0x38] = (1).to_bytes(4, "little")
    raw[0x48:0x4C] = ((signing_key << 2) | (2 if mask_chip else 0)).to_bytes(4, "little")
    raw[0x50:0x90] = b"report data".ljust(64, b"\0")
    raw[0x90:0xC0] = b"\x5a" * 48
    tcb_raw = bytearray(8)
    tcb_raw[0], tcb_raw[1], tcb_raw[6], tcb_raw[7] = (tcb["bl_spl"], tcb["tee_spl"],
                                                      tcb["snp_spl"], tcb["ucode_spl"])
    for off in (0x38, 0x180, 0x1E0, 0x1F0):
        raw[off:off + 8] = tcb_raw
    raw[0x1A0:0x1E0] = bytes(64) if mask_chip else chip
    r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw)


def _collateral(amd: Pki, tmp: Path, crl: bytes | None, signer: str = "vcek") -> Collateral:
    pem = serialization.Encoding.PEM
    (tmp / "cert_chain").write_bytes(amd.ask.public_bytes(pem) + amd.ark.public_bytes(pem))
    (tmp / "key").write_bytes(getattr(amd, signer).public_bytes(serialization.Encoding.DER))
    if crl is not None:
        (tmp / "crl").write_bytes(crl)
    return Collateral.load([tmp])


def test_fully_verified_with_crl(amd: Pki, tmp_path: Path) -> None:
    c = _collateral(amd, tmp_path, amd.crl())
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vcek_key), AT)
    assert r.verified, failed(r)
    assert r.kind == "snp" and r.measurements["measurement"] == "5a" * 48
    assert r.report_data.startswith(b"report data")
    assert "'SEV-VCEK' -> 'SEV-Throwaway' -> 'ARK-Throwaway' (RSA-PSS)" in \
        r.check("cert_chain").reason  # type: ignore[union-attr]


def test_revoked_ask(amd: Pki, tmp_path: Path) -> None:
    c = _collateral(amd, tmp_path, amd.crl([amd.ask]))
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vcek_key), AT)
    assert failed(r).keys() == {"ark_crl"}
    assert "'SEV-Throwaway'" in failed(r)["ark_crl"] and "is revoked" in failed(r)["ark_crl"]


def test_expired_crl(amd: Pki, tmp_path: Path) -> None:
    c = _collateral(amd, tmp_path, amd.crl(next_update=datetime(2024, 6, 1, tzinfo=UTC)))
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vcek_key), AT)
    assert statuses(r)["ark_crl"] == "failed" and "expired" in failed(r)["ark_crl"]


def test_pinned_arks_refuse_a_throwaway_ark(amd: Pki, tmp_path: Path) -> None:
    c = _collateral(amd, tmp_path, amd.crl())
    r = Verifier(c).verify(report(amd.vcek_key), AT)
    assert "ends at 'ARK-Throwaway'" in failed(r)["cert_chain"]
    assert "not a trusted root" in failed(r)["cert_chain"]


def test_reported_tcb_must_match_the_vcek(amd: Pki, tmp_path: Path) -> None:
    c = _collateral(amd, tmp_path, amd.crl())
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vcek_key, tcb=dict(TCB, bl_spl=4)),
                                               AT)
    assert failed(r).keys() == {"reported_tcb"}
    assert "bl_spl 4 != 3" in failed(r)["reported_tcb"]


def test_chip_id_must_match_the_vcek(amd: Pki, tmp_path: Path) -> None:
    c = _collateral(amd, tmp_path, amd.crl())
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vcek_key, chip=b"\x01" * 64), AT)
    assert failed(r).keys() == {"chip_id"}
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vcek_key, mask_chip=True), AT)
    assert statuses(r)["chip_id"] == "not done"


def test_vlek(amd: Pki, tmp_path: Path) -> None:
    c = _collateral(amd, tmp_path, amd.crl(), signer="vlek")
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vlek_key, signing_key=1), AT)
    assert r.verified, failed(r)
    assert "VLEK (CSP test)" in r.check("chip_id").reason  # type: ignore[union-attr]
    # a report claiming the VCEK signed it while the VLEK did
    r = Verifier(c, amd_roots=[amd.ark]).verify(report(amd.vlek_key, signing_key=0), AT)
    assert "signing_key" in failed(r)


def test_real_milan_chain_checks_rsa_pss() -> None:
    """The vectors' ASK/ARK bundles: ARK self-signed, ASK and ASVK signed by it (RSA-PSS)."""
    for bundle in ("ask_ark_milan.pem", "ask_ark_milan_vlek.pem", "ask_ark_genoa.pem",
                   "ask_ark_genoa_vlek.pem", "ask_ark_turin_vcek.pem"):
        ask, ark = pki.load_pem_certificates((ROOTS / "amd" / bundle).read_bytes())
        assert pki.is_self_signed(ark)
        assert pki.issued_by(ask, ark) is None
        assert pki.cert_sha256(ark) in {a.sha256 for a in pki.pinned_amd_roots()}


def test_parse_of_built_report(amd: Pki) -> None:
    r = parse_snp_report(report(amd.vcek_key, policy=0x80000 | 0x30000))
    assert r.debug and r.signing_key_name == "VCEK"
