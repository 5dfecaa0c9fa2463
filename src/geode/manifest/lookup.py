"""Reading a dotted key (``"sgx.debug"``) out of a manifest.

Its own module so that what reads a checked manifest at run time (the process spec, the
insecure-settings banner) does not load the schema, which only checks manifests.
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
