"""SGX SIGSTRUCT: the 1808-byte enclave signature structure (Intel SDM Vol. 3D, SIGSTRUCT).

Pure format code: no I/O. Layout (offsets in bytes, integers little-endian)::

    0    HEADER          16  06000000E10000000000010000000000      signed
    16   VENDOR           4  0 or 0x8086                            signed
    20   DATE             4  BCD yyyymmdd as a u32 (0x20250612)     signed
    24   HEADER2         16  01010000600000006000000001000000      signed
    40   SWDEFINED        4                                         signed
    44   reserved        84  zero                                   signed
    128  MODULUS        384  RSA-3072 modulus, little-endian
    512  EXPONENT         4  3
    516  SIGNATURE      384  RSA signature, little-endian
    900  MISCSELECT       4                                         signed
    904  MISCMASK         4                                         signed
    908  CET_ATTRIBUTES   1                                         signed
    909  CET_ATTR_MASK    1                                         signed
    910  reserved         2  zero                                   signed
    912  ISVFAMILYID     16                                         signed
    928  ATTRIBUTES      16  flags u64, xfrm u64                    signed
    944  ATTRIBUTEMASK   16  flags u64, xfrm u64                    signed
    960  ENCLAVEHASH     32  MRENCLAVE                              signed
    992  reserved        16  zero                                   signed
    1008 ISVEXTPRODID    16                                         signed
    1024 ISVPRODID        2                                         signed
    1026 ISVSVN           2                                         signed
    1028 reserved        12  zero
    1040 Q1             384  floor(S^2 / M), little-endian
    1424 Q2             384  floor((S^3 - Q1*S*M) / M), little-endian

The signature is RSASSA-PKCS1-v1_5 with SHA-256 over bytes 0..128 followed by 900..1028.
MRSIGNER is SHA-256 of the 384-byte little-endian MODULUS.

Verifying needs no ``cryptography``: with the exponent fixed at 3, checking a signature is
one modular exponentiation and a comparison with the one valid encoding (as EINIT does), and
``geode run`` checks a SIGSTRUCT at every start. Signing imports ``cryptography``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable

from geode.errors import FormatError, SigningError
from geode.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

    from cryptography.hazmat.primitives.asymmetric import rsa

SIGSTRUCT_SIZE = 1808
KEY_SIZE_BITS = 3072
KEY_SIZE_BYTES = 384
RSA_EXPONENT = 3

HEADER = bytes.fromhex("06000000E10000000000010000000000")
HEADER2 = bytes.fromhex("01010000600000006000000001000000")
VENDOR_INTEL = 0x8086
VENDOR_OTHER = 0x0000

# Field offsets (Intel SDM Vol. 3D, SIGSTRUCT; cross-checked with Gramine's sgx_arch.h).
OFF_HEADER = 0
OFF_VENDOR = 16
OFF_DATE = 20
OFF_HEADER2 = 24
OFF_SWDEFINED = 40
OFF_MODULUS = 128
OFF_EXPONENT = 512
OFF_SIGNATURE = 516
OFF_MISCSELECT = 900
OFF_MISCMASK = 904
OFF_CET_ATTRIBUTES = 908
OFF_CET_ATTRIBUTES_MASK = 909
OFF_ISVFAMILYID = 912
OFF_ATTRIBUTES = 928
OFF_ATTRIBUTEMASK = 944
OFF_ENCLAVEHASH = 960
OFF_ISVEXTPRODID = 1008
OFF_ISVPRODID = 1024
OFF_ISVSVN = 1026
OFF_Q1 = 1040
OFF_Q2 = 1424

#: Reserved (must-be-zero) regions: name -> (start, end).
RESERVED_REGIONS: dict[str, tuple[int, int]] = {
    "RESERVED1": (44, 128),
    "RESERVED2": (910, 912),
    "RESERVED3": (992, 1008),
    "RESERVED4": (1028, 1040),
}

#: The two byte ranges covered by the RSA signature.
SIGNED_REGIONS: tuple[tuple[int, int], tuple[int, int]] = ((0, 128), (900, 1028))

# Gramine's defaults for the masks (sgx_arch.h: SGX_*_MASK_CONST).
DEFAULT_MISC_MASK = 0xFFFFFFFF
DEFAULT_FLAGS_MASK = 0xFFFFFFFFFFFFFFFF
DEFAULT_XFRM_MASK = 0xFFFFFFFFFFF9FF1B

FLAGS_DEBUG = 0x02

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


# --- BCD date -------------------------------------------------------------------------------


def _to_bcd(value: int, digits: int, what: str) -> int:
    if not 0 <= value < 10**digits:
        raise FormatError(f"SIGSTRUCT DATE {what} {value} does not fit in {digits} BCD digits")
    out = 0
    for i, ch in enumerate(reversed(f"{value:0{digits}d}")):
        out |= int(ch) << (4 * i)
    return out


def encode_bcd_date(year: int, month: int, day: int) -> int:
    """DATE as SGX stores it: BCD ``yyyymmdd`` in a u32 (2025-06-12 -> 0x20250612).

    Like Gramine's ``--date``, month and day are not checked against the calendar
    (only that each fits in its BCD digits).
    """
    bcd_year = _to_bcd(year, 4, "year")
    bcd_month = _to_bcd(month, 2, "month")
    bcd_day = _to_bcd(day, 2, "day")
    return (bcd_year << 16) | (bcd_month << 8) | bcd_day


def decode_bcd_date(value: int) -> tuple[int, int, int]:
    """(year, month, day) from a BCD DATE u32; FormatError if a nibble is not a decimal digit."""
    text = f"{value & _U32:08x}"
    if not text.isdigit():
        raise FormatError(f"SIGSTRUCT DATE 0x{value:08x} is not BCD-encoded")
    return int(text[0:4]), int(text[4:6]), int(text[6:8])


def format_date(value: int) -> str:
    """DATE as ``YYYY-MM-DD``, read digit by digit (total, even for non-BCD nibbles)."""
    text = f"{value & _U32:08x}"
    return f"{text[0:4]}-{text[4:6]}-{text[6:8]}"


# --- the structure ----------------------------------------------------------------------------


def _check_int(name: str, value: Any, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise FormatError(f"SIGSTRUCT field {name}: {value!r} is not an integer in 0..{limit:#x}")


def _check_bytes(name: str, value: Any, size: int) -> None:
    if not isinstance(value, bytes):
        raise FormatError(f"SIGSTRUCT field {name}: expected bytes, got {type(value).__name__}")
    if len(value) != size:
        raise FormatError(f"SIGSTRUCT field {name}: expected {size} bytes, got {len(value)}")


class _SigstructFields(Record):
    vendor: int = VENDOR_OTHER
    date: int = 0
    swdefined: int = 0
    modulus: bytes = bytes(KEY_SIZE_BYTES)
    exponent: int = 0
    signature: bytes = bytes(KEY_SIZE_BYTES)
    misc_select: int = 0
    misc_mask: int = DEFAULT_MISC_MASK
    cet_attributes: int = 0
    cet_attributes_mask: int = 0
    isv_family_id: bytes = bytes(16)
    attribute_flags: int = 0
    attribute_xfrm: int = 0
    attribute_flags_mask: int = DEFAULT_FLAGS_MASK
    attribute_xfrm_mask: int = DEFAULT_XFRM_MASK
    enclave_hash: bytes = bytes(32)
    isv_ext_prod_id: bytes = bytes(16)
    isv_prod_id: int = 0
    isv_svn: int = 0
    q1: bytes = bytes(KEY_SIZE_BYTES)
    q2: bytes = bytes(KEY_SIZE_BYTES)


#: The 384-byte numbers, left out of the repr.
_BIG_FIELDS = frozenset({"modulus", "signature", "q1", "q2"})


class Sigstruct(_SigstructFields):
    """Every variable field of a SIGSTRUCT.

    HEADER, HEADER2 and the reserved regions are constants and are not fields: ``pack`` writes
    them, ``unpack`` checks them. Big integers (MODULUS, SIGNATURE, Q1, Q2) are kept as their
    384 raw little-endian bytes; the ``*_int`` properties give their values. ``date`` is the raw
    BCD u32 (see :func:`encode_bcd_date`). Defaults are an unsigned structure with Gramine's
    default masks.

    Immutable, and every field is checked when one is made (FormatError), also by
    :meth:`_replace`. (A NamedTuple rather than a frozen dataclass, which cost ~2 ms of every
    ``geode run``.)
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Sigstruct:
        self = super().__new__(cls, *args, **kwargs)
        self._check()
        return self

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # (checked)
        return cls(*iterable)

    def _replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked (NamedTuple's own would skip the checks)."""
        return type(self)(**{**self._asdict(), **changes})

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in
                          zip(self._fields, self, strict=True) if name not in _BIG_FIELDS)
        return f"Sigstruct({shown})"

    def _check(self) -> None:
        _check_int("VENDOR", self.vendor, _U32)
        _check_int("DATE", self.date, _U32)
        _check_int("SWDEFINED", self.swdefined, _U32)
        _check_bytes("MODULUS", self.modulus, KEY_SIZE_BYTES)
        _check_int("EXPONENT", self.exponent, _U32)
        _check_bytes("SIGNATURE", self.signature, KEY_SIZE_BYTES)
        _check_int("MISCSELECT", self.misc_select, _U32)
        _check_int("MISCMASK", self.misc_mask, _U32)
        _check_int("CET_ATTRIBUTES", self.cet_attributes, _U8)
        _check_int("CET_ATTRIBUTES_MASK", self.cet_attributes_mask, _U8)
        _check_bytes("ISVFAMILYID", self.isv_family_id, 16)
        _check_int("ATTRIBUTES.FLAGS", self.attribute_flags, _U64)
        _check_int("ATTRIBUTES.XFRM", self.attribute_xfrm, _U64)
        _check_int("ATTRIBUTEMASK.FLAGS", self.attribute_flags_mask, _U64)
        _check_int("ATTRIBUTEMASK.XFRM", self.attribute_xfrm_mask, _U64)
        _check_bytes("ENCLAVEHASH", self.enclave_hash, 32)
        _check_bytes("ISVEXTPRODID", self.isv_ext_prod_id, 16)
        _check_int("ISVPRODID", self.isv_prod_id, _U16)
        _check_int("ISVSVN", self.isv_svn, _U16)
        _check_bytes("Q1", self.q1, KEY_SIZE_BYTES)
        _check_bytes("Q2", self.q2, KEY_SIZE_BYTES)

    # Integer views of the little-endian big numbers.
    @property
    def modulus_int(self) -> int:
        return int.from_bytes(self.modulus, "little")

    @property
    def signature_int(self) -> int:
        return int.from_bytes(self.signature, "little")

    @property
    def q1_int(self) -> int:
        return int.from_bytes(self.q1, "little")

    @property
    def q2_int(self) -> int:
        return int.from_bytes(self.q2, "little")

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.FLAGS bit 1 (DEBUG)."""
        return bool(self.attribute_flags & FLAGS_DEBUG)

    @property
    def mrsigner(self) -> bytes:
        return mrsigner(self.modulus)

    def pack(self) -> bytes:
        """The 1808 raw bytes."""
        buf = bytearray(SIGSTRUCT_SIZE)
        buf[OFF_HEADER : OFF_HEADER + 16] = HEADER
        struct.pack_into("<II", buf, OFF_VENDOR, self.vendor, self.date)
        buf[OFF_HEADER2 : OFF_HEADER2 + 16] = HEADER2
        struct.pack_into("<I", buf, OFF_SWDEFINED, self.swdefined)
        buf[OFF_MODULUS : OFF_MODULUS + KEY_SIZE_BYTES] = self.modulus
        struct.pack_into("<I", buf, OFF_EXPONENT, self.exponent)
        buf[OFF_SIGNATURE : OFF_SIGNATURE + KEY_SIZE_BYTES] = self.signature
        struct.pack_into(
            "<IIBB",
            buf,
            OFF_MISCSELECT,
            self.misc_select,
            self.misc_mask,
            self.cet_attributes,
            self.cet_attributes_mask,
        )
        buf[OFF_ISVFAMILYID : OFF_ISVFAMILYID + 16] = self.isv_family_id
        struct.pack_into(
            "<QQQQ",
            buf,
            OFF_ATTRIBUTES,
            self.attribute_flags,
            self.attribute_xfrm,
            self.attribute_flags_mask,
            self.attribute_xfrm_mask,
        )
        buf[OFF_ENCLAVEHASH : OFF_ENCLAVEHASH + 32] = self.enclave_hash
        buf[OFF_ISVEXTPRODID : OFF_ISVEXTPRODID + 16] = self.isv_ext_prod_id
        struct.pack_into("<HH", buf, OFF_ISVPRODID, self.isv_prod_id, self.isv_svn)
        buf[OFF_Q1 : OFF_Q1 + KEY_SIZE_BYTES] = self.q1
        buf[OFF_Q2 : OFF_Q2 + KEY_SIZE_BYTES] = self.q2
        return bytes(buf)

    @classmethod
    def unpack(cls, data: bytes) -> Sigstruct:
        """Parse 1808 raw bytes.

        FormatError (naming the field) on a wrong size, a wrong HEADER / HEADER2, a VENDOR other
        than 0 or 0x8086, or a nonzero reserved region. Signature fields are not checked here;
        use :func:`verify` for that.
        """
        problem = _structure_problem(data)
        if problem is not None:
            raise FormatError(problem)
        return _parse(data)


def _structure_problem(data: Any) -> str | None:
    """The first structural problem of raw SIGSTRUCT bytes, or None."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return f"SIGSTRUCT must be bytes, not {type(data).__name__}"
    if len(data) != SIGSTRUCT_SIZE:
        return f"SIGSTRUCT size is {len(data)} bytes, expected {SIGSTRUCT_SIZE}"
    raw = bytes(data)
    if raw[OFF_HEADER : OFF_HEADER + 16] != HEADER:
        return f"SIGSTRUCT HEADER is {raw[0:16].hex()}, expected {HEADER.hex()}"
    (vendor,) = struct.unpack_from("<I", raw, OFF_VENDOR)
    if vendor not in (VENDOR_OTHER, VENDOR_INTEL):
        return f"SIGSTRUCT VENDOR is {vendor:#x}, expected 0 or 0x8086"
    if raw[OFF_HEADER2 : OFF_HEADER2 + 16] != HEADER2:
        return f"SIGSTRUCT HEADER2 is {raw[24:40].hex()}, expected {HEADER2.hex()}"
    for name, (start, end) in RESERVED_REGIONS.items():
        if any(raw[start:end]):
            return f"SIGSTRUCT {name} (bytes {start}..{end}) is not zero"
    return None


def _parse(raw: bytes) -> Sigstruct:
    raw = bytes(raw)
    vendor, date = struct.unpack_from("<II", raw, OFF_VENDOR)
    (swdefined,) = struct.unpack_from("<I", raw, OFF_SWDEFINED)
    (exponent,) = struct.unpack_from("<I", raw, OFF_EXPONENT)
    misc_select, misc_mask, cet, cet_mask = struct.unpack_from("<IIBB", raw, OFF_MISCSELECT)
    flags, xfrm, flags_mask, xfrm_mask = struct.unpack_from("<QQQQ", raw, OFF_ATTRIBUTES)
    isv_prod_id, isv_svn = struct.unpack_from("<HH", raw, OFF_ISVPRODID)
    return Sigstruct(
        vendor=vendor,
        date=date,
        swdefined=swdefined,
        modulus=raw[OFF_MODULUS : OFF_MODULUS + KEY_SIZE_BYTES],
        exponent=exponent,
        signature=raw[OFF_SIGNATURE : OFF_SIGNATURE + KEY_SIZE_BYTES],
        misc_select=misc_select,
        misc_mask=misc_mask,
        cet_attributes=cet,
        cet_attributes_mask=cet_mask,
        isv_family_id=raw[OFF_ISVFAMILYID : OFF_ISVFAMILYID + 16],
        attribute_flags=flags,
        attribute_xfrm=xfrm,
        attribute_flags_mask=flags_mask,
        attribute_xfrm_mask=xfrm_mask,
        enclave_hash=raw[OFF_ENCLAVEHASH : OFF_ENCLAVEHASH + 32],
        isv_ext_prod_id=raw[OFF_ISVEXTPRODID : OFF_ISVEXTPRODID + 16],
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        q1=raw[OFF_Q1 : OFF_Q1 + KEY_SIZE_BYTES],
        q2=raw[OFF_Q2 : OFF_Q2 + KEY_SIZE_BYTES],
    )


# --- signing ------------------------------------------------------------------------------------


def signed_data(raw_or_struct: bytes | Sigstruct) -> bytes:
    """The 256 signed bytes: 0..128 followed by 900..1028."""
    if isinstance(raw_or_struct, Sigstruct):
        raw = raw_or_struct.pack()
    else:
        raw = bytes(raw_or_struct)
        if len(raw) != SIGSTRUCT_SIZE:
            raise FormatError(f"SIGSTRUCT size is {len(raw)} bytes, expected {SIGSTRUCT_SIZE}")
    return b"".join(raw[start:end] for start, end in SIGNED_REGIONS)


def compute_q1_q2(signature: int, modulus: int) -> tuple[int, int]:
    """Q1 = floor(S^2 / M), Q2 = floor((S^3 - Q1*S*M) / M), as the SDM defines them."""
    if modulus <= 0:
        raise ValueError("modulus must be positive")
    q1, remainder = divmod(signature * signature, modulus)
    # S^3 - Q1*S*M == S * (S^2 mod M)
    q2 = (remainder * signature) // modulus
    return q1, q2


def mrsigner(modulus_le: bytes) -> bytes:
    """MRSIGNER: SHA-256 of the 384-byte little-endian modulus as stored in SIGSTRUCT."""
    if len(modulus_le) != KEY_SIZE_BYTES:
        raise FormatError(f"MODULUS must be {KEY_SIZE_BYTES} bytes, got {len(modulus_le)}")
    return hashlib.sha256(bytes(modulus_le)).digest()


def check_signing_key(key: Any) -> rsa.RSAPrivateKey:
    """The key if SGX can use it (RSA, 3072 bits, exponent 3); SigningError otherwise."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"signing key must be an RSA private key, not {type(key).__name__}")
    if key.key_size != KEY_SIZE_BITS:
        raise SigningError(f"signing key must be {KEY_SIZE_BITS}-bit RSA, got {key.key_size}-bit")
    exponent = key.public_key().public_numbers().e
    if exponent != RSA_EXPONENT:
        raise SigningError(f"signing key must have public exponent 3, got {exponent}")
    return key


def sign(unsigned: Sigstruct, key: rsa.RSAPrivateKey) -> Sigstruct:
    """A copy of *unsigned* with MODULUS, EXPONENT, SIGNATURE, Q1 and Q2 filled in.

    RSASSA-PKCS1-v1_5 with SHA-256 over :func:`signed_data`; the signature is stored
    little-endian. SigningError if the key is not RSA-3072 with exponent 3.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    check_signing_key(key)
    modulus = key.public_key().public_numbers().n
    sig_be = key.sign(signed_data(unsigned), padding.PKCS1v15(), hashes.SHA256())
    signature = int.from_bytes(sig_be, "big")
    q1, q2 = compute_q1_q2(signature, modulus)
    return unsigned._replace(
        modulus=modulus.to_bytes(KEY_SIZE_BYTES, "little"),
        exponent=RSA_EXPONENT,
        signature=signature.to_bytes(KEY_SIZE_BYTES, "little"),
        q1=q1.to_bytes(KEY_SIZE_BYTES, "little"),
        q2=q2.to_bytes(KEY_SIZE_BYTES, "little"),
    )


# --- verification ---------------------------------------------------------------------------


class Check(Record):
    """One named verification check."""

    name: str
    passed: bool
    reason: str


#: Names of the checks :func:`verify` reports, in order.
CHECK_NAMES: tuple[str, ...] = (
    "size",
    "header",
    "vendor",
    "header2",
    "reserved",
    "exponent",
    "modulus",
    "signature",
    "q1",
    "q2",
)


class SigstructVerification(Record):
    """Outcome of :func:`verify`: every check with its reason, and the parsed structure.

    ``sigstruct`` is None when the bytes are not structurally a SIGSTRUCT (size, headers,
    vendor or reserved regions wrong).
    """

    checks: list[Check]
    sigstruct: Sigstruct | None

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


def verify(data: bytes) -> SigstructVerification:
    """Check raw SIGSTRUCT bytes as EINIT would (minus the launch policy); never raises."""
    checks: list[Check] = []

    def add(name: str, passed: bool, reason: str) -> None:
        checks.append(Check(name, passed, reason))

    if not isinstance(data, bytes | bytearray | memoryview):
        add("size", False, f"not bytes but {type(data).__name__}")
        for name in CHECK_NAMES[1:]:
            add(name, False, "not checked: input is not bytes")
        return SigstructVerification(checks, None)
    raw = bytes(data)
    if len(raw) != SIGSTRUCT_SIZE:
        add("size", False, f"{len(raw)} bytes, expected {SIGSTRUCT_SIZE}")
        for name in CHECK_NAMES[1:]:
            add(name, False, "not checked: wrong size")
        return SigstructVerification(checks, None)
    add("size", True, f"{SIGSTRUCT_SIZE} bytes")

    header = raw[OFF_HEADER : OFF_HEADER + 16]
    add(
        "header",
        header == HEADER,
        "HEADER matches" if header == HEADER else f"HEADER is {header.hex()}",
    )
    (vendor,) = struct.unpack_from("<I", raw, OFF_VENDOR)
    vendor_ok = vendor in (VENDOR_OTHER, VENDOR_INTEL)
    add("vendor", vendor_ok, f"VENDOR is {vendor:#x}" + ("" if vendor_ok else ", not 0/0x8086"))
    header2 = raw[OFF_HEADER2 : OFF_HEADER2 + 16]
    add(
        "header2",
        header2 == HEADER2,
        "HEADER2 matches" if header2 == HEADER2 else f"HEADER2 is {header2.hex()}",
    )
    dirty = [
        f"{name} (bytes {start}..{end})"
        for name, (start, end) in RESERVED_REGIONS.items()
        if any(raw[start:end])
    ]
    add(
        "reserved",
        not dirty,
        "all reserved regions are zero" if not dirty else "nonzero: " + ", ".join(dirty),
    )

    (exponent,) = struct.unpack_from("<I", raw, OFF_EXPONENT)
    add("exponent", exponent == RSA_EXPONENT, f"EXPONENT is {exponent} (SGX requires 3)")

    modulus = int.from_bytes(raw[OFF_MODULUS : OFF_MODULUS + KEY_SIZE_BYTES], "little")
    bits = modulus.bit_length()
    add("modulus", bits == KEY_SIZE_BITS, f"MODULUS is {bits}-bit (SGX requires 3072)")

    signature = int.from_bytes(raw[OFF_SIGNATURE : OFF_SIGNATURE + KEY_SIZE_BYTES], "little")
    add("signature", *_rsa_check(signed_data(raw), signature, modulus))

    q1 = int.from_bytes(raw[OFF_Q1 : OFF_Q1 + KEY_SIZE_BYTES], "little")
    q2 = int.from_bytes(raw[OFF_Q2 : OFF_Q2 + KEY_SIZE_BYTES], "little")
    if modulus == 0:
        add("q1", False, "MODULUS is zero")
        add("q2", False, "MODULUS is zero")
    else:
        want_q1, want_q2 = compute_q1_q2(signature, modulus)
        add("q1", q1 == want_q1, "Q1 = floor(S^2/M)" if q1 == want_q1 else "Q1 is wrong")
        add(
            "q2",
            q2 == want_q2,
            "Q2 = floor((S^3 - Q1*S*M)/M)" if q2 == want_q2 else "Q2 is wrong",
        )

    parsed = _parse(raw) if _structure_problem(raw) is None else None
    return SigstructVerification(checks, parsed)


#: DER prefix of the DigestInfo for SHA-256 (RFC 8017, section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _pkcs1_v15_sha256_encoding(message: bytes, length: int = KEY_SIZE_BYTES) -> bytes:
    """EMSA-PKCS1-v1_5 (RFC 8017, 9.2) of SHA-256(message): 00 01 FF..FF 00 DigestInfo."""
    t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (length - len(t) - 3) + b"\x00" + t


def _rsa_check(message: bytes, signature: int, modulus: int) -> tuple[bool, str]:
    """RSASSA-PKCS1-v1_5 SHA-256 with exponent 3 (the exponent EINIT uses)."""
    if signature >= modulus:
        return False, "SIGNATURE is not below MODULUS"
    if modulus.bit_length() == KEY_SIZE_BITS and modulus & 1:
        # RFC 8017 8.2.2 for a 3072-bit modulus: S^3 mod M must be the one valid encoding
        # (compared whole, so no lax parsing of the padding). Odd moduli only: OpenSSL
        # refuses even ones, and the answer must stay what it was with cryptography.
        em = pow(signature, RSA_EXPONENT, modulus).to_bytes(KEY_SIZE_BYTES, "big")
        if not hmac.compare_digest(em, _pkcs1_v15_sha256_encoding(message)):
            return False, _BAD_SIGNATURE
        return True, _GOOD_SIGNATURE
    return _rsa_check_cryptography(message, signature, modulus)


_BAD_SIGNATURE = "RSA signature does not verify over the signed regions"
_GOOD_SIGNATURE = "RSA-3072 PKCS#1 v1.5 SHA-256 signature verifies over the signed regions"


def _rsa_check_cryptography(message: bytes, signature: int, modulus: int) -> tuple[bool, str]:
    """:func:`_rsa_check` by OpenSSL, for moduli a valid SIGSTRUCT never has."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        public = rsa.RSAPublicNumbers(RSA_EXPONENT, modulus).public_key()
        public.verify(
            signature.to_bytes(KEY_SIZE_BYTES, "big"), message, padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return False, _BAD_SIGNATURE
    except ValueError as e:
        return False, f"MODULUS is not a usable RSA modulus ({e})"
    return True, _GOOD_SIGNATURE


# --- viewer ----------------------------------------------------------------------------------

#: Keys gramine-sgx-sigstruct-view prints without --verbose.
VIEW_QUIET_KEYS: tuple[str, ...] = (
    "mr_signer",
    "mr_enclave",
    "isv_prod_id",
    "isv_svn",
    "debug_enclave",
)


def view(s: Sigstruct, *, verbose: bool = True) -> dict[str, Any]:
    """The fields gramine-sgx-sigstruct-view shows, with its key names and value forms.

    Hashes are hex strings, masks and attributes ``hex()`` strings, ids ints, ``date`` is
    ``YYYY-MM-DD`` and ``debug_enclave`` a bool. With ``verbose=False`` only the keys the
    Gramine tool prints by default (:data:`VIEW_QUIET_KEYS`) are kept.
    """
    out: dict[str, Any] = {
        "mr_signer": mrsigner(s.modulus).hex(),
        "mr_enclave": s.enclave_hash.hex(),
        "isv_prod_id": s.isv_prod_id,
        "isv_svn": s.isv_svn,
        "attribute_flags": hex(s.attribute_flags),
        "attribute_xfrms": hex(s.attribute_xfrm),
        "misc_select": hex(s.misc_select),
        "attribute_flags_mask": hex(s.attribute_flags_mask),
        "attribute_xfrm_mask": hex(s.attribute_xfrm_mask),
        "misc_mask": hex(s.misc_mask),
        "date": format_date(s.date),
        "debug_enclave": s.debug,
    }
    if not verbose:
        out = {k: v for k, v in out.items() if k in VIEW_QUIET_KEYS}
    return out
