"""geode.cache: entries come back exactly, or not at all; the cache never fails its caller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geode import cache

KEY = bytes(range(32))

# Plain data as marshal keeps it: what callers store.
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("GEODE_CACHE_DIR", str(path))
    monkeypatch.delenv("GEODE_NO_CACHE", raising=False)
    return path


def _entry(cache_dir: Path) -> Path:
    [entry] = [p for p in cache_dir.iterdir() if p.name.startswith("test-")]
    return entry


@settings(max_examples=50)
@given(value=PLAIN)
def test_a_stored_value_comes_back_equal(value: object) -> None:
    # (the fixture's directory is set per test, not per example: set it here)
    path = Path(os.environ["GEODE_CACHE_DIR"]) / "roundtrip"
    os.environ["GEODE_CACHE_DIR"] = str(path)
    try:
        cache.put("test", KEY, value, keep=1)
        assert cache.get("test", KEY) == value
    finally:
        os.environ["GEODE_CACHE_DIR"] = str(path.parent)


def test_nothing_is_found_under_another_key_or_kind(cache_dir: Path) -> None:
    cache.put("test", KEY, "value", keep=4)
    assert cache.get("test", KEY) == "value"
    assert cache.get("test", bytes(32)) is None
    assert cache.get("other", KEY) is None


def test_the_directory_and_entries_are_private(cache_dir: Path) -> None:
    cache.put("test", KEY, "value", keep=4)
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    assert _entry(cache_dir).stat().st_mode & 0o777 == 0o600


@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_a_changed_byte_anywhere_is_a_miss(position: int, flip: int) -> None:
    path = Path(os.environ["GEODE_CACHE_DIR"]) / "flip"
    os.environ["GEODE_CACHE_DIR"] = str(path)
    try:
        cache.put("test", KEY, {"uri": "file:/x", "n": [1, 2, 3]}, keep=1)
        entry = _entry(path)
        blob = bytearray(entry.read_bytes())
        blob[position % len(blob)] ^= flip
        entry.write_bytes(bytes(blob))
        assert cache.get("test", KEY) is None
    finally:
        os.environ["GEODE_CACHE_DIR"] = str(path.parent)


@pytest.mark.parametrize("keep", [0, 1, 10, 40])
def test_a_truncated_entry_is_a_miss(cache_dir: Path, keep: int) -> None:
    cache.put("test", KEY, ["x" * 64] * 10, keep=4)
    entry = _entry(cache_dir)
    entry.write_bytes(entry.read_bytes()[:keep])
    assert cache.get("test", KEY) is None


@pytest.mark.parametrize("what", ["entry", "directory"])
def test_what_others_can_write_is_not_used(cache_dir: Path, what: str) -> None:
    cache.put("test", KEY, "value", keep=4)
    target = _entry(cache_dir) if what == "entry" else cache_dir
    target.chmod(target.stat().st_mode | 0o020)  # group-writable
    assert cache.get("test", KEY) is None
    if what == "directory":
        cache.put("test", bytes(32), "other", keep=4)  # and nothing is written into it
        assert not any(p.name.endswith(bytes(32).hex()) for p in cache_dir.iterdir())


def test_what_another_user_owns_is_not_used(cache_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    cache.put("test", KEY, "value", keep=4)
    os.chown(_entry(cache_dir), 12345, 12345)
    assert cache.get("test", KEY) is None


def test_a_symlinked_entry_is_not_followed(cache_dir: Path, tmp_path: Path) -> None:
    cache.put("test", KEY, "value", keep=4)
    entry = _entry(cache_dir)
    elsewhere = tmp_path / "elsewhere"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    assert cache.get("test", KEY) is None


def test_pruning_keeps_the_most_recently_used(cache_dir: Path) -> None:
    keys = [bytes([i]) * 32 for i in range(5)]
    for i, key in enumerate(keys[:3]):
        cache.put("test", key, i, keep=3)
        os.utime(cache_dir / f"test-{key.hex()}", ns=(i * 10**9, i * 10**9))
    assert cache.get("test", keys[0]) == 0  # used now: the newest
    cache.put("test", keys[3], 3, keep=3)
    cache.put("test", keys[4], 4, keep=3)
    assert [cache.get("test", k) for k in keys] == [0, None, None, 3, 4]


def test_a_writer_killed_mid_write_leaves_nothing_for_long(cache_dir: Path) -> None:
    cache.put("test", KEY, "value", keep=4)
    old, new = cache_dir / ".test-aa.1.tmp", cache_dir / ".test-bb.2.tmp"
    old.write_bytes(b"torn")
    new.write_bytes(b"being written")
    os.utime(old, ns=(0, 0))
    cache.put("test", bytes(32), "other", keep=4)
    assert not old.exists() and new.exists()  # (a write in progress is left alone)
    assert cache.get("test", KEY) == "value"


def test_other_kinds_are_not_pruned(cache_dir: Path) -> None:
    cache.put("other", KEY, "kept", keep=1)
    for i in range(3):
        cache.put("test", bytes([i]) * 32, i, keep=1)
    assert cache.get("other", KEY) == "kept"


def test_no_cache_means_nothing_read_or_written(cache_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cache.put("test", KEY, "value", keep=4)
    monkeypatch.setenv("GEODE_NO_CACHE", "1")
    assert cache.get("test", KEY) is None
    cache.put("test", bytes(32), "other", keep=4)
    monkeypatch.delenv("GEODE_NO_CACHE")
    assert cache.get("test", bytes(32)) is None


def test_values_that_are_not_plain_data_are_not_stored(cache_dir: Path) -> None:
    import datetime

    cache.put("test", KEY, {"when": datetime.date(2026, 11, 27)}, keep=4)
    assert cache.get("test", KEY) is None
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_an_unusable_location_fails_nothing(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GEODE_CACHE_DIR", str(blocker / "geode"))
    cache.put("test", KEY, "value", keep=4)
    assert cache.get("test", KEY) is None


def test_the_default_location_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEODE_CACHE_DIR", raising=False)
    monkeypatch.delenv("GEODE_NO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert cache.directory() == "/somewhere/cache/geode"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored, as XDG says
    monkeypatch.setenv("HOME", "/home/user")
    assert cache.directory() == "/home/user/.cache/geode"
    monkeypatch.delenv("HOME")
    assert cache.directory() is None
