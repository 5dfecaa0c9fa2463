"""SIGSTRUCT layout, signing and verification (real RSA-3072, e=3 keys; no mocks)."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.errors import FormatError, SigningError
from geode.formats import sigstruct as ss
from geode.formats.sigstruct import Sigstruct

SDM_HEADER = bytes.fromhex("06000000E10000000000010000000000")
SDM_HEADER2 = bytes.fromhex("01010000600000006000000001000000")

@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=3, key_size=3072)


def distinct_struct() -> Sigstruct:
    """A SIGSTRUCT whose every field holds a distinct, recognisable value."""
    return Sigstruct(
        vendor=0x8086,
        date=0x20250612,
        swdefined=0xA1B2C3D4,
        modulus=bytes(range(256)) + bytes(range(128)),
        exponent=0x11223344,
        signature=bytes((i * 7 + 3) % 256 for i in range(384)),
        misc_select=0x01020304,
        misc_mask=0x05060708,
        cet_attributes=0x5A,
        cet_attributes_mask=0xA5,
        isv_family_id=bytes(range(0x10, 0x20)),
        attribute_flags=0x1111111111111116,
        attribute_xfrm=0x2222222222222223,
        attribute_flags_mask=0x3333333333333333,
        attribute_xfrm_mask=0x4444444444444444,
        enclave_hash=bytes(range(0x40, 0x60)),
        isv_ext_prod_id=bytes(range(0x70, 0x80)),
        isv_prod_id=0xBEEF,
        isv_svn=0xCAFE,
        q1=bytes((i * 11 + 5) % 256 for i in range(384)),
        q2=bytes((i * 13 + 9) % 256 for i in range(384)),
    )


# --- layout ---------------------------------------------------------------------------------


def test_size_and_constants() -> None:
    raw = Sigstruct().pack()
    assert len(raw) == 1808
    assert raw[0:16] == SDM_HEADER
    assert raw[24:40] == SDM_HEADER2


def test_every_field_at_its_sdm_offset() -> None:
    s = distinct_struct()
    raw = s.pack()
    assert len(raw) == 1808
    assert raw[0:16] == SDM_HEADER
    assert struct.unpack_from("<I", raw, 16)[0] == 0x8086
    assert struct.unpack_from("<I", raw, 20)[0] == 0x20250612
    assert raw[24:40] == SDM_HEADER2
    assert struct.unpack_from("<I", raw, 40)[0] == 0xA1B2C3D4
    assert raw[44:128] == bytes(84)
    assert raw[128:512] == s.modulus
    assert struct.unpack_from("<I", raw, 512)[0] == 0x11223344
    assert raw[516:900] == s.signature
    assert struct.unpack_from("<I", raw, 900)[0] == 0x01020304
    assert struct.unpack_from("<I", raw, 904)[0] == 0x05060708
    assert raw[908] == 0x5A
    assert raw[909] == 0xA5
    assert raw[910:912] == bytes(2)
    assert raw[912:928] == bytes(range(0x10, 0x20))
    assert struct.unpack_from("<QQ", raw, 928) == (0x1111111111111116, 0x2222222222222223)
    assert struct.unpack_from("<QQ", raw, 944) == (0x3333333333333333, 0x4444444444444444)
    assert raw[960:992] == bytes(range(0x40, 0x60))
    assert raw[992:1008] == bytes(16)
    assert raw[1008:1024] == bytes(range(0x70, 0x80))
    assert struct.unpack_from("<H", raw, 1024)[0] == 0xBEEF
    assert struct.unpack_from("<H", raw, 1026)[0] == 0xCAFE
    assert raw[1028:1040] == bytes(12)
    assert raw[1040:1424] == s.q1
    assert raw[1424:1808] == s.q2


def test_little_endian_integer_byte_order() -> None:
    s = Sigstruct(isv_prod_id=0x0102, attribute_flags=0x0807060504030201)
    raw = s.pack()
    assert raw[1024:1026] == b"\x02\x01"
    assert raw[928:936] == bytes([1, 2, 3, 4, 5, 6, 7, 8])


def test_default_masks_are_gramines() -> None:
    s = Sigstruct()
    assert s.misc_mask == 0xFFFFFFFF
    assert s.attribute_flags_mask == 0xFFFFFFFFFFFFFFFF
    assert s.attribute_xfrm_mask == 0xFFFFFFFFFFF9FF1B


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("isv_prod_id", 0x10000),
        ("isv_svn", -1),
        ("vendor", 1 << 32),
        ("cet_attributes", 256),
        ("attribute_flags", 1 << 64),
        ("exponent", True),
        ("modulus", bytes(383)),
        ("enclave_hash", bytes(31)),
        ("isv_family_id", bytearray(16)),
        ("q2", "00" * 384),
    ],
)
def test_constructor_rejects_out_of_range_fields(field: str, value: Any) -> None:
    with pytest.raises(FormatError):
        Sigstruct(**{field: value})


# --- BCD date --------------------------------------------------------------------------------


def test_bcd_date_examples() -> None:
    assert ss.encode_bcd_date(2025, 6, 12) == 0x20250612
    raw = Sigstruct(date=ss.encode_bcd_date(2025, 6, 12)).pack()
    assert raw[20:24] == bytes.fromhex("12062520")
    # Example from Gramine's DATE fix (PR #1287): 2023-04-14 is stored as 14 04 23 20.
    assert Sigstruct(date=ss.encode_bcd_date(2023, 4, 14)).pack()[20:24] == bytes.fromhex(
        "14042320"
    )
    assert ss.format_date(0x20250612) == "2025-06-12"
    assert ss.format_date(0x00990101) == "0099-01-01"


@given(st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99))
def test_bcd_date_roundtrip(year: int, month: int, day: int) -> None:
    value = ss.encode_bcd_date(year, month, day)
    assert ss.decode_bcd_date(value) == (year, month, day)
    assert ss.format_date(value) == f"{year:04d}-{month:02d}-{day:02d}"
    assert f"{value:08x}" == f"{year:04d}{month:02d}{day:02d}"


def test_bcd_date_errors() -> None:
    with pytest.raises(FormatError):
        ss.encode_bcd_date(10000, 1, 1)
    with pytest.raises(FormatError):
        ss.encode_bcd_date(2025, 100, 1)
    with pytest.raises(FormatError):
        ss.decode_bcd_date(0x2025061A)


# --- unpack ----------------------------------------------------------------------------------

sigstructs = st.builds(
    Sigstruct,
    vendor=st.sampled_from([0, 0x8086]),
    date=st.integers(0, 0xFFFFFFFF),
    swdefined=st.integers(0, 0xFFFFFFFF),
    modulus=st.binary(min_size=384, max_size=384),
    exponent=st.integers(0, 0xFFFFFFFF),
    signature=st.binary(min_size=384, max_size=384),
    misc_select=st.integers(0, 0xFFFFFFFF),
    misc_mask=st.integers(0, 0xFFFFFFFF),
    cet_attributes=st.integers(0, 255),
    cet_attributes_mask=st.integers(0, 255),
    isv_family_id=st.binary(min_size=16, max_size=16),
    attribute_flags=st.integers(0, 2**64 - 1),
    attribute_xfrm=st.integers(0, 2**64 - 1),
    attribute_flags_mask=st.integers(0, 2**64 - 1),
    attribute_xfrm_mask=st.integers(0, 2**64 - 1),
    enclave_hash=st.binary(min_size=32, max_size=32),
    isv_ext_prod_id=st.binary(min_size=16, max_size=16),
    isv_prod_id=st.integers(0, 0xFFFF),
    isv_svn=st.integers(0, 0xFFFF),
    q1=st.binary(min_size=384, max_size=384),
    q2=st.binary(min_size=384, max_size=384),
)


@given(sigstructs)
def test_pack_unpack_roundtrip(s: Sigstruct) -> None:
    raw = s.pack()
    assert len(raw) == 1808
    assert Sigstruct.unpack(raw) == s
    assert Sigstruct.unpack(raw).pack() == raw


def test_unpack_distinct_struct() -> None:
    s = distinct_struct()
    assert Sigstruct.unpack(s.pack()) == s


@pytest.mark.parametrize("size", [0, 1, 1807, 1809, 4096])
def test_unpack_wrong_size(size: int) -> None:
    with pytest.raises(FormatError, match="size"):
        Sigstruct.unpack(bytes(size))


@pytest.mark.parametrize(
    ("offset", "field"),
    [
        (0, "HEADER"),
        (15, "HEADER"),
        (16, "VENDOR"),
        (24, "HEADER2"),
        (39, "HEADER2"),
        (44, "RESERVED1"),
        (127, "RESERVED1"),
        (910, "RESERVED2"),
        (911, "RESERVED2"),
        (992, "RESERVED3"),
        (1007, "RESERVED3"),
        (1028, "RESERVED4"),
        (1039, "RESERVED4"),
    ],
)
def test_unpack_rejects_bad_constant_naming_field(offset: int, field: str) -> None:
    raw = bytearray(Sigstruct().pack())
    raw[offset] ^= 0x40
    with pytest.raises(FormatError, match=field):
        Sigstruct.unpack(bytes(raw))


def test_unpack_accepts_intel_vendor_only_besides_zero() -> None:
    raw = bytearray(Sigstruct().pack())
    struct.pack_into("<I", raw, 16, 0x8086)
    assert Sigstruct.unpack(bytes(raw)).vendor == 0x8086
    struct.pack_into("<I", raw, 16, 0x8087)
    with pytest.raises(FormatError, match="VENDOR"):
        Sigstruct.unpack(bytes(raw))


@given(st.binary(max_size=2100))
def test_unpack_random_bytes_raises_only_format_error(data: bytes) -> None:
    try:
        s = Sigstruct.unpack(data)
    except FormatError as e:
        assert "\n" not in str(e)
    else:
        assert s.pack() == data


@given(sigstructs, st.integers(0, 1808))
def test_unpack_truncated_valid_struct(s: Sigstruct, cut: int) -> None:
    raw = s.pack()[:cut]
    if cut == 1808:
        assert Sigstruct.unpack(raw) == s
    else:
        with pytest.raises(FormatError, match="size"):
            Sigstruct.unpack(raw)


# --- signed data, Q1/Q2, MRSIGNER ---------------------------------------------------------------


def test_signed_data_is_the_two_sdm_regions() -> None:
    raw = distinct_struct().pack()
    data = ss.signed_data(raw)
    assert len(data) == 256
    assert data == raw[0:128] + raw[900:1028]
    assert ss.signed_data(distinct_struct()) == data


def test_signed_data_ignores_unsigned_fields() -> None:
    base = distinct_struct()
    other = base._replace(
        modulus=bytes(384), exponent=3, signature=bytes(384), q1=bytes(384), q2=bytes(384)
    )
    assert ss.signed_data(base) == ss.signed_data(other)
    assert ss.signed_data(base) != ss.signed_data(base._replace(isv_svn=1))


def test_signed_data_wrong_size() -> None:
    with pytest.raises(FormatError):
        ss.signed_data(bytes(100))


@given(st.integers(0, 2**3072 - 1), st.integers(1, 2**3072 - 1))
def test_compute_q1_q2_sdm_equations(s: int, m: int) -> None:
    q1, q2 = ss.compute_q1_q2(s, m)
    assert q1 == (s * s) // m
    assert q2 == (s**3 - q1 * s * m) // m
    assert 0 <= s * s - q1 * m < m


def test_compute_q1_q2_rejects_zero_modulus() -> None:
    with pytest.raises(ValueError):
        ss.compute_q1_q2(5, 0)


def test_mrsigner_is_sha256_of_le_modulus() -> None:
    modulus = bytes(range(256)) + bytes(range(128))
    assert ss.mrsigner(modulus) == hashlib.sha256(modulus).digest()
    with pytest.raises(FormatError):
        ss.mrsigner(bytes(383))


# --- sign and verify ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsigned() -> Sigstruct:
    return Sigstruct(
        date=ss.encode_bcd_date(2025, 6, 12),
        attribute_flags=0x6,
        attribute_xfrm=0x3,
        misc_select=1,
        enclave_hash=hashlib.sha256(b"enclave").digest(),
        isv_prod_id=7,
        isv_svn=42,
    )


@pytest.fixture(scope="module")
def signed(unsigned: Sigstruct, key: rsa.RSAPrivateKey) -> Sigstruct:
    return ss.sign(unsigned, key)


def test_sign_fills_signature_fields(
    unsigned: Sigstruct, signed: Sigstruct, key: rsa.RSAPrivateKey
) -> None:
    n = key.public_key().public_numbers().n
    assert signed.modulus == n.to_bytes(384, "little")
    assert signed.modulus_int == n
    assert signed.exponent == 3
    assert signed.signature != bytes(384)
    # Everything else is unchanged.
    assert signed._replace(
        modulus=unsigned.modulus,
        exponent=unsigned.exponent,
        signature=unsigned.signature,
        q1=unsigned.q1,
        q2=unsigned.q2,
    ) == unsigned
    assert ss.signed_data(signed) == ss.signed_data(unsigned)


def test_sign_then_verify(signed: Sigstruct) -> None:
    result = ss.verify(signed.pack())
    assert result.ok, result.failed
    assert [c.name for c in result.checks] == list(ss.CHECK_NAMES)
    assert all(c.passed and c.reason for c in result.checks)
    assert result.sigstruct == signed


def test_signature_verifies_independently(signed: Sigstruct, key: rsa.RSAPrivateKey) -> None:
    raw = signed.pack()
    n = int.from_bytes(raw[128:512], "little")
    e = struct.unpack_from("<I", raw, 512)[0]
    sig_be = raw[516:900][::-1]
    public = rsa.RSAPublicNumbers(e, n).public_key()
    public.verify(sig_be, raw[0:128] + raw[900:1028], padding.PKCS1v15(), hashes.SHA256())
    assert public.public_numbers() == key.public_key().public_numbers()


def test_q1_q2_satisfy_sdm_equations(signed: Sigstruct) -> None:
    raw = signed.pack()
    m = int.from_bytes(raw[128:512], "little")
    s = int.from_bytes(raw[516:900], "little")
    q1 = int.from_bytes(raw[1040:1424], "little")
    q2 = int.from_bytes(raw[1424:1808], "little")
    assert q1 == (s * s) // m
    assert q2 == (s * s * s - q1 * s * m) // m
    # EINIT's use of them: S^3 mod M recomputed from Q1/Q2 equals pow(S, 3, M).
    assert (s * s - q1 * m) * s - q2 * m == pow(s, 3, m)


def test_mrsigner_of_signed_struct(signed: Sigstruct, key: rsa.RSAPrivateKey) -> None:
    n = key.public_key().public_numbers().n
    expected = hashlib.sha256(n.to_bytes(384, "little")).digest()
    assert signed.mrsigner == expected
    assert ss.view(signed)["mr_signer"] == expected.hex()


def test_sign_rejects_unsuitable_keys(unsigned: Sigstruct) -> None:
    small = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(SigningError, match="3072"):
        ss.sign(unsigned, small)
    big_e = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with pytest.raises(SigningError, match="exponent"):
        ss.sign(unsigned, big_e)


def test_verify_wrong_size_does_not_raise() -> None:
    result = ss.verify(bytes(1000))
    assert not result.ok
    assert result.check("size").passed is False
    assert "1000" in result.check("size").reason
    assert result.sigstruct is None
    assert [c.name for c in result.checks] == list(ss.CHECK_NAMES)


def test_verify_unsigned_struct_fails_signature_checks(unsigned: Sigstruct) -> None:
    result = ss.verify(unsigned.pack())
    assert not result.ok
    failed = {c.name for c in result.failed}
    assert {"exponent", "modulus", "signature", "q1", "q2"} <= failed
    assert {"size", "header", "header2", "reserved", "vendor"}.isdisjoint(failed)
    assert result.sigstruct == unsigned


def test_verify_signature_of_other_key_fails(unsigned: Sigstruct, signed: Sigstruct) -> None:
    other = ss.sign(unsigned, rsa.generate_private_key(public_exponent=3, key_size=3072))
    mixed = signed._replace(signature=other.signature)
    result = ss.verify(mixed.pack())
    assert not result.check("signature").passed
    assert not result.check("q1").passed


def _region(offset: int) -> str:
    if offset < 16:
        return "header"
    if offset < 20:
        return "vendor"
    if 24 <= offset < 40:
        return "header2"
    if 44 <= offset < 128 or 910 <= offset < 912 or 992 <= offset < 1008:
        return "signed-reserved"
    if offset < 128 or 900 <= offset < 1028:
        return "signed"
    if offset < 512:
        return "modulus"
    if offset < 516:
        return "exponent"
    if offset < 900:
        return "signature"
    if offset < 1040:
        return "unsigned-reserved"
    if offset < 1424:
        return "q1"
    return "q2"


# Which checks must fail (and which must still pass) for a one-byte change in each region.
_MUST_FAIL = {
    "header": {"header", "signature"},
    "vendor": {"vendor", "signature"},
    "header2": {"header2", "signature"},
    "signed-reserved": {"reserved", "signature"},
    "signed": {"signature"},
    "modulus": {"signature"},
    "exponent": {"exponent"},
    "signature": {"signature"},
    "unsigned-reserved": {"reserved"},
    "q1": {"q1"},
    "q2": {"q2"},
}
_MUST_PASS = {
    "header": {"size", "header2", "q1", "q2"},
    "vendor": {"header", "header2", "q1", "q2"},
    "header2": {"header", "q1", "q2"},
    "signed-reserved": {"header", "header2", "q1", "q2"},
    "signed": {"header", "header2", "reserved", "q1", "q2", "exponent"},
    "modulus": {"header", "header2", "reserved", "exponent"},
    "exponent": {"signature", "q1", "q2", "modulus"},
    "signature": {"header", "reserved", "exponent", "modulus"},
    "unsigned-reserved": {"signature", "q1", "q2"},
    "q1": {"signature", "q2", "reserved"},
    "q2": {"signature", "q1", "reserved"},
}


@settings(max_examples=300, deadline=None)
@given(
    offset=st.one_of(
        st.integers(0, 127),  # signed header region
        st.integers(128, 899),  # modulus, exponent, signature
        st.integers(900, 1027),  # signed body region
        st.integers(1028, 1807),  # unsigned reserved, Q1, Q2
    ),
    flip=st.integers(1, 255),
)
def test_single_byte_corruption_fails_the_right_check(
    signed: Sigstruct, offset: int, flip: int
) -> None:
    raw = bytearray(signed.pack())
    raw[offset] ^= flip
    result = ss.verify(bytes(raw))
    region = _region(offset)
    assert not result.ok
    failed = {c.name for c in result.failed}
    assert _MUST_FAIL[region] <= failed, (region, failed)
    assert failed.isdisjoint(_MUST_PASS[region]), (region, failed)
    # Structural damage means no parsed struct; otherwise the parse shows the change.
    if region in {"header", "vendor", "header2", "signed-reserved", "unsigned-reserved"}:
        assert result.sigstruct is None
    else:
        assert result.sigstruct is not None
        assert result.sigstruct.pack() == bytes(raw)


@given(st.binary(max_size=2000))
def test_verify_never_raises_on_random_bytes(data: bytes) -> None:
    result = ss.verify(data)
    assert not result.ok
    assert [c.name for c in result.checks] == list(ss.CHECK_NAMES)


@given(st.binary(min_size=1808, max_size=1808))
def test_verify_never_raises_on_random_full_size(data: bytes) -> None:
    result = ss.verify(data)
    assert not result.ok
    assert result.check("size").passed


def test_verify_zero_modulus() -> None:
    raw = bytearray(Sigstruct(exponent=3).pack())
    result = ss.verify(bytes(raw))
    assert not result.check("modulus").passed
    assert not result.check("signature").passed
    assert "zero" in result.check("q1").reason


# --- the RSA check without cryptography ----------------------------------------------------------

MESSAGE = bytes(range(256))
SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _em(t: bytes, *, head: bytes = b"\x00\x01", ps: int | None = None, tail: bytes = b"") -> bytes:
    """An encoded message 00 01 FF.. 00 T (RFC 8017 9.2), optionally malformed."""
    if ps is None:
        ps = 384 - len(head) - 1 - len(t) - len(tail)
    em = head + b"\xff" * ps + b"\x00" + t + tail
    return em + bytes(384 - len(em))


def _raw_sign(key: rsa.RSAPrivateKey, em: bytes) -> int:
    """S = EM^d mod N: any encoded message, well formed or not, "signed" with the key."""
    numbers = key.private_numbers()
    return pow(int.from_bytes(em, "big"), numbers.d, numbers.public_numbers.n)


DIGEST = hashlib.sha256(MESSAGE).digest()
ENCODED_MESSAGES = {
    "valid": _em(SHA256_INFO + DIGEST),
    "other message": _em(SHA256_INFO + hashlib.sha256(b"other").digest()),
    "sha1 digestinfo": _em(bytes.fromhex("3021300906052b0e03021a05000414")
                           + hashlib.sha1(MESSAGE).digest()),
    "no NULL parameters": _em(bytes.fromhex("302f300b0609608648016503040201") + b"\x04\x20"
                              + DIGEST),
    "garbage after the digest": _em(SHA256_INFO + DIGEST, ps=8, tail=b"\x01" * 100),
    "short padding": _em(SHA256_INFO + DIGEST, ps=8),
    "block type 2": _em(SHA256_INFO + DIGEST, head=b"\x00\x02"),
    "no leading zero": _em(SHA256_INFO + DIGEST, head=b"\x01\x01"),
    "bare digest": _em(DIGEST),
}


@pytest.mark.parametrize("name", ENCODED_MESSAGES)
def test_rsa_check_agrees_with_openssl(key: rsa.RSAPrivateKey, name: str) -> None:
    n = key.public_key().public_numbers().n
    signature = _raw_sign(key, ENCODED_MESSAGES[name])
    got = ss._rsa_check(MESSAGE, signature, n)
    assert got == ss._rsa_check_cryptography(MESSAGE, signature, n)
    assert got[0] is (name == "valid")


@pytest.mark.parametrize("signature", [0, 1, 2, -1])
def test_rsa_check_edge_signatures(key: rsa.RSAPrivateKey, signature: int) -> None:
    n = key.public_key().public_numbers().n
    s = n + signature if signature < 0 else signature
    assert ss._rsa_check(MESSAGE, s, n) == ss._rsa_check_cryptography(MESSAGE, s, n)
    assert not ss._rsa_check(MESSAGE, s, n)[0]


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=2**3072 - 1), st.binary(max_size=64))
def test_rsa_check_random_signatures(key: rsa.RSAPrivateKey, s: int, message: bytes) -> None:
    n = key.public_key().public_numbers().n
    s %= n  # (at or above the modulus is refused before either check)
    assert ss._rsa_check(message, s, n) == ss._rsa_check_cryptography(message, s, n)


def test_bad_signature_in_a_sigstruct_fails(key: rsa.RSAPrivateKey, signed: Sigstruct) -> None:
    # A signature over other data, and one off by one, with Q1/Q2 recomputed to match.
    other = ss.sign(signed._replace(isv_svn=signed.isv_svn + 1), key)
    for signature in (other.signature_int, signed.signature_int + 1):
        q1, q2 = ss.compute_q1_q2(signature, signed.modulus_int)
        bad = signed._replace(
            signature=signature.to_bytes(384, "little"),
            q1=q1.to_bytes(384, "little"), q2=q2.to_bytes(384, "little"))
        result = ss.verify(bad.pack())
        assert [c.name for c in result.failed] == ["signature"]
        assert result.check("signature").reason == (
            "RSA signature does not verify over the signed regions")


def test_unusual_moduli_are_left_to_openssl(key: rsa.RSAPrivateKey) -> None:
    even = key.public_key().public_numbers().n + 1
    small = rsa.generate_private_key(public_exponent=3, key_size=2048)
    for n in (even, small.public_key().public_numbers().n, 2**3071 + 1):
        assert ss._rsa_check(MESSAGE, 5, n) == ss._rsa_check_cryptography(MESSAGE, 5, n)


def test_even_modulus_is_refused_even_with_a_cube_root() -> None:
    # N = 2M is 3072 bits and S^3 = EM (mod N) is made to hold; OpenSSL refuses even moduli,
    # and so must the check that does without it.
    m_key = rsa.generate_private_key(public_exponent=3, key_size=3071)
    m = m_key.public_key().public_numbers().n
    n = 2 * m
    em = int.from_bytes(ENCODED_MESSAGES["valid"], "big")
    root = pow(em, m_key.private_numbers().d, m)
    s = root if root % 2 == em % 2 else root + m  # x^3 = x (mod 2)
    assert pow(s, 3, n) == em and n.bit_length() == 3072
    assert ss._rsa_check(MESSAGE, s, n) == ss._rsa_check_cryptography(MESSAGE, s, n)
    assert not ss._rsa_check(MESSAGE, s, n)[0]


def test_verify_imports_no_rsa_code(signed: Sigstruct) -> None:
    code = (
        "import sys\n"
        "from geode.formats import sigstruct\n"
        f"assert sigstruct.verify(bytes.fromhex({signed.pack().hex()!r})).ok\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography.hazmat')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# --- view ---------------------------------------------------------------------------------------

GRAMINE_VIEW_KEYS = [
    "mr_signer",
    "mr_enclave",
    "isv_prod_id",
    "isv_svn",
    "attribute_flags",
    "attribute_xfrms",
    "misc_select",
    "attribute_flags_mask",
    "attribute_xfrm_mask",
    "misc_mask",
    "date",
    "debug_enclave",
]


def test_view_fields(signed: Sigstruct) -> None:
    v = ss.view(signed)
    assert list(v) == GRAMINE_VIEW_KEYS
    assert v["mr_enclave"] == hashlib.sha256(b"enclave").hexdigest()
    assert v["mr_signer"] == hashlib.sha256(signed.modulus).hexdigest()
    assert v["isv_prod_id"] == 7
    assert v["isv_svn"] == 42
    assert v["attribute_flags"] == "0x6"
    assert v["attribute_xfrms"] == "0x3"
    assert v["misc_select"] == "0x1"
    assert v["attribute_flags_mask"] == "0xffffffffffffffff"
    assert v["attribute_xfrm_mask"] == "0xfffffffffff9ff1b"
    assert v["misc_mask"] == "0xffffffff"
    assert v["date"] == "2025-06-12"
    assert v["debug_enclave"] is True


def test_view_debug_bit_and_quiet_mode() -> None:
    assert ss.view(Sigstruct(attribute_flags=0x4))["debug_enclave"] is False
    assert ss.view(Sigstruct(attribute_flags=0x2))["debug_enclave"] is True
    quiet = ss.view(Sigstruct(), verbose=False)
    assert list(quiet) == ["mr_signer", "mr_enclave", "isv_prod_id", "isv_svn", "debug_enclave"]
