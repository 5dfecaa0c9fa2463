"""geode.runtime.manifest_memo: a remembered start sees exactly what a parse would give."""

from __future__ import annotations

import marshal
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from geode import cache
from geode.errors import ManifestError
from geode.manifest import build
from geode.measurement import measure
from geode.runtime import manifest_memo
from geode.runtime.manifest_memo import parse_for_run
from geode.runtime.plan import trusted_table

BASE = "/srv/app"

_NAME = st.text(alphabet="abcXYZ019-_.é", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))
_PATH = st.lists(_NAME, min_size=1, max_size=3).map("/".join)
_URI = st.one_of(_PATH.map(lambda p: "file:/" + p), _PATH.map(lambda p: "file:" + p),
                 _PATH.map(lambda p: "file:/a/../" + p))
_SHA = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
_ENTRY = st.one_of(
    st.builds(lambda u, s: {"uri": u, "sha256": s}, _URI, _SHA),
    st.builds(lambda u, s: {"sha256": s, "uri": u}, _URI, _SHA),  # keys the other way round
)


@st.composite
def _manifests(draw: st.DrawFn) -> dict[str, Any]:
    entries = draw(st.lists(_ENTRY, max_size=8))
    if entries and draw(st.booleans()):  # the same file listed twice, with the same hash
        entries.append(dict(draw(st.sampled_from(entries))))
    sgx: dict[str, Any] = {"debug": draw(st.booleans())}
    if draw(st.booleans()):
        sgx["trusted_files"] = entries
    sgx["isvsvn"] = 1  # (a key after trusted_files: the order of keys is kept too)
    return {"libos": {"entrypoint": "/app"}, "sgx": sgx, "fs": {"mounts": []}}


def _stored(value: Any) -> Any:
    return marshal.loads(marshal.dumps(value, 4))  # as geode.cache keeps it


@given(_manifests())
def test_what_is_remembered_is_what_was_parsed(manifest: dict[str, Any]) -> None:
    try:
        table = trusted_table(manifest, BASE)
    except ManifestError:  # (one path drawn twice, with different hashes)
        reject()
    before = repr(manifest)
    rest = manifest_memo._without_trusted_files(manifest)
    assert repr(manifest) == before  # (the parsed manifest itself is left alone)
    assert "trusted_files" not in rest["sgx"]
    assert list(rest["sgx"]) == [k for k in manifest["sgx"] if k != "trusted_files"]
    assert {k: v for k, v in rest.items() if k != "sgx"} == \
        {k: v for k, v in manifest.items() if k != "sgx"}
    got = manifest_memo._decode(_stored(manifest_memo._encode(rest, table)))
    assert got is not None
    got_manifest, got_table = got
    assert got_manifest == rest
    assert len(got_table) == len(table)
    assert dict(got_table) == table
    for path, sha in table.items():
        assert got_table.get(path) == got_table[path] == sha
        assert path in got_table


_TABLES = st.dictionaries(_PATH.map(lambda p: "/" + p), _SHA.map(str.lower), max_size=12)
_PROBES = st.one_of(_PATH.map(lambda p: "/" + p), _PATH, st.just(""), st.just("/"))


@given(_TABLES, st.lists(_PROBES, max_size=8))
def test_a_grouped_table_answers_as_the_dict(table: dict[str, str], probes: list[str]) -> None:
    # near misses: each path without its leading "/" (its name, for one at the top), with a
    # "/" more, and its directory
    for path in table:
        probes += [path[1:], path + "/", path[:path.rfind("/")]]
    groups = manifest_memo.group(table)
    assert groups is not None
    got = manifest_memo.GroupedTable(_stored(groups), len(table))
    for path in [*probes, *table]:  # (misses first: they unpack groups too)
        assert got.get(path) == table.get(path)
        assert (path in got) == (path in table)
        if path not in table:
            with pytest.raises(KeyError):
                got[path]
    assert got.get(7) is None and 7 not in got  # type: ignore[call-overload, operator]
    assert dict(got) == table and len(got) == len(table)


@pytest.mark.parametrize("table", [
    {"/a/b\0c": "0" * 64},  # a NUL would split the names
    {"/a/b": "A" * 64},  # not what trusted_table makes: kept as given, never lowered here
    {"/a/b": "0" * 63},
    {"/a/b": " " + "0" * 63},  # (fromhex skips spaces)
    {"relative": "0" * 64},
])
def test_a_table_of_another_form_is_not_grouped(table: dict[str, str]) -> None:
    assert manifest_memo.group(table) is None
    assert manifest_memo._encode({}, table) is None


def test_a_group_whose_sizes_disagree_trusts_nothing() -> None:
    got = manifest_memo.GroupedTable({"/a": ("b\0c", bytes(32))}, 2)
    assert got.get("/a/b") is None and got.get("/a/c") is None


@pytest.mark.parametrize("value", [None, 7, ("geode-manifest-memo/2", {}, [], []),
                                   (manifest_memo._FORMAT, {}, ["/a"], 1),
                                   (manifest_memo._FORMAT, {}, {}, "1"),
                                   (manifest_memo._FORMAT, [], {}, 0),
                                   (manifest_memo._FORMAT, {}, {})])
def test_anything_else_is_not_taken(value: Any) -> None:
    assert manifest_memo._decode(value) is None


TEMPLATE = """\
libos.entrypoint = "/bin/app"
fs.mounts = [{ path = "/bin/app", uri = "file:app" }, { path = "/data", uri = "file:data" }]
sgx.trusted_files = ["file:app", "file:data/"]
"""


@pytest.fixture
def rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, Path]:
    monkeypatch.chdir(tmp_path)  # (gramine-manifest hashes relative URIs from here)
    (tmp_path / "app").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "data").mkdir()
    for i in range(20):
        (tmp_path / "data" / f"f{i}").write_text(str(i))
    manifest = build.build(TEMPLATE, defines={}, name=str(tmp_path / "app.manifest.template"),
                           progress=False)
    return build.dumps(manifest), tmp_path


def _entries() -> list[str]:
    path = cache.directory()
    assert path is not None
    return sorted(p for p in os.listdir(path) if p.startswith("manifest-")) \
        if os.path.isdir(path) else []


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_CACHE_DIR", str(tmp_path / "cache"))


def test_a_second_parse_is_remembered_and_equal(
    rendered: tuple[bytes, Path], own_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, base = rendered
    first = parse_for_run(data, measurement=measure(data), source="app.manifest", base_dir=base)
    assert len(_entries()) == 1
    assert "trusted_files" not in first[0]["sgx"]  # (taken out as the table)

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed again")

    monkeypatch.setattr(build, "loads", no_parse)
    second = parse_for_run(data, measurement=measure(data), source="app.manifest", base_dir=base)
    assert second == first
    assert second[1] == {str(base / "app"): first[1][str(base / "app")],
                         **{str(base / "data" / f"f{i}"): first[1][str(base / "data" / f"f{i}")]
                            for i in range(20)}}


def test_each_base_directory_and_each_byte_has_its_own_entry(
    rendered: tuple[bytes, Path], own_cache: None, tmp_path: Path
) -> None:
    data, base = rendered
    _, here = parse_for_run(data, measurement=measure(data), source="m", base_dir=base)
    _, there = parse_for_run(data, measurement=measure(data), source="m",
                             base_dir=tmp_path / "elsewhere")
    assert str(base / "app") in here and str(base / "app") not in there
    assert str(tmp_path / "elsewhere" / "app") in there
    parse_for_run(data + b"\n", measurement=measure(data + b"\n"), source="m", base_dir=base)
    assert len(_entries()) == 3


def test_a_bad_manifest_fails_every_time_and_is_not_remembered(own_cache: None) -> None:
    data = b'libos.entrypoint = "/app"\nfs.mounts = []\nsgx.debug = "yes"\n'
    for _ in range(2):
        with pytest.raises(ManifestError, match="sgx.debug"):
            parse_for_run(data, measurement=measure(data), source="bad.manifest", base_dir=BASE)
    assert _entries() == []


def test_a_manifest_with_keys_is_not_remembered(
    rendered: tuple[bytes, Path], own_cache: None
) -> None:
    """Key material stays in the manifest: fs.insecure__keys is never copied to the cache."""
    data, base = rendered
    keyed = data + b'\n[fs.insecure__keys]\ndefault = "' + b"00" * 16 + b'"\n'
    manifest, _ = parse_for_run(keyed, measurement=measure(keyed), source="m", base_dir=base)
    assert manifest["fs"]["insecure__keys"] == {"default": "00" * 16}
    assert _entries() == []


def test_nothing_is_remembered_with_the_cache_off(
    rendered: tuple[bytes, Path], own_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEODE_NO_CACHE", "1")
    data, base = rendered
    parse_for_run(data, measurement=measure(data), source="m", base_dir=base)
    monkeypatch.delenv("GEODE_NO_CACHE")
    assert _entries() == []
