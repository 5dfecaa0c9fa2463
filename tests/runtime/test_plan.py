"""ViewPlan: the pure mount/file plan derived from a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geode.errors import ManifestError
from geode.runtime.plan import ViewPlan, normalize_view_path

BASE = "/srv/app"  # (host paths are strings; base_dir may be any path-like)
SHA_A = "a" * 64
SHA_B = "B" * 64


def plan(manifest: dict[str, Any], base: str | Path = BASE) -> ViewPlan:
    return ViewPlan.from_manifest(manifest, base_dir=base)


def test_defaults_follow_gramine() -> None:
    p = plan({})
    assert len(p.mounts) == 1
    root = p.mounts[0]
    assert (root.path, root.type, root.host) == ("/", "chroot", BASE)
    assert p.trusted_paths == {}
    assert p.allowed == ()
    assert p.file_check_policy == "strict"
    assert p.start_dir == "/"


def test_root_and_mounts_in_order_with_relative_uris() -> None:
    p = plan({"fs": {
        "root": {"uri": "file:rootfs"},
        "mounts": [
            {"path": "/lib", "uri": "file:/usr/lib/x86_64-linux-gnu"},
            {"path": "/data/", "uri": "file:../data/./x"},
            {"type": "tmpfs", "path": "/tmp"},
            {"path": "etc", "uri": "file:"},
        ],
        "start_dir": "work/../app",
    }})
    assert [m.path for m in p.mounts] == ["/", "/lib", "/data", "/tmp", "/etc"]
    assert [m.type for m in p.mounts] == ["chroot", "chroot", "chroot", "tmpfs", "chroot"]
    assert [m.host for m in p.mounts] == [f"{BASE}/rootfs", "/usr/lib/x86_64-linux-gnu",
                                          "/srv/data/x", None, BASE]
    assert p.mounts[3].options == {"type": "tmpfs", "path": "/tmp"}
    assert [m.index for m in p.mounts] == [0, 1, 2, 3, 4]
    assert p.start_dir == "/app"


def test_resolve_picks_innermost_mount_and_relative_path() -> None:
    p = plan({"fs": {"mounts": [
        {"path": "/usr", "uri": "file:/usr"},
        {"path": "/usr/lib", "uri": "file:/opt/lib"},
        {"path": "/tmp", "type": "tmpfs"},
    ]}})
    m, rel = p.resolve("/usr/lib/libc.so.6")
    assert (m.path, rel) == ("/usr/lib", "libc.so.6")
    m, rel = p.resolve("/usr/libexec/x")  # a prefix of the string, not of the path
    assert (m.path, rel) == ("/usr", "libexec/x")
    m, rel = p.resolve("/usr/lib")
    assert (m.path, rel) == ("/usr/lib", "")
    m, rel = p.resolve("/etc/passwd")
    assert (m.path, rel) == ("/", "etc/passwd")
    m, rel = p.resolve("/tmp/a/../b")
    assert (m.type, rel) == ("tmpfs", "b")
    assert p.host_path("/usr/lib/x") == "/opt/lib/x"
    assert p.host_path("/tmp/x") is None


def test_later_mount_hides_earlier_mounts_below_it() -> None:
    p = plan({"fs": {"mounts": [
        {"path": "/usr/lib", "uri": "file:/opt/lib"},
        {"path": "/usr", "uri": "file:/usr"},
        {"path": "/x", "uri": "file:/one"},
        {"path": "/x", "uri": "file:/two"},
    ]}})
    assert [m.host for m in p.visible_mounts] == [BASE, "/usr", "/two"]
    m, rel = p.resolve("/usr/lib/libc.so.6")
    assert (m.host, rel) == ("/usr", "lib/libc.so.6")
    assert p.resolve("/x/y")[0].host == "/two"


_SEGMENTS = st.sampled_from(["a", "b", "ab"])
_VIEW_PATHS = st.lists(_SEGMENTS, max_size=3).map(lambda parts: "/" + "/".join(parts))


@given(mount_paths=st.lists(_VIEW_PATHS, max_size=6), path=_VIEW_PATHS)
def test_resolve_is_the_innermost_visible_mount(mount_paths: list[str], path: str) -> None:
    """resolve (the last covering mount) agrees with its definition over visible_mounts."""
    p = plan({"fs": {"mounts": [{"path": m, "uri": f"file:/h{i}"}
                                for i, m in enumerate(mount_paths)]}})
    covering = [m for m in p.visible_mounts
                if path == m.path or m.path == "/" or path.startswith(m.path + "/")]
    innermost = max(covering, key=lambda m: len(m.path))
    assert p.resolve(path) == (innermost, path[len(innermost.path):].lstrip("/"))


def test_trusted_files_keyed_by_normalized_host_path() -> None:
    p = plan({"sgx": {"trusted_files": [
        {"uri": "file:bin/../lib/a.so", "sha256": SHA_A},
        {"uri": "file:/abs//b", "sha256": SHA_B},
        {"uri": "file:bin/../lib/a.so", "sha256": SHA_A},  # duplicate, same hash
    ]}})
    assert dict(p.trusted_paths) == {f"{BASE}/lib/a.so": SHA_A, "/abs/b": SHA_B.lower()}
    assert p.is_trusted(Path("/srv/app/lib/./a.so"))
    assert not p.is_trusted(Path("/srv/app/lib/b.so"))


@pytest.mark.parametrize(("entry", "words"), [
    ("file:/usr/bin/x", "no sha256"),
    ({"uri": "file:/usr/lib/", "sha256": SHA_A}, "directory entry"),
    ({"uri": "file:/x", "sha256": "abc"}, "64 hex digits"),
    ({"uri": "file:/x"}, "64 hex digits"),
    ({"uri": "dev:/x", "sha256": SHA_A}, '"file:..."'),
    ({"sha256": SHA_A}, "uri"),
])
def test_bad_trusted_entries_name_the_key(entry: Any, words: str) -> None:
    with pytest.raises(ManifestError) as e:
        plan({"sgx": {"trusted_files": [{"uri": "file:/ok", "sha256": SHA_A}, entry]}})
    assert "sgx.trusted_files[1]" in str(e.value)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_conflicting_hashes_are_an_error() -> None:
    with pytest.raises(ManifestError, match="different hashes"):
        plan({"sgx": {"trusted_files": [{"uri": "file:/x", "sha256": SHA_A},
                                        {"uri": "file:/./x", "sha256": SHA_B}]}})


def test_allowed_files_cover_their_subtree_with_or_without_slash() -> None:
    p = plan({"sgx": {"allowed_files": ["file:logs/", "file:/var/db", "dev:/dev/tty",
                                        "file:logs/"]}})
    assert p.allowed == (f"{BASE}/logs", "/var/db", "/dev/tty")
    assert p.is_allowed(f"{BASE}/logs")
    assert p.is_allowed(Path(BASE) / "logs/a/b.txt")  # (any path-like)
    assert p.is_allowed(Path("/var/db/x"))
    assert p.is_allowed(Path("/var/db"))
    assert not p.is_allowed(Path("/var/dbx"))
    assert not p.is_allowed(f"{BASE}/log")
    assert not p.is_allowed(Path("/var"))


def test_file_check_policy() -> None:
    assert plan({"sgx": {"file_check_policy": "allow_all_but_log"}}).file_check_policy == (
        "allow_all_but_log")
    with pytest.raises(ManifestError, match="sgx.file_check_policy"):
        plan({"sgx": {"file_check_policy": "lenient"}})


def test_encrypted_mounts_keep_key_recovery_and_the_uri_path_as_written() -> None:
    p = plan({"fs": {"mounts": [
        {"type": "encrypted", "path": "/secret", "uri": "file:./enc//db/"},
        {"type": "encrypted", "path": "/sealed", "uri": "file:/var/sealed",
         "key_name": "_sgx_mrenclave", "enable_recovery": True},
        {"type": "encrypted", "path": "/here", "uri": "file:"},
    ]}})
    enc, sealed, here = p.mounts[1:]
    assert (enc.type, enc.host, enc.key_name, enc.enable_recovery) == (
        "encrypted", f"{BASE}/enc/db", "default", False)
    assert enc.uri_path == "./enc//db/"  # bound paths derive from the text, not the host path
    assert (sealed.key_name, sealed.enable_recovery, sealed.uri_path) == (
        "_sgx_mrenclave", True, "/var/sealed")
    assert (here.host, here.uri_path) == (BASE, ".")
    assert p.resolve("/secret/a/b") == (enc, "a/b")
    assert p.host_path("/secret/a") is None  # not a chroot mount


@pytest.mark.parametrize(("mount", "where"), [
    ({"type": "encrypted", "path": "/s"}, "fs.mounts[0].uri"),
    ({"type": "encrypted", "path": "/s", "uri": "dev:/dev/x"}, "fs.mounts[0].uri"),
    ({"type": "encrypted", "path": "/s", "uri": "file:s", "key_name": "a/b"},
     "fs.mounts[0].key_name"),
    ({"type": "encrypted", "path": "/s", "uri": "file:s", "key_name": ""},
     "fs.mounts[0].key_name"),
    ({"type": "encrypted", "path": "/s", "uri": "file:s", "enable_recovery": "yes"},
     "fs.mounts[0].enable_recovery"),
])
def test_bad_encrypted_mounts_name_the_key(mount: Any, where: str) -> None:
    with pytest.raises(ManifestError) as e:
        plan({"fs": {"mounts": [mount]}})
    assert str(e.value).startswith(where)
    with pytest.raises(ManifestError, match="fs.root.type"):
        plan({"fs": {"root": {"type": "encrypted", "uri": "file:x"}}})


@pytest.mark.parametrize(("mount", "where"), [
    ({"type": "nfs", "path": "/x", "uri": "file:x"}, "fs.mounts[0].type"),
    ({"uri": "file:x"}, "fs.mounts[0]"),
    ({"path": "/x"}, "fs.mounts[0].uri"),
    ({"path": "/x", "uri": "http://x"}, "fs.mounts[0].uri"),
    ("file:/x", "fs.mounts[0]"),
])
def test_bad_mounts_name_the_key(mount: Any, where: str) -> None:
    with pytest.raises(ManifestError) as e:
        plan({"fs": {"mounts": [mount]}})
    assert str(e.value).startswith(where)


def test_root_mount_can_be_tmpfs_and_untrusted_shm_is_kept() -> None:
    p = plan({"fs": {"root": {"type": "tmpfs"},
                     "mounts": [{"type": "untrusted_shm", "path": "/dev/shm",
                                 "uri": "dev:/dev/shm"}]}})
    assert (p.mounts[0].type, p.mounts[0].host) == ("tmpfs", None)
    assert (p.mounts[1].type, p.mounts[1].host) == ("untrusted_shm", "/dev/shm")


def test_relative_base_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.chdir(tmp_path)
    p = ViewPlan.from_manifest({"fs": {"root": {"uri": "file:r"}}}, base_dir=Path("."))
    assert p.mounts[0].host == str(tmp_path / "r")


@pytest.mark.parametrize(("raw", "norm"), [
    ("/", "/"), ("", "/"), ("a/b", "/a/b"), ("//x//y/", "/x/y"), ("/a/../../b", "/b"),
])
def test_normalize_view_path(raw: str, norm: str) -> None:
    assert normalize_view_path(raw) == norm
