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

Only this pure computation is remembered, and never for a manifest holding key material
(``fs.insecure__keys``), which is not copied into the cache. What decides whether the
manifest may run is done at every start, on the bytes read at that start: the SIGSTRUCT and
its measurement of those bytes, the attributes, the runtime pin. A manifest that fails to
parse or to check is never remembered, so its error is reported at every start.

An entry stores the manifest without ``sgx.trusted_files``, and the table grouped by
directory: for each directory, the names of its trusted files joined by NULs and their
digests as one ``bytes``. A start reads it as a :class:`GroupedTable`, which unpacks a
directory's group on its first lookup there. Making ~10,000 path and hash strings and the dict
of them took ~4 ms of every start (``marshal`` of ~10,000 small tables ~9 ms before that); a
start looks up files in a few dozen directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping

from geode import cache
from geode.runtime.plan import host_base, trusted_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_KIND = "manifest"
_FORMAT = "geode-manifest-memo/3"
#: entries kept: one per manifest a user runs, old builds pruned
_KEEP = 16


def parse_for_run(data: bytes, *, measurement: bytes, source: str,
                  base_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], Mapping[str, str]]:
    """``(manifest, trusted)``: ``data`` parsed and checked against the schema, with its
    ``sgx.trusted_files`` taken out as the plan's table of trusted files
    (:func:`geode.runtime.plan.trusted_table`, relative URIs resolved against ``base_dir``):
    a run uses the list only as that table, and leaving it out spares a remembered start
    rebuilding ~10,000 small tables. Errors are :class:`ManifestError` naming ``source``.

    ``measurement`` must be ``geode.measurement.measure(data)`` (a start has it anyway): it
    stands for the bytes and the runtime identity in the key, without hashing them again."""
    base = host_base(base_dir)
    key = hashlib.sha256(
        "\0".join((_FORMAT, _parser(), base)).encode("utf-8", "surrogateescape")
        + b"\0" + measurement
    ).digest()
    remembered = _decode(cache.get(_KIND, key))
    if remembered is not None:
        return remembered

    from geode.manifest import build, schema

    manifest = build.loads(data, name=source)
    schema.check(manifest, source=source)
    trusted = trusted_table(manifest, base)
    manifest = _without_trusted_files(manifest)
    # (encoded now: the caller may change the manifest). Key material is not copied out of
    # the manifest into the cache: a manifest with fs.insecure__keys is parsed at each start.
    if not _has_keys(manifest):
        entry = _encode(manifest, trusted)
        if entry is not None:
            cache.put(_KIND, key, entry, keep=_KEEP)
    return manifest, trusted


def _has_keys(manifest: dict[str, Any]) -> bool:
    fs = manifest.get("fs")
    return isinstance(fs, dict) and bool(fs.get("insecure__keys"))


def _without_trusted_files(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` without ``sgx.trusted_files`` (the input's tables are not copied)."""
    sgx = manifest.get("sgx")
    if not isinstance(sgx, dict) or "trusted_files" not in sgx:
        return manifest
    return {**manifest, "sgx": {k: v for k, v in sgx.items() if k != "trusted_files"}}


def remember(data: bytes, path: str | os.PathLike[str]) -> None:
    """Compute and store what a start of the manifest ``data``, written to ``path``, will
    look up (relative URIs from the manifest's directory, as a start resolves them).
    ``gramine-manifest`` and ``gramine-sgx-sign`` call it on what they write, so that the
    first start after a build finds it too. A manifest a start would refuse is left for the
    start to report."""
    if cache.directory() is None:
        return
    from geode.errors import GeodeError
    from geode.measurement import measure

    source = os.fspath(path)
    with contextlib.suppress(GeodeError):
        parse_for_run(data, measurement=measure(data), source=source,
                      base_dir=os.path.dirname(os.path.abspath(source)))


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


class GroupedTable(Mapping[str, str]):
    """A read-only table of trusted files (host path -> lowercase sha256 hex) kept as
    :func:`group` made it: on its first lookup a directory's group becomes a dict of its
    names (to their place) beside its digests, and a digest is turned into hex when it is
    looked up. (Unpacking into a dict of hex strings cost 0.4 µs per name, ~0.45 ms for a
    library directory of 1,100 trusted files; a start looks up only a few names in each.)
    Lookups may come from several threads; two unpacking one group at once make equal
    groups."""

    __slots__ = ("_groups", "_len")

    def __init__(self, groups: dict[str, tuple[str, bytes]], length: int) -> None:
        # (unpacked in place: a group's names become a dict[str, int])
        self._groups: dict[str, tuple[Any, bytes]] = groups
        self._len = length

    def _group(self, directory: str) -> tuple[dict[str, int], bytes] | None:
        group = self._groups.get(directory)
        if group is None:
            return None
        names, digests = group
        if isinstance(names, dict):
            return names, digests
        listed = names.split("\0")
        if len(digests) != 32 * len(listed):  # (not what group() makes: nothing is trusted)
            unpacked: tuple[dict[str, int], bytes] = ({}, b"")
        else:
            unpacked = (dict(zip(listed, range(len(listed)), strict=True)), digests)
        self._groups[directory] = unpacked
        return unpacked

    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if not isinstance(path, str):
            return default
        cut = path.rfind("/")
        if cut < 0:
            return default
        group = self._group(path[:cut])
        if group is None:
            return default
        index, digests = group
        i = index.get(path[cut + 1:])
        if i is None:
            return default
        return digests[32 * i:32 * i + 32].hex()

    def __getitem__(self, path: str) -> str:
        sha: str | None = self.get(path)
        if sha is None:
            raise KeyError(path)
        return sha

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.get(path) is not None

    def __iter__(self) -> Iterator[str]:
        for directory in list(self._groups):
            group = self._group(directory)
            assert group is not None
            for name in group[0]:
                yield f"{directory}/{name}"

    def __len__(self) -> int:
        return self._len


def group(trusted: Mapping[str, str]) -> dict[str, tuple[str, bytes]] | None:
    """``trusted`` (host path -> lowercase sha256 hex) as directory -> (the names of its
    files joined by NULs, their digests concatenated), in the table's order; None if some
    entry has no such form (a NUL in a path, a path without "/", a hash that is not 64
    lowercase hex digits): such a table is not remembered."""
    names: dict[str, list[str]] = {}
    hexes: dict[str, list[str]] = {}
    for path, sha in trusted.items():
        cut = path.rfind("/")
        if cut < 0 or "\0" in path or len(sha) != 64:
            return None
        directory = path[:cut]
        if directory in names:
            names[directory].append(path[cut + 1:])
            hexes[directory].append(sha)
        else:
            names[directory], hexes[directory] = [path[cut + 1:]], [sha]
    groups = {}
    for directory, listed in names.items():
        joined = "".join(hexes[directory])
        try:
            digests = bytes.fromhex(joined)
        except ValueError:
            return None
        if digests.hex() != joined:  # (uppercase digits, or spaces fromhex skipped)
            return None
        groups[directory] = ("\0".join(listed), digests)
    return groups


def _encode(manifest: dict[str, Any], trusted: dict[str, str]) -> tuple[Any, ...] | None:
    groups = group(trusted)
    if groups is None:
        return None
    return (_FORMAT, manifest, groups, len(trusted))


def _decode(value: Any) -> tuple[dict[str, Any], GroupedTable] | None:
    """What :func:`_encode` stored; None for anything else (an entry of another format)."""
    if not (isinstance(value, tuple) and len(value) == 4 and value[0] == _FORMAT
            and isinstance(value[1], dict) and isinstance(value[2], dict)
            and isinstance(value[3], int)):
        return None
    _, manifest, groups, length = value
    return manifest, GroupedTable(groups, length)
