"""The ``sim`` TEE: a software stand-in for hardware, for development and CI.

It exercises the same code paths as hardware backends but protects nothing beyond the ``none``
backend: its secrets live on the host, readable by root. Everything it produces is labelled
as simulated, and default verifiers reject it.

Platform secret: 32 random bytes in ``<pkglibdir>/sim/platform-secret`` (mode 0600), created
on first use. It plays the role of the CPU's fused key.

Sealing keys (``/dev/attestation/keys/_sgx_mrenclave`` and ``_sgx_mrsigner``), modelled on
EGETKEY's key policies::

    key = HMAC-SHA256(platform_secret,
                      "geode-sim-seal/1" || 0x00 || policy || 0x00 || identity (32 B)
                      || u16_le(isv_prod_id) || u16_le(isv_svn))[:16]

where ``policy`` is ``mrenclave`` (identity = the measurement) or ``mrsigner`` (identity =
MRSIGNER, so every enclave of the same signer, product and SVN gets the same key).

Local attestation (``/dev/attestation/{my_target_info,target_info,report}``): SGX-format
REPORTs (see :mod:`geode.tee.sgx`) whose MRENCLAVE is the Geode measurement and whose
MRSIGNER, ISVPRODID, ISVSVN, ISVEXTPRODID, ISVFAMILYID, MISCSELECT and ATTRIBUTES come from the
SIGSTRUCT (FLAGS with INIT set, as after EINIT); CPUSVN is the simulated platform's TCB.
KEYID is ``"GEODE-SIMULATED\\0"`` followed by 16 random bytes drawn when the backend starts
(SGX draws its KEYID at boot). The MAC is AES-128-CMAC over the 384-byte body, keyed with the
*target's* report key::

    report_key = HMAC-SHA256(platform_secret,
                             "geode-sim-report-key/1" || 0x00 || target MRENCLAVE (32 B)
                             || target ATTRIBUTES (16 B) || u32_le(target MISCSELECT)
                             || KEYID (32 B))[:16]

so only a party that knows the platform secret and is (or acts for) the targeted enclave can
check it: :meth:`SimBackend.verify_report` (``geode tee verify-report`` on the host).

Remote attestation (``/dev/attestation/quote``): the program's REPORT is targeted at a
simulated quoting enclave (MRENCLAVE :data:`QE_MR_ENCLAVE`), whose MAC is checked as the real
QE does, and its body is wrapped in a DCAP ECDSA quote v3 by
:class:`geode.verify.simulation.QuotingAuthority`: attestation key, QE report signed by a PCK
key, PCK chain (type 5) ending at the installation's simulation root CA. The authority's keys
(PEM, mode 0600) and certificates live in ``<pkglibdir>/sim/authority/``, created on first
use; :func:`write_collateral` writes the matching TCB info, QE identity, CRLs and root for
``geode quote verify --allow-simulated --collateral DIR``. The quote's QE vendor id and every
certificate's OU say it is simulated, so default verifiers refuse it.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import shutil
import struct
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from geode.errors import GeodeError
from geode.tee import SEAL_KEY_NAMES, EnclaveIdentity, Evidence, TeeBackend
from geode.tee.sgx import (
    FLAGS_INIT,
    KEYID_SIZE,
    REPORT_BODY_SIZE,
    REPORT_DATA_SIZE,
    TARGET_INFO_SIZE,
    ReportBody,
    TargetInfo,
    split_report,
)

if TYPE_CHECKING:
    from geode.verify.simulation import QuotingAuthority

SEAL_DOMAIN = b"geode-sim-seal/1\0"
REPORT_KEY_DOMAIN = b"geode-sim-report-key/1\0"
#: first half of every sim REPORT's KEYID: marks the report as simulated
SIM_KEYID_PREFIX = b"GEODE-SIMULATED\0"
#: MRENCLAVE of the simulated quoting enclave (its MRSIGNER and ISVPRODID are the ones
#: :mod:`geode.verify.simulation` puts in QE reports and QE identity)
QE_MR_ENCLAVE = hashlib.sha256(b"geode-sim-quoting-enclave/1").digest()
#: ATTRIBUTES of the simulated quoting enclave (FLAGS INIT|MODE64BIT|PROVISION_KEY, XFRM)
QE_ATTRIBUTES = (0x15, 0xE7)
_CERT_NAMES = ("root", "platform", "tcb", "pck")
#: the files :func:`write_collateral` writes
COLLATERAL_FILES = ("tcb_info.json", "qe_identity.json", "root_ca.crl", "pck.crl",
                    "tcb_signing_chain.pem", "sim_root_ca.pem")


def sim_dir() -> Path:
    """``<pkglibdir>/sim``: the simulated platform's secrets (mode 0700)."""
    from geode.manifest.runtimedir import pkglibdir

    return pkglibdir() / "sim"


def platform_secret_path() -> Path:
    return sim_dir() / "platform-secret"


def authority_path() -> Path:
    return sim_dir() / "authority"


def platform_secret() -> bytes:
    """The installation's simulated platform secret, created atomically on first use."""
    path = platform_secret_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(32))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a secret another process just created
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        data = path.read_bytes()
    except OSError as e:
        raise GeodeError(f"cannot read the sim platform secret: {e.strerror}",
                         where=str(path)) from None
    if len(data) != 32:
        raise GeodeError("sim platform secret is not 32 bytes", where=str(path))
    return data


# --- the simulated quoting authority ------------------------------------------------------------

def _save_authority(qa: QuotingAuthority, directory: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    qa.save(directory)
    for name in _CERT_NAMES:
        cert = getattr(qa, f"{name}_cert")
        (directory / f"{name}.cert.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM))


def _load_authority(directory: Path) -> QuotingAuthority:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from geode.verify.simulation import QuotingAuthority

    qa = QuotingAuthority.load(directory)
    # Keep the certificates issued when the authority was created, so that the root's
    # fingerprint (what a verifier pins) is stable for the installation's lifetime.
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    for name in _CERT_NAMES:
        cert = x509.load_pem_x509_certificate((directory / f"{name}.cert.pem").read_bytes())
        key = getattr(qa, f"{name}_key")
        if cert.public_key().public_bytes(der, raw) != key.public_key().public_bytes(der, raw):
            raise ValueError(f"{name}.cert.pem does not match {name}.key.pem")
        setattr(qa, f"{name}_cert", cert)
    return qa


def authority() -> QuotingAuthority:
    """The installation's simulated quoting authority, created atomically on first use."""
    return _authority_at(authority_path())


@cache
def _authority_at(path: Path) -> QuotingAuthority:
    from geode.verify.simulation import QuotingAuthority

    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".authority.", dir=path.parent))
            try:
                _save_authority(QuotingAuthority(), tmp)
                os.rename(tmp, path)  # a directory another process created first wins
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return _load_authority(path)
    except OSError as e:
        raise GeodeError(f"cannot create or read the sim quoting authority: {e.strerror}",
                         where=str(path)) from None
    except ValueError as e:
        raise GeodeError(f"the sim quoting authority is damaged ({e}); remove the "
                         "directory to create a new one", where=str(path)) from None


def write_collateral(directory: str | os.PathLike[str]) -> list[Path]:
    """Write the collateral that verifies sim quotes into ``directory``; the files written.

    TCB info, QE identity, root and PCK CRLs, the TCB signing chain, and the simulation root
    CA alone (``sim_root_ca.pem``, for ``--sim-root``). Everything is marked simulated.
    """
    from cryptography.hazmat.primitives import serialization

    qa = authority()
    out = Path(directory)
    try:
        qa.write_collateral(out)
        (out / "sim_root_ca.pem").write_bytes(
            qa.root_cert.public_bytes(serialization.Encoding.PEM))
    except OSError as e:
        raise GeodeError(f"cannot write collateral: {e.strerror}", where=str(out)) from None
    return [out / name for name in COLLATERAL_FILES]


# --- SGX-format identity ---------------------------------------------------------------------

def target_info_for(identity: EnclaveIdentity) -> TargetInfo:
    """The TARGETINFO of a program of ``identity`` under the sim backend."""
    sig = identity.sigstruct
    if sig is None:
        return TargetInfo(mr_enclave=identity.measurement)
    return TargetInfo(mr_enclave=identity.measurement,
                      attribute_flags=sig.attribute_flags | FLAGS_INIT,
                      attribute_xfrm=sig.attribute_xfrm, misc_select=sig.misc_select)


def report_key(secret: bytes, target: TargetInfo, keyid: bytes) -> bytes:
    """The 16-byte report key of ``target`` (see the module doc)."""
    msg = (REPORT_KEY_DOMAIN + target.mr_enclave + target.attributes
           + struct.pack("<I", target.misc_select) + keyid)
    return hmac.new(secret, msg, hashlib.sha256).digest()[:16]


def _cmac(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import cmac
    from cryptography.hazmat.primitives.ciphers import algorithms

    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


QE_TARGET_INFO = TargetInfo(mr_enclave=QE_MR_ENCLAVE, attribute_flags=QE_ATTRIBUTES[0],
                            attribute_xfrm=QE_ATTRIBUTES[1])


class SimBackend(TeeBackend):
    name = "sim"
    attestation_type = "dcap"
    local_attestation = True

    def __init__(self, identity: EnclaveIdentity) -> None:
        super().__init__(identity)
        if identity.sigstruct is None:
            raise GeodeError("the sim TEE needs a signed manifest (APP.manifest.sgx and "
                             "APP.sig from gramine-sgx-sign): its identity comes from the "
                             "SIGSTRUCT")
        self._secret = platform_secret()
        self.keyid = SIM_KEYID_PREFIX + os.urandom(KEYID_SIZE - len(SIM_KEYID_PREFIX))
        self._authority: QuotingAuthority | None = None

    @property
    def authority(self) -> QuotingAuthority:
        if self._authority is None:
            self._authority = authority()
        return self._authority

    def _body(self, report_data: bytes) -> ReportBody:
        ident = self.identity
        sig = ident.sigstruct
        assert sig is not None
        ti = target_info_for(ident)
        return ReportBody(
            mr_enclave=ident.measurement, mr_signer=ident.mrsigner,
            attribute_flags=ti.attribute_flags, attribute_xfrm=ti.attribute_xfrm,
            misc_select=sig.misc_select, isv_prod_id=sig.isv_prod_id, isv_svn=sig.isv_svn,
            isv_ext_prod_id=sig.isv_ext_prod_id, isv_family_id=sig.isv_family_id,
            cpu_svn=bytes(self.authority.tcb_components), report_data=report_data)

    def my_target_info(self) -> bytes:
        return target_info_for(self.identity).pack()

    def report(self, user_report_data: bytes, target_info: bytes) -> bytes:
        if len(user_report_data) != REPORT_DATA_SIZE or len(target_info) != TARGET_INFO_SIZE:
            raise GeodeError("report needs 64 bytes of report data and a 512-byte TARGETINFO")
        body = self._body(user_report_data).pack()
        key = report_key(self._secret, TargetInfo.unpack(target_info), self.keyid)
        return body + self.keyid + _cmac(key, body)

    def verify_report(self, report: bytes, target: EnclaveIdentity | TargetInfo) -> bool:
        """Whether ``report`` was made on this platform for ``target`` (local attestation:
        the targeted party recomputes its report key from the report's KEYID)."""
        body, keyid, mac = split_report(report)
        ti = target if isinstance(target, TargetInfo) else target_info_for(target)
        return hmac.compare_digest(_cmac(report_key(self._secret, ti, keyid), body), mac)

    def evidence(self, user_report_data: bytes) -> Evidence:
        report = self.report(user_report_data, QE_TARGET_INFO.pack())
        # The simulated QE accepts only reports made for it on this platform, as the real
        # QE does with EGETKEY(REPORT) before it signs.
        if not self.verify_report(report, QE_TARGET_INFO):
            raise GeodeError("the simulated quoting enclave refused the report")
        return Evidence(self.authority.quote(report[:REPORT_BODY_SIZE], version=3))

    def seal_key(self, name: str) -> bytes:
        if name not in SEAL_KEY_NAMES:
            raise GeodeError(f"unknown sealing key {name!r}")
        ident = self.identity
        policy, value = (
            (b"mrenclave", ident.measurement) if name == "_sgx_mrenclave"
            else (b"mrsigner", ident.mrsigner)
        )
        msg = (SEAL_DOMAIN + policy + b"\0" + value
               + struct.pack("<HH", ident.isv_prod_id, ident.isv_svn))
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:16]
