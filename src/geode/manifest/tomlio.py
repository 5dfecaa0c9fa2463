"""TOML parsing for manifests: the compiled ``tomli`` wheel when present, else ``tomllib``.

A signed manifest trusting a whole library tree has ~10,000 entries; the compiled
parser reads it about 4x faster than the standard library's pure-Python one, and
start-up time is what users of ``geode run`` feel. Both parse the same TOML 1.0.

Even compiled, parsing those entries is most of the time, and ``gramine-sgx-sign`` writes
every one of them in the same canonical form::

    [[sgx.trusted_files]]
    uri = "file:/usr/bin/python3.11"
    sha256 = "a83c...(64 hex digits)"

:func:`loads` reads runs of such blocks with one regular expression and hands only the
first block of each run (plus everything else) to the TOML parser, so that the parser still
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
# One canonical block, optionally followed by one blank line. The URI is a basic string
# without escapes: no '"', no '\\', no control character (TOML forbids those unescaped;
# tab is allowed by TOML but left to the plain parser), no lone surrogate.
_URI = r'[^"\\\x00-\x1f\x7f\ud800-\udfff]*'
_SHA256 = r"[0-9a-fA-F]{64}"


def _block(group: str) -> str:
    """The pattern of one block; ``group`` opens the URI and hash groups ("(" or "(?:")."""
    return (
        r"\[\[sgx\.trusted_files\]\]\n"
        rf'uri = "{group}{_URI})"\n'
        rf'sha256 = "{group}{_SHA256})"\n'
        r"\n?"
    )


_BLOCK_RE = re.compile(_block("("))
_RUN_RE = re.compile(f"(?:{_block('(?:')})+")
# What may follow a run so that no key/value line lands in its last block's table.
_AFTER_RUN_RE = re.compile(r"\n*(?:\[|\Z)")


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
    kept: list[str] = []  # the text outside the runs
    runs: list[list[tuple[str, str]]] = []
    pos = 0
    for m in _RUN_RE.finditer(text):
        start, end = m.span()
        if start and text[start - 1] != "\n":
            return None  # not at the start of a line
        if not _AFTER_RUN_RE.match(text, end):
            return None  # e.g. a "key = value" line, which would belong to Bn's table
        first = _BLOCK_RE.match(text, start, end)
        if first is None:  # cannot happen: a run starts with a block
            return None
        kept.append(text[pos:start])
        kept.append(first.group())
        # Each block of the run has four '"' (none in a URI): around its URI and its hash.
        pieces = text[start:end].split('"')
        runs.append(list(zip(pieces[1::4], pieces[3::4], strict=True)))
        pos = end
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
    for entry, run in zip(parsed, runs, strict=True):
        uri, sha256 = run[0]
        if entry != {"uri": uri, "sha256": sha256}:
            return None
    sgx["trusted_files"] = [
        {"uri": uri, "sha256": sha256} for run in runs for uri, sha256 in run
    ]
    return data
