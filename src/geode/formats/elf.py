"""What an ELF executable or library asks the dynamic loader for: its interpreter
(``PT_INTERP``), the libraries it needs (``DT_NEEDED``) and its search paths
(``DT_RUNPATH`` / ``DT_RPATH``).

Only 64-bit little-endian files (x86-64) are read; anything else, or anything malformed,
raises :class:`ElfError`. The bytes come from ``read(offset, size)``, which returns at most
``size`` bytes at ``offset`` (fewer at the end of the file), so that a caller reads only the
headers and the dynamic section, not the whole file.

Layout (System V gABI; ``<`` little-endian): the file header has ``e_phoff`` (Q) at 32,
``e_phentsize`` (H) at 54 and ``e_phnum`` (H) at 56. Each program header is ``p_type`` (I),
``p_flags`` (I), ``p_offset``, ``p_vaddr``, ``p_paddr``, ``p_filesz``, ``p_memsz``,
``p_align`` (Q each). The dynamic section is a list of ``(d_tag, d_val)`` (q, Q) pairs ending
at ``DT_NULL``; string values are offsets into the table at the virtual address ``DT_STRTAB``,
which the ``PT_LOAD`` segments map back to a file offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["Dependencies", "ElfError", "dependencies"]

Reader = Callable[[int, int], bytes]

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29

_IDENT = b"\x7fELF\x02\x01"  # magic, ELFCLASS64, ELFDATA2LSB
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")
#: bounds that no real file reaches; they keep a hostile file from making us read much
MAX_PHNUM = 1024
MAX_DYNAMIC = 1 << 20
MAX_STRING = 4096
#: the largest file offset (off_t): a reader is never asked beyond it
MAX_OFFSET = (1 << 63) - 1


class ElfError(ValueError):
    """The bytes are not a 64-bit little-endian ELF file this module can read."""


class Dependencies:
    """What the dynamic loader is asked for; all empty for a static executable."""

    __slots__ = ("interp", "needed", "runpath", "rpath")

    def __init__(self, interp: str | None, needed: tuple[str, ...], runpath: tuple[str, ...],
                 rpath: tuple[str, ...]) -> None:
        self.interp = interp
        self.needed = needed
        self.runpath = runpath
        self.rpath = rpath

    def __repr__(self) -> str:
        return (f"Dependencies(interp={self.interp!r}, needed={self.needed!r}, "
                f"runpath={self.runpath!r}, rpath={self.rpath!r})")


def _read(read: Reader, offset: int, size: int, what: str) -> bytes:
    """``read(offset, size)`` for an offset a file can have: the format's fields are
    unsigned 64-bit, file offsets (``off_t``, what ``pread`` takes) signed."""
    if not 0 <= offset <= MAX_OFFSET:
        raise ElfError(f"{what} at impossible offset {offset}")
    return read(offset, size)


def _exact(read: Reader, offset: int, size: int, what: str) -> bytes:
    data = _read(read, offset, size, what)
    if len(data) != size:
        raise ElfError(f"truncated {what} at offset {offset}")
    return data


def _string(read: Reader, offset: int, what: str) -> str:
    data = _read(read, offset, MAX_STRING, what)
    end = data.find(b"\0")
    if end < 0:
        raise ElfError(f"unterminated {what} at offset {offset}")
    try:
        return data[:end].decode()
    except UnicodeDecodeError:
        raise ElfError(f"{what} at offset {offset} is not UTF-8") from None


def dependencies(read: Reader) -> Dependencies:
    """The interpreter, needed libraries and search paths of the ELF file behind ``read``."""
    head = _exact(read, 0, _EHDR.size, "file header")
    ident, _, _, _, _, phoff, _, _, _, phentsize, phnum, _, _, _ = _EHDR.unpack(head)
    if not ident.startswith(_IDENT):
        raise ElfError("not a 64-bit little-endian ELF file")
    if phnum > MAX_PHNUM or (phnum and phentsize < _PHDR.size):
        raise ElfError(f"implausible program header table ({phnum} x {phentsize} bytes)")
    table = _exact(read, phoff, phnum * phentsize, "program header table") if phnum else b""
    loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
    interp: str | None = None
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz, _, _ = _PHDR.unpack_from(table, i * phentsize)
        if p_type == PT_LOAD:
            loads.append((vaddr, filesz, offset))
        elif p_type == PT_INTERP:
            interp = _string(read, offset, "interpreter path")
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, min(filesz, MAX_DYNAMIC))
    if dynamic is None:
        return Dependencies(interp, (), (), ())
    data = _read(read, *dynamic, "dynamic section")
    entries: list[tuple[int, int]] = []
    for pos in range(0, len(data) - _DYN.size + 1, _DYN.size):
        tag, value = _DYN.unpack_from(data, pos)
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    strtab = next((value for tag, value in entries if tag == DT_STRTAB), None)
    wanted = [(tag, value) for tag, value in entries
              if tag in (DT_NEEDED, DT_RUNPATH, DT_RPATH)]
    if not wanted:
        return Dependencies(interp, (), (), ())
    if strtab is None:
        raise ElfError("dynamic section has strings but no DT_STRTAB")
    base = next((offset + strtab - vaddr for vaddr, filesz, offset in loads
                 if vaddr <= strtab < vaddr + filesz), None)
    if base is None:
        raise ElfError(f"DT_STRTAB {strtab:#x} is in no PT_LOAD segment")
    values: dict[int, list[str]] = {DT_NEEDED: [], DT_RUNPATH: [], DT_RPATH: []}
    for tag, value in wanted:
        values[tag].append(_string(read, base + value, "dynamic string"))

    def paths(tag: int) -> tuple[str, ...]:
        return tuple(p for s in values[tag] for p in s.split(":") if p)

    return Dependencies(interp, tuple(values[DT_NEEDED]), paths(DT_RUNPATH), paths(DT_RPATH))
