"""tomlio.loads: its fast path for canonical trusted-files blocks is exactly tomli.loads."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import pytest
import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geode.manifest import tomlio

SHA = "a83c0370d91532c96d4060a0e7c107d1f2889dad8a98e03395e86ef0373fd467"


def block(uri: str, sha: str = SHA, blank: bool = True) -> str:
    return f'[[sgx.trusted_files]]\nuri = "{uri}"\nsha256 = "{sha}"\n' + ("\n" if blank else "")


def outcome(parse: Callable[[str], dict[str, Any]], text: str) -> tuple[str, str]:
    """What a parse gives: the result's repr (key order, 1 vs True) or the error message."""
    try:
        return "ok", repr(parse(text))
    except tomli.TOMLDecodeError as e:
        return "error", str(e)


def assert_same(text: str) -> None:
    assert outcome(tomlio.loads, text) == outcome(tomli.loads, text)
    fast = tomlio._loads_fast(text)
    if fast is not None:
        assert repr(fast) == repr(tomli.loads(text))


# ----------------------------------------------------------------------- generated manifests

# URIs the fast path takes: no '"', '\\' or control character (tab included), no surrogate.
plain_uris = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=30
).map(lambda s: "file:" + s)
shas = st.text(st.sampled_from(string.hexdigits), min_size=64, max_size=64)
canonical_blocks = st.builds(block, plain_uris, shas, st.booleans())


def _escaped(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


# Blocks the fast path must not take as canonical (but which are often valid TOML).
odd_blocks = st.one_of(
    st.builds(lambda u: block(_escaped(u)),
              st.text(st.sampled_from('ab"\\\t\x01\x7f/'), min_size=1, max_size=6)),
    st.builds(lambda u: block(u).replace('"\n', '"\nextra = 1\n', 1), plain_uris),
    st.builds(lambda u: block(u).replace("uri = ", "uri=", 1), plain_uris),
    st.builds(lambda u: block(u).replace(f'"{SHA}"', f'"{SHA}" # c', 1), plain_uris),
    st.builds(lambda u: block(u).replace('"', "'", 2), plain_uris),
    st.builds(lambda u: block(u, sha=SHA[:63]), plain_uris),
    st.builds(lambda u: block(u).replace("\n", "\r\n"), plain_uris),
    st.builds(lambda u: block(u).replace("[[sgx.trusted_files]]", "[[ sgx.trusted_files ]]"),
              plain_uris),
    st.builds(lambda u: block(u).replace("[[sgx.trusted_files]]",
                                         '[[sgx."trusted\\u005ffiles"]]'), plain_uris),
    st.builds(lambda u: "\t" + block(u), plain_uris),
    st.just('[[sgx.trusted_files]]\nuri = "file:/no-hash"\n'),
    st.just('[[sgx.trusted_files]]\nuri = "file:/tab\there"\nsha256 = "' + SHA + '"\n'),
)

other_lines = st.sampled_from([
    "[sgx]\n", "[sgx.cpu_features]\n", "[loader]\n", "[loader.env]\n", "[[fs.mounts]]\n",
    "[[sgx]]\n", "[sgx.trusted_files]\n", "[sgx.trusted_files.x]\n",
    "[[sgx.trusted_files.x]]\n", '[sgx."trusted\\u005ffiles"]\n', "[fs]\n",
    "debug = true\n", "x = 1\n", "y = 'str'\n", 'uri = "file:/other"\n',
    f'sha256 = "{SHA}"\n', 'trusted_files = ["file:/a"]\n', "trusted_files = []\n",
    "sgx.debug = true\n", "sgx = 1\n", "sgx = { debug = true }\n",
    "sgx.trusted_files = []\n", 'sgx.trusted_files = [{uri = "file:/i", sha256 = "00"}]\n',
    "# a comment\n", "\n", "\n\n", "   \n",
    'x = """\n' + block("file:/in-string") + block("file:/in-string-2") + '"""\n',
    "x = '''\n" + block("file:/in-literal") + "'''\n",
    "x = [\n", "]\n",
    "= oops\n", "[sgx\n", "x = \n", "x = 1\nx = 2\n",
])

# Manifest-like texts: runs of canonical blocks and table sections, now and then (a seventh
# of the pieces) something odd, so that both the fast path and every fallback are exercised.
runs = st.lists(canonical_blocks, min_size=1, max_size=5).map("".join)
sections = st.builds(
    lambda header, kvs: header + "".join(kvs) + "\n",
    st.sampled_from(["[sgx]\n", "[sgx.cpu_features]\n", "[loader]\n", "[loader.env]\n",
                     "[[fs.mounts]]\n", "[fs]\n", "[sys]\n"]),
    st.lists(st.sampled_from(["debug = true\n", "x = 1\n", "y = 'str'\n",
                              'uri = "file:/other"\n', "sgx.debug = true\n"]),
             max_size=2, unique=True),
)
pieces = st.one_of(runs, runs, runs, sections, sections, sections,
                   st.one_of(odd_blocks, other_lines))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pieces, max_size=12), st.booleans())
def test_any_text_parses_as_tomli_does(parts: list[str], strip_final_newline: bool) -> None:
    text = "".join(parts)
    if strip_final_newline:
        text = text.rstrip("\n")
    assert_same(text)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(runs, sections), min_size=1, max_size=6),
       st.one_of(odd_blocks, other_lines), st.integers(min_value=0, max_value=6))
def test_one_odd_piece_next_to_runs(parts: list[str], odd: str, at: int) -> None:
    assert_same("".join(parts))
    parts.insert(min(at, len(parts)), odd)
    assert_same("".join(parts))


sgx_headers = st.sampled_from(["", "[sgx]\ndebug = true\n\n", "[sgx]\n", "[loader]\nx = 1\n\n"])
tails = st.sampled_from([
    "", "[sgx.cpu_features]\navx = \"unspecified\"\n", "[loader]\nlog_level = \"error\"\n",
    "\n\n[[fs.mounts]]\npath = \"/x\"\n", "[sgx]\nisvsvn = 1\n",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sgx_headers, st.lists(st.lists(canonical_blocks, min_size=1, max_size=8),
                             min_size=1, max_size=3), tails)
def test_rendered_manifests_take_the_fast_path(
    head: str, runs: list[list[str]], tail: str
) -> None:
    # Runs separated by other tables, as a manifest rendered by hand might have them.
    text = head + "".join(
        f"[sep{i}]\nk = {i}\n\n" * (i > 0) + "".join(run) for i, run in enumerate(runs)
    ) + tail
    assert_same(text)
    try:
        tomli.loads(text)
    except tomli.TOMLDecodeError:
        return  # e.g. [sgx] or [loader] defined twice: only the plain parse reports it
    fast = tomlio._loads_fast(text)
    assert fast is not None
    assert len(fast["sgx"]["trusted_files"]) == sum(len(run) for run in runs)


# ----------------------------------------------------------------------- chosen cases

ESCAPED_A = f'[[sgx."trusted\\u005ffiles"]]\nuri = "file:/a"\nsha256 = "{SHA}"\n'
CASES = {
    "canonical": "[sgx]\ndebug = true\n\n" + block("file:/a") + block("file:b", blank=False)
    + "[sgx.cpu_features]\navx = \"unspecified\"\n",
    "at end of file, no blank": block("file:/a") + block("file:/b", blank=False),
    "escape in a uri": block("file:/a") + block("file:/\\u0062") + "[x]\n",
    "key after the run": block("file:/a") + block("file:/b") + "extra = 1\n",
    "comment then key after the run": block("file:/a") + "# c\nextra = 1\n",
    "inline array elsewhere": "[foo]\ntrusted_files = [\"x\"]\n\n" + block("file:/a"),
    "inline array in sgx": "[sgx]\ntrusted_files = []\n\n" + block("file:/a"),
    "sgx is a value": "sgx = 1\n" + block("file:/a"),
    "sgx is an inline table": "sgx = { debug = true }\n" + block("file:/a"),
    "sgx is an array of tables": "[[sgx]]\nx = 1\n" + block("file:/a") + "[[sgx]]\ny = 2\n"
    + block("file:/b"),
    "sgx by dotted keys": "sgx.debug = true\n" + block("file:/a"),
    "trusted_files as a table": "[sgx.trusted_files]\n" + block("file:/a"),
    "subtable of the last entry": block("file:/a") + "[sgx.trusted_files.sub]\nk = 1\n",
    "escaped key adds an entry": block("file:/a") + '[[sgx."trusted\\u005ffiles"]]\nuri = '
    f'"file:/a"\nsha256 = "{SHA}"\n',
    "run inside a multi-line string": 'x = """\n' + block("file:/a") + block("file:/b")
    + '"""\n',
    "run in an array": "x = [\n" + block("file:/a") + "]\n",
    "not at a line start": "x = 1 " + block("file:/a"),
    # A comment swallows the first header, an escaped key adds the entry the run lacks.
    "header in a comment": "# c " + block("file:/a") + block("file:/b") + ESCAPED_A,
    "run in a string, entry by an escaped key": 'x = """\n' + block("file:/a")
    + block("file:/b") + '[x]"""\n' + ESCAPED_A,
    "duplicate sgx table": "[sgx]\n" + block("file:/a") + "[sgx]\n",
    "invalid after the run": block("file:/a") + "[sgx\n",
    "invalid before the run": "= x\n" + block("file:/a"),
    "crlf": block("file:/a").replace("\n", "\r\n") + block("file:/b"),
    "non-ASCII uris": block("file:/caf\u00e9") + block("file:/\U0001f600", blank=False)
    + "[sgx.cpu_features]\n",
    "DEL in a non-ASCII uri": block("file:/\u00e9") + block("file:/\x7f") + "[x]\n",
    "two blank lines between blocks": block("file:/a") + "\n" + block("file:/b"),
}


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_chosen_cases(text: str) -> None:
    assert_same(text)


def test_fast_path_taken_and_equal() -> None:
    text = CASES["canonical"]
    fast = tomlio._loads_fast(text)
    assert fast is not None and repr(fast) == repr(tomli.loads(text))
    assert [e["uri"] for e in fast["sgx"]["trusted_files"]] == ["file:/a", "file:b"]
    text = CASES["non-ASCII uris"]
    fast = tomlio._loads_fast(text)
    assert fast is not None and repr(fast) == repr(tomli.loads(text))


@pytest.mark.parametrize("name", [
    "escape in a uri", "key after the run", "comment then key after the run",
    "inline array elsewhere", "sgx is an array of tables", "escaped key adds an entry",
    "subtable of the last entry",
    "run inside a multi-line string", "not at a line start", "invalid after the run",
    "DEL in a non-ASCII uri",
])
def test_fast_path_declines(name: str) -> None:
    assert tomlio._loads_fast(CASES[name]) is None


@pytest.mark.parametrize("name", [
    "inline array in sgx", "sgx is a value", "sgx is an inline table", "trusted_files as a table",
    "run in an array", "duplicate sgx table",
    "invalid after the run", "invalid before the run",
])
def test_errors_are_tomlis(name: str) -> None:
    with pytest.raises(tomlio.TOMLDecodeError) as fast:
        tomlio.loads(CASES[name])
    with pytest.raises(tomli.TOMLDecodeError) as plain:
        tomli.loads(CASES[name])
    assert str(fast.value) == str(plain.value)
