"""Geode's library directory and the C runtime directory (``gramine.runtimedir()``).

Gramine ships a patched glibc/musl in ``<pkglibdir>/runtime/<libc>`` and manifests mount
it as ``/lib`` and trust it with ``"file:{{ gramine.runtimedir() }}/"``. Geode runs
programs on the real kernel, so it needs no patched libc: its runtime directory holds
*copies* of the host's own C runtime libraries, under their soname file names.

Why copies rather than symlinks or the host's ``/lib`` itself:

* **Stable content for hashing.** A signed manifest pins every runtime library by SHA-256.
  The copies change only when Geode refreshes them (on a call to :func:`runtimedir` after
  the host's libraries changed), never behind a signed manifest's back in the middle of a
  package upgrade, and what was hashed is exactly what is served.
* **Regular files, no links.** Directory expansion of trusted files follows file symlinks
  and skips symlinked directories; a symlink with an absolute target would also resolve
  inside the shield's own view, not the host's. Plain files avoid both traps.
* **Small and explicit.** Only the C runtime (loader, libc and its companion libraries,
  libgcc_s) is copied, not the whole ``/lib`` tree, so trusting the runtime directory
  costs a few megabytes of hashing.

The directory is built in a temporary directory beside it and renamed into place (an
atomic exchange when it is refreshed), under a lock file, so concurrent callers and
readers never see a partial directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import glob
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from geode.errors import ManifestError

SYSTEM_PKGLIBDIR = Path("/usr/local/lib/geode")

#: Libraries of the glibc runtime besides the loader (whose name comes from PT_INTERP).
#: ``libc.so.6`` is required; the others are copied when the host has them.
GLIBC_SONAMES: tuple[str, ...] = (
    "libc.so.6",
    "libm.so.6",
    "libmvec.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
    "libutil.so.1",
    "libanl.so.1",
    "libnss_files.so.2",
    "libnss_dns.so.2",
    "libnss_compat.so.2",
    "libgcc_s.so.1",
    "libcrypt.so.1",
)

LIBCS = ("glibc", "musl")

_PT_DYNAMIC = 2
_PT_INTERP = 3

_lock = threading.Lock()
_sources_cache: dict[str, dict[str, Path]] = {}


def pkglibdir() -> Path:
    """Geode's managed library directory (Gramine's ``gramine.pkglibdir``).

    ``$GEODE_PKGLIBDIR`` if set; else ``/usr/local/lib/geode`` when running as root or
    when that directory is writable; else ``${XDG_DATA_HOME:-~/.local/share}/geode``.
    """
    configured = os.environ.get("GEODE_PKGLIBDIR")
    if configured:
        return Path(configured).absolute()
    if os.geteuid() == 0 or _writable(SYSTEM_PKGLIBDIR):
        return SYSTEM_PKGLIBDIR
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "geode"


def _writable(path: Path) -> bool:
    """Whether ``path`` is a writable directory, or could be created by us."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def runtimedir(libc: str = "glibc") -> Path:
    """``pkglibdir()/runtime/<libc>``, created or refreshed on demand.

    Holds regular-file copies of the host's C runtime libraries (see the module
    docstring). A copy is refreshed when its host library's size or mtime differs from
    it (copies keep the host file's mtime) or when the set of libraries changed.
    ``libc="musl"`` needs a musl runtime on the host (``/lib/ld-musl-*.so.1``).
    """
    if libc not in LIBCS:
        raise ManifestError(
            f"unknown libc {libc!r} in gramine.runtimedir(): expected 'glibc' or 'musl'"
        )
    sources = host_runtime_libraries(libc)
    root = pkglibdir() / "runtime"
    final = root / libc
    if _is_fresh(final, sources):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{libc}.lock"):
            if not _is_fresh(final, sources):
                _rebuild(root, final, sources)
    except OSError as e:
        raise ManifestError(
            f"cannot create the {libc} runtime directory: {e.strerror or e}",
            where=str(e.filename or final),
        ) from None
    return final


def host_runtime_libraries(libc: str = "glibc") -> dict[str, Path]:
    """Map each runtime file name to the host file it is copied from (symlinks resolved)."""
    with _lock:
        cached = _sources_cache.get(libc)
    if cached is not None and all(p.exists() for p in cached.values()):
        return dict(cached)
    found = _find_glibc() if libc == "glibc" else _find_musl()
    with _lock:
        _sources_cache[libc] = found
    return dict(found)


def elf_interpreter(path: Path) -> str | None:
    """PT_INTERP of the ELF file ``path``, or None when it has none (static, library).

    Raises ValueError when ``path`` is not an ELF file, OSError when it cannot be read.
    """
    interp, _dynamic = elf_dynamic_info(path)
    return interp


def elf_dynamic_info(path: Path) -> tuple[str | None, bool]:
    """``(PT_INTERP or None, has PT_DYNAMIC)`` of the ELF file ``path``.

    Raises ValueError when ``path`` is not an ELF file, OSError when it cannot be read.
    """
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
            raise ValueError("not an ELF file")
        order = "<" if ident[5] == 1 else ">"
        if ident[4] == 2:
            phoff, phentsize, phnum = _unpack(order + "32xQ14xHH", ident, 0)
            phfmt = order + "I4xQ16xQ"  # p_type, p_offset, p_filesz
        else:
            phoff, phentsize, phnum = _unpack(order + "28xI10xHH", ident, 0)
            phfmt = order + "II8xI"
        interp: str | None = None
        dynamic = False
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            raw = f.read(struct.calcsize(phfmt))
            if len(raw) < struct.calcsize(phfmt):
                raise ValueError("truncated ELF program headers")
            p_type, p_offset, p_filesz = struct.unpack(phfmt, raw)
            if p_type == _PT_DYNAMIC:
                dynamic = True
            elif p_type == _PT_INTERP:
                f.seek(p_offset)
                interp = f.read(p_filesz).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return interp, dynamic


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[int, int, int]:
    a, b, c = struct.unpack_from(fmt, data, offset)
    return int(a), int(b), int(c)


def _host_loader() -> tuple[str, Path]:
    """The host's dynamic loader: (PT_INTERP path, binary it was read from)."""
    for probe in ("/bin/sh", "/usr/bin/env", sys.executable):
        with contextlib.suppress(OSError, ValueError):
            interp = elf_interpreter(Path(probe))
            if interp and os.path.exists(interp):
                return interp, Path(probe)
    raise ManifestError("cannot find the host's dynamic loader (PT_INTERP of /bin/sh)")


def _find_glibc() -> dict[str, Path]:
    """Ask the host's ld.so where it finds each runtime library (``--list`` + preload)."""
    interp, probe = _host_loader()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    env["LC_ALL"] = "C"
    env["LD_PRELOAD"] = " ".join(GLIBC_SONAMES)
    try:
        proc = subprocess.run(
            [interp, "--list", str(probe)], env=env, capture_output=True,
            stdin=subprocess.DEVNULL, check=False,
        )
    except OSError as e:
        raise ManifestError(f"cannot run the host's dynamic loader: {e.strerror}",
                            where=interp) from None
    listed: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "surrogateescape").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "=>" and fields[2].startswith("/"):
            listed[fields[0]] = fields[2]
    found: dict[str, Path] = {os.path.basename(interp): Path(os.path.realpath(interp))}
    for soname in GLIBC_SONAMES:
        if soname in listed:
            found[soname] = Path(os.path.realpath(listed[soname]))
    if "libc.so.6" not in found:
        raise ManifestError(
            f"the host's dynamic loader did not find libc.so.6 (ran {interp} --list {probe})"
        )
    return found


def _find_musl() -> dict[str, Path]:
    loaders = sorted(glob.glob("/lib/ld-musl-*.so.1") + glob.glob("/usr/lib/ld-musl-*.so.1"))
    for loader in loaders:
        real = Path(os.path.realpath(loader))
        if real.is_file():
            return {os.path.basename(loader): real, "libc.so": real}
    raise ManifestError(
        "gramine.runtimedir('musl'): no musl runtime is installed on this host "
        "(no /lib/ld-musl-*.so.1); install musl or use the glibc runtime"
    )


def _is_fresh(final: Path, sources: Mapping[str, Path]) -> bool:
    try:
        if set(os.listdir(final)) != set(sources):
            return False
        for name, source in sources.items():
            have = os.lstat(final / name)
            want = os.stat(source)
            if (
                not stat.S_ISREG(have.st_mode)
                or have.st_size != want.st_size
                or have.st_mtime_ns != want.st_mtime_ns
            ):
                return False
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _rebuild(root: Path, final: Path, sources: Mapping[str, Path]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.new.", dir=root))
    try:
        for name, source in sources.items():
            target = tmp / name
            shutil.copyfile(source, target)
            shutil.copystat(source, target)
        os.chmod(tmp, 0o755)
        _install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, final: Path) -> None:
    """Move the directory ``tmp`` to ``final``; an old ``final`` ends up in ``tmp``."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        final.unlink()
    try:
        os.rename(tmp, final)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if _rename_exchange(tmp, final):
        return
    # No renameat2(RENAME_EXCHANGE) here: move the old directory aside, then rename.
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
    os.rename(final, old / final.name)
    os.rename(tmp, final)
    os.mkdir(tmp)
    shutil.rmtree(old, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
