"""A minimal DER reader: enough to walk the Intel SGX PCK certificate extension.

``cryptography`` hands unknown extensions over as raw DER; the SGX extension (OID
1.2.840.113741.1.13.1) is a SEQUENCE of ``SEQUENCE { OID, value }`` pairs, nested one level
for the TCB. Errors raise :class:`geode.errors.FormatError` naming the offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from geode.errors import FormatError

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30
TAG_BOOLEAN = 0x01


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes
    offset: int

    def children(self) -> list[Tlv]:
        if not self.tag & 0x20:
            raise FormatError(f"DER: element with tag 0x{self.tag:02x} at offset {self.offset} "
                              "is not constructed")
        return parse_all(self.value, self.offset)

    def as_int(self) -> int:
        if self.tag not in (TAG_INTEGER, TAG_ENUMERATED) or not self.value:
            raise FormatError(f"DER: expected INTEGER at offset {self.offset}, "
                              f"got tag 0x{self.tag:02x}")
        return int.from_bytes(self.value, "big", signed=True)

    def as_oid(self) -> str:
        if self.tag != TAG_OID or not self.value:
            raise FormatError(f"DER: expected OBJECT IDENTIFIER at offset {self.offset}")
        return decode_oid(self.value, self.offset)


def parse_one(data: bytes, pos: int = 0, base: int = 0) -> tuple[Tlv, int]:
    """Parse the element at ``pos``; return it and the position after it."""
    if pos + 2 > len(data):
        raise FormatError(f"DER: truncated header at offset {base + pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise FormatError(f"DER: multi-byte tag at offset {base + pos} not supported")
    length = data[pos + 1]
    hdr = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise FormatError(f"DER: bad length form at offset {base + pos + 1}")
        if pos + 2 + n > len(data):
            raise FormatError(f"DER: truncated length at offset {base + pos + 1}")
        length = int.from_bytes(data[pos + 2:pos + 2 + n], "big")
        hdr += n
    start = pos + hdr
    end = start + length
    if end > len(data):
        raise FormatError(f"DER: element at offset {base + pos} claims {length} bytes, "
                          f"{len(data) - start} left")
    return Tlv(tag, data[start:end], base + start), end


def parse_all(data: bytes, base: int = 0) -> list[Tlv]:
    out: list[Tlv] = []
    pos = 0
    while pos < len(data):
        tlv, pos = parse_one(data, pos, base)
        out.append(tlv)
    return out


def decode_oid(value: bytes, offset: int = 0) -> str:
    if not value:
        raise FormatError(f"DER: empty OBJECT IDENTIFIER at offset {offset}")
    arcs: list[int] = []
    acc = 0
    for i, b in enumerate(value):
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(acc)
            acc = 0
        elif i == len(value) - 1:
            raise FormatError(f"DER: truncated OBJECT IDENTIFIER at offset {offset}")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(value)) + value


def encode_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1]] + arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return encode(TAG_OID, bytes(body))


def encode_int(n: int, tag: int = TAG_INTEGER) -> bytes:
    raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return encode(tag, raw)
