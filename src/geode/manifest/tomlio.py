"""TOML parsing for manifests: the compiled ``tomli`` wheel when present, else ``tomllib``.

A signed manifest trusting a whole library tree has ~10,000 entries; the compiled
parser reads it about 4x faster than the standard library's pure-Python one, and
start-up time is what users of ``geode run`` feel. Both parse the same TOML 1.0.

Even compiled, parsing those entries is most of the time, and ``gramine-sgx-sign`` writes
every one of them in the same canonical form::

    [[sgx.trusted_files]]
    uri = "file:/usr/bin/python3.11"
    sha256 = "a83c...(64 hex digits)"

:func:`loads` cuts each run of such blocks out of the text with a few C-level string
operations (no regular expression walks the 1.6 MB of a 10,000-file manifest) and hands only
the first block of each run (plus everything else) to the TOML parser, so that the parser still
decides every question of TOML semantics (is ``sgx`` a table that can take this array, is a
table redefined, ...). It gives exactly the result of a plain parse, and falls back to a
plain parse whenever it cannot show that it would.
"""

from __future__ import annotations

import re
from typing import Any

try:
    import tomli as _toml
except ImportError:  # pragma: no cover - tomli is a declared dependency
    import tomllib as _toml  # type: ignore[no-redef]

TOMLDecodeError = _toml.TOMLDecodeError

_HEAD = "[[sgx.trusted_files]]\n"
# One canonical block is _KEY_URI "URI" _KEY_SHA "HASH" "\n", optionally followed by one blank
# line. The URI is a basic string without escapes: no '"', no '\\', no control character
# (TOML forbids those unescaped; tab is allowed by TOML but left to the plain parser), no lone
# surrogate. The hash is 64 hex digits.
_KEY_URI = _HEAD + "uri = "
_KEY_SHA = "\nsha256 = "
# Split at '"', a run of blocks is _KEY_URI, then (URI, _KEY_SHA, HASH, separator) per block,
# where the separator is one of these between blocks and newlines only after the last one.
_BETWEEN = frozenset({"\n" + _KEY_URI, "\n\n" + _KEY_URI})
# The first line after a run's start that no block has: where the run ends at the latest.
_RUN_END_RE = re.compile(r'\n(?!\[\[sgx\.trusted_files\]\]\n|uri = "|sha256 = "|\n)')
# What may follow a run so that no key/value line lands in its last block's table.
_AFTER_RUN_RE = re.compile(r"\n*(?:\[|\Z)")
_URI_ASCII_OK = bytes(range(0x20, 0x7F)).replace(b"\\", b"")
_URI_BAD = r'[\\\x00-\x1f\x7f\ud800-\udfff]'  # compiled on first use: URIs are ASCII mostly


def loads(text: str) -> dict[str, Any]:
    """``tomli.loads(text)``, faster for manifests with many canonical trusted-files blocks."""
    if _HEAD in text:
        fast = _loads_fast(text)
        if fast is not None:
            return fast
    return _toml.loads(text)


def _loads_fast(text: str) -> dict[str, Any] | None:
    """The parse of ``text``, or None if the fast path cannot vouch for its result.

    Each run of canonical blocks B1..Bn is replaced by B1 alone. Parsing B2..Bn cannot fail
    once B1 parsed (each appends a fresh {uri, sha256} table to the array B1 appended to),
    and what follows the run starts with a table header, so the shortened text parses iff
    the original does, with B1 standing for the whole run in ``sgx.trusted_files``.
    """
    kept: list[str] = []  # the text outside the runs, and the first block of each run
    runs: list[tuple[list[str], list[str]]] = []  # (URIs, hashes) of each run
    pos = 0
    start = text.find(_KEY_URI + '"')
    while start != -1:
        if start and text[start - 1] != "\n":
            return None  # not at the start of a line
        run = _run_at(text, start)
        if run is None:
            return None
        end, uris, hashes = run
        if not _AFTER_RUN_RE.match(text, end):
            return None  # e.g. a "key = value" line, which would belong to Bn's table
        kept.append(text[pos:start])
        kept.append(f'{_KEY_URI}"{uris[0]}"{_KEY_SHA}"{hashes[0]}"\n')
        runs.append((uris, hashes))
        pos = end
        start = text.find(_KEY_URI + '"', end)
    if not runs:
        return None
    kept.append(text[pos:])
    outside = "".join(kept[0::2])
    # Another mention of the array could add entries or tables to it, and a multi-line
    # string could hide a "run" inside a string value: leave both to the plain parser.
    if "trusted_files" in outside or '"""' in outside or "'''" in outside:
        return None
    try:
        data = _toml.loads("".join(kept))
    except TOMLDecodeError:
        return None  # the plain parse raises the error, with the original line numbers
    sgx = data.get("sgx")
    if not isinstance(sgx, dict):
        return None  # e.g. [[sgx]]: the runs went to different tables
    parsed = sgx.get("trusted_files")
    # Exactly one entry per run, each the run's first block: nothing else (a quoted key
    # with escapes, say) touched the array. Otherwise do not guess.
    if not isinstance(parsed, list) or len(parsed) != len(runs):
        return None
    for entry, (uris, hashes) in zip(parsed, runs, strict=True):
        if entry != {"uri": uris[0], "sha256": hashes[0]}:
            return None
    sgx["trusted_files"] = [
        {"uri": uri, "sha256": sha256}
        for uris, hashes in runs for uri, sha256 in zip(uris, hashes, strict=True)
    ]
    return data


def _run_at(text: str, start: int) -> tuple[int, list[str], list[str]] | None:
    """``(end, URIs, hashes)`` of the run of canonical blocks at ``start`` (the start of a
    block's first line), ``end`` just after its last block's last line; or None if the lines
    from ``start`` on are not such a run up to the last block of the text, nor up to the first
    line that no block has."""
    # Usually there is one run, up to the text's last block: try that first, it scans nothing.
    last = text.rfind(_KEY_URI + '"')
    sha_key = text.find(_KEY_SHA, last)
    if sha_key != -1:
        run = _blocks(text, start, sha_key + len(_KEY_SHA) + 67)  # '"', 64 digits, '"\n'
        if run is not None:
            return run
    found = _RUN_END_RE.search(text, start)
    return _blocks(text, start, found.start() + 1 if found else len(text))


def _blocks(text: str, start: int, stop: int) -> tuple[int, list[str], list[str]] | None:
    """:func:`_run_at` if ``text[start:stop]`` is canonical blocks followed by newlines."""
    pieces = text[start:stop].split('"')
    n = len(pieces) // 4
    tail = pieces[-1]
    if (
        n == 0
        or len(pieces) != 4 * n + 1
        or pieces[0] != _KEY_URI
        or not tail.startswith("\n")
        or tail.strip("\n")
        or set(pieces[2::4]) != {_KEY_SHA}
        or not _BETWEEN.issuperset(pieces[4:-1:4])
    ):
        return None
    uris, hashes = pieces[1::4], pieces[3::4]
    if set(map(len, hashes)) != {64}:
        return None
    try:
        # fromhex skips ASCII whitespace, which would leave fewer than 32 bytes per hash.
        if len(bytes.fromhex("".join(hashes))) != 32 * n:
            return None
    except ValueError:
        return None
    joined = "".join(uris)  # none contains '"': the text was split there
    if joined.isascii():
        if joined.encode().translate(None, _URI_ASCII_OK):
            return None  # a backslash or an ASCII control character
    elif re.search(_URI_BAD, joined):
        return None
    return stop - len(tail) + 1, uris, hashes
