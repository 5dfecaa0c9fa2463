"""AES-128-GCM as the protected-file format uses it: a key per node, a zero IV, no additional
data, a 16-byte tag kept apart from the ciphertext.

Two implementations with the same results (the tests hold them to each other and to
``cryptography``'s ``AESGCM``):

* :mod:`geode.formats.pf._gcm`, a small C module driving OpenSSL's EVP interface, built
  when Geode is installed with a C compiler and OpenSSL's headers (``scripts/setup.sh``
  installs both). ``cryptography`` builds a Python object and key schedule per call, which
  costs more than the cipher on a 4 KiB node; the C module re-keys one context per node,
  and :func:`encrypt_many` encrypts a write-back batch in one call without the GIL.
* ``cryptography``'s ``AESGCM`` otherwise, or with ``GEODE_PF_NATIVE=0`` in the
  environment (to compare the two).

:data:`NATIVE` says which one is in use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 16
TAG_SIZE = 16
IV = bytes(12)

TYPE_CHECKING = False

Buffer = bytes | bytearray | memoryview


def _check_size(what: str, buf: Buffer, size: int) -> None:
    if len(buf) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(buf)}")


def py_encrypt(key: Buffer, plaintext: Buffer) -> bytes:
    """Ciphertext followed by the 16-byte tag."""
    _check_size("key", key, KEY_SIZE)
    return AESGCM(bytes(key)).encrypt(IV, plaintext, None)


def py_decrypt(key: Buffer, ciphertext: Buffer, tag: Buffer) -> bytearray | None:
    """The plaintext, or None when ``tag`` does not authenticate ``ciphertext``."""
    _check_size("key", key, KEY_SIZE)
    _check_size("tag", tag, TAG_SIZE)
    try:
        sealed = bytes(memoryview(ciphertext)) + bytes(memoryview(tag))  # (buffers only)
        return bytearray(AESGCM(bytes(key)).decrypt(IV, sealed, None))
    except InvalidTag:
        return None


def py_encrypt_many(keys: Buffer, plaintexts: Sequence[Buffer]) -> bytes:
    """``py_encrypt`` of each plaintext (all of one length) under its 16 bytes of ``keys``,
    concatenated."""
    if len(keys) != KEY_SIZE * len(plaintexts):
        raise ValueError(f"keys must be {KEY_SIZE * len(plaintexts)} bytes (16 per plaintext),"
                         f" not {len(keys)}")
    if any(len(p) != len(plaintexts[0]) for p in plaintexts):
        raise ValueError("the plaintexts must all have the same length")
    keys = bytes(keys)
    return b"".join(AESGCM(keys[i * KEY_SIZE:(i + 1) * KEY_SIZE]).encrypt(IV, p, None)
                    for i, p in enumerate(plaintexts))


if TYPE_CHECKING:
    encrypt = py_encrypt
    decrypt = py_decrypt
    encrypt_many = py_encrypt_many
    NATIVE: bool
else:
    try:
        if os.environ.get("GEODE_PF_NATIVE", "1") == "0":
            raise ImportError("GEODE_PF_NATIVE=0")
        from geode.formats.pf._gcm import decrypt, encrypt, encrypt_many
    except ImportError:
        encrypt, decrypt, encrypt_many = py_encrypt, py_decrypt, py_encrypt_many
        NATIVE = False
    else:
        NATIVE = True
