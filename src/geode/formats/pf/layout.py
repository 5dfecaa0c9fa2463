"""Gramine protected files, format v2.0: byte layout, node numbering and node crypto.

Pure functions, no I/O. Every node is 4096 bytes; integers are little-endian.

Metadata node (physical node 0)::

    0     8  file_id        u64 0x46505f5346415247 (ASCII "GRAFS_PF")
    8     1  major_version  2 (version 1 has no feature_flags byte: its encrypted part starts at 58)
    9     1  minor_version  0
    10   32  nonce          random on every write; input of the metadata-key KDF
    42   16  metadata_mac   AES-GCM tag of the encrypted part
    58    1  feature_flags  bit 0: a write is pending (recovery file in use)
    59 3884  encrypted part
  3943  153  zero padding (not authenticated)

Encrypted part (plaintext)::

    0   772  file_path      bound path, NUL-terminated, zero-filled
    772   8  file_size      u64 plaintext size
    780  16  root MHT key
    796  16  root MHT mac
    812 3072 file_data      plaintext bytes 0..3071

metadata key = AES-128-CMAC(KDK, u32 1 || label NUL-padded to 64 || nonce || u32 128)
(NIST SP 800-108 counter mode, one block).

MHT node plaintext: 128 entries of {key[16], mac[16]}: 0..95 for data nodes, 96..127 for
child MHT nodes. Data node ``d`` holds plaintext ``[3072 + 4096 d, 3072 + 4096 (d + 1))``, is at
physical ``d + 2 + d // 96`` and its entry is ``d % 96`` of MHT ``d // 96``. MHT ``k >= 1`` is
at physical ``1 + 97 k`` and its entry is ``96 + (k - 1) % 32`` of MHT ``(k - 1) // 32``; MHT 0
(the root) is physical node 1, keyed from the metadata. Every MHT and data node is AES-128-GCM
with a fresh random key, a zero IV and no AAD; its tag is kept in the parent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from geode.formats.pf import gcm

NODE_SIZE = 4096
KEY_SIZE = 16
MAC_SIZE = 16
NONCE_SIZE = 32

FILE_ID = 0x46505F5346415247
MAJOR_VERSION = 2
MINOR_VERSION = 0
MAJOR_VERSION_V1 = 1
FLAG_PENDING_WRITE = 0x01
KNOWN_FLAGS = FLAG_PENDING_WRITE

PATH_FIELD_SIZE = 772  # 260 + 512, NUL included
MD_DATA_SIZE = 3072
ENCRYPTED_SIZE = PATH_FIELD_SIZE + 8 + KEY_SIZE + MAC_SIZE + MD_DATA_SIZE  # 3884
HEADER_SIZE = 8 + 1 + 1 + NONCE_SIZE + MAC_SIZE + 1  # 59
HEADER_SIZE_V1 = HEADER_SIZE - 1  # 58: no feature_flags

OFF_NONCE = 10
OFF_MAC = 42
OFF_FLAGS = 58

OFF_SIZE = PATH_FIELD_SIZE  # 772 within the encrypted part
OFF_ROOT_KEY = OFF_SIZE + 8  # 780
OFF_ROOT_MAC = OFF_ROOT_KEY + KEY_SIZE  # 796
OFF_DATA = OFF_ROOT_MAC + MAC_SIZE  # 812

ENTRY_SIZE = KEY_SIZE + MAC_SIZE
DATA_PER_MHT = 96
CHILDREN_PER_MHT = 32
NODES_PER_GROUP = DATA_PER_MHT + 1  # an MHT node and its 96 data nodes

KDF_LABEL = b"SGX-PROTECTED-FS-METADATA-KEY"
KDF_LABEL_SIZE = 64
KDF_OUTPUT_BITS = 128

_HEADER = struct.Struct(f"<QBB{NONCE_SIZE}s{MAC_SIZE}sB")
_HEADER_V1 = struct.Struct(f"<QBB{NONCE_SIZE}s{MAC_SIZE}s")
_FIELDS = struct.Struct(f"<{PATH_FIELD_SIZE}sQ{KEY_SIZE}s{MAC_SIZE}s{MD_DATA_SIZE}s")
assert _HEADER.size == HEADER_SIZE and _FIELDS.size == ENCRYPTED_SIZE
assert HEADER_SIZE + ENCRYPTED_SIZE <= NODE_SIZE


# --- node numbering ------------------------------------------------------------------------------

def data_node_index(offset: int) -> int:
    """Logical data node holding plaintext byte ``offset`` (``offset >= 3072``)."""
    return (offset - MD_DATA_SIZE) // NODE_SIZE


def data_node_offset(d: int) -> int:
    """Plaintext offset of the first byte of data node ``d``."""
    return MD_DATA_SIZE + d * NODE_SIZE


def data_node_physical(d: int) -> int:
    return d + 2 + d // DATA_PER_MHT


def mht_node_physical(k: int) -> int:
    return 1 + NODES_PER_GROUP * k


def data_node_parent(d: int) -> tuple[int, int]:
    """(logical MHT node, byte offset of the {key, mac} entry in its plaintext) of data node d."""
    return d // DATA_PER_MHT, (d % DATA_PER_MHT) * ENTRY_SIZE


def mht_node_parent(k: int) -> tuple[int, int]:
    """(logical parent MHT node, byte offset of the entry) of MHT node ``k >= 1``."""
    return (k - 1) // CHILDREN_PER_MHT, (DATA_PER_MHT + (k - 1) % CHILDREN_PER_MHT) * ENTRY_SIZE


def data_node_count(size: int) -> int:
    """Data nodes of a file of ``size`` plaintext bytes."""
    return 0 if size <= MD_DATA_SIZE else -(-(size - MD_DATA_SIZE) // NODE_SIZE)


def mht_node_count(size: int) -> int:
    return -(-data_node_count(size) // DATA_PER_MHT)


def physical_node_count(size: int) -> int:
    """Nodes in the host file of a protected file of ``size`` plaintext bytes."""
    ndata = data_node_count(size)
    return 1 if ndata == 0 else data_node_physical(ndata - 1) + 1


def classify_physical(p: int) -> tuple[str, int]:
    """("metadata" | "mht" | "data", logical number) of physical node ``p``."""
    if p == 0:
        return "metadata", 0
    group, pos = divmod(p - 1, NODES_PER_GROUP)
    if pos == 0:
        return "mht", group
    return "data", group * DATA_PER_MHT + pos - 1


# --- key derivation ------------------------------------------------------------------------------

def kdf_input(nonce: bytes) -> bytes:
    """The 104-byte SP 800-108 input block: counter, label, nonce (context), output length."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 32 bytes")
    return (
        struct.pack("<I", 1)
        + KDF_LABEL.ljust(KDF_LABEL_SIZE, b"\0")
        + nonce
        + struct.pack("<I", KDF_OUTPUT_BITS)
    )


def derive_metadata_key(kdk: bytes, nonce: bytes) -> bytes:
    """Metadata key = AES-128-CMAC(kdk, kdf_input(nonce))."""
    return MetadataKdf(kdk).derive(nonce)


class MetadataKdf:
    """:func:`derive_metadata_key` and :func:`seal_metadata` for one key-derivation key.

    The CMAC is keyed once; each derivation continues a copy of it, which costs a fifth of
    keying a new one (an open file seals its metadata at every write-back).
    """

    __slots__ = ("_keyed",)

    def __init__(self, kdk: bytes) -> None:
        self._keyed = CMAC(algorithms.AES128(kdk))

    def derive(self, nonce: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(kdf_input(nonce))
        return mac.finalize()

    def seal(self, fields: Fields, nonce: bytes, flags: int = 0) -> bytes:
        encrypted, mac = encrypt_node(self.derive(nonce), pack_fields(fields))
        return pack_metadata_node(nonce, mac, flags, encrypted)


# --- node crypto ---------------------------------------------------------------------------------

def encrypt_node(key: bytes, plaintext: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """AES-128-GCM with a zero IV and no AAD: (ciphertext, 16-byte tag)."""
    out = gcm.encrypt(key, plaintext)
    return out[:-MAC_SIZE], out[-MAC_SIZE:]


def decrypt_node(key: bytes | bytearray | memoryview, ciphertext: bytes | bytearray | memoryview,
                 mac: bytes | bytearray | memoryview) -> bytearray | None:
    """The plaintext, or None when the tag does not match."""
    return gcm.decrypt(key, ciphertext, mac)


# --- metadata node -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """The plaintext header of the metadata node."""

    file_id: int
    major: int
    minor: int
    nonce: bytes
    mac: bytes
    flags: int

    @property
    def encrypted_offset(self) -> int:
        return HEADER_SIZE_V1 if self.major == MAJOR_VERSION_V1 else HEADER_SIZE


@dataclass(frozen=True)
class Fields:
    """The decrypted part of the metadata node. ``path`` excludes the NUL."""

    path: bytes
    size: int
    root_key: bytes
    root_mac: bytes
    data: bytes  # 3072 bytes; only the first min(size, 3072) are meaningful


def unpack_header(node: bytes | bytearray | memoryview) -> Header:
    """Parse the plaintext header; the caller checks the values."""
    file_id, major, minor, nonce, mac = _HEADER_V1.unpack_from(node, 0)
    flags = 0 if major == MAJOR_VERSION_V1 else node[OFF_FLAGS]
    return Header(file_id, major, minor, nonce, mac, flags)


def encrypted_part(node: bytes | bytearray | memoryview, header: Header) -> bytes:
    start = header.encrypted_offset
    return bytes(node[start:start + ENCRYPTED_SIZE])


def pack_fields(fields: Fields) -> bytes:
    if len(fields.path) >= PATH_FIELD_SIZE:
        raise ValueError("path too long")
    return _FIELDS.pack(fields.path, fields.size, fields.root_key, fields.root_mac,
                        bytes(fields.data).ljust(MD_DATA_SIZE, b"\0"))


def unpack_fields(plain: bytes | bytearray) -> tuple[Fields, bool]:
    """(fields, path_terminated): the path field must hold a NUL to be valid."""
    path_field, size, root_key, root_mac, data = _FIELDS.unpack(plain)
    nul = path_field.find(b"\0")
    return Fields(path_field[:nul] if nul >= 0 else path_field, size, root_key, root_mac,
                  data), nul >= 0


def pack_metadata_node(nonce: bytes, mac: bytes, flags: int, encrypted: bytes) -> bytes:
    """A full v2.0 metadata node (header, encrypted part, zero padding)."""
    head = _HEADER.pack(FILE_ID, MAJOR_VERSION, MINOR_VERSION, nonce, mac, flags)
    return (head + encrypted).ljust(NODE_SIZE, b"\0")


def seal_metadata(kdk: bytes, fields: Fields, nonce: bytes, flags: int = 0) -> bytes:
    """Encrypt ``fields`` under the key derived from ``kdk`` and ``nonce``: the metadata node."""
    return MetadataKdf(kdk).seal(fields, nonce, flags)
