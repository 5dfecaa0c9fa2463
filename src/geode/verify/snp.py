"""AMD SEV-SNP attestation report (1184 = 0x4A0 bytes; AMD SEV-SNP ABI, ATTESTATION_REPORT).

Offsets (little-endian)::

    0x000 version u32          0x004 guest_svn u32       0x008 policy u64
    0x010 family_id 16         0x020 image_id 16         0x030 vmpl u32
    0x034 signature_algo u32   0x038 current_tcb u64     0x040 platform_info u64
    0x048 flags u32 (bit0 author_key_en, bit1 mask_chip_key, bits2-4 signing_key 0 VCEK 1 VLEK)
    0x050 report_data 64       0x090 measurement 48      0x0C0 host_data 32
    0x0E0 id_key_digest 48     0x110 author_key_digest 48
    0x140 report_id 32         0x160 report_id_ma 32     0x180 reported_tcb u64
    0x188 cpuid fam/mod/step (version 3+)                0x1A0 chip_id 64
    0x1E0 committed_tcb u64    0x1E8 current build/minor/major
    0x1EC committed build/minor/major                    0x1F0 launch_tcb u64
    0x2A0 signature: r (72 B little-endian), s at 0x2E8 (72 B little-endian)

The signature (ECDSA P-384 with SHA-384) covers bytes [0, 0x2A0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geode.errors import FormatError
from geode.verify.binary import le

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

POLICY_SMT = 1 << 16
POLICY_RESERVED_1 = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1

# product -> names of the TCB_VERSION bytes (index = byte position in the u64)
_TCB_LAYOUT_MILAN = {0: "bl_spl", 1: "tee_spl", 6: "snp_spl", 7: "ucode_spl"}
_TCB_LAYOUT_TURIN = {0: "fmc_spl", 1: "bl_spl", 2: "tee_spl", 3: "snp_spl", 7: "ucode_spl"}


def tcb_parts(tcb: int, product: str = "Milan") -> dict[str, int]:
    """Split a TCB_VERSION u64 into its security patch levels (layout depends on the product)."""
    layout = _TCB_LAYOUT_TURIN if product.startswith("Turin") else _TCB_LAYOUT_MILAN
    raw = tcb.to_bytes(8, "little")
    return {name: raw[i] for i, name in layout.items()}


def product_from_cpuid(family: int, model: int) -> str | None:
    """Product line from the CPUID family/model the version-3 report carries."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None


@dataclass(frozen=True)
class SnpReport:
    raw: bytes

    def _u32(self, off: int) -> int:
        return le(self.raw[off:off + 4])

    def _u64(self, off: int) -> int:
        return le(self.raw[off:off + 8])

    @property
    def version(self) -> int:
        return self._u32(0x00)

    @property
    def guest_svn(self) -> int:
        return self._u32(0x04)

    @property
    def policy(self) -> int:
        return self._u64(0x08)

    @property
    def family_id(self) -> bytes:
        return self.raw[0x10:0x20]

    @property
    def image_id(self) -> bytes:
        return self.raw[0x20:0x30]

    @property
    def vmpl(self) -> int:
        return self._u32(0x30)

    @property
    def signature_algo(self) -> int:
        return self._u32(0x34)

    @property
    def current_tcb(self) -> int:
        return self._u64(0x38)

    @property
    def platform_info(self) -> int:
        return self._u64(0x40)

    @property
    def flags(self) -> int:
        return self._u32(0x48)

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 2)

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 7

    @property
    def signing_key_name(self) -> str:
        return {SIGNING_KEY_VCEK: "VCEK", SIGNING_KEY_VLEK: "VLEK"}.get(
            self.signing_key, f"unknown ({self.signing_key})")

    @property
    def report_data(self) -> bytes:
        return self.raw[0x50:0x90]

    @property
    def measurement(self) -> bytes:
        return self.raw[0x90:0xC0]

    @property
    def host_data(self) -> bytes:
        return self.raw[0xC0:0xE0]

    @property
    def id_key_digest(self) -> bytes:
        return self.raw[0xE0:0x110]

    @property
    def author_key_digest(self) -> bytes:
        return self.raw[0x110:0x140]

    @property
    def report_id(self) -> bytes:
        return self.raw[0x140:0x160]

    @property
    def report_id_ma(self) -> bytes:
        return self.raw[0x160:0x180]

    @property
    def reported_tcb(self) -> int:
        return self._u64(0x180)

    @property
    def cpuid(self) -> tuple[int, int, int]:
        return (self.raw[0x188], self.raw[0x189], self.raw[0x18A])

    @property
    def chip_id(self) -> bytes:
        return self.raw[0x1A0:0x1E0]

    @property
    def committed_tcb(self) -> int:
        return self._u64(0x1E0)

    @property
    def current_version(self) -> tuple[int, int, int]:
        """(major, minor, build) of the running firmware."""
        return (self.raw[0x1EA], self.raw[0x1E9], self.raw[0x1E8])

    @property
    def committed_version(self) -> tuple[int, int, int]:
        return (self.raw[0x1EE], self.raw[0x1ED], self.raw[0x1EC])

    @property
    def launch_tcb(self) -> int:
        return self._u64(0x1F0)

    @property
    def signed_data(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature_r(self) -> int:
        return le(self.raw[0x2A0:0x2E8])

    @property
    def signature_s(self) -> int:
        return le(self.raw[0x2E8:0x330])

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def product(self) -> str | None:
        if self.version >= 3:
            fam, model, _ = self.cpuid
            return product_from_cpuid(fam, model)
        return None

    def fields(self) -> dict[str, Any]:
        product = self.product or "Milan"
        major, minor, build = self.current_version
        cmajor, cminor, cbuild = self.committed_version
        out: dict[str, Any] = {
            "kind": "snp",
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": f"0x{self.policy:016x}",
            "policy_debug": self.debug,
            "policy_smt": bool(self.policy & POLICY_SMT),
            "policy_migrate_ma": bool(self.policy & POLICY_MIGRATE_MA),
            "policy_single_socket": bool(self.policy & POLICY_SINGLE_SOCKET),
            "policy_abi": f"{(self.policy >> 8) & 0xFF}.{self.policy & 0xFF}",
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": f"0x{self.current_tcb:016x}",
            "platform_info": f"0x{self.platform_info:016x}",
            "signing_key": self.signing_key_name,
            "author_key_en": self.author_key_en,
            "mask_chip_key": self.mask_chip_key,
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": f"0x{self.reported_tcb:016x}",
            "reported_tcb_parts": tcb_parts(self.reported_tcb, product),
            "chip_id": self.chip_id.hex(),
            "committed_tcb": f"0x{self.committed_tcb:016x}",
            "launch_tcb": f"0x{self.launch_tcb:016x}",
            "current_firmware": f"{major}.{minor} build {build}",
            "committed_firmware": f"{cmajor}.{cminor} build {cbuild}",
        }
        if self.version >= 3:
            fam, model, step = self.cpuid
            out["cpuid_family"] = fam
            out["cpuid_model"] = model
            out["cpuid_stepping"] = step
        return out


def looks_like_snp_report(data: bytes) -> bool:
    return (len(data) >= 8 and le(data[0:4]) in SUPPORTED_VERSIONS
            and len(data) == REPORT_SIZE)


def parse_snp_report(data: bytes) -> SnpReport:
    """Parse a 1184-byte SNP report; raise :class:`FormatError` naming the bad field."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError("SNP report: expected bytes")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise FormatError(f"SNP report: size {len(data)} is not {REPORT_SIZE} bytes "
                          f"({'truncated' if len(data) < REPORT_SIZE else 'trailing bytes'})")
    version = le(data[0:4])
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"SNP report: version {version} at offset 0x0 is not supported "
                          "(2 to 5)")
    algo = le(data[0x34:0x38])
    if algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise FormatError(f"SNP report: signature_algo {algo} at offset 0x34 is not supported "
                          "(1 = ECDSA P-384 with SHA-384)")
    report = SnpReport(data)
    if report.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        raise FormatError(f"SNP report: signing_key {report.signing_key} in flags at offset "
                          "0x48 is neither VCEK (0) nor VLEK (1)")
    return report
