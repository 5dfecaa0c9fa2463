"""SGX REPORT and TARGETINFO structures (Intel SDM vol. 3D, "SGX data structures").

Pure functions over bytes; the ``sim`` backend builds and checks them, and programs in the
shield read them from ``/dev/attestation/{report,my_target_info}``.

REPORT (432 bytes) = REPORT body (384) || KEYID (32) || MAC (16)::

    body   0  CPUSVN[16]     16 MISCSELECT u32   20 reserved[12]   32 ISVEXTPRODID[16]
          48  ATTRIBUTES[16] (FLAGS u64, XFRM u64)                 64 MRENCLAVE[32]
          96  reserved[32]  128 MRSIGNER[32]    160 reserved[32]  192 CONFIGID[64]
         256  ISVPRODID u16 258 ISVSVN u16      260 CONFIGSVN u16 262 reserved[42]
         304  ISVFAMILYID[16]                   320 REPORTDATA[64]
    384  KEYID[32]   416  MAC[16] (AES-128-CMAC over the body with the target's report key)

TARGETINFO (512 bytes)::

    0 MRENCLAVE[32]  32 ATTRIBUTES[16]  48 CET_ATTRIBUTES u8  49 reserved  50 CONFIGSVN u16
    52 MISCSELECT u32  56 reserved[8]  64 CONFIGID[64]  128 reserved[384]
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from geode.errors import FormatError

REPORT_BODY_SIZE = 384
KEYID_SIZE = 32
MAC_SIZE = 16
REPORT_SIZE = REPORT_BODY_SIZE + KEYID_SIZE + MAC_SIZE  # 432
TARGET_INFO_SIZE = 512
REPORT_DATA_SIZE = 64

FLAGS_INIT = 0x01
FLAGS_DEBUG = 0x02
FLAGS_MODE64BIT = 0x04


class ReportBody(NamedTuple):
    """The identity fields of an SGX REPORT body."""

    mr_enclave: bytes = bytes(32)
    mr_signer: bytes = bytes(32)
    attribute_flags: int = FLAGS_INIT | FLAGS_MODE64BIT
    attribute_xfrm: int = 0x03
    misc_select: int = 0
    isv_prod_id: int = 0
    isv_svn: int = 0
    isv_ext_prod_id: bytes = bytes(16)
    isv_family_id: bytes = bytes(16)
    config_id: bytes = bytes(64)
    config_svn: int = 0
    cpu_svn: bytes = bytes(16)
    report_data: bytes = bytes(REPORT_DATA_SIZE)

    def pack(self) -> bytes:
        body = bytearray(REPORT_BODY_SIZE)
        body[0:16] = self.cpu_svn
        struct.pack_into("<I", body, 16, self.misc_select)
        body[32:48] = self.isv_ext_prod_id
        struct.pack_into("<QQ", body, 48, self.attribute_flags, self.attribute_xfrm)
        body[64:96] = self.mr_enclave
        body[128:160] = self.mr_signer
        body[192:256] = self.config_id
        struct.pack_into("<HHH", body, 256, self.isv_prod_id, self.isv_svn, self.config_svn)
        body[304:320] = self.isv_family_id
        body[320:384] = self.report_data
        if len(body) != REPORT_BODY_SIZE:
            raise ValueError("a field of the REPORT body has the wrong size")
        return bytes(body)

    @classmethod
    def unpack(cls, data: bytes) -> ReportBody:
        if len(data) < REPORT_BODY_SIZE:
            raise FormatError(f"SGX REPORT body is {len(data)} bytes, expected "
                              f"{REPORT_BODY_SIZE}")
        flags, xfrm = struct.unpack_from("<QQ", data, 48)
        prod, svn, config_svn = struct.unpack_from("<HHH", data, 256)
        return cls(
            mr_enclave=bytes(data[64:96]), mr_signer=bytes(data[128:160]),
            attribute_flags=flags, attribute_xfrm=xfrm,
            misc_select=struct.unpack_from("<I", data, 16)[0], isv_prod_id=prod, isv_svn=svn,
            isv_ext_prod_id=bytes(data[32:48]), isv_family_id=bytes(data[304:320]),
            config_id=bytes(data[192:256]), config_svn=config_svn, cpu_svn=bytes(data[0:16]),
            report_data=bytes(data[320:384]),
        )

    @property
    def debug(self) -> bool:
        return bool(self.attribute_flags & FLAGS_DEBUG)

    @property
    def attributes(self) -> bytes:
        return struct.pack("<QQ", self.attribute_flags, self.attribute_xfrm)


class TargetInfo(NamedTuple):
    """The fields of a TARGETINFO that name the enclave a REPORT is for."""

    mr_enclave: bytes = bytes(32)
    attribute_flags: int = 0
    attribute_xfrm: int = 0
    misc_select: int = 0
    cet_attributes: int = 0
    config_svn: int = 0
    config_id: bytes = bytes(64)

    def pack(self) -> bytes:
        ti = bytearray(TARGET_INFO_SIZE)
        ti[0:32] = self.mr_enclave
        struct.pack_into("<QQBxHI", ti, 32, self.attribute_flags, self.attribute_xfrm,
                         self.cet_attributes, self.config_svn, self.misc_select)
        ti[64:128] = self.config_id
        if len(ti) != TARGET_INFO_SIZE:
            raise ValueError("a field of the TARGETINFO has the wrong size")
        return bytes(ti)

    @classmethod
    def unpack(cls, data: bytes) -> TargetInfo:
        if len(data) < 128:
            raise FormatError(f"SGX TARGETINFO is {len(data)} bytes, expected "
                              f"{TARGET_INFO_SIZE}")
        flags, xfrm, cet, config_svn, misc = struct.unpack_from("<QQBxHI", data, 32)
        return cls(mr_enclave=bytes(data[0:32]), attribute_flags=flags, attribute_xfrm=xfrm,
                   misc_select=misc, cet_attributes=cet, config_svn=config_svn,
                   config_id=bytes(data[64:128]))

    @property
    def attributes(self) -> bytes:
        return struct.pack("<QQ", self.attribute_flags, self.attribute_xfrm)


def split_report(report: bytes) -> tuple[bytes, bytes, bytes]:
    """``(body, keyid, mac)`` of a 432-byte REPORT (FormatError on another size)."""
    if len(report) != REPORT_SIZE:
        raise FormatError(f"SGX REPORT is {len(report)} bytes, expected {REPORT_SIZE}")
    return (report[:REPORT_BODY_SIZE], report[REPORT_BODY_SIZE:REPORT_BODY_SIZE + KEYID_SIZE],
            report[REPORT_BODY_SIZE + KEYID_SIZE:])


def fit(data: bytes, size: int) -> bytes:
    """``data`` zero-padded or truncated to ``size`` bytes (Gramine's rule for the
    ``user_report_data`` and ``target_info`` files)."""
    return data[:size].ljust(size, b"\0")
