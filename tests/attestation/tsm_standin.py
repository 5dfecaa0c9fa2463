"""A configfs-tsm stand-in: a FUSE file system that plays the kernel and the TEE.

    python tsm_standin.py MOUNTPOINT --provider tdx_guest|sev_guest --out DIR [--ready FILE]
                          [--race N]

It follows Documentation/ABI/testing/configfs-tsm: ``mkdir NAME`` at the root creates a
report instance with ``inblob`` (write-only, at most 64 bytes), ``outblob``, ``provider``,
``generation`` (every write to ``inblob`` or ``privlevel`` counts) and, for ``sev_guest``,
``auxblob``, ``privlevel`` and ``privlevel_floor``; ``rmdir`` removes it. Reading ``outblob``
produces the evidence for the current ``inblob``:

* ``tdx_guest``: a TDX quote v4 from :class:`geode.verify.simulation.QuotingAuthority`
  (simulated, so only ``--allow-simulated`` verifiers accept it); TDX collateral and the
  simulation root are written to ``DIR`` at start;
* ``sev_guest``: a version-2 SEV-SNP report signed by a throwaway VCEK (ECDSA P-384) whose
  ASK and ARK are RSA-PSS, all marked simulated; ``auxblob`` is the GHCB certificate table
  (VCEK, ASK, ARK); ``DIR`` gets the ARK, the chain and an empty CRL.

``--race N`` bumps ``generation`` behind the writer's back on the first N reads of
``outblob`` (another writer racing the same instance). SIGTERM unmounts and exits.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyfuse3
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from geode.verify.pki import SIMULATION_OU
from geode.verify.simulation import QuotingAuthority, td_report_body

MR_TD = bytes(range(48))
SNP_MEASUREMENT = b"\x5a" * 48
CHIP_ID = bytes(range(64))
SNP_TCB = {"bl_spl": 3, "tee_spl": 0, "snp_spl": 8, "ucode_spl": 115}
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2045, 1, 1, tzinfo=UTC)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
GUIDS = {"VCEK": "63da758d-e664-4564-adc5-f4b93be8accd",
         "ASK": "4ab7b379-bbac-4fe4-a02f-05aef327c782",
         "ARK": "c0b406a4-a803-4952-9743-3fb6014cd0ae"}


# --- the simulated AMD PKI ---------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Geode test stand-in"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SIMULATION_OU)])


def _cert(cn: str, key: Any, issuer: tuple[x509.Certificate, Any] | None, ca: bool,
          extensions: list[x509.UnrecognizedExtension] | None = None) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(issuer[0].subject if issuer else _name(cn)).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(START)
         .not_valid_after(END)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if issuer and ca else None),
                        critical=True))
    for ext in extensions or []:
        b = b.add_extension(ext, critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA384(), rsa_padding=PSS)


def _amd_ext(sub: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.{sub}"), value)


@dataclass
class AmdPki:
    ark_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ask_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048))
    vcek_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def __post_init__(self) -> None:
        self.ark = _cert("ARK-Milan", self.ark_key, None, True)
        self.ask = _cert("SEV-Milan", self.ask_key, (self.ark, self.ark_key), True)
        subs = {"bl_spl": "3.1", "tee_spl": "3.2", "snp_spl": "3.3", "ucode_spl": "3.8"}
        exts = [_amd_ext(subs[k], bytes([2, 1, v])) for k, v in SNP_TCB.items()]
        exts += [_amd_ext("2", b"\x16\x08Milan-B0"), _amd_ext("4", CHIP_ID)]
        self.vcek = _cert("SEV-VCEK", self.vcek_key, (self.ask, self.ask_key), False, exts)

    def crl(self) -> bytes:
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
             .last_update(START).next_update(END))
        return b.sign(self.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(
            serialization.Encoding.DER)

    def report(self, report_data: bytes) -> bytes:
        raw = bytearray(0x4A0)
        raw[0:4] = (2).to_bytes(4, "little")
        raw[0x08:0x10] = (0x30000).to_bytes(8, "little")  # SMT allowed, debug not allowed
        raw[0x34:0x38] = (1).to_bytes(4, "little")  # ECDSA P-384 with SHA-384
        raw[0x50:0x90] = report_data
        raw[0x90:0xC0] = SNP_MEASUREMENT
        tcb = bytearray(8)
        tcb[0], tcb[1], tcb[6], tcb[7] = (SNP_TCB["bl_spl"], SNP_TCB["tee_spl"],
                                          SNP_TCB["snp_spl"], SNP_TCB["ucode_spl"])
        for off in (0x38, 0x180, 0x1E0, 0x1F0):
            raw[off:off + 8] = tcb
        raw[0x1A0:0x1E0] = CHIP_ID
        r, s = decode_dss_signature(self.vcek_key.sign(bytes(raw[:0x2A0]),
                                                       ec.ECDSA(hashes.SHA384())))
        raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
        raw[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(raw)

    def cert_table(self) -> bytes:
        certs = [(GUIDS[n], c.public_bytes(serialization.Encoding.DER))
                 for n, c in (("VCEK", self.vcek), ("ASK", self.ask), ("ARK", self.ark))]
        offset = 24 * (len(certs) + 1)
        table, blobs = b"", b""
        for guid, der in certs:
            table += uuid.UUID(guid).bytes + struct.pack("<II", offset + len(blobs), len(der))
            blobs += der
        return table + bytes(24) + blobs


# --- the file system ---------------------------------------------------------------------------

ATTRS_COMMON = {"inblob": 0o200, "outblob": 0o444, "provider": 0o444, "generation": 0o444}
ATTRS_SNP = {"auxblob": 0o444, "privlevel": 0o200, "privlevel_floor": 0o444}


@dataclass
class Instance:
    ino: int
    name: str
    inblob: bytes = b""
    generation: int = 0
    privlevel: int = 0
    files: dict[str, int] = field(default_factory=dict)  # attribute -> ino


class Standin(pyfuse3.Operations):
    def __init__(self, provider: str, out: Path, race: int) -> None:
        super().__init__()
        self.provider = provider
        self.race = race
        self.instances: dict[str, Instance] = {}
        self.by_ino: dict[int, tuple[Instance, str | None]] = {}  # ino -> (instance, attr)
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.handles: dict[int, tuple[Instance, str, bytes]] = {}
        self.next_fh = 1
        self.reports = 0
        out.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        if provider == "tdx_guest":
            self.qa = QuotingAuthority()
            self.qa.write_collateral(out, tdx=True)
            (out / "sim_root_ca.pem").write_bytes(self.qa.root_cert.public_bytes(pem))
        else:
            self.amd = AmdPki()
            (out / "ark.pem").write_bytes(self.amd.ark.public_bytes(pem))
            (out / "cert_chain.pem").write_bytes(self.amd.ask.public_bytes(pem)
                                                 + self.amd.ark.public_bytes(pem))
            (out / "ark.crl").write_bytes(self.amd.crl())

    def attrs(self) -> dict[str, int]:
        return {**ATTRS_COMMON, **(ATTRS_SNP if self.provider == "sev_guest" else {})}

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(ino)
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            inst, attr = self.by_ino[ino]
            if attr is None:
                a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
            else:
                a.st_mode, a.st_nlink = stat.S_IFREG | self.attrs()[attr], 1
                a.st_size = 4096 if attr in ("outblob", "auxblob") else 0
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        now = time.time_ns()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = now
        a.entry_timeout = a.attr_timeout = 0
        return a

    async def getattr(self, inode: pyfuse3.InodeT, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode != pyfuse3.ROOT_INODE and inode not in self.by_ino:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(inode)

    async def lookup(self, parent: pyfuse3.InodeT, name: bytes,
                     ctx: Any = None) -> pyfuse3.EntryAttributes:
        sname = name.decode()
        if parent == pyfuse3.ROOT_INODE:
            inst = self.instances.get(sname)
            if inst is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._entry(inst.ino)
        inst, attr = self.by_ino.get(parent, (None, None))
        if inst is None or attr is not None or sname not in inst.files:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(inst.files[sname])

    async def mkdir(self, parent: pyfuse3.InodeT, name: bytes, mode: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        sname = name.decode()
        if parent != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        if sname in self.instances:
            raise pyfuse3.FUSEError(errno.EEXIST)
        inst = Instance(self.next_ino, sname)
        self.next_ino += 1
        self.by_ino[inst.ino] = (inst, None)
        for attr in self.attrs():
            inst.files[attr] = self.next_ino
            self.by_ino[self.next_ino] = (inst, attr)
            self.next_ino += 1
        self.instances[sname] = inst
        return self._entry(inst.ino)

    async def rmdir(self, parent: pyfuse3.InodeT, name: bytes, ctx: Any) -> None:
        inst = self.instances.pop(name.decode(), None)
        if parent != pyfuse3.ROOT_INODE or inst is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        for ino in [inst.ino, *inst.files.values()]:
            self.by_ino.pop(ino, None)

    async def opendir(self, inode: pyfuse3.InodeT, ctx: Any) -> pyfuse3.FileHandleT:
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        if fh == pyfuse3.ROOT_INODE:
            names = [(n, i.ino) for n, i in sorted(self.instances.items())]
        else:
            inst, _ = self.by_ino[fh]
            names = sorted(inst.files.items())
        for i, (n, ino) in enumerate(names[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, n.encode(), self._entry(ino), i):
                break

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        inst, attr = self.by_ino.get(inode, (None, None))
        if inst is None or attr is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if writing != bool(self.attrs()[attr] & 0o200):
            raise pyfuse3.FUSEError(errno.EACCES)
        data = b""
        if attr == "outblob":
            data = self.outblob(inst)
        elif attr == "auxblob":
            data = self.amd.cert_table()
        elif attr == "provider":
            data = self.provider.encode() + b"\n"
        elif attr == "generation":
            data = b"%d\n" % inst.generation
        elif attr == "privlevel_floor":
            data = b"0\n"
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (inst, attr, data)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), direct_io=True)

    def outblob(self, inst: Instance) -> bytes:
        self.reports += 1
        if self.race > 0:
            self.race -= 1
            inst.generation += 1  # someone else wrote the instance meanwhile
        report_data = inst.inblob.ljust(64, b"\0")
        if self.provider == "tdx_guest":
            return self.qa.quote(td_report_body(mr_td=MR_TD, report_data=report_data),
                                 version=4)
        return self.amd.report(report_data)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return self.handles[fh][2][off:off + size]

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        inst, attr, _ = self.handles[fh]
        if attr == "inblob":
            if off + len(buf) > 64:
                raise pyfuse3.FUSEError(errno.EFBIG)
            inst.inblob = (inst.inblob[:off].ljust(off, b"\0") + buf)
        elif attr == "privlevel":
            inst.privlevel = int(buf)
        inst.generation += 1
        return len(buf)

    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self.handles.pop(fh, None)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--provider", choices=("tdx_guest", "sev_guest"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ready", type=Path)
    p.add_argument("--race", type=int, default=0)
    args = p.parse_args()
    fs = Standin(args.provider, args.out, args.race)
    pyfuse3.init(fs, str(args.mountpoint), {"fsname=tsm-standin", "default_permissions"})

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main)
                if args.ready is not None:
                    args.ready.write_text("ready\n")
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
