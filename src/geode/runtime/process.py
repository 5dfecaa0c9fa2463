"""What the sandboxed program is started with: argv, environment, identity and limits.

Everything here is a function of the rendered manifest (plus, where Gramine looks at them, the
host's command-line arguments and environment, and the two serialized files the manifest may
name). Nothing here starts processes; :mod:`geode.runtime.sandbox` applies the result.

Semantics follow Gramine (``pal/src/pal_main.c`` and the manifest documentation):

**argv.** ``loader.argv`` (a non-empty array), ``loader.argv_src_file`` (a file written by
``gramine-argv-serializer``: each argument followed by a NUL byte) and
``loader.insecure__use_cmdline_argv = true`` are mutually exclusive.

* ``insecure__use_cmdline_argv``: argv is ``[libos.entrypoint] + host_args``.
* ``loader.argv`` / ``argv_src_file``: argv comes from the manifest or the file; host arguments,
  if any, are discarded and an error is logged.
* none of them: argv is ``[libos.entrypoint]``. Host arguments are then refused with an error,
  as Gramine's loader does ("argv handling wasn't configured in the manifest, but cmdline
  arguments were specified"): silently dropping arguments the user typed would run something
  other than what was asked for.

**environment.** The *original* environment is the contents of ``loader.env_src_file`` (same
NUL-separated ``KEY=VALUE`` serialization) if set, else the host's environment; the two options
``env_src_file`` and ``insecure__use_host_env`` are mutually exclusive. Then:

1. original variables are kept, in their order, if the original environment is *propagated*
   (``insecure__use_host_env`` or ``env_src_file``) and the manifest does not name them, or if
   the manifest names them with ``{ passthrough = true }``;
2. manifest variables with a value (``"v"`` or ``{ value = "v" }``) follow, in manifest order,
   overriding anything of the same name.

``{ passthrough = false }``, a table with both ``value`` and ``passthrough``, or a table with
neither, is an error.

Files named by ``argv_src_file``/``env_src_file`` are ``file:`` URIs, relative ones resolving
against ``base_dir`` (the manifest's directory). Gramine expects them to be trusted files: when
the file is listed in ``sgx.trusted_files`` its SHA-256 is checked and a mismatch is an error;
when it is not, a warning is logged because its contents are then not covered by the
measurement.

**identity.** ``loader.uid`` / ``loader.gid`` (default 0) are the program's real, effective and
saved ids inside its user namespace.

**limits** (see :class:`Limits` for what each one bounds and why it is the honest mapping):
``sys.stack.size`` (default 256K) is ``RLIMIT_STACK``, ``sys.fds.limit`` (default 900) is
``RLIMIT_NOFILE``, ``sgx.enclave_size`` (default 256M, or 1024G with ``sgx.edmm_enable``) is
``RLIMIT_AS``, ``sgx.max_threads`` (default 4; not a limit with EDMM, as in Gramine) is
``RLIMIT_NPROC`` inside the sandbox's own user namespace.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Mapping, Sequence

from geode.errors import ManifestError
from geode.log import get_logger
from geode.manifest.lookup import split_size, value_at
from geode.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_ENCLAVE_SIZE",
    "DEFAULT_ENCLAVE_SIZE_EDMM",
    "DEFAULT_FDS_LIMIT",
    "DEFAULT_MAX_THREADS",
    "DEFAULT_STACK_SIZE",
    "Limits",
    "ProcessSpec",
    "build_env",
    "build_limits",
    "entrypoint_path",
    "parse_serialized",
    "parse_size",
    "process_spec",
    "resolve_argv",
    "resolve_env",
    "serialize",
]

log = get_logger("geode")

DEFAULT_STACK_SIZE = 256 * 1024
DEFAULT_FDS_LIMIT = 900
DEFAULT_ENCLAVE_SIZE = 256 * 1024**2
DEFAULT_ENCLAVE_SIZE_EDMM = 1024 * 1024**3
DEFAULT_MAX_THREADS = 4

_U64_MAX = 2**64 - 1


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _bool(manifest: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = value_at(manifest, key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ManifestError(f"expected true or false, got {value!r}", where=key)
    return value


def _int(manifest: Mapping[str, Any], key: str, default: int, *, minimum: int = 0) -> int:
    value = value_at(manifest, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"expected an integer, got {value!r}", where=key)
    if value < minimum:
        raise ManifestError(f"must be at least {minimum}, got {value}", where=key)
    return value


def _str(manifest: Mapping[str, Any], key: str) -> str | None:
    value = value_at(manifest, key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestError(f"expected a string, got {value!r}", where=key)
    if "\0" in value:
        raise ManifestError("contains a NUL byte", where=key)
    return value


def parse_size(value: object, *, key: str) -> int:
    """A Gramine size: an integer, or decimal digits with an optional K/M/G suffix (powers of
    1024, either case). Raises :class:`ManifestError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ManifestError(f'expected a size such as "256M", got {value!r}', where=key)
    if isinstance(value, int):
        size = value
    else:
        split = split_size(value)
        if split is None or len(split[0]) > 20:
            raise ManifestError(f'expected a size such as "256M", got {value!r}', where=key)
        size = int(split[0]) * split[1]
    if not 0 <= size <= _U64_MAX:
        raise ManifestError(f"size {value!r} is out of range", where=key)
    return size


def _size(manifest: Mapping[str, Any], key: str, default: int) -> int:
    value = value_at(manifest, key)
    return default if value is None else parse_size(value, key=key)


# ---------------------------------------------------------------------------------------------
# Serialized argv / environment files
# ---------------------------------------------------------------------------------------------


def serialize(items: Sequence[str]) -> bytes:
    """Gramine's serialization (``gramine-argv-serializer``): each item followed by a NUL."""
    return b"".join(s.encode("utf-8", "surrogateescape") + b"\0" for s in items)


def parse_serialized(data: bytes, *, key: str) -> list[str]:
    """Inverse of :func:`serialize`. A non-empty file must end with a NUL byte."""
    if not data:
        return []
    if not data.endswith(b"\0"):
        raise ManifestError("file is not NUL-terminated (not made by gramine-argv-serializer?)",
                            where=key)
    return [part.decode("utf-8", "surrogateescape") for part in data[:-1].split(b"\0")]


def _uri_path(uri: str, base_dir: str | os.PathLike[str], key: str) -> str:
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme != "file":
        raise ManifestError(f'expected a "file:..." URI, got {uri!r}', where=key)
    norm = posixpath.normpath(posixpath.join(os.fspath(base_dir), rest or "."))
    return "/" + norm.lstrip("/")


def _read_source_file(
    manifest: Mapping[str, Any],
    key: str,
    base_dir: str | os.PathLike[str],
    trusted: Mapping[str, str] | None,
) -> list[str] | None:
    uri = _str(manifest, key)
    if uri is None:
        return None
    path = _uri_path(uri, base_dir, key)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror}", where=key) from None
    expected = None if trusted is None else trusted.get(path)
    if expected is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.lower():
            raise ManifestError(
                f"{path} does not match its sgx.trusted_files hash (expected {expected}, "
                f"got {actual})",
                where=key,
            )
    else:
        log.warning("%s: %s is not a trusted file; its contents are not measured", key, path)
    return parse_serialized(data, key=key)


# ---------------------------------------------------------------------------------------------
# argv
# ---------------------------------------------------------------------------------------------


def entrypoint_path(manifest: Mapping[str, Any], start_dir: str = "/") -> str:
    """``libos.entrypoint`` as an absolute path in the view (relative to ``fs.start_dir``)."""
    raw = _str(manifest, "libos.entrypoint")
    if raw is None or raw == "":
        raise ManifestError("required key is missing", where="libos.entrypoint")
    if raw.startswith("file:"):
        raw = raw[len("file:"):]
    joined = posixpath.normpath(posixpath.join(start_dir, raw))
    return "/" + joined.lstrip("/")


def resolve_argv(
    manifest: Mapping[str, Any],
    host_args: Sequence[str],
    *,
    base_dir: str | os.PathLike[str],
    trusted: Mapping[str, str] | None = None,
) -> list[str]:
    """The program's argv (see the module docstring). ``host_args`` are the arguments given
    after the application name on the command line (without it)."""
    entry = _str(manifest, "libos.entrypoint")
    if entry is None or entry == "":
        raise ManifestError("required key is missing", where="libos.entrypoint")
    use_cmdline = _bool(manifest, "loader.insecure__use_cmdline_argv")
    src_file = _str(manifest, "loader.argv_src_file")
    argv_raw = value_at(manifest, "loader.argv")
    if argv_raw is not None:
        if not isinstance(argv_raw, list) or not all(isinstance(a, str) for a in argv_raw):
            raise ManifestError(f"expected an array of strings, got {argv_raw!r}",
                                where="loader.argv")
        if not argv_raw:
            raise ManifestError("must not be empty (argv[0] is required)", where="loader.argv")
        if any("\0" in a for a in argv_raw):
            raise ManifestError("an argument contains a NUL byte", where="loader.argv")
    chosen = [
        name
        for name, on in (
            ("loader.argv", argv_raw is not None),
            ("loader.argv_src_file", src_file is not None),
            ("loader.insecure__use_cmdline_argv", use_cmdline),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ManifestError(
            "loader.argv, loader.argv_src_file and loader.insecure__use_cmdline_argv are "
            f"mutually exclusive (set: {', '.join(chosen)})",
            where=chosen[0],
        )
    if use_cmdline:
        return [entry, *host_args]
    if argv_raw is not None or src_file is not None:
        source = "loader.argv" if argv_raw is not None else "loader.argv_src_file"
        if host_args:
            log.error("Discarding command-line arguments (%s) because %s is set in the manifest",
                      " ".join(host_args), source)
        if argv_raw is not None:
            return list(argv_raw)
        args = _read_source_file(manifest, "loader.argv_src_file", base_dir, trusted)
        assert args is not None
        if not args:
            raise ManifestError("file is empty (argv[0] is required)",
                                where="loader.argv_src_file")
        return args
    if host_args:
        raise ManifestError(
            "command-line arguments were given but the manifest does not configure argv "
            "(set loader.argv, loader.argv_src_file or loader.insecure__use_cmdline_argv)",
            where="loader.argv",
        )
    return [entry]


# ---------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------


class _EnvEntry(Record):
    value: str | None  # None: passthrough


def _manifest_env(manifest: Mapping[str, Any]) -> dict[str, _EnvEntry]:
    table = value_at(manifest, "loader.env")
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ManifestError(f"expected a table, got {table!r}", where="loader.env")
    out: dict[str, _EnvEntry] = {}
    for name, spec in table.items():
        key = f"loader.env.{name}"
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ManifestError("invalid environment variable name", where=key)
        if isinstance(spec, str):
            value: str | None = spec
        elif isinstance(spec, Mapping):
            has_value, has_pass = "value" in spec, "passthrough" in spec
            unknown = set(spec) - {"value", "passthrough"}
            if unknown:
                raise ManifestError(f"unknown keys {sorted(unknown)}", where=key)
            if has_value and has_pass:
                raise ManifestError("'value' and 'passthrough' are mutually exclusive",
                                    where=key)
            if has_value:
                value = spec["value"]
                if not isinstance(value, str):
                    raise ManifestError(f"expected a string value, got {value!r}",
                                        where=f"{key}.value")
            elif has_pass:
                passthrough = spec["passthrough"]
                if not isinstance(passthrough, bool):
                    raise ManifestError(f"expected true or false, got {passthrough!r}",
                                        where=f"{key}.passthrough")
                if not passthrough:
                    raise ManifestError(
                        "passthrough = false is not allowed (a deny list gives no security; "
                        "do not set the variable instead)",
                        where=f"{key}.passthrough",
                    )
                value = None
            else:
                raise ManifestError("needs either 'value' or 'passthrough = true'", where=key)
        else:
            raise ManifestError(
                f'expected "value", {{ value = "..." }} or {{ passthrough = true }}, '
                f"got {spec!r}",
                where=key,
            )
        if value is not None and "\0" in value:
            raise ManifestError("value contains a NUL byte", where=key)
        out[name] = _EnvEntry(value)
    return out


def build_env(
    manifest: Mapping[str, Any],
    original: Sequence[tuple[str, str]],
    *,
    propagate: bool,
) -> dict[str, str]:
    """Combine the original environment (host's or ``env_src_file``'s, as ordered pairs) with
    ``loader.env`` (see the module docstring). Pure."""
    spec = _manifest_env(manifest)
    env: dict[str, str] = {}
    for name, value in original:
        entry = spec.get(name)
        if (propagate and entry is None) or (entry is not None and entry.value is None):
            env[name] = value
    for name, entry in spec.items():
        if entry.value is not None:
            env.pop(name, None)
            env[name] = entry.value
    return env


def _split_env_items(items: Sequence[str], key: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ManifestError(f"entry {item!r} is not KEY=VALUE", where=key)
        pairs.append((name, value))
    return pairs


def resolve_env(
    manifest: Mapping[str, Any],
    host_env: Mapping[str, str],
    *,
    base_dir: str | os.PathLike[str],
    trusted: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The program's environment: reads ``loader.env_src_file`` if set, then :func:`build_env`."""
    use_host = _bool(manifest, "loader.insecure__use_host_env")
    if use_host and _str(manifest, "loader.env_src_file") is not None:
        raise ManifestError(
            "loader.insecure__use_host_env and loader.env_src_file are mutually exclusive",
            where="loader.env_src_file",
        )
    from_file = _read_source_file(manifest, "loader.env_src_file", base_dir, trusted)
    if from_file is not None:
        original = _split_env_items(from_file, "loader.env_src_file")
        propagate = True
    else:
        original = list(host_env.items())
        propagate = use_host
    return build_env(manifest, original, propagate=propagate)


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------


class Limits(Record):
    """Resource limits applied to the program (soft = hard) before it starts.

    * ``stack`` → ``RLIMIT_STACK``. Gramine's ``sys.stack.size`` is "the stack size of each
      thread": the kernel sizes the main stack by ``RLIMIT_STACK`` and glibc uses it as the
      default ``pthread`` stack size, so one limit covers both.
    * ``nofile`` → ``RLIMIT_NOFILE`` (``sys.fds.limit``).
    * ``address_space`` → ``RLIMIT_AS``, per process. ``sgx.enclave_size`` is the size of each
      process's enclave, i.e. a bound on the *virtual address space* of every process (each
      Gramine process is its own enclave of that size). ``RLIMIT_AS`` bounds exactly that
      quantity with exactly that scope. A memory cgroup would be the wrong mapping: it bounds
      resident memory of a whole group of processes, not address space per process (and it
      needs a delegated cgroup, which an ordinary user does not have). As in an enclave,
      reservations count (``PROT_NONE`` mappings, glibc's 64 MiB per-thread malloc arenas);
      unlike an enclave, Geode's runtime itself takes no part of it.
    * ``tasks`` → ``RLIMIT_NPROC``; ``None`` means unlimited. ``sgx.max_threads`` bounds the
      threads of one enclave, i.e. of each process. The kernel has no per-process thread limit
      short of a delegated pids cgroup; ``RLIMIT_NPROC`` is counted per (user namespace, uid)
      since Linux 5.14, and every sandbox has its own user namespace, so inside the sandbox it
      bounds the number of live tasks (threads *and* processes) of the program's uid in this
      sandbox, excluding Geode's own two helper processes (accounted for by the sandbox, which
      adds them to the limit). That is Gramine's limit exactly when the program is one process,
      so it is applied when ``sys.disallow_subprocesses`` is set (Gramine's own helper threads
      also count against it there, so Geode is slightly more generous). A multi-process program
      would have one budget per process in Gramine and would share one here, which breaks
      ordinary programs (a bash pipeline under ``max_threads = 4``), so no limit is set then.
      With ``sgx.edmm_enable`` Gramine adds thread slots on demand, so no limit is set.
    """

    stack: int = DEFAULT_STACK_SIZE
    nofile: int = DEFAULT_FDS_LIMIT
    address_space: int = DEFAULT_ENCLAVE_SIZE
    tasks: int | None = DEFAULT_MAX_THREADS


def build_limits(manifest: Mapping[str, Any]) -> Limits:
    """Limits from the manifest (see :class:`Limits`). Pure."""
    edmm = _bool(manifest, "sgx.edmm_enable")
    stack = _size(manifest, "sys.stack.size", DEFAULT_STACK_SIZE)
    if stack < 16 * 1024:
        raise ManifestError("stack smaller than 16K cannot run a program", where="sys.stack.size")
    nofile = _int(manifest, "sys.fds.limit", DEFAULT_FDS_LIMIT, minimum=3)
    enclave = _size(
        manifest, "sgx.enclave_size", DEFAULT_ENCLAVE_SIZE_EDMM if edmm else DEFAULT_ENCLAVE_SIZE
    )
    if enclave < 16 * 1024**2:
        raise ManifestError("an address space below 16M cannot run a program",
                            where="sgx.enclave_size")
    threads = _int(manifest, "sgx.max_threads", DEFAULT_MAX_THREADS, minimum=1)
    single_process = _bool(manifest, "sys.disallow_subprocesses")
    return Limits(stack=stack, nofile=nofile, address_space=enclave,
                  tasks=threads if single_process and not edmm else None)


# ---------------------------------------------------------------------------------------------
# Everything together
# ---------------------------------------------------------------------------------------------


class ProcessSpec(Record):
    """How the program is started inside the sandbox."""

    path: str  #: absolute path of the executable in the view (``libos.entrypoint``)
    argv: tuple[str, ...]
    env: Mapping[str, str]
    uid: int = 0
    gid: int = 0
    start_dir: str = "/"
    limits: Limits = Limits()
    disallow_subprocesses: bool = False
    sigterm_injection: bool = False
    disable_aslr: bool = False
    hostname: str = "localhost"


def _hostname(manifest: Mapping[str, Any]) -> str:
    """Gramine reports "localhost" unless ``sys.enable_extra_runtime_domain_names_conf`` asks
    for the host's name."""
    if _bool(manifest, "sys.enable_extra_runtime_domain_names_conf"):
        return os.uname().nodename
    return "localhost"


def process_spec(
    manifest: Mapping[str, Any],
    host_args: Sequence[str],
    *,
    base_dir: str | os.PathLike[str],
    host_env: Mapping[str, str] | None = None,
    trusted: Mapping[str, str] | None = None,
) -> ProcessSpec:
    """Everything needed to start the program. Reads ``argv_src_file``/``env_src_file`` (if the
    manifest names them); otherwise pure. Raises :class:`ManifestError` naming the key."""
    start_raw = _str(manifest, "fs.start_dir") or "/"
    start_dir = "/" + posixpath.normpath(posixpath.join("/", start_raw)).lstrip("/")
    argv = resolve_argv(manifest, host_args, base_dir=base_dir, trusted=trusted)
    env = resolve_env(manifest, os.environ if host_env is None else host_env,
                      base_dir=base_dir, trusted=trusted)
    return ProcessSpec(
        path=entrypoint_path(manifest, start_dir),
        argv=tuple(argv),
        env=env,
        uid=_int(manifest, "loader.uid", 0),
        gid=_int(manifest, "loader.gid", 0),
        start_dir=start_dir,
        limits=build_limits(manifest),
        disallow_subprocesses=_bool(manifest, "sys.disallow_subprocesses"),
        sigterm_injection=_bool(manifest, "sys.enable_sigterm_injection"),
        disable_aslr=_bool(manifest, "loader.insecure__disable_aslr"),
        hostname=_hostname(manifest),
    )
