"""What a start derives from a manifest's bytes, remembered across starts.

Before anything runs, a start turns the manifest's bytes into the checked manifest and the
view's table of trusted files: for a signed manifest trusting a whole Python (1.7 MB, ~10,000
files) that is ~35 ms of parsing and checking, at every start, over bytes that rarely change.
:func:`parse_for_run` remembers its result in :mod:`geode.cache`, keyed by a SHA-256 over
everything the result depends on:

* the manifest's bytes and the code that computes the result, both through the manifest's
  Geode measurement (a SHA-256 over the runtime identity digest, which covers every ``.py``
  file of Geode including the TOML fast path, the schema and the plan, and the bytes);
* the TOML parser (the file of the compiled ``tomli`` with its size, mtime and inode; or
  ``tomllib`` and the Python);
* the directory relative ``file:`` URIs resolve against.

``gramine-manifest`` and ``gramine-sgx-sign`` store the entry for the manifest they write
(:func:`remember`), so the first start after a build finds it too.

Only this pure computation is remembered. What decides whether the manifest may run is done
at every start, on the bytes read at that start: the SIGSTRUCT and its measurement of those
bytes, the attributes, the runtime pin. A manifest that fails to parse or to check is never
remembered, so its error is reported at every start.

An entry stores the manifest with its ``sgx.trusted_files`` as a list of URIs and a list of
hashes, and the table only when it is not simply each URI's path with its hash (the usual
case): rebuilding both from the lists takes ~4 ms, ``marshal`` of the ~10,000 small tables
and the table themselves took ~9 ms.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Any

from geode import cache

_KIND = "manifest"
_FORMAT = "geode-manifest-memo/1"
#: entries kept: one per manifest a user runs, old builds pruned
_KEEP = 16


def parse_for_run(data: bytes, *, measurement: bytes, source: str,
                  base_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], Mapping[str, str]]:
    """``(manifest, trusted)``: ``data`` parsed and checked against the schema, and the plan's
    table of its trusted files (:func:`geode.runtime.plan.trusted_table`), relative URIs
    resolved against ``base_dir``. Errors are :class:`ManifestError` naming ``source``.

    ``measurement`` must be ``geode.measurement.measure(data)`` (a start has it anyway): it
    stands for the bytes and the runtime identity in the key, without hashing them again."""
    base = os.path.normpath(os.path.abspath(os.fspath(base_dir)))
    key = hashlib.sha256(
        "\0".join((_FORMAT, _parser(), base)).encode("utf-8", "surrogateescape")
        + b"\0" + measurement
    ).digest()
    remembered = _decode(cache.get(_KIND, key), base)
    if remembered is not None:
        return remembered

    from geode.manifest import build, schema
    from geode.runtime.plan import trusted_table

    manifest = build.loads(data, name=source)
    schema.check(manifest, source=source)
    trusted = trusted_table(manifest, base)
    # (encoded now: the caller may change the manifest)
    cache.put(_KIND, key, _encode(manifest, trusted, base), keep=_KEEP)
    return manifest, trusted


def remember(data: bytes, *, source: str, base_dir: str | os.PathLike[str]) -> None:
    """Compute and store what a start of the manifest ``data`` (at ``source``, in
    ``base_dir``) will look up. ``gramine-manifest`` and ``gramine-sgx-sign`` call it on
    what they write, so that the first start after a build finds it too. A manifest a start
    would refuse is left for the start to report."""
    if cache.directory() is None:
        return
    from geode.errors import GeodeError
    from geode.measurement import measure

    with contextlib.suppress(GeodeError):
        parse_for_run(data, measurement=measure(data), source=source, base_dir=base_dir)


def _parser() -> str:
    """The TOML parser a miss would use (:mod:`geode.manifest.tomlio`: tomli if it can be
    imported, else tomllib), named without loading it: loading the compiled tomli takes ~7 ms.
    tomli by the file it would load, with its size, mtime and inode; tomllib by the Python."""
    loaded = sys.modules.get("tomli")
    spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec("tomli")
    if spec is None or spec.origin is None:
        return f"tomllib {sys.version}"
    try:
        st = os.stat(spec.origin)
    except OSError:
        return f"tomli {spec.origin} ?"  # (the miss's import fails the same way)
    return f"tomli {spec.origin} {st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _encode(manifest: dict[str, Any], trusted: dict[str, str], base: str) -> tuple[Any, ...]:
    sgx = manifest.get("sgx")
    entries = sgx.get("trusted_files") if isinstance(sgx, dict) else None
    if not entries or not _canonical(entries):
        return (_FORMAT, manifest, None, None, dict(trusted))
    assert isinstance(sgx, dict)
    uris = [e["uri"] for e in entries]
    shas = [e["sha256"] for e in entries]
    rest = dict(manifest)
    rest["sgx"] = dict(sgx, trusted_files=None)  # same key order; filled in again by _decode
    # Usually the table is each "file:" URI's path (relative ones below the manifest's
    # directory) with its hash, in manifest order: then it is not stored.
    derived = list(trusted.items()) == list(zip(_paths(uris, base), shas, strict=True))
    return (_FORMAT, rest, uris, shas, None if derived else dict(trusted))


def _canonical(entries: list[Any]) -> bool:
    """Whether every entry is exactly a ``{uri, sha256}`` table, keys in that order."""
    return all(type(e) is dict and tuple(e) == ("uri", "sha256") for e in entries)


def _paths(uris: list[str], base: str) -> list[str]:
    """Each URI's path after "file:", a relative one joined to ``base`` (not normalized:
    an entry is only derived if this gives the table's very keys)."""
    prefix = base if base.endswith("/") else base + "/"
    return [uri[5:] if uri.startswith("file:/") else prefix + uri[5:] for uri in uris]


def _decode(value: Any, base: str) -> tuple[dict[str, Any], dict[str, str]] | None:
    """What :func:`_encode` stored; None for anything else (an entry of another format)."""
    if not (isinstance(value, tuple) and len(value) == 5 and value[0] == _FORMAT
            and isinstance(value[1], dict)):
        return None
    _, manifest, uris, shas, table = value
    try:
        if uris is not None:
            manifest["sgx"]["trusted_files"] = [
                {"uri": uri, "sha256": sha} for uri, sha in zip(uris, shas, strict=True)
            ]
        trusted = dict(zip(_paths(uris, base), shas, strict=True)) if table is None else table
    except (TypeError, ValueError, KeyError):
        return None
    return (manifest, trusted) if isinstance(trusted, dict) else None
