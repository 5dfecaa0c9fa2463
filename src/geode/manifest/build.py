"""The gramine-manifest pipeline: template -> TOML -> defaults -> trusted files -> check.

Also loading and dumping of rendered manifests, shared by signing and the runtime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from geode.errors import ManifestError
from geode.measurement import libos_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # (a run loads manifests without pathlib, or typing)
    from pathlib import Path
    from typing import Any


def build(
    template: str,
    *,
    defines: Mapping[str, str],
    name: str = "<string>",
    chroot: Path | None = None,
    check: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Render ``template`` and return the final manifest (defaults, hashes filled in)."""
    from pathlib import Path

    from geode.manifest import render, schema, trusted

    search_dirs = [Path(name).parent] if name != "<string>" else []
    text = render.render(template, defines=defines, name=name, search_dirs=search_dirs)
    manifest = render.parse_toml(text, name=name)
    if check:
        schema.check(manifest, source=name)
    manifest = schema.apply_defaults(manifest, libos_uri=f"file:{libos_path()}")
    trusted.expand_trusted_files(manifest, chroot=chroot, progress=progress)
    if check:
        schema.check(manifest, source=name)
    return manifest


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a rendered manifest file; errors name the file and the line."""
    return loads(read(path), name=os.fspath(path))


def read(path: str | os.PathLike[str]) -> bytes:
    """A manifest file's bytes (what is parsed, and what is measured)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ManifestError(f"cannot read manifest: {e.strerror}", where=os.fspath(path)
                            ) from None


def loads(data: bytes, *, name: str) -> dict[str, Any]:
    # (the parser is loaded here: a start whose manifest is remembered reads it, parses not)
    from geode.manifest import tomlio

    try:
        return tomlio.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"not UTF-8 text (byte {e.start})", where=name) from None
    except tomlio.TOMLDecodeError as e:
        raise ManifestError(f"invalid TOML: {e}", where=name) from None


def dumps(manifest: Mapping[str, Any]) -> bytes:
    """Serialize a manifest the way Gramine does (TOML via tomli-w)."""
    import tomli_w  # only signing and rendering write manifests; running reads them

    return tomli_w.dumps(dict(manifest)).encode("utf-8")
