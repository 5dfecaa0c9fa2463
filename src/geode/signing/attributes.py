"""SGX enclave attributes derived from a manifest, as Gramine's signer derives them.

What goes into SIGSTRUCT from ``sgx.*``:

* ATTRIBUTES.FLAGS: MODE64BIT always, DEBUG when ``sgx.debug`` is true; nothing else (no KSS,
  no PROVISION_KEY). ATTRIBUTEMASK.FLAGS is all ones.
* ATTRIBUTES.XFRM starts at x87|SSE (0x3) with mask 0xfffffffffff9ff1b (AVX, AVX-512 and AMX
  bits not enforced). Then ``sgx.cpu_features.{avx,avx512,amx}`` in that order, then
  ``{mpx,pkru}``: "required" sets the feature bits in XFRM and in the mask, "disabled" clears
  them in XFRM and sets them in the mask, "unspecified" (allowed for avx/avx512/amx only)
  leaves both alone. Defaults: "unspecified" for avx/avx512/amx, "disabled" for mpx/pkru.
  As in Gramine, the AVX-512 bits (0xe4) include the AVX bit 2, so ``avx512 = "disabled"``
  also clears AVX.
* MISCSELECT: EXINFO (bit 0) when ``sgx.use_exinfo`` is true; MISCMASK is all ones.
* ISVPRODID / ISVSVN from ``sgx.isvprodid`` / ``sgx.isvsvn`` (default 0).
"""

from __future__ import annotations

from collections.abc import Mapping

from geode.errors import ManifestError
from geode.formats.sigstruct import Sigstruct
from geode.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# ATTRIBUTES.FLAGS bits (SDM "ATTRIBUTES structure").
SGX_FLAGS_INITIALIZED = 0x01
SGX_FLAGS_DEBUG = 0x02
SGX_FLAGS_MODE64BIT = 0x04
SGX_FLAGS_PROVISION_KEY = 0x10
SGX_FLAGS_LICENSE_KEY = 0x20
SGX_FLAGS_KSS = 0x80
SGX_FLAGS_MASK_CONST = 0xFFFFFFFFFFFFFFFF

# ATTRIBUTES.XFRM bits (XCR0 layout).
SGX_XFRM_LEGACY = 0x03  # x87 | SSE, always required by SGX
SGX_XFRM_AVX = 0x04
SGX_XFRM_MPX = 0x18  # BNDREGS | BNDCSR
SGX_XFRM_AVX512 = 0xE4  # AVX | opmask | ZMM_Hi256 | Hi16_ZMM
SGX_XFRM_PKRU = 0x200
SGX_XFRM_AMX = 0x60000  # XTILECFG | XTILEDATA
SGX_XFRM_MASK_CONST = 0xFFFFFFFFFFF9FF1B

SGX_MISCSELECT_EXINFO = 0x01
SGX_MISCSELECT_MASK_CONST = 0xFFFFFFFF

#: Features that may be left "unspecified" (not enforced by EINIT).
OPTIONAL_CPU_FEATURES: dict[str, int] = {
    "avx": SGX_XFRM_AVX,
    "avx512": SGX_XFRM_AVX512,
    "amx": SGX_XFRM_AMX,
}
#: Security-relevant features: only "disabled" (default) or "required".
SECURE_CPU_FEATURES: dict[str, int] = {
    "mpx": SGX_XFRM_MPX,
    "pkru": SGX_XFRM_PKRU,
}
CPU_FEATURE_DEFAULTS: dict[str, str] = {
    "avx": "unspecified",
    "avx512": "unspecified",
    "amx": "unspecified",
    "mpx": "disabled",
    "pkru": "disabled",
}

# Keys Gramine removed in v1.7 in favour of sgx.cpu_features / sgx.use_exinfo.
_REMOVED_KEYS: dict[str, str] = {
    "require_avx": "sgx.cpu_features.avx",
    "require_avx512": "sgx.cpu_features.avx512",
    "require_mpx": "sgx.cpu_features.mpx",
    "require_pkru": "sgx.cpu_features.pkru",
    "require_amx": "sgx.cpu_features.amx",
    "require_exinfo": "sgx.use_exinfo",
    "support_exinfo": "sgx.use_exinfo",
}


class SgxAttributes(Record):
    """The manifest-derived SIGSTRUCT fields."""

    flags: int
    xfrm: int
    flags_mask: int
    xfrm_mask: int
    misc_select: int
    misc_mask: int
    isv_prod_id: int = 0
    isv_svn: int = 0

    @property
    def debug(self) -> bool:
        return bool(self.flags & SGX_FLAGS_DEBUG)

    def apply(self, sigstruct: Sigstruct) -> Sigstruct:
        """A copy of *sigstruct* with these attributes, masks and ISV ids."""
        return sigstruct._replace(
            attribute_flags=self.flags,
            attribute_xfrm=self.xfrm,
            attribute_flags_mask=self.flags_mask,
            attribute_xfrm_mask=self.xfrm_mask,
            misc_select=self.misc_select,
            misc_mask=self.misc_mask,
            isv_prod_id=self.isv_prod_id,
            isv_svn=self.isv_svn,
        )


def _bool(sgx: Mapping[str, Any], key: str) -> bool:
    value = sgx.get(key, False)
    if not isinstance(value, bool):
        raise ManifestError(f"must be a boolean, got {value!r}", where=f"sgx.{key}")
    return value


def _u16(sgx: Mapping[str, Any], key: str) -> int:
    value = sgx.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ManifestError(f"must be an integer in 0..65535, got {value!r}", where=f"sgx.{key}")
    return value


def _apply_feature(
    features: Mapping[str, Any], name: str, bits: int, xfrm: int, mask: int, *, secure: bool
) -> tuple[int, int]:
    value = features.get(name, CPU_FEATURE_DEFAULTS[name])
    if value == "required":
        return xfrm | bits, mask | bits
    if value == "disabled":
        return xfrm & ~bits, mask | bits
    if value == "unspecified" and not secure:
        return xfrm, mask
    allowed = '"disabled" or "required"' if secure else '"unspecified", "disabled" or "required"'
    raise ManifestError(f"must be {allowed}, got {value!r}", where=f"sgx.cpu_features.{name}")


def sgx_attributes(manifest: Mapping[str, Any]) -> SgxAttributes:
    """Compute SIGSTRUCT attributes from a manifest dict (defaults applied or not).

    ManifestError, naming the key, for a value of the wrong type or outside the allowed set,
    for an unknown ``sgx.cpu_features`` key, and for the pre-v1.7 ``sgx.require_*`` keys.
    """
    sgx = manifest.get("sgx", {})
    if sgx is None:
        sgx = {}
    if not isinstance(sgx, Mapping):
        raise ManifestError(f"must be a table, got {type(sgx).__name__}", where="sgx")

    for old, new in _REMOVED_KEYS.items():
        if old in sgx:
            raise ManifestError(f"was removed, use `{new}` instead", where=f"sgx.{old}")

    flags = SGX_FLAGS_MODE64BIT
    if _bool(sgx, "debug"):
        flags |= SGX_FLAGS_DEBUG

    misc_select = SGX_MISCSELECT_EXINFO if _bool(sgx, "use_exinfo") else 0

    features = sgx.get("cpu_features", {})
    if features is None:
        features = {}
    if not isinstance(features, Mapping):
        raise ManifestError(
            f"must be a table, got {type(features).__name__}", where="sgx.cpu_features"
        )
    for name in features:
        if name not in CPU_FEATURE_DEFAULTS:
            known = ", ".join(CPU_FEATURE_DEFAULTS)
            raise ManifestError(
                f"unknown CPU feature (known: {known})", where=f"sgx.cpu_features.{name}"
            )

    xfrm, xfrm_mask = SGX_XFRM_LEGACY, SGX_XFRM_MASK_CONST
    for name, bits in OPTIONAL_CPU_FEATURES.items():
        xfrm, xfrm_mask = _apply_feature(features, name, bits, xfrm, xfrm_mask, secure=False)
    for name, bits in SECURE_CPU_FEATURES.items():
        xfrm, xfrm_mask = _apply_feature(features, name, bits, xfrm, xfrm_mask, secure=True)

    return SgxAttributes(
        flags=flags,
        xfrm=xfrm,
        flags_mask=SGX_FLAGS_MASK_CONST,
        xfrm_mask=xfrm_mask,
        misc_select=misc_select,
        misc_mask=SGX_MISCSELECT_MASK_CONST,
        isv_prod_id=_u16(sgx, "isvprodid"),
        isv_svn=_u16(sgx, "isvsvn"),
    )
