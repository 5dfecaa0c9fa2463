"""SGX attributes from the manifest, checked against Gramine's signer rules."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geode.errors import ManifestError
from geode.formats.sigstruct import Sigstruct
from geode.signing.attributes import SgxAttributes, sgx_attributes

DEFAULT_XFRM_MASK = 0xFFFFFFFFFFF9FF1B

# The sgx table as Gramine's Manifest applies defaults to it.
GRAMINE_DEFAULTS: dict[str, Any] = {
    "debug": False,
    "use_exinfo": False,
    "isvprodid": 0,
    "isvsvn": 0,
    "cpu_features": {
        "avx": "unspecified",
        "avx512": "unspecified",
        "amx": "unspecified",
        "mpx": "disabled",
        "pkru": "disabled",
    },
}

DEFAULT = SgxAttributes(
    flags=0x4,
    xfrm=0x3,
    flags_mask=0xFFFFFFFFFFFFFFFF,
    xfrm_mask=DEFAULT_XFRM_MASK,
    misc_select=0,
    misc_mask=0xFFFFFFFF,
    isv_prod_id=0,
    isv_svn=0,
)


@pytest.mark.parametrize("manifest", [{}, {"sgx": {}}, {"sgx": GRAMINE_DEFAULTS}])
def test_defaults(manifest: dict[str, Any]) -> None:
    attrs = sgx_attributes(manifest)
    assert attrs == DEFAULT
    assert not attrs.debug


def test_debug_sets_flag_bit_1() -> None:
    attrs = sgx_attributes({"sgx": {"debug": True}})
    assert attrs.flags == 0x6
    assert attrs.debug
    assert sgx_attributes({"sgx": {"debug": False}}).flags == 0x4


def test_use_exinfo_sets_miscselect() -> None:
    attrs = sgx_attributes({"sgx": {"use_exinfo": True}})
    assert attrs.misc_select == 0x1
    assert attrs.misc_mask == 0xFFFFFFFF


def test_isv_ids() -> None:
    attrs = sgx_attributes({"sgx": {"isvprodid": 65535, "isvsvn": 7}})
    assert (attrs.isv_prod_id, attrs.isv_svn) == (65535, 7)


# (feature, value) -> (xfrm, xfrm_mask), worked out by hand from the XCR0 bit values:
# AVX 0x4, MPX 0x18, AVX-512 0xe4, PKRU 0x200, AMX 0x60000; legacy x87|SSE 0x3.
CPU_FEATURE_CASES = [
    ("avx", "unspecified", 0x3, DEFAULT_XFRM_MASK),
    ("avx", "required", 0x7, 0xFFFFFFFFFFF9FF1F),
    ("avx", "disabled", 0x3, 0xFFFFFFFFFFF9FF1F),
    ("avx512", "unspecified", 0x3, DEFAULT_XFRM_MASK),
    ("avx512", "required", 0xE7, 0xFFFFFFFFFFF9FFFF),
    ("avx512", "disabled", 0x3, 0xFFFFFFFFFFF9FFFF),
    ("amx", "unspecified", 0x3, DEFAULT_XFRM_MASK),
    ("amx", "required", 0x60003, 0xFFFFFFFFFFFFFF1B),
    ("amx", "disabled", 0x3, 0xFFFFFFFFFFFFFF1B),
    ("mpx", "required", 0x1B, DEFAULT_XFRM_MASK),
    ("mpx", "disabled", 0x3, DEFAULT_XFRM_MASK),
    ("pkru", "required", 0x203, DEFAULT_XFRM_MASK),
    ("pkru", "disabled", 0x3, DEFAULT_XFRM_MASK),
]


@pytest.mark.parametrize(("feature", "value", "xfrm", "mask"), CPU_FEATURE_CASES)
def test_cpu_feature(feature: str, value: str, xfrm: int, mask: int) -> None:
    attrs = sgx_attributes({"sgx": {"cpu_features": {feature: value}}})
    assert (hex(attrs.xfrm), hex(attrs.xfrm_mask)) == (hex(xfrm), hex(mask))
    # Other fields are unaffected by CPU features.
    assert attrs.flags == 0x4
    assert attrs.misc_select == 0


def test_all_required() -> None:
    features = {k: "required" for k in ("avx", "avx512", "amx", "mpx", "pkru")}
    attrs = sgx_attributes({"sgx": {"cpu_features": features}})
    assert attrs.xfrm == 0x3 | 0x4 | 0xE4 | 0x60000 | 0x18 | 0x200 == 0x602FF
    assert attrs.xfrm_mask == 0xFFFFFFFFFFFFFFFF


def test_avx512_disabled_clears_avx_as_gramine_does() -> None:
    # Gramine applies avx, avx512, amx in that order; AVX-512's bits include AVX (bit 2).
    attrs = sgx_attributes({"sgx": {"cpu_features": {"avx": "required", "avx512": "disabled"}}})
    assert attrs.xfrm == 0x3
    assert attrs.xfrm_mask == 0xFFFFFFFFFFF9FFFF


@pytest.mark.parametrize("feature", ["mpx", "pkru"])
def test_secure_features_cannot_be_unspecified(feature: str) -> None:
    with pytest.raises(ManifestError, match=f"sgx.cpu_features.{feature}"):
        sgx_attributes({"sgx": {"cpu_features": {feature: "unspecified"}}})


@pytest.mark.parametrize("feature", ["avx", "avx512", "amx", "mpx", "pkru"])
@pytest.mark.parametrize("value", ["yes", "Required", True, 1, None, ""])
def test_bad_cpu_feature_values(feature: str, value: Any) -> None:
    with pytest.raises(ManifestError) as info:
        sgx_attributes({"sgx": {"cpu_features": {feature: value}}})
    assert f"sgx.cpu_features.{feature}" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_cpu_feature() -> None:
    with pytest.raises(ManifestError, match="sgx.cpu_features.sse"):
        sgx_attributes({"sgx": {"cpu_features": {"sse": "required"}}})


@pytest.mark.parametrize(
    ("manifest", "key"),
    [
        ({"sgx": []}, "sgx"),
        ({"sgx": {"cpu_features": "avx"}}, "sgx.cpu_features"),
        ({"sgx": {"debug": "true"}}, "sgx.debug"),
        ({"sgx": {"debug": 1}}, "sgx.debug"),
        ({"sgx": {"use_exinfo": "yes"}}, "sgx.use_exinfo"),
        ({"sgx": {"isvprodid": 65536}}, "sgx.isvprodid"),
        ({"sgx": {"isvprodid": -1}}, "sgx.isvprodid"),
        ({"sgx": {"isvsvn": "1"}}, "sgx.isvsvn"),
        ({"sgx": {"isvsvn": True}}, "sgx.isvsvn"),
        ({"sgx": {"require_avx": True}}, "sgx.require_avx"),
        ({"sgx": {"require_exinfo": True}}, "sgx.require_exinfo"),
    ],
)
def test_bad_values_name_the_key(manifest: dict[str, Any], key: str) -> None:
    with pytest.raises(ManifestError) as info:
        sgx_attributes(manifest)
    assert str(info.value).startswith(key + ":")


def test_apply_to_sigstruct() -> None:
    attrs = sgx_attributes(
        {
            "sgx": {
                "debug": True,
                "use_exinfo": True,
                "isvprodid": 0x1234,
                "isvsvn": 0x5678,
                "cpu_features": {"avx": "required", "pkru": "required"},
            }
        }
    )
    raw = attrs.apply(Sigstruct(swdefined=9)).pack()
    assert struct.unpack_from("<I", raw, 40)[0] == 9
    assert struct.unpack_from("<II", raw, 900) == (0x1, 0xFFFFFFFF)
    assert struct.unpack_from("<QQ", raw, 928) == (0x6, 0x207)
    assert struct.unpack_from("<QQ", raw, 944) == (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFF9FF1F)
    assert struct.unpack_from("<HH", raw, 1024) == (0x1234, 0x5678)


optional_values = st.sampled_from(["unspecified", "disabled", "required"])
secure_values = st.sampled_from(["disabled", "required"])


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "avx": optional_values,
            "avx512": optional_values,
            "amx": optional_values,
            "mpx": secure_values,
            "pkru": secure_values,
        },
    ),
    st.booleans(),
)
def test_invariants(features: dict[str, str], debug: bool) -> None:
    attrs = sgx_attributes({"sgx": {"cpu_features": features, "debug": debug}})
    # x87 and SSE always required and enforced; MPX/PKRU always enforced.
    assert attrs.xfrm & 0x3 == 0x3
    assert attrs.xfrm_mask & (0x3 | 0x18 | 0x200) == 0x3 | 0x18 | 0x200
    # Reserved XCR0 bits are never set and always enforced.
    known = 0x3 | 0x4 | 0x18 | 0xE4 | 0x200 | 0x60000
    assert attrs.xfrm & ~known == 0
    assert attrs.xfrm_mask | known == 0xFFFFFFFFFFFFFFFF
    # Each feature's bits are enforced unless "unspecified"; MPX/PKRU/AMX match their setting.
    for name, bits in (("avx512", 0xE4), ("amx", 0x60000)):
        if features.get(name, "unspecified") != "unspecified":
            assert attrs.xfrm_mask & bits == bits
    for name, bits in (("mpx", 0x18), ("pkru", 0x200), ("amx", 0x60000)):
        wanted = bits if features.get(name) == "required" else 0
        assert attrs.xfrm & bits == wanted
    assert attrs.flags == (0x6 if debug else 0x4)
