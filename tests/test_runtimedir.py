"""gramine.pkglibdir / gramine.runtimedir(): copies of the host's C runtime, kept fresh."""

from __future__ import annotations

import glob
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from geode.errors import ManifestError
from geode.manifest.runtimedir import (
    SYSTEM_PKGLIBDIR,
    elf_dynamic_info,
    elf_interpreter,
    host_runtime_libraries,
    pkglibdir,
    runtimedir,
)


@pytest.fixture
def libdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "pkglib"
    monkeypatch.setenv("GEODE_PKGLIBDIR", str(target))
    return target


def host_libc() -> Path:
    """libc.so.6 as the host's own ldd resolves it for /bin/sh."""
    out = subprocess.run(["ldd", "/bin/sh"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == "libc.so.6":
            return Path(os.path.realpath(fields[2]))
    raise AssertionError(f"no libc.so.6 in ldd /bin/sh:\n{out}")


def host_loader() -> Path:
    interp = elf_interpreter(Path("/bin/sh"))
    assert interp is not None
    return Path(interp)


def test_pkglibdir_from_environment(libdir: Path) -> None:
    assert pkglibdir() == libdir


def test_pkglibdir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GEODE_PKGLIBDIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    if os.geteuid() == 0 or os.access(SYSTEM_PKGLIBDIR.parent, os.W_OK):
        assert pkglibdir() == SYSTEM_PKGLIBDIR
    else:
        assert pkglibdir() == tmp_path / "data" / "geode"


def test_runtimedir_holds_copies_of_the_host_runtime(libdir: Path) -> None:
    path = runtimedir()
    assert path == libdir / "runtime" / "glibc"
    names = {p.name for p in path.iterdir()}
    loader = host_loader()
    assert {loader.name, "libc.so.6"} <= names
    for name, host in ((loader.name, Path(os.path.realpath(loader))), ("libc.so.6", host_libc())):
        copy = path / name
        st = copy.lstat()
        assert stat.S_ISREG(st.st_mode), f"{name} is not a regular file"
        assert copy.read_bytes() == host.read_bytes()
        assert os.stat(copy).st_ino != os.stat(host).st_ino  # a copy, not a hard link
    # The C runtime only, not the whole /lib tree.
    assert len(names) < 30
    assert "libselinux.so.1" not in names
    assert "libpython3.11.so.1.0" not in names
    assert sum(p.stat().st_size for p in path.iterdir()) < 32 << 20
    assert all(not p.is_symlink() for p in path.iterdir())
    # Nothing else was left next to it (temporary build directories).
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in ("glibc", ".glibc.lock")]
    assert leftovers == []


def test_runtimedir_matches_what_the_host_loader_resolves(libdir: Path) -> None:
    path = runtimedir()
    for name, source in host_runtime_libraries().items():
        assert (path / name).read_bytes() == source.read_bytes()
        assert (path / name).stat().st_mtime_ns == source.stat().st_mtime_ns


def test_runtimedir_is_reused_when_fresh(libdir: Path) -> None:
    first = runtimedir()
    inode = first.stat().st_ino
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    second = runtimedir()
    assert second == first
    assert second.stat().st_ino == inode
    assert {p.name: p.stat().st_mtime_ns for p in second.iterdir()} == mtimes


def test_runtimedir_refreshes_a_changed_copy(libdir: Path) -> None:
    path = runtimedir()
    libc = path / "libc.so.6"
    original = libc.read_bytes()
    libc.write_bytes(b"tampered")
    (path / "extra.so").write_bytes(b"not part of the runtime")
    again = runtimedir()
    assert (again / "libc.so.6").read_bytes() == original
    assert not (again / "extra.so").exists()


def test_runtimedir_refreshes_a_missing_copy(libdir: Path) -> None:
    path = runtimedir()
    (path / "libm.so.6").unlink()
    assert (runtimedir() / "libm.so.6").is_file()


def test_runtimedir_concurrent_creation(libdir: Path) -> None:
    code = "from geode.manifest.runtimedir import runtimedir; print(runtimedir())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outputs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(outputs) == {str(libdir / "runtime" / "glibc")}
    path = libdir / "runtime" / "glibc"
    for name, source in host_runtime_libraries().items():
        assert (path / name).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (libdir / "runtime").iterdir()) == [".glibc.lock", "glibc"]


def test_runtimedir_musl_needs_musl(libdir: Path) -> None:
    if glob.glob("/lib/ld-musl-*.so.1") or glob.glob("/usr/lib/ld-musl-*.so.1"):
        path = runtimedir("musl")
        assert any(p.name.startswith("ld-musl-") for p in path.iterdir())
        return
    with pytest.raises(ManifestError, match="musl"):
        runtimedir("musl")
    assert not (libdir / "runtime" / "musl").exists()


def test_runtimedir_unknown_libc(libdir: Path) -> None:
    with pytest.raises(ManifestError, match="unknown libc 'uclibc'"):
        runtimedir("uclibc")


def test_elf_inspection(tmp_path: Path) -> None:
    interp, dynamic = elf_dynamic_info(Path("/bin/sh"))
    assert dynamic and interp is not None and os.path.exists(interp)
    libc_interp, libc_dynamic = elf_dynamic_info(host_libc())
    assert libc_dynamic
    text = tmp_path / "script.sh"
    text.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ValueError):
        elf_interpreter(text)
