"""The Geode measurement: Geode's stand-in for MRENCLAVE.

Gramine measures the enclave by replaying ECREATE/EADD/EEXTEND over the LibOS
pages and the manifest. Geode has no enclave pages; what decides how a program
is confined is (a) the runtime that enforces the manifest and (b) the manifest.
So the measurement is a hash over exactly those two things:

``runtime identity``
    A canonical UTF-8 text (the *identity file*), one line per component::

        geode-runtime-identity/1
        python <implementation> <major>.<minor>
        dist <name> <version>          (each third-party distribution the runtime imports)
        file <path relative to the geode package> <sha256 hex>   (every *.py and *.c file)

    Lines after the first are sorted bytewise; every line ends with ``\\n``.
    Its SHA-256 is the *runtime identity digest*. The file is written to
    ``libos_path()`` so that Gramine-style templates (``loader.entrypoint.uri =
    "file:{{ gramine.libos }}"``) pin it: gramine-manifest fills
    ``loader.entrypoint.sha256`` with the identity digest, exactly as Gramine pins
    ``libsysdb.so``.

``measurement``
    ``SHA-256( b"geode-measurement/1\\0" || identity_digest (32 B) ||
    u64_le(len(manifest)) || manifest bytes )`` where ``manifest bytes`` are the
    final ``.manifest.sgx`` file as written by ``gramine-sgx-sign``.

Nothing machine-specific (paths, mtimes, host names) enters either hash, so the same
Geode release, dependency versions and manifest give the same measurement on every
machine. ``docs/measurement.md`` restates this for independent verifiers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # (a run measures without pathlib)
    from pathlib import Path

IDENTITY_HEADER = "geode-runtime-identity/1"
MEASUREMENT_DOMAIN = b"geode-measurement/1\0"

#: Third-party distributions whose code the runtime loads to enforce the manifest.
#: Their versions (not their installed bytes, which differ per build) are identity.
RUNTIME_DISTRIBUTIONS = ("cryptography",)

_PACKAGE_ROOT = os.path.dirname(os.path.realpath(__file__))


def _package_files() -> list[tuple[str, str]]:
    """``(path relative to the package, sha256 hex)`` of every ``*.py`` and ``*.c`` file (the
    C module's source, see :mod:`geode.formats.pf.gcm`), sorted.

    ``os.walk`` rather than ``Path.rglob``: the same files (neither follows symlinked
    directories), ~2 ms less at every start. Reading and hashing the ~80 files took another
    ~5 ms at every start, so digests are remembered (:mod:`geode.cache`) with each file's
    size, times, inode and device, and a file is read again when any of them changed. That
    is as much as Python asks of a source file before it runs the bytecode cached for it
    (size and mtime), so the identity still describes the code that runs.
    """
    root = _PACKAGE_ROOT
    found: list[tuple[str, str, tuple[int, ...]]] = []
    for dirpath, _, names in os.walk(root):
        rel_dir = dirpath[len(root) + 1:]  # os.walk's dirpath is root, or root + "/" + ...
        for name in names:
            if name.endswith((".py", ".c")):
                path = f"{dirpath}/{name}"
                st = os.stat(path)
                found.append((f"{rel_dir}/{name}" if rel_dir else name, path,
                              (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                               st.st_dev)))
    from geode import cache

    key = hashlib.sha256(b"geode-package-files/1\0" + os.fsencode(root)).digest()
    known = cache.get("package-files", key)
    if not isinstance(known, dict):
        known = {}
    files = []
    fresh = {}
    for rel, path, signature in found:
        entry = known.get(rel)
        if (isinstance(entry, tuple) and len(entry) == 2 and entry[0] == signature
                and isinstance(entry[1], str)):
            digest = entry[1]
        else:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        files.append((rel, digest))
        fresh[rel] = (signature, digest)
    if fresh != known:
        cache.put("package-files", key, fresh, keep=4)
    files.sort()
    return files


def _dist_version(name: str) -> str:
    # Each module's __version__ is the distribution's version: importing it is cheap for the
    # distributions listed (cryptography's top level is ~1 ms), while importlib.metadata
    # costs tens of ms at every start. Keep RUNTIME_DISTRIBUTIONS to cheap imports.
    try:
        module = importlib.import_module(name)
    except ImportError:
        return "absent"
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _python_implementation() -> str:
    """``platform.python_implementation()``, without importing ``platform`` on CPython."""
    if sys.implementation.name == "cpython":
        return "CPython"
    import platform

    return platform.python_implementation()


@functools.cache
def runtime_identity_text() -> str:
    """The canonical identity file text of the running Geode installation."""
    lines = [
        f"python {_python_implementation()} "
        f"{sys.version_info.major}.{sys.version_info.minor}"
    ]
    lines += [f"dist {name} {_dist_version(name)}" for name in RUNTIME_DISTRIBUTIONS]
    lines += [f"file {rel} {digest}" for rel, digest in _package_files()]
    lines.sort(key=lambda s: s.encode())
    return "".join(line + "\n" for line in [IDENTITY_HEADER, *lines])


def runtime_identity() -> bytes:
    """SHA-256 of :func:`runtime_identity_text` (32 bytes)."""
    return hashlib.sha256(runtime_identity_text().encode()).digest()


def libos_path() -> Path:
    """Path of the identity file (Gramine's ``gramine.libos``), (re)written on demand."""
    from geode.manifest.runtimedir import pkglibdir

    path = pkglibdir() / "libgeode.identity"
    text = runtime_identity_text().encode()
    try:
        if path.read_bytes() == text:
            return path
    except OSError:
        pass
    import tempfile  # only when the file is (re)written

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".libgeode.")
    try:
        os.write(fd, text)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def measure(manifest_bytes: bytes, identity: bytes | None = None) -> bytes:
    """The 32-byte Geode measurement of ``manifest_bytes`` under ``identity``.

    ``identity`` defaults to the running installation's runtime identity digest.
    """
    if identity is None:
        identity = runtime_identity()
    if len(identity) != 32:
        raise ValueError("runtime identity digest must be 32 bytes")
    h = hashlib.sha256(MEASUREMENT_DOMAIN)
    h.update(identity)
    h.update(struct.pack("<Q", len(manifest_bytes)))
    h.update(manifest_bytes)
    return h.digest()
