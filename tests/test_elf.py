"""ELF dependency reading, checked against binutils' readelf on real Debian binaries, and
fed random and mutated files."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.formats import elf

BINARIES = ["/usr/bin/python3.11", "/usr/bin/bash", "/usr/bin/true", "/usr/sbin/nginx",
            "/usr/bin/redis-server", "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libssl.so.3"]


def reader(data: bytes) -> elf.Reader:
    """``data`` read as a file is, with pread's limits on offsets and sizes."""
    def read(offset: int, size: int) -> bytes:
        if not 0 <= offset <= elf.MAX_OFFSET or not 0 <= size <= elf.MAX_DYNAMIC:
            raise OverflowError(f"pread({offset}, {size})")
        return data[offset:offset + size]

    return read


def test_offsets_beyond_off_t_are_refused(tmp_path: Path) -> None:
    """Program header offsets are unsigned 64-bit: one above off_t is an ElfError (a real
    file's pread raises OverflowError there)."""
    data = bytearray(TRUE)
    data[32:40] = ((1 << 64) - 1).to_bytes(8, "little")  # e_phoff
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(elf.ElfError, match="impossible offset"):
            elf.dependencies(lambda offset, size: os.pread(fd, size, offset))
    finally:
        os.close(fd)


def readelf(path: str) -> tuple[str | None, list[str], list[str], list[str]]:
    """(interpreter, NEEDED, RUNPATH, RPATH) as readelf prints them."""
    out = subprocess.run(["readelf", "-lW", "-dW", path], capture_output=True, text=True,
                         check=True).stdout
    interp = re.search(r"\[Requesting program interpreter: (.*)\]", out)

    def tagged(tag: str) -> list[str]:
        return [p for v in re.findall(rf"\({tag}\)\s+\S.*?: \[(.*)\]", out)
                for p in v.split(":") if p]

    return (interp.group(1) if interp else None, tagged("NEEDED"), tagged("RUNPATH"),
            tagged("RPATH"))


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf needed")
@pytest.mark.parametrize("path", [p for p in BINARIES if Path(p).exists()])
def test_matches_readelf(path: str) -> None:
    deps = elf.dependencies(reader(Path(path).read_bytes()))
    assert (deps.interp, list(deps.needed), list(deps.runpath), list(deps.rpath)) == \
        readelf(path)


def test_static_and_non_elf() -> None:
    with pytest.raises(elf.ElfError, match="not a 64-bit"):
        elf.dependencies(reader(b"#!/bin/sh\necho hi\n" + bytes(64)))
    with pytest.raises(elf.ElfError, match="truncated"):
        elf.dependencies(reader(Path("/usr/bin/true").read_bytes()[:40]))
    # The program header table alone: no PT_DYNAMIC left, so nothing is needed.
    data = bytearray(Path("/usr/bin/true").read_bytes())
    phoff, phentsize, phnum = (int.from_bytes(data[32:40], "little"),
                               int.from_bytes(data[54:56], "little"),
                               int.from_bytes(data[56:58], "little"))
    for i in range(phnum):
        if int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4],
                          "little") == elf.PT_DYNAMIC:
            data[phoff + i * phentsize:phoff + i * phentsize + 4] = (6).to_bytes(4, "little")
    deps = elf.dependencies(reader(bytes(data)))
    assert deps.needed == () and deps.interp == "/lib64/ld-linux-x86-64.so.2"


@given(st.binary(max_size=4096))
def test_random_bytes_never_crash(data: bytes) -> None:
    for blob in (data, b"\x7fELF\x02\x01" + data):
        with contextlib.suppress(elf.ElfError):
            elf.dependencies(reader(blob))


TRUE = Path("/usr/bin/true").read_bytes()


def _dynamic_range(data: bytes) -> range:
    phoff, phentsize, phnum = (int.from_bytes(data[32:40], "little"),
                               int.from_bytes(data[54:56], "little"),
                               int.from_bytes(data[56:58], "little"))
    for i in range(phnum):
        p_type, _, offset, _, _, filesz, _, _ = elf._PHDR.unpack_from(data, phoff + i * phentsize)
        if p_type == elf.PT_DYNAMIC:
            return range(offset, offset + filesz)
    raise AssertionError("true has no PT_DYNAMIC")


#: the headers, program headers and (in true) the dynamic strings, and the dynamic section
TARGETS = [*range(0, 4096), *_dynamic_range(TRUE)]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(TARGETS), st.integers(0, 255)), min_size=1,
                max_size=8))
def test_mutated_headers_never_crash(flips: list[tuple[int, int]]) -> None:
    """Bytes changed in the headers, tables and strings of a real binary: a result or an
    ElfError, nothing else."""
    data = bytearray(TRUE)
    for pos, value in flips:
        data[pos] = value
    try:
        deps = elf.dependencies(reader(bytes(data)))
    except elf.ElfError:
        return
    assert all(isinstance(n, str) for n in deps.needed)
