"""The ``tdx`` and ``snp`` TEE backends: evidence from Linux configfs-tsm (Linux 6.7+).

configfs-tsm ABI (Documentation/ABI/testing/configfs-tsm): ``mkdir`` a directory under the
report root creates a report instance holding ``inblob`` (write-only, up to 64 bytes),
``outblob`` (read-only; reading it makes the TEE produce the report for the current
``inblob``), ``auxblob`` (SEV-SNP: the host's certificate table), ``provider``
(``tdx_guest`` or ``sev_guest``) and ``generation`` (incremented by every write). Geode uses
one fresh instance per request (named ``geode-<pid>-<n>``) and removes it afterwards; it
checks the provider, that ``generation`` moved by exactly one write between its write and its
read (otherwise another writer raced it and the request is retried), and that the evidence
carries the report data it asked for.

The report root is ``$GEODE_TSM_DIR`` if set, else ``/sys/kernel/config/tsm/report``. Tests
point it at a stand-in that follows the same ABI; the code path is the one used on hardware.

Report data. The 64 bytes a TD quote or SNP report carries bind the Geode measurement (see
docs/measurement.md) and the program's ``user_report_data``::

    report_data[0:32]  = SHA-256("geode-tsm-report-data/1" || 0x00 || measurement (32 B)
                                 || user_report_data (64 B))
    report_data[32:64] = measurement

A verifier that knows the measurement it expects and the user data it asked for (a nonce, a
key hash) recomputes all 64 bytes with :func:`report_data` (``geode tee report-data``).
The TD's own measurements (MRTD, RTMRs) or the SNP launch measurement attest the guest
kernel and the Geode installation; the report data says which manifest that Geode runs.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import struct
import uuid
from pathlib import Path

from geode.errors import FormatError, GeodeError
from geode.log import get_logger
from geode.tee import EnclaveIdentity, Evidence, TeeBackend
from geode.tee.sgx import REPORT_DATA_SIZE

log = get_logger("geode")

DEFAULT_TSM_DIR = "/sys/kernel/config/tsm/report"
TSM_DIR_ENV = "GEODE_TSM_DIR"
INBLOB_MAX = 64
#: configfs-tsm ``provider`` value per backend
PROVIDERS = {"tdx": "tdx_guest", "snp": "sev_guest"}
REPORT_DATA_DOMAIN = b"geode-tsm-report-data/1\0"
#: GUIDs of the SEV-SNP certificate table (GHCB specification, MSG_REPORT_REQ)
CERT_TABLE_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes: "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes: "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes: "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes: "ARK",
}
_ATTEMPTS = 3
_counter = itertools.count()


def report_data(measurement: bytes, user_report_data: bytes) -> bytes:
    """The 64 bytes of report data that bind ``measurement`` and ``user_report_data``."""
    if len(measurement) != 32:
        raise GeodeError(f"a Geode measurement is 32 bytes, got {len(measurement)}")
    if len(user_report_data) != REPORT_DATA_SIZE:
        raise GeodeError(f"user_report_data is 64 bytes, got {len(user_report_data)}")
    digest = hashlib.sha256(REPORT_DATA_DOMAIN + measurement + user_report_data).digest()
    return digest + measurement


def tsm_dir() -> Path:
    return Path(os.environ.get(TSM_DIR_ENV) or DEFAULT_TSM_DIR)


def parse_cert_table(aux: bytes) -> list[tuple[str, bytes]]:
    """``(name, DER)`` of each certificate of an SEV-SNP certificate table (auxblob).

    The table is a list of (GUID 16 B, offset u32, length u32) entries ended by an all-zero
    entry; offsets count from the start of the table. Unknown GUIDs are named by their GUID.
    """
    out: list[tuple[str, bytes]] = []
    pos = 0
    while True:
        if pos + 24 > len(aux):
            raise FormatError("SEV-SNP certificate table: no terminating entry")
        guid = aux[pos:pos + 16]
        offset, length = struct.unpack_from("<II", aux, pos + 16)
        if guid == bytes(16) and offset == 0 and length == 0:
            return out
        if offset + length > len(aux):
            raise FormatError(f"SEV-SNP certificate table: entry {len(out)} points past the "
                              f"end ({offset}+{length} > {len(aux)})")
        out.append((CERT_TABLE_GUIDS.get(guid, str(uuid.UUID(bytes=guid))),
                    aux[offset:offset + length]))
        pos += 24


def cert_table_pem(aux: bytes) -> bytes:
    """The certificates of an SEV-SNP certificate table as one PEM bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = []
    for name, der in parse_cert_table(aux):
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            log.warning("configfs-tsm auxblob: entry %s is not a DER certificate; skipped",
                        name)
            continue
        pem.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(pem)


class TsmClient:
    """Report requests through a configfs-tsm report root (see the module doc)."""

    def __init__(self, root: Path, provider: str) -> None:
        self.root = root
        self.provider = provider

    def _fail(self, what: str, e: OSError, path: Path) -> GeodeError:
        return GeodeError(f"configfs-tsm: cannot {what}: {e.strerror}", where=str(path))

    def _instance(self) -> Path:
        while True:
            path = self.root / f"geode-{os.getpid()}-{next(_counter)}"
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
            except OSError as e:
                raise self._fail("create a report instance", e, path) from None

    def _read(self, path: Path) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise self._fail("read", e, path) from None

    def _remove(self, path: Path) -> None:
        try:
            os.rmdir(path)
        except OSError as e:
            log.warning("configfs-tsm: cannot remove %s: %s", path, e.strerror)

    def _check_provider(self, path: Path) -> None:
        provider = self._read(path / "provider").decode(errors="replace").strip()
        if provider != self.provider:
            raise GeodeError(f"configfs-tsm provider is {provider!r}, expected "
                             f"{self.provider!r}", where=str(self.root))

    def probe(self) -> None:
        """Check that the root exists and serves this provider (no report is made)."""
        if not self.root.is_dir():
            raise GeodeError(
                f"no configfs-tsm report directory {self.root}: this needs a confidential "
                f"VM guest ({self.provider}) with Linux 6.7 or newer and configfs mounted "
                f"(set {TSM_DIR_ENV} to use another directory)")
        path = self._instance()
        try:
            self._check_provider(path)
        finally:
            self._remove(path)

    def report(self, inblob: bytes, *, aux: bool = False) -> tuple[bytes, bytes]:
        """``(outblob, auxblob)`` for ``inblob`` (auxblob empty unless ``aux``)."""
        if len(inblob) > INBLOB_MAX:
            raise GeodeError(f"configfs-tsm inblob is at most {INBLOB_MAX} bytes")
        for _ in range(_ATTEMPTS):
            path = self._instance()
            try:
                self._check_provider(path)
                before = int(self._read(path / "generation") or b"0")
                try:
                    fd = os.open(path / "inblob", os.O_WRONLY)
                    try:
                        if os.write(fd, inblob) != len(inblob):
                            raise OSError(errno.EIO, "short write")
                    finally:
                        os.close(fd)
                except OSError as e:
                    raise self._fail("write inblob", e, path) from None
                out = self._read(path / "outblob")
                auxblob = b""
                if aux and (path / "auxblob").exists():
                    auxblob = self._read(path / "auxblob")
                after = int(self._read(path / "generation") or b"0")
            except ValueError:
                raise GeodeError("configfs-tsm: generation is not a number",
                                 where=str(path)) from None
            finally:
                self._remove(path)
            if after == before + 1:
                return out, auxblob
            log.warning("configfs-tsm: %s was written by someone else (generation %d -> %d); "
                        "retrying", path, before, after)
        raise GeodeError(f"configfs-tsm: report instances keep being changed by another "
                         f"writer ({_ATTEMPTS} attempts)", where=str(self.root))


def evidence_report_data(kind: str, evidence: bytes) -> bytes:
    """The report data carried by TDX (quote) or SEV-SNP (report) evidence."""
    if kind == "snp":
        from geode.verify.snp import parse_snp_report

        return parse_snp_report(evidence).report_data
    from geode.verify.quote import parse_quote

    return parse_quote(evidence, allow_trailing=True).report_data


class TsmBackend(TeeBackend):
    """``tdx`` or ``snp``: a confidential-VM guest reporting through configfs-tsm."""

    def __init__(self, name: str, identity: EnclaveIdentity, root: Path | None = None) -> None:
        if name not in PROVIDERS:
            raise GeodeError(f"unknown configfs-tsm backend {name!r} (expected tdx or snp)")
        super().__init__(identity)
        self.name = name
        # The evidence is an Intel DCAP ECDSA quote (v4/v5) on TDX, as Gramine's TDX port
        # reports; an AMD attestation report on SEV-SNP.
        self.attestation_type = "dcap" if name == "tdx" else "snp"
        self.evidence_certs = name == "snp"
        self.client = TsmClient(root if root is not None else tsm_dir(), PROVIDERS[name])
        self.client.probe()

    def evidence(self, user_report_data: bytes) -> Evidence:
        expected = report_data(self.identity.measurement, user_report_data)
        out, aux = self.client.report(expected, aux=self.evidence_certs)
        try:
            carried = evidence_report_data(self.name, out)
        except FormatError as e:
            raise GeodeError(f"configfs-tsm returned evidence Geode cannot parse: {e}",
                             where=str(self.client.root)) from None
        if carried != expected:
            raise GeodeError("configfs-tsm returned evidence for other report data",
                             where=str(self.client.root))
        certs = b""
        if aux:
            try:
                certs = cert_table_pem(aux)
            except FormatError as e:
                log.warning("configfs-tsm auxblob ignored: %s", e)
        return Evidence(out, certs)
