"""All-at-once checks of sgx.trusted_files agree with the entry-by-entry ones they shortcut.

The view plan's table (plan._trusted_table_fast vs the checked loop) and the schema's check
(schema._expanded_trusted_entries_ok vs _expanded_trusted_entry_ok on each entry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geode.errors import ManifestError
from geode.manifest import schema
from geode.runtime import plan

SHA = "a83c0370d91532c96d4060a0e7c107d1f2889dad8a98e03395e86ef0373fd467"

components = st.sampled_from(["a", "lib", "x.so", ".", "..", "", ".hidden", "a:b", "a\0b",
                              "é", "file:", "b "])
paths = st.builds(lambda lead, parts, trail: lead + "/".join(parts) + trail,
                  st.sampled_from(["/", "", "//", "./", "../"]),
                  st.lists(components, min_size=1, max_size=4),
                  st.sampled_from(["", "", "", "/"]))
uris = st.one_of(paths.map(lambda p: "file:" + p), paths.map(lambda p: "file:" + p),
                 paths.map(lambda p: "dev:" + p), paths, st.just("file:"), st.integers())
shas = st.one_of(st.just(SHA), st.just(SHA.upper()), st.just(SHA[:63]), st.just(SHA + "0"),
                 st.just(SHA[:62] + " 0"), st.just(SHA[:63] + "g"), st.just("٠" * 64),
                 st.just(None), st.text("0123456789abcdefABCDEF", min_size=64, max_size=64))


def _entry(uri: Any, sha: Any, kind: int) -> Any:
    if kind == 1:
        return {"uri": uri}
    if kind == 2:
        return uri
    if kind == 3:
        return {"uri": uri, "sha256": sha, "extra": 1}
    return {"uri": uri, "sha256": sha}


entries = st.builds(_entry, uris, shas, st.sampled_from([0, 0, 0, 0, 1, 2, 3]))
good_entries = st.builds(lambda p, s: {"uri": "file:" + p, "sha256": s},
                         st.lists(st.sampled_from(["a", "lib", "x.so", "é", "a:b", "b "]),
                                  min_size=1, max_size=3).map("/".join)
                         .flatmap(lambda p: st.sampled_from(["/" + p, p])),
                         st.text("0123456789abcdefABCDEF", min_size=64, max_size=64))
odd_sha_entries = st.builds(lambda e, sha: {**e, "sha256": sha}, good_entries, shas)
bases = st.sampled_from(["/", "/srv/app", "//srv/app"])


def checked(raw: list[Any], base: str) -> tuple[str, Any]:
    try:
        return "ok", list(plan._trusted_table_checked(raw, base).items())
    except ManifestError as e:
        return "error", str(e)


def assert_agree(raw: list[Any], base: str) -> None:
    fast = plan._trusted_table_fast(raw, base)
    if fast is not None:
        assert ("ok", list(fast.items())) == checked(raw, base)  # same table, same order
    want = checked(raw, base)
    try:
        got: tuple[str, Any] = "ok", list(plan._trusted_table(raw, base).items())
    except ManifestError as e:
        got = "error", str(e)
    assert got == want


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(good_entries, good_entries, entries, odd_sha_entries), max_size=8),
       bases)
def test_fast_table_is_the_checked_table(raw: list[Any], base: str) -> None:
    assert_agree(raw, base)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(good_entries, min_size=1, max_size=8), bases, st.data())
def test_rendered_shape_takes_the_fast_path(
    raw: list[Any], base: str, data: st.DataObject
) -> None:
    if data.draw(st.booleans()):  # a host listed twice, with the same or another hash
        dup = dict(data.draw(st.sampled_from(raw)))
        dup["sha256"] = data.draw(st.sampled_from([dup["sha256"], dup["sha256"].upper(), SHA]))
        raw.append(dup)
    assert_agree(raw, base)
    status, table = checked(raw, base)
    relative = any(not e["uri"].startswith("file:/") for e in raw)
    if status == "ok" and len(table) == len(raw) and not (relative and base.startswith("//")):
        assert plan._trusted_table_fast(raw, base) is not None


@pytest.mark.parametrize("uri", [
    "file:/a/./b", "file:/a/../b", "file:/a//b", "file://a", "file:/a/", "file:/", "file:",
    "file:./a", "file:../a", "file:.", "file:/a/.", "file:/a/..", "file:/a\0b", "dev:/a",
    "file:/a/.hidden",
])
def test_uris_the_loop_must_see(uri: str) -> None:
    raw = [{"uri": "file:/ok", "sha256": SHA}, {"uri": uri, "sha256": SHA}]
    assert plan._trusted_table_fast(raw, "/srv") is None
    assert_agree(raw, "/srv")


@pytest.mark.parametrize("shas", [
    [SHA[:63], SHA + "0"], [SHA[:62] + " 0"], [SHA[:63] + "g"], ["٠" * 64], [None], [SHA, 1],
])
def test_hashes_the_loop_must_see(shas: list[Any]) -> None:
    raw = [{"uri": f"file:/f{i}", "sha256": sha} for i, sha in enumerate(shas)]
    assert plan._trusted_table_fast(raw, "/srv") is None
    assert_agree(raw, "/srv")


def test_real_shape_and_order(tmp_path: Path) -> None:
    raw = [{"uri": f"file:/usr/lib/m{i}.py", "sha256": SHA.upper() if i % 2 else SHA}
           for i in range(50)] + [{"uri": "file:scripts/x.py", "sha256": SHA}]
    p = plan.ViewPlan.from_manifest({"sgx": {"trusted_files": raw}}, base_dir=tmp_path)
    assert list(p.trusted_paths) == [f"/usr/lib/m{i}.py" for i in range(50)] + [
        f"{tmp_path}/scripts/x.py"]
    assert set(p.trusted_paths.values()) == {SHA}


# ----------------------------------------------------------------------- the schema's check

two_key_entries = st.builds(lambda uri, sha: {"uri": uri, "sha256": sha}, uris, shas)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(good_entries, good_entries, entries, odd_sha_entries,
                          two_key_entries), min_size=1, max_size=8))
def test_schema_array_check_is_every_item_check(raw: list[Any]) -> None:
    each = all(schema._expanded_trusted_entry_ok(item) for item in raw)
    assert schema._expanded_trusted_entries_ok(raw) == each


@pytest.mark.parametrize("uri", ["file:", "file:/a/", "file:/", "dev:/a", "file:/a\0b", "/a"])
def test_schema_array_check_refuses(uri: str) -> None:
    raw = [{"uri": "file:/ok", "sha256": SHA}, {"uri": uri, "sha256": SHA}]
    assert not schema._expanded_trusted_entries_ok(raw)
    assert not all(schema._expanded_trusted_entry_ok(item) for item in raw)


def _check_outcome(manifest: dict[str, Any]) -> str:
    try:
        schema.check(manifest)
    except ManifestError as e:
        return str(e)
    return "ok"


def test_schema_outcomes_unchanged_by_the_array_check(monkeypatch: pytest.MonkeyPatch) -> None:
    good = [{"uri": f"file:/f{i}", "sha256": SHA} for i in range(20)]
    manifests = [
        {"libos": {"entrypoint": "/x"}, "fs": {"mounts": []},
         "sgx": {"trusted_files": [*good, last]}}
        for last in ({"uri": "file:/d/", "sha256": SHA}, {"uri": "file:/x", "sha256": "00"},
                     {"uri": 5, "sha256": SHA}, {"uri": "file:/x"}, {"uri": "file:/d/"},
                     {"uri": "file:/x", "sha256": SHA, "extra": 1}, "file:/s",
                     {"uri": "file:/y", "sha256": SHA.upper()})
    ]
    got = [_check_outcome(m) for m in manifests]
    monkeypatch.setattr(schema, "_FAST_ARRAY_CHECKS", {})
    assert got == [_check_outcome(m) for m in manifests]
    assert got[-1] == "ok" and got[0] != "ok"
