"""The manifest schema: every key Gramine v1.9 knows, plus Geode's own ``geode.*`` keys.

The schema is one flat table, :data:`KEYS`. Each :class:`Key` has a dotted *pattern*:

* ``a.b.c``      an ordinary key inside (possibly implicit) tables ``a`` and ``a.b``;
* ``x[]``        the elements of the array ``x`` (``fs.mounts[].path``);
* ``x.<NAME>``   a user-chosen name inside the table ``x`` (``loader.env.<NAME>``).

The same table drives :func:`check` (validation), :func:`apply_defaults` (the defaults that
Gramine's ``gramine-manifest`` writes into a rendered manifest) and
:func:`schema_reference_markdown` (documentation). Adding a ``geode.*`` key is one more
:class:`Key` line in the ``geode`` section of :data:`KEYS`.

Behaviour matched with Gramine v1.9 (``python/graminelibos/manifest_check.py``, ``manifest.py``,
LibOS parsers):

* unknown keys are errors, as in Gramine's schema (voluptuous rejects extra keys by default);
* ``fs.mounts`` and ``libos.entrypoint`` are required (Gramine's schema requires both);
  ``loader.entrypoint`` is optional here because :func:`apply_defaults` fills it in;
* size strings are parsed like the LibOS parses them: decimal digits with an optional
  ``K``/``M``/``G`` suffix (either case), powers of 1024, result fits in 64 bits.

Geode is stricter than Gramine's schema where Gramine would fail later anyway (for example a
``sha256`` that is not 64 hex digits, ``passthrough = false``, conflicting argv sources, a
``sgx.enclave_size`` that is not a power of two).

This module is pure: no I/O, no printing.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, NamedTuple, NoReturn

from geode.errors import ManifestError
from geode.manifest import expanded
from geode.manifest.lookup import split_size

__all__ = [
    "AbsPathType",
    "AnyType",
    "ArrayType",
    "BoolType",
    "DefaultContext",
    "EnumType",
    "HexType",
    "IntType",
    "KEYS",
    "Key",
    "MaskType",
    "OneOfType",
    "SizeType",
    "StrType",
    "Support",
    "TableType",
    "TrueOnlyType",
    "UriType",
    "ValueType",
    "apply_defaults",
    "check",
    "lookup",
    "parse_size",
    "schema_reference_markdown",
]

U64_MAX = 2**64 - 1
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------
# Describing values in messages
# --------------------------------------------------------------------------------------------


def _json(value: object) -> str:
    """``json.dumps(value)``, importing json on first use: only messages and docs need it."""
    import json

    return json.dumps(value)


def _kind(value: object) -> str:
    """TOML name of a Python value's type."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return "date/time"
    return type(value).__name__


def _shown(value: object) -> str:
    """A value as it appears in an error: its TOML type, plus the value for scalars."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"string {_json(text)}"
    if isinstance(value, int | float):
        return f"{_kind(value)} {value}"
    return _kind(value)


# --------------------------------------------------------------------------------------------
# Size strings
# --------------------------------------------------------------------------------------------

_SIZE_EXPECTED = 'a size: decimal digits with an optional K, M or G suffix (e.g. "256M")'


def _size_problem(value: object) -> tuple[int, None] | tuple[None, str]:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, f"expected {_SIZE_EXPECTED}, got {_shown(value)}"
    if isinstance(value, int):
        if not 0 <= value <= U64_MAX:
            return None, f"expected a size between 0 and 2**64-1, got {value}"
        return value, None
    split = split_size(value)
    if split is None:
        return None, f"expected {_SIZE_EXPECTED}, got {_shown(value)}"
    digits = split[0].lstrip("0") or "0"
    if len(digits) > 20:  # far beyond 2**64; also keeps int() away from huge strings
        return None, f"size {_json(value)} does not fit in 64 bits"
    size = int(digits) * split[1]
    if size > U64_MAX:
        return None, f"size {_json(value)} does not fit in 64 bits"
    return size, None


def parse_size(value: str | int, *, key: str) -> int:
    """Parse a Gramine size string (``"256M"``) into bytes.

    Accepts decimal digits followed by an optional ``K``, ``M`` or ``G`` (either case; units are
    powers of 1024), or a non-negative ``int``. Raises :class:`ManifestError` naming ``key``.
    """
    size, problem = _size_problem(value)
    if problem is not None:
        raise ManifestError(problem, where=key)
    assert size is not None
    return size


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------


class ValueType:
    """Type of a manifest value. Scalar types implement :meth:`problem`.

    Value types are plain classes with ``__slots__``, not dataclasses: the schema is built at
    every start of a program, and each frozen dataclass costs ~0.7 ms to create (its methods
    are compiled from generated source).
    """

    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({args})"

    def describe(self) -> str:
        raise NotImplementedError

    def problem(self, value: object) -> str | None:
        """``None`` if ``value`` is acceptable, else what is wrong with it."""
        raise NotImplementedError


class BoolType(ValueType):
    __slots__ = ()

    def describe(self) -> str:
        return "boolean"

    def problem(self, value: object) -> str | None:
        if isinstance(value, bool):
            return None
        return f"expected a boolean, got {_shown(value)}"


class IntType(ValueType):
    __slots__ = ("min_value", "max_value")

    def __init__(self, min_value: int | None = None, max_value: int | None = None) -> None:
        self.min_value = min_value
        self.max_value = max_value

    def describe(self) -> str:
        if self.min_value is not None and self.max_value is not None:
            return f"integer {self.min_value}..{self.max_value}"
        if self.min_value is not None:
            return f"integer >= {self.min_value}"
        return "integer"

    def problem(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {_shown(value)}"
        if self.min_value is not None and value < self.min_value:
            return f"expected an {self.describe()}, got {value}"
        if self.max_value is not None and value > self.max_value:
            return f"expected an {self.describe()}, got {value}"
        return None


class StrType(ValueType):
    __slots__ = ("nonempty",)

    def __init__(self, nonempty: bool = True) -> None:
        self.nonempty = nonempty

    def describe(self) -> str:
        return "string"

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected a string, got {_shown(value)}"
        if self.nonempty and not value:
            return "expected a non-empty string"
        if "\0" in value:
            return "string contains a NUL character"
        return None


class UriType(ValueType):
    __slots__ = ("schemes",)

    def __init__(self, schemes: tuple[str, ...]) -> None:
        self.schemes = schemes

    def describe(self) -> str:
        return "URI (" + " or ".join(f'"{s}:..."' for s in self.schemes) + ")"

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected a {self.describe()}, got {_shown(value)}"
        for scheme in self.schemes:
            if value.startswith(scheme + ":") and len(value) > len(scheme) + 1:
                return None if "\0" not in value else "URI contains a NUL character"
        return f"expected a {self.describe()}, got {_shown(value)}"


class AbsPathType(ValueType):
    __slots__ = ()

    def describe(self) -> str:
        return "absolute path"

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected an absolute path (string), got {_shown(value)}"
        if not value.startswith("/"):
            return f"expected an absolute path (starting with /), got {_shown(value)}"
        if "\0" in value:
            return "path contains a NUL character"
        return None


class HexType(ValueType):
    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def describe(self) -> str:
        return f"{self.digits} hex digits"

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected a string of {self.digits} hex digits, got {_shown(value)}"
        if len(value) != self.digits or _HEX_RE.fullmatch(value) is None:
            return f"expected exactly {self.digits} hex digits, got {_shown(value)}"
        return None


class MaskType(ValueType):
    __slots__ = ("bits",)

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def describe(self) -> str:
        return f"{self.bits}-bit hex string"

    def problem(self, value: object) -> str | None:
        expected = f'a {self.bits}-bit hex string such as "0x{"f" * (self.bits // 4)}"'
        if not isinstance(value, str):
            return f"expected {expected}, got {_shown(value)}"
        digits = value[2:] if value[:2] in ("0x", "0X") else value
        if _HEX_RE.fullmatch(digits) is None:
            return f"expected {expected}, got {_shown(value)}"
        if len(digits.lstrip("0")) > self.bits // 4:
            return f"{_json(value)} does not fit in {self.bits} bits"
        return None


class SizeType(ValueType):
    __slots__ = ("power_of_two",)

    def __init__(self, power_of_two: bool = False) -> None:
        self.power_of_two = power_of_two

    def describe(self) -> str:
        return 'size ("256M"), power of two' if self.power_of_two else 'size ("256K")'

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):  # Gramine reads sizes as strings only
            return f"expected {_SIZE_EXPECTED}, got {_shown(value)}"
        size, problem = _size_problem(value)
        if problem is not None:
            return problem
        assert size is not None
        if self.power_of_two and (size == 0 or size & (size - 1)):
            return f"must be a power of two, got {_json(value)} ({size} bytes)"
        return None


class EnumType(ValueType):
    __slots__ = ("values", "removed")

    def __init__(self, values: tuple[str, ...],
                 removed: tuple[tuple[str, str], ...] = ()) -> None:
        self.values = values
        self.removed = removed  # (value, explanation) pairs for retired values

    def describe(self) -> str:
        return " | ".join(_json(v) for v in self.values)

    def problem(self, value: object) -> str | None:
        if isinstance(value, str) and value in self.values:
            return None
        for old, why in self.removed:
            if value == old:
                return why
        return f"expected one of {self.describe()}, got {_shown(value)}"


class TrueOnlyType(ValueType):
    """A boolean that may only be ``true`` (``reason`` explains why ``false`` is refused)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def describe(self) -> str:
        return "true"

    def problem(self, value: object) -> str | None:
        if value is True:
            return None
        if value is False:
            return self.reason
        return f"expected true, got {_shown(value)}"


class AnyType(ValueType):
    """Accepted without validation (as Gramine does for ``sys.ioctl_structs``)."""

    __slots__ = ()

    def describe(self) -> str:
        return "any (not validated)"

    def problem(self, value: object) -> str | None:
        return None


class TableType(ValueType):
    """A table whose keys are the :data:`KEYS` entries below this key's pattern."""

    __slots__ = ()

    def describe(self) -> str:
        return "table"


class ArrayType(ValueType):
    __slots__ = ("item",)

    def __init__(self, item: ValueType) -> None:
        self.item = item

    def describe(self) -> str:
        return f"array of {self.item.describe()}"


class OneOfType(ValueType):
    """One of several types, chosen by the TOML kind of the value (string, table...)."""

    __slots__ = ("options",)

    def __init__(self, options: tuple[ValueType, ...]) -> None:
        self.options = options

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)


def _kind_matches(vtype: ValueType, value: object) -> bool:
    if isinstance(vtype, TableType):
        return isinstance(value, dict)
    if isinstance(vtype, ArrayType):
        return isinstance(value, list)
    if isinstance(vtype, BoolType | TrueOnlyType):
        return isinstance(value, bool)
    if isinstance(vtype, IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(vtype, AnyType):
        return True
    return isinstance(value, str)


# --------------------------------------------------------------------------------------------
# The key table
# --------------------------------------------------------------------------------------------


class Support(Enum):
    """What Geode does with a key."""

    ENFORCED = "enforced"
    IDENTITY = "identity only"
    IGNORED = "accepted, no effect"


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


class DefaultContext(NamedTuple):
    """What a computed default may look at."""

    manifest: Mapping[str, Any]
    libos_uri: str


class Key(NamedTuple):
    """One manifest key.

    ``default`` is the value Gramine assumes when the key is absent; ``written`` says whether
    ``gramine-manifest`` writes it into the rendered manifest (then :func:`apply_defaults` does
    too, using ``default_fn`` when the default depends on other keys). ``mount_types`` restricts
    a ``fs.mounts[]``/``fs.root`` key to some mount types.
    """

    path: str
    type: ValueType
    doc: str
    default: Any = NO_DEFAULT
    default_doc: str | None = None
    written: bool = False
    default_fn: Callable[[DefaultContext], Any] | None = None
    required: bool = False
    support: Support = Support.ENFORCED
    mount_types: frozenset[str] | None = None

    @property
    def default_text(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if self.default is NO_DEFAULT:
            return "required" if self.required else "—"
        return _toml_literal(self.default)


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _json(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return str(value)


_FILE = UriType(("file",))
_FILE_OR_DEV = UriType(("file", "dev"))
_BOOL = BoolType()
_STR = StrType()
_MOUNT_TYPES = ("chroot", "encrypted", "tmpfs", "untrusted_shm")
_ENCRYPTED = frozenset({"encrypted"})
_CPU_OPTIONAL = EnumType(("unspecified", "disabled", "required"))
_CPU_DISABLED = EnumType(("disabled", "required"))
_ENCLAVE_SIZE_NO_EDMM = "256M"
_ENCLAVE_SIZE_EDMM = "1024G"
_MAX_THREADS = 4


def _enclave_size_default(ctx: DefaultContext) -> str:
    sgx = ctx.manifest.get("sgx")
    edmm = isinstance(sgx, dict) and sgx.get("edmm_enable") is True
    return _ENCLAVE_SIZE_EDMM if edmm else _ENCLAVE_SIZE_NO_EDMM


def _mount_keys(prefix: str, *, with_path: bool) -> list[Key]:
    keys = [
        Key(
            f"{prefix}.type",
            EnumType(_MOUNT_TYPES),
            "Mount type: host directory (chroot), encrypted files, per-process RAM (tmpfs) "
            "or untrusted shared memory.",
            default="chroot",
        ),
    ]
    if with_path:
        keys.append(
            Key(f"{prefix}.path", AbsPathType(), "Where the mount appears inside.", required=True)
        )
    keys += [
        Key(
            f"{prefix}.uri",
            StrType(nonempty=False),
            'Host URI: "file:..." or "dev:..." ("file:" only for encrypted mounts). Required '
            "except for tmpfs, which ignores it.",
        ),
        Key(
            f"{prefix}.key_name",
            _STR,
            "Encryption key: a /dev/attestation/keys/ name, fs.insecure__keys name, "
            "_sgx_mrenclave or _sgx_mrsigner. Encrypted mounts only.",
            default="default",
            mount_types=_ENCRYPTED,
        ),
        Key(
            f"{prefix}.enable_recovery",
            _BOOL,
            "Keep a recovery file so an interrupted write can be rolled back. "
            "Encrypted mounts only.",
            default=False,
            mount_types=_ENCRYPTED,
        ),
    ]
    return keys


_I = Support.IGNORED
_ID = Support.IDENTITY

KEYS: tuple[Key, ...] = (
    # ---------------------------------------------------------------- loader
    Key(
        "loader.entrypoint",
        TableType(),
        "The runtime started first (in Gramine, the LibOS). The old string form is gone.",
        default_doc="{ uri = <runtime> }",
    ),
    Key(
        "loader.entrypoint.uri",
        _FILE,
        "Runtime binary; filled in by gramine-manifest.",
        default_doc='"file:" + Geode runtime path',
        written=True,
        default_fn=lambda ctx: ctx.libos_uri,
    ),
    Key(
        "loader.entrypoint.sha256",
        HexType(64),
        "SHA-256 of the runtime binary, checked at start; computed by gramine-manifest.",
        default_doc="computed",
    ),
    Key(
        "loader.argv",
        ArrayType(StrType(nonempty=False)),
        "Fixed argv. Exclusive with loader.argv_src_file and loader.insecure__use_cmdline_argv; "
        "with none of them argv is [libos.entrypoint].",
    ),
    Key(
        "loader.argv_src_file",
        _FILE,
        "File holding argv serialized by gramine-argv-serializer (should be a trusted file).",
    ),
    Key(
        "loader.insecure__use_cmdline_argv",
        _BOOL,
        "Take argv from the untrusted host command line.",
        default=False,
    ),
    Key(
        "loader.env.<NAME>",
        OneOfType((StrType(nonempty=False), TableType())),
        'Environment variable: "value", { value = "value" } or { passthrough = true }.',
    ),
    Key("loader.env.<NAME>.value", StrType(nonempty=False), "Value of the variable."),
    Key(
        "loader.env.<NAME>.passthrough",
        TrueOnlyType(
            "passthrough = false is not supported (deny-lists give no security); "
            "remove the variable or use passthrough = true"
        ),
        "Copy the variable from the host environment.",
    ),
    Key(
        "loader.env_src_file",
        _FILE,
        "File with environment variables serialized by gramine-argv-serializer; "
        "loader.env.* entries take precedence.",
    ),
    Key(
        "loader.insecure__use_host_env",
        _BOOL,
        "Forward the whole host environment.",
        default=False,
    ),
    Key("loader.uid", IntType(0, 2**32 - 1), "Initial user ID of the program.", default=0),
    Key("loader.gid", IntType(0, 2**32 - 1), "Initial group ID of the program.", default=0),
    Key(
        "loader.log_level",
        EnumType(("none", "error", "warning", "debug", "trace", "all")),
        "Verbosity of the runtime's log; only error is fit for production.",
        default="error",
    ),
    Key("loader.log_file", _STR, "Append the log to this host file instead of stderr."),
    Key(
        "loader.insecure__disable_aslr",
        _BOOL,
        "Turn off address space layout randomization.",
        default=False,
    ),
    # ---------------------------------------------------------------- libos
    Key(
        "libos.entrypoint",
        _STR,
        "Path (inside) of the first program; relative paths start at fs.start_dir.",
        required=True,
    ),
    Key(
        "libos.check_invalid_pointers",
        _BOOL,
        "Gramine: return EFAULT for bad user pointers. Geode's kernel always does.",
        default=True,
        support=_I,
    ),
    # ---------------------------------------------------------------- fs
    Key(
        "fs.root",
        TableType(),
        "Root file system (same keys as a mount, without path).",
        default_doc='{ type = "chroot", uri = "file:." }',
    ),
    *_mount_keys("fs.root", with_path=False),
    Key(
        "fs.mounts",
        ArrayType(TableType()),
        "Mounts, applied in order. /proc, /dev and /sys are provided implicitly.",
        required=True,
    ),
    *_mount_keys("fs.mounts[]", with_path=True),
    Key("fs.start_dir", _STR, "Initial working directory.", default="/"),
    Key(
        "fs.insecure__keys.<NAME>",
        HexType(32),
        "Encryption key (16 bytes as 32 hex digits) written in the manifest; debugging only.",
    ),
    # ---------------------------------------------------------------- sys
    Key(
        "sys.stack.size",
        SizeType(),
        "Stack size of the main thread (RLIMIT_STACK), which glibc also uses as the default "
        "thread stack size.",
        default="256K",
    ),
    Key(
        "sys.brk.max_size",
        SizeType(),
        "Gramine: maximum program break. Geode's kernel manages brk.",
        default="256K",
        support=_I,
    ),
    Key(
        "sys.fds.limit",
        IntType(0, 2**32 - 1),
        "Maximum number of open file descriptors (RLIMIT_NOFILE); not taken from the host.",
        default=900,
    ),
    Key(
        "sys.enable_sigterm_injection",
        _BOOL,
        "Let one SIGTERM from the host through; other host signals are ignored.",
        default=False,
    ),
    Key(
        "sys.disallow_subprocesses",
        _BOOL,
        "Make fork/clone of new processes fail.",
        default=False,
    ),
    Key(
        "sys.insecure__allow_eventfd",
        _BOOL,
        "Gramine: allow eventfd() on the untrusted host. In Geode eventfd is an object of "
        "the trusted kernel and always available.",
        default=False,
        support=_I,
    ),
    Key(
        "sys.experimental__enable_flock",
        _BOOL,
        "Gramine: emulate flock(). In Geode the kernel provides flock() always.",
        default=False,
        support=_I,
    ),
    Key(
        "sys.enable_extra_runtime_domain_names_conf",
        _BOOL,
        "Provide the host's hostname and a sanitized /etc/resolv.conf.",
        default=False,
    ),
    Key(
        "sys.allowed_ioctls",
        ArrayType(TableType()),
        "Gramine: ioctls passed to the host. Geode runs ioctls natively.",
        support=_I,
    ),
    Key(
        "sys.allowed_ioctls[].request_code",
        IntType(0, U64_MAX),
        "ioctl request number.",
        required=True,
        support=_I,
    ),
    Key(
        "sys.allowed_ioctls[].struct",
        _STR,
        "Name of a sys.ioctl_structs entry describing the argument.",
        support=_I,
    ),
    Key(
        "sys.ioctl_structs.<ID>",
        AnyType(),
        "Gramine's description of an ioctl argument's memory layout; not validated.",
        support=_I,
    ),
    Key(
        "sys.debug__mock_syscalls",
        ArrayType(TableType()),
        "Gramine: system calls that return a fixed value without running; debugging only. "
        "Not implemented in Geode yet: the calls run normally.",
        support=_I,
    ),
    Key("sys.debug__mock_syscalls[].name", _STR, "System call name.", required=True,
        support=_I),
    Key("sys.debug__mock_syscalls[].return", IntType(), "Value returned.", default=0,
        support=_I),
    # ---------------------------------------------------------------- sgx
    Key(
        "sgx.debug",
        _BOOL,
        "Debug enclave/identity; must be false in production.",
        default=False,
        written=True,
        support=_ID,
    ),
    Key(
        "sgx.edmm_enable",
        _BOOL,
        "SGX dynamic memory management.",
        default=False,
        written=True,
        support=_I,
    ),
    Key(
        "sgx.enclave_size",
        SizeType(power_of_two=True),
        "SGX enclave size; in Geode the address-space limit of each process (RLIMIT_AS).",
        default_doc='"256M" ("1024G" with sgx.edmm_enable)',
        written=True,
        default_fn=_enclave_size_default,
    ),
    Key(
        "sgx.max_threads",
        IntType(1),
        "SGX thread slots (TCS) per process; in Geode a task limit (RLIMIT_NPROC in the "
        "sandbox's user namespace) when sys.disallow_subprocesses makes the program one "
        "process, no limit otherwise (a shared budget would break multi-process programs).",
        default=_MAX_THREADS,
        written=True,
    ),
    Key(
        "sgx.insecure__rpc_thread_num",
        IntType(0),
        "SGX exitless helper threads.",
        default=0,
        support=_I,
    ),
    Key(
        "sgx.use_exinfo",
        _BOOL,
        "Report SGX fault details (EXINFO) to the enclave; in Geode only MISCSELECT of the "
        "SIGSTRUCT.",
        default=False,
        written=True,
        support=_ID,
    ),
    Key(
        "sgx.insecure__allow_memfaults_without_exinfo",
        _BOOL,
        "Allow memory faults on CPUs without EXINFO.",
        default=False,
        support=_I,
    ),
    *(
        Key(
            f"sgx.cpu_features.{name}",
            _CPU_OPTIONAL,
            f"{name.upper()} in SIGSTRUCT attributes.",
            default="unspecified",
            written=True,
            support=_ID,
        )
        for name in ("avx", "avx512", "amx")
    ),
    *(
        Key(
            f"sgx.cpu_features.{name}",
            _CPU_DISABLED,
            f"{name.upper()} in SIGSTRUCT attributes.",
            default="disabled",
            written=True,
            support=_ID,
        )
        for name in ("mpx", "pkru")
    ),
    Key(
        "sgx.isvprodid",
        IntType(0, 0xFFFF),
        "Product ID in SIGSTRUCT and evidence.",
        default=0,
        written=True,
        support=_ID,
    ),
    Key(
        "sgx.isvsvn",
        IntType(0, 0xFFFF),
        "Security version number in SIGSTRUCT and evidence.",
        default=0,
        written=True,
        support=_ID,
    ),
    Key(
        "sgx.seal_key.flags_mask",
        MaskType(64),
        "SGX sealing-key attribute mask.",
        default="0xffffffffffffffff",
        support=_I,
    ),
    Key(
        "sgx.seal_key.xfrm_mask",
        MaskType(64),
        "SGX sealing-key XFRM mask.",
        default="0xfffffffffff9ff1b",
        support=_I,
    ),
    Key(
        "sgx.seal_key.misc_mask",
        MaskType(32),
        "SGX sealing-key MISCSELECT mask.",
        default="0xffffffff",
        support=_I,
    ),
    Key(
        "sgx.trusted_files",
        ArrayType(OneOfType((_FILE, TableType()))),
        'Files verified by SHA-256: "file:..." or { uri, sha256 }; a trailing / is a '
        "directory, expanded when the manifest is built.",
        default=[],
        written=True,
    ),
    Key("sgx.trusted_files[].uri", _FILE, "Trusted file or directory.", required=True),
    Key("sgx.trusted_files[].sha256", HexType(64), "Expected SHA-256 (files only)."),
    Key(
        "sgx.allowed_files",
        ArrayType(_FILE_OR_DEV),
        "Files used without verification (readable, writable, creatable).",
    ),
    Key(
        "sgx.file_check_policy",
        EnumType(("strict", "allow_all_but_log")),
        "strict: only trusted and allowed files; allow_all_but_log: others too, logged.",
        default="strict",
    ),
    Key(
        "sgx.remote_attestation",
        EnumType(
            ("none", "dcap"),
            removed=(
                (
                    "epid",
                    '"epid" is no longer supported: Gramine removed EPID attestation '
                    '(end of life of Intel\'s attestation service); use "dcap" or "none"',
                ),
            ),
        ),
        "Attestation type; with none there is no quote.",
        default="none",
        written=True,
    ),
    Key(
        "sgx.ra_client_spid",
        StrType(nonempty=False),
        "EPID leftover (EPID was removed); ignored.",
        support=_I,
    ),
    Key(
        "sgx.ra_client_linkable",
        _BOOL,
        "EPID leftover (EPID was removed); ignored.",
        support=_I,
    ),
    Key(
        "sgx.preheat_enclave",
        _BOOL,
        "Pre-fault enclave pages at start.",
        default=False,
        support=_I,
    ),
    Key(
        "sgx.enable_stats",
        _BOOL,
        "SGX statistics (debug builds).",
        default=False,
        written=True,
        support=_I,
    ),
    Key(
        "sgx.profile.enable",
        EnumType(("none", "main", "all")),
        "SGX profiling (debug builds).",
        default="none",
        support=_I,
    ),
    Key(
        "sgx.profile.mode",
        EnumType(("aex", "ocall_inner", "ocall_outer")),
        "SGX profiling mode.",
        default="aex",
        support=_I,
    ),
    Key("sgx.profile.with_stack", _BOOL, "SGX profiling with stacks.", default=False, support=_I),
    Key("sgx.profile.frequency", IntType(1), "SGX profiling frequency.", default=50, support=_I),
    Key("sgx.vtune_profile", _BOOL, "VTune profiling.", default=False, support=_I),
    # ---------------------------------------------------------------- geode (Geode's own keys)
    Key(
        "geode.tee",
        EnumType(("none", "sim", "tdx", "snp")),
        "Geode backend: none, sim (simulated TEE, for development), tdx or snp.",
        default_doc="derived from sgx.remote_attestation",
    ),
)


# --------------------------------------------------------------------------------------------
# Hints for keys and forms that older Gramine versions used
# --------------------------------------------------------------------------------------------

_RETIRED_KEYS: dict[str, str] = {
    "sgx.thread_num": "renamed to sgx.max_threads",
    "sgx.require_exinfo": "renamed to sgx.use_exinfo",
    "sgx.require_avx": 'replaced by sgx.cpu_features.avx = "required"',
    "sgx.require_avx512": 'replaced by sgx.cpu_features.avx512 = "required"',
    "sgx.require_amx": 'replaced by sgx.cpu_features.amx = "required"',
    "sgx.require_mpx": 'replaced by sgx.cpu_features.mpx = "required"',
    "sgx.require_pkru": 'replaced by sgx.cpu_features.pkru = "required"',
    "sgx.protected_files": 'replaced by fs.mounts entries with type = "encrypted"',
    "sgx.protected_mrenclave_files": (
        'replaced by fs.mounts entries with type = "encrypted", key_name = "_sgx_mrenclave"'
    ),
    "sgx.protected_mrsigner_files": (
        'replaced by fs.mounts entries with type = "encrypted", key_name = "_sgx_mrsigner"'
    ),
    "sgx.insecure__protected_files_key": "replaced by fs.insecure__keys.<name>",
    "fs.mount": "the fs.mount.<name> tables were replaced by the fs.mounts array",
    "loader.preload": "removed; the runtime is given by loader.entrypoint",
}

# key pattern -> (Python type of the retired form, hint); shown only for values of that type
_TYPE_HINTS: dict[str, tuple[type, str]] = {
    "loader.entrypoint": (
        str,
        'the string form was removed; write loader.entrypoint.uri = "file:..." '
        "or leave loader.entrypoint out to get the default",
    ),
    "sgx.remote_attestation": (bool, 'the boolean form was replaced by "dcap" or "none"'),
    "sgx.trusted_files": (dict, 'the table form was replaced by an array of "file:..." URIs'),
}


# --------------------------------------------------------------------------------------------
# Compiling the flat table into table specs
# --------------------------------------------------------------------------------------------


def _tokens(pattern: str) -> list[str]:
    return pattern.replace("[]", ".[]").split(".")


def _join_pattern(prefix: str, token: str) -> str:
    if token == "[]":
        return prefix + "[]"
    return f"{prefix}.{token}" if prefix else token


def _join_concrete(prefix: str, name: str) -> str:
    shown = name if _PLAIN_NAME_RE.fullmatch(name) else _json(name)
    return f"{prefix}.{shown}" if prefix else shown


class _TableSpec:
    __slots__ = ("fields", "wildcard", "required")

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}  # key name -> child pattern
        self.wildcard: str | None = None  # child pattern for user-chosen names
        self.required: dict[str, str] = {}  # key name -> pattern of the required key to name


_KEY_BY_PATTERN: dict[str, Key] = {}
_TABLES: dict[str, _TableSpec] = {"": _TableSpec()}


def _compile() -> None:
    for key in KEYS:
        if key.path in _KEY_BY_PATTERN:
            raise AssertionError(f"duplicate schema key {key.path}")
        _KEY_BY_PATTERN[key.path] = key
    for key in KEYS:
        tokens = _tokens(key.path)
        prefix = ""
        for i, token in enumerate(tokens):
            child = _join_pattern(prefix, token)
            if token != "[]":
                spec = _TABLES.setdefault(prefix, _TableSpec())
                if token.startswith("<"):
                    spec.wildcard = child
                else:
                    spec.fields[token] = child
            if i < len(tokens) - 1 and tokens[i + 1] != "[]":
                _TABLES.setdefault(child, _TableSpec())
            prefix = child
    # required keys propagate up through implicit tables (not through arrays or wildcards)
    for key in KEYS:
        if not key.required:
            continue
        tokens = _tokens(key.path)
        for depth in range(len(tokens) - 1, -1, -1):
            parent = _pattern_of(tokens[:depth])
            _TABLES[parent].required.setdefault(tokens[depth], key.path)
            if depth == 0 or tokens[depth - 1] == "[]" or tokens[depth - 1].startswith("<"):
                break
            if _pattern_of(tokens[:depth]) in _KEY_BY_PATTERN:
                break  # explicitly declared table: required only if that table is present


def _pattern_of(tokens: list[str]) -> str:
    pattern = ""
    for token in tokens:
        pattern = _join_pattern(pattern, token)
    return pattern


_compile()


def lookup(path: str) -> Key:
    """The :class:`Key` for a pattern such as ``"fs.mounts[].type"`` (KeyError if unknown)."""
    return _KEY_BY_PATTERN[path]


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, source: str | None) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        where = path or "manifest"
        if self.source:
            where = f"{self.source}: {where}"
        raise ManifestError(message, where=where)

    # -- walking -------------------------------------------------------------------------

    def node(self, value: object, pattern: str, path: str) -> None:
        key = _KEY_BY_PATTERN.get(pattern)
        if key is not None:
            self.typed(value, key.type, pattern, path)
        elif not isinstance(value, dict):
            self.fail(path, f"expected a table, got {_shown(value)}")
        else:
            self.table(value, pattern, path)

    def typed(self, value: object, vtype: ValueType, pattern: str, path: str) -> None:
        if isinstance(vtype, TableType):
            if not isinstance(value, dict):
                self.fail(
                    path, self._with_hint(pattern, value, f"expected a table, got {_shown(value)}")
                )
            self.table(value, pattern, path)
        elif isinstance(vtype, ArrayType):
            if not isinstance(value, list):
                self.fail(
                    path,
                    self._with_hint(pattern, value, f"expected an array, got {_shown(value)}"),
                )
            all_ok = _FAST_ARRAY_CHECKS.get(pattern)
            if all_ok is not None and all_ok(value):
                return
            fast = _FAST_ITEM_CHECKS.get(pattern)
            for index, item in enumerate(value):
                if fast is not None and fast(item):
                    continue
                self.typed(item, vtype.item, pattern + "[]", f"{path}[{index}]")
        elif isinstance(vtype, OneOfType):
            for option in vtype.options:
                if _kind_matches(option, value):
                    self.typed(value, option, pattern, path)
                    return
            self.fail(path, f"expected {vtype.describe()}, got {_shown(value)}")
        else:
            problem = vtype.problem(value)
            if problem is not None:
                self.fail(path, self._with_hint(pattern, value, problem))

    @staticmethod
    def _with_hint(pattern: str, value: object, message: str) -> str:
        hint = _TYPE_HINTS.get(pattern)
        if hint is not None and isinstance(value, hint[0]):
            return f"{message} ({hint[1]})"
        return message

    def table(self, value: dict[Any, Any], pattern: str, path: str) -> None:
        spec = _TABLES[pattern]
        for name, item in value.items():
            if not isinstance(name, str):
                self.fail(path, f"table keys must be strings, got {_shown(name)}")
            child_path = _join_concrete(path, name)
            if name in spec.fields:
                self.node(item, spec.fields[name], child_path)
            elif spec.wildcard is not None:
                self.node(item, spec.wildcard, child_path)
            else:
                self.fail(child_path, self._unknown_message(spec, pattern, name))
        for name, required_pattern in spec.required.items():
            if name not in value:
                # the pattern below this table is made of plain names: join it unquoted
                suffix = required_pattern[len(pattern) :].lstrip(".")
                self.fail(f"{path}.{suffix}" if path else suffix, "required key missing")
        for rule in _RULES.get(pattern, ()):
            rule(self, value, path)

    @staticmethod
    def _unknown_message(spec: _TableSpec, pattern: str, name: str) -> str:
        full = _join_pattern(pattern, name)
        if full in _RETIRED_KEYS:
            return f"unknown key: {_RETIRED_KEYS[full]}"
        if full.startswith("geode."):
            known = ", ".join(k.path for k in KEYS if k.path.startswith("geode."))
            return f"unknown geode.* key (known: {known})"
        message = "unknown key (not in Gramine v1.9's manifest schema)"
        import difflib  # only for this message

        close = difflib.get_close_matches(name, list(spec.fields), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        return message


# -- cross-key rules, run after a table's own keys have been type-checked --------------------

_Rule = Callable[[_Checker, dict[str, Any], str], None]


def _rule_argv_sources(checker: _Checker, loader: dict[str, Any], path: str) -> None:
    chosen = [
        name
        for name in ("argv", "argv_src_file", "insecure__use_cmdline_argv")
        if name in loader and loader[name] is not False
    ]
    if len(chosen) > 1:
        names = ", ".join(f"loader.{n}" for n in chosen)
        checker.fail(
            _join_concrete(path, chosen[1]),
            f"mutually exclusive with {_join_concrete(path, chosen[0])} "
            f"(set at most one of {names})",
        )


def _rule_env_names(checker: _Checker, env: dict[str, Any], path: str) -> None:
    for name in env:
        if not name or "=" in name:
            checker.fail(
                _join_concrete(path, name),
                "environment variable names must be non-empty and must not contain '='",
            )


def _rule_env_entry(checker: _Checker, entry: dict[str, Any], path: str) -> None:
    if "value" in entry and "passthrough" in entry:
        checker.fail(path, "'value' and 'passthrough' are mutually exclusive")
    if "value" not in entry and "passthrough" not in entry:
        checker.fail(
            path, 'expected { value = "..." } or { passthrough = true }, got an empty table'
        )


def _mount_rule(pattern: str) -> _Rule:
    def rule(checker: _Checker, mount: dict[str, Any], path: str) -> None:
        mtype = mount.get("type", "chroot")
        for name in mount:
            key = _KEY_BY_PATTERN[_join_pattern(pattern, name)]
            if key.mount_types is not None and mtype not in key.mount_types:
                allowed = " or ".join(repr(t) for t in sorted(key.mount_types))
                checker.fail(
                    _join_concrete(path, name),
                    f"only valid for mounts of type {allowed}; this mount's type is {mtype!r}",
                )
        if mtype == "tmpfs":
            return  # tmpfs ignores its uri
        if "uri" not in mount:
            checker.fail(
                _join_concrete(path, "uri"), f"required key missing (for a {mtype!r} mount)"
            )
        uri_type = _FILE if mtype == "encrypted" else _FILE_OR_DEV
        problem = uri_type.problem(mount["uri"])
        if problem is not None:
            checker.fail(_join_concrete(path, "uri"), f"{problem} (for a {mtype!r} mount)")

    return rule


def _rule_trusted_file(checker: _Checker, entry: dict[str, Any], path: str) -> None:
    if "sha256" in entry and str(entry["uri"]).endswith("/"):
        checker.fail(
            _join_concrete(path, "sha256"),
            "a directory entry (URI ending in /) cannot have a sha256",
        )


def _expanded_trusted_entry_ok(item: object) -> bool:
    """True for a well-formed ``{uri = "file:...", sha256 = "<64 hex>"}`` entry.

    A signed manifest holds thousands of these; accepting exactly the entries the general
    walk would accept, without walking them, keeps ``geode run`` start-up short. Anything
    else goes through the general walk and gets its precise error.
    """
    if type(item) is not dict or len(item) != 2:
        return False
    uri, sha = item.get("uri"), item.get("sha256")
    return (
        type(uri) is str and type(sha) is str
        and uri.startswith("file:") and len(uri) > 5 and not uri.endswith("/")
        and "\0" not in uri
        and len(sha) == 64 and _HEX_RE.fullmatch(sha) is not None
    )


def _expanded_trusted_entries_ok(items: list[Any]) -> bool:
    """True if :func:`_expanded_trusted_entry_ok` holds for every item, checked all at once
    (a few ms instead of ~8 for the ~10,000 entries of a signed manifest)."""
    cols = expanded.columns(items)
    if cols is None or set(map(len, items)) != {2}:
        return False
    text = expanded.file_uris_text(cols[0])
    return text is not None and "\0file:\0" not in text and "/\0" not in text


_FAST_ITEM_CHECKS: dict[str, Callable[[object], bool]] = {
    "sgx.trusted_files": _expanded_trusted_entry_ok,
}
#: Whole-array checks tried first; when one fails, the items are checked one by one.
_FAST_ARRAY_CHECKS: dict[str, Callable[[list[Any]], bool]] = {
    "sgx.trusted_files": _expanded_trusted_entries_ok,
}


_RULES: dict[str, tuple[_Rule, ...]] = {
    "loader": (_rule_argv_sources,),
    "loader.env": (_rule_env_names,),
    "loader.env.<NAME>": (_rule_env_entry,),
    "fs.root": (_mount_rule("fs.root"),),
    "fs.mounts[]": (_mount_rule("fs.mounts[]"),),
    "sgx.trusted_files[]": (_rule_trusted_file,),
}


def check(manifest: Mapping[str, Any], *, source: str | None = None) -> None:
    """Validate a whole manifest against Gramine v1.9's schema plus ``geode.*``.

    Raises :class:`ManifestError` for the first problem found (in document order); its
    ``where`` is ``"<source>: <key>"`` (or just ``<key>``), with list indices written as in
    ``fs.mounts[2].type``.
    """
    checker = _Checker(source)
    if not isinstance(manifest, dict):
        checker.fail("", f"expected a table at the top level, got {_shown(manifest)}")
    checker.table(manifest, "", "")


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------


def apply_defaults(manifest: Mapping[str, Any], *, libos_uri: str) -> dict[str, Any]:
    """Return a deep copy of ``manifest`` with the defaults ``gramine-manifest`` writes.

    Those are (Gramine v1.9 ``Manifest.__init__``): ``loader.entrypoint.uri`` (here
    ``libos_uri``), ``sgx.trusted_files = []``, ``sgx.max_threads = 4``, ``sgx.isvprodid = 0``,
    ``sgx.isvsvn = 0``, ``sgx.remote_attestation = "none"``, ``sgx.debug = false``,
    ``sgx.enable_stats = false``, ``sgx.edmm_enable = false``, ``sgx.enclave_size`` ("256M", or
    "1024G" with EDMM), ``sgx.use_exinfo = false`` and ``sgx.cpu_features.*``. Keys already
    present are kept. ``loader.entrypoint.sha256`` (a file hash) is left to the caller.
    """
    if not isinstance(manifest, dict):
        message = f"expected a table at the top level, got {_shown(manifest)}"
        raise ManifestError(message, where="manifest")
    import copy  # (rendering only: a run never applies defaults)

    result: dict[str, Any] = copy.deepcopy(manifest)
    for key in KEYS:
        if not key.written:
            continue
        node = result
        path = ""
        tokens = _tokens(key.path)
        for token in tokens[:-1]:
            path = _join_concrete(path, token)
            child = node.setdefault(token, {})
            if not isinstance(child, dict):
                raise ManifestError(
                    _Checker._with_hint(path, child, f"expected a table, got {_shown(child)}"),
                    where=path,
                )
            node = child
        if tokens[-1] not in node:
            if key.default_fn is not None:
                node[tokens[-1]] = key.default_fn(DefaultContext(result, libos_uri))
            else:
                node[tokens[-1]] = copy.deepcopy(key.default)
    return result


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def schema_reference_markdown() -> str:
    """A Markdown table of every key: type, default, what Geode does with it, description."""
    lines = [
        "| Key | Type | Default | In Geode | Description |",
        "|---|---|---|---|---|",
    ]
    for key in KEYS:
        default = key.default_text
        if key.written:
            default += " (written by gramine-manifest)"
        lines.append(
            "| "
            + " | ".join(
                _md_cell(cell)
                for cell in (
                    f"`{key.path}`",
                    key.type.describe(),
                    default,
                    key.support.value,
                    key.doc + (" Required." if key.required else ""),
                )
            )
            + " |"
        )
    lines += [
        "",
        "*In Geode*: **enforced** means Geode applies the setting; **identity only** means it "
        "only changes identity fields (SIGSTRUCT, evidence); **accepted, no effect** means the "
        "key is accepted so Gramine manifests work unchanged, but Geode's mechanism makes it "
        "irrelevant. Every key, used or not, is part of the measured manifest.",
        "",
        "Patterns: `x[]` is an element of array `x`; `<NAME>` is a name of your choice. "
        "Unknown keys are errors, including unknown `geode.*` keys.",
    ]
    return "\n".join(lines) + "\n"
