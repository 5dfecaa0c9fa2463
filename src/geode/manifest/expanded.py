"""Checks over all of a rendered manifest's ``sgx.trusted_files`` at once.

A signed manifest lists ~10,000 ``{ uri = "file:...", sha256 = "<64 hex>" }`` entries, and
every ``geode run`` checks them twice (the schema, the view plan). One by one in Python that
was a noticeable part of each start; a few C-level passes over all of them (``set(map(...))``,
``bytes.fromhex``, substring searches over the URIs joined by NULs) take a few ms. Callers use
these for the common shape only and check entry by entry otherwise, where the errors are
worded.
"""

from __future__ import annotations

import operator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_get_uri = operator.itemgetter("uri")
_get_sha256 = operator.itemgetter("sha256")


def columns(entries: list[Any]) -> tuple[list[str], list[str]] | None:
    """``(uris, sha256s)`` if every entry is a dict whose ``uri`` is a str and whose
    ``sha256`` is a str of 64 hex digits (other keys are not looked at); else None, also
    for no entries."""
    if set(map(type, entries)) != {dict}:
        return None
    try:
        uris: list[Any] = list(map(_get_uri, entries))
        shas: list[Any] = list(map(_get_sha256, entries))
    except KeyError:
        return None
    if set(map(type, uris)) != {str} or set(map(type, shas)) != {str}:
        return None
    if set(map(len, shas)) != {64}:
        return None
    try:
        # fromhex skips ASCII whitespace, which would leave fewer than 32 bytes per hash.
        if len(bytes.fromhex("".join(shas))) != 32 * len(shas):
            return None
    except ValueError:
        return None
    return uris, shas


def file_uris_text(uris: list[str]) -> str | None:
    """The URIs in one string, each led by a NUL and the last followed by one, if every URI
    starts with ``file:`` and none contains a NUL; else None.

    Substring searches over it check every URI at once: ``"/\\0"`` is a URI ending in
    ``/``, ``"\\0file:\\0"`` one with an empty path.
    """
    text = "\0" + "\0".join(uris) + "\0"
    # n + 1 NULs: none inside a URI; so n "\0file:" are one at the head of each URI.
    if text.count("\0") != len(uris) + 1 or text.count("\0file:") != len(uris):
        return None
    return text
