"""Reading values out of a manifest: a dotted key (``"sgx.debug"``), a size (``"256M"``).

Its own module so that what reads a checked manifest at run time (the process spec, the
insecure-settings banner) does not load the schema, which only checks manifests; the schema
uses the same size grammar.
"""

from __future__ import annotations

from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def value_at(manifest: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key (``"sgx.debug"``), or None where any part is missing."""
    node: Any = manifest
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


#: A size's unit suffix (either case) -> bytes.
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def split_size(text: str) -> tuple[str, int] | None:
    """``(digits, unit in bytes)`` of a Gramine size string: ASCII decimal digits and an
    optional K, M or G of either case; None for anything else. (No regular expression: a
    start's path does not load ``re``.)"""
    unit = text[-1].upper() if text and text[-1] in "KMGkmg" else ""
    digits = text[:-1] if unit else text
    if not (digits.isascii() and digits.isdigit()):
        return None
    return digits, SIZE_UNITS[unit]
