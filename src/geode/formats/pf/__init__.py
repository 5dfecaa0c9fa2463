"""Gramine protected files (encrypted files), format v2.0.

:class:`ProtectedFile` reads and writes the format at random offsets on a host file object;
:mod:`geode.formats.pf.layout` holds the byte layout, node numbering and key derivation.
"""

from __future__ import annotations

import io

from geode.formats.pf.errors import PfError, PfErrorKind, PfIOError
from geode.formats.pf.file import DEFAULT_CACHE_NODES, ProtectedFile
from geode.formats.pf.paths import norm_path

__all__ = [
    "DEFAULT_CACHE_NODES",
    "PfError",
    "PfErrorKind",
    "PfIOError",
    "ProtectedFile",
    "decrypt_bytes",
    "encrypt_bytes",
    "norm_path",
]


def encrypt_bytes(plaintext: bytes, *, key: bytes, path: str) -> bytes:
    """The protected file holding ``plaintext``, bound to ``path``."""
    buf = io.BytesIO()
    with ProtectedFile.open(buf, key=key, path=path, create=True) as pf:
        pf.write(0, plaintext)
    return buf.getvalue()


def decrypt_bytes(data: bytes, *, key: bytes, path: str | None,
                  name: str | None = None) -> bytes:
    """The plaintext of the protected file ``data``; ``path=None`` skips the path check."""
    with ProtectedFile.open(io.BytesIO(data), key=key, path=path, create=False, readonly=True,
                            name=name) as pf:
        return pf.read(0, pf.size)
