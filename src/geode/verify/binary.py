"""Bounds-checked little-endian reads for the quote and report parsers.

Every failure is a :class:`geode.errors.FormatError` whose one-line message names the
structure, the field and its absolute byte offset, so a fuzzer can only ever see that.
"""

from __future__ import annotations

from geode.errors import FormatError


class Reader:
    """A cursor over ``data`` that refuses to read past the end."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def bytes(self, n: int, field: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise FormatError(
                f"{self.what}: truncated at {field} (offset {self.pos}, needs {n} bytes, "
                f"{max(0, len(self.data) - self.pos)} left)"
            )
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def u8(self, field: str) -> int:
        return self.bytes(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.bytes(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.bytes(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.bytes(8, field), "little")


def le(data: bytes) -> int:
    return int.from_bytes(data, "little")
