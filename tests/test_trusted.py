"""Trusted files: hashing, and expansion of sgx.trusted_files with Gramine's rules."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geode
from geode.errors import ManifestError
from geode.manifest import trusted
from geode.manifest.trusted import (
    CHUNK,
    PIPELINE_MIN,
    expand_trusted_files,
    hash_file,
    resolve_in_chroot,
    uri_to_host_path,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expand(entries: list[Any], **kwargs: Any) -> list[dict[str, str]]:
    manifest: dict[str, Any] = {"sgx": {"trusted_files": copy.deepcopy(entries)}}
    expand_trusted_files(manifest, progress=False, **kwargs)
    result: list[dict[str, str]] = manifest["sgx"]["trusted_files"]
    return result


def uris(entries: list[dict[str, str]]) -> list[str]:
    return [e["uri"] for e in entries]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- hashing


@pytest.mark.parametrize(
    "size", [0, 1, 2047, 2048, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, PIPELINE_MIN + 5]
)
def test_hash_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    block = os.urandom(1 << 16)
    data = (block * (size // len(block) + 1))[:size]
    path = write(tmp_path / "f", data)
    assert hash_file(path) == sha(data)


def test_hash_file_follows_symlinks_and_rejects_non_files(tmp_path: Path) -> None:
    target = write(tmp_path / "target", b"content")
    (tmp_path / "link").symlink_to("target")
    assert hash_file(tmp_path / "link") == sha(b"content") == hash_file(target)
    with pytest.raises(ManifestError, match="not a regular file"):
        hash_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ManifestError, match="not a regular file"):
        hash_file(fifo)  # must not block
    with pytest.raises(ManifestError, match="no-such-file"):
        hash_file(tmp_path / "no-such-file")


# --------------------------------------------------------------------------- expansion rules


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write(root / "b.txt", "b")
    write(root / "a.txt", "a-dot-txt")
    write(root / "a" / "x", "a/x")
    write(root / "a" / "y" / "z", "a/y/z")
    write(root / ".hidden", "hidden")
    write(root / "Z", "capital Z")
    write(root / "é", "e acute")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    (root / "link-to-file").symlink_to("b.txt")
    (root / "link-to-dir").symlink_to("a")
    (root / "dangling").symlink_to("nowhere")
    (root / "loop").symlink_to("loop")
    (root / "empty-dir").mkdir()
    return root


def test_directory_expansion_order_and_skips(tree: Path) -> None:
    out = expand([f"file:{tree}/"])
    t = str(tree)
    # Sorted names in each directory, depth first: "a/..." before "a.txt" (Gramine sorts
    # path components, not whole strings). FIFOs, sockets, dangling or looping links and
    # symlinked directories are skipped; a symlinked file is kept under its own name.
    assert uris(out) == [
        f"file:{t}/.hidden",
        f"file:{t}/Z",
        f"file:{t}/a/x",
        f"file:{t}/a/y/z",
        f"file:{t}/a.txt",
        f"file:{t}/b.txt",
        f"file:{t}/link-to-file",
        f"file:{t}/é",
    ]
    hashes = {e["uri"]: e["sha256"] for e in out}
    assert hashes[f"file:{t}/link-to-file"] == sha(b"b")
    assert hashes[f"file:{t}/a/y/z"] == sha(b"a/y/z")
    assert all(set(e) == {"uri", "sha256"} for e in out)


def test_entries_keep_manifest_order_and_dedupe(tree: Path) -> None:
    t = str(tree)
    out = expand([f"file:{t}/b.txt", f"file:{t}/a/", f"file:{t}/a.txt", f"file:{t}/a/x",
                  f"file:{t}/b.txt", f"file:{t}/"])
    assert uris(out)[:4] == [f"file:{t}/b.txt", f"file:{t}/a/x", f"file:{t}/a/y/z",
                             f"file:{t}/a.txt"]
    assert len(uris(out)) == len(set(uris(out))) == 8


def test_top_level_symlinked_directory_is_expanded(tree: Path) -> None:
    out = expand([f"file:{tree}/link-to-dir/"])
    assert uris(out) == [f"file:{tree}/link-to-dir/x", f"file:{tree}/link-to-dir/y/z"]


def test_pinned_hash_is_kept_and_verified(tree: Path) -> None:
    uri = f"file:{tree}/b.txt"
    good = sha(b"b")
    assert expand([{"uri": uri, "sha256": good}]) == [{"uri": uri, "sha256": good}]
    # A pinned hash given later fills in an unpinned earlier entry, at the first position.
    out = expand([uri, f"file:{tree}/a.txt", {"uri": uri, "sha256": good.upper()}])
    assert out[0] == {"uri": uri, "sha256": good.upper()}
    bad = sha(b"something else")
    with pytest.raises(ManifestError) as err:
        expand([f"file:{tree}/a.txt", {"uri": uri, "sha256": bad}])
    assert err.value.where == "sgx.trusted_files[1]"
    assert uri in str(err.value) and "mismatch" in str(err.value) and bad in str(err.value)


def test_conflicting_hashes_are_an_error(tree: Path) -> None:
    uri = f"file:{tree}/b.txt"
    with pytest.raises(ManifestError, match="two different sha256 values") as err:
        expand([{"uri": uri, "sha256": "0" * 64}, {"uri": uri, "sha256": "1" * 64}])
    assert uri in str(err.value)
    # The same pinned hash twice is fine.
    assert expand([{"uri": uri, "sha256": sha(b"b")}] * 2) == [{"uri": uri, "sha256": sha(b"b")}]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("file:{t}/missing", r"file:{t}/missing: no such file"),
        ("file:{t}/missing/", r"file:{t}/missing/: no such directory"),
        ("file:{t}/a", r"is a directory; end the URI with '/'"),
        ("file:{t}/b.txt/", r"ends with '/' but is not a directory"),
        ("file:{t}/fifo", r"not a regular file"),
        ("file:{t}/dangling", r"no such file"),
        ("dev:/dev/null", r"unsupported URI 'dev:/dev/null'"),
        ({"uri": "file:{t}/a/", "sha256": "0" * 64}, r"directory entry cannot have a sha256"),
        ({"uri": "file:{t}/b.txt", "size": 3}, r"unknown keys .*size"),
        ({"uri": "file:{t}/b.txt", "sha256": "xyz"}, r"sha256 must be 64 hex digits"),
        ({"sha256": "0" * 64}, r"needs a string 'uri'"),
        (42, r"must be a string or a table"),
    ],
)
def test_bad_entries(tree: Path, entry: Any, message: str) -> None:
    t = str(tree)
    if isinstance(entry, str):
        entry = entry.format(t=t)
    elif isinstance(entry, dict):
        entry = {k: v.format(t=t) if isinstance(v, str) else v for k, v in entry.items()}
    with pytest.raises(ManifestError, match=message.format(t=t)) as err:
        expand([f"file:{t}/b.txt", entry])
    assert err.value.where == "sgx.trusted_files[1]"


def test_trusted_files_must_be_a_list() -> None:
    with pytest.raises(ManifestError, match="must be a list"):
        expand_trusted_files({"sgx": {"trusted_files": "file:/bin/sh"}}, progress=False)


def test_relative_paths_resolve_against_cwd(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    out = expand(["file:tree/a/", "file:./tree/b.txt"])
    assert out == [
        {"uri": "file:tree/a/x", "sha256": sha(b"a/x")},
        {"uri": "file:tree/a/y/z", "sha256": sha(b"a/y/z")},
        {"uri": "file:./tree/b.txt", "sha256": sha(b"b")},
    ]
    monkeypatch.chdir(tree)
    assert uris(expand(["file:./a/"])) == ["file:a/x", "file:a/y/z"]


def test_vanished_file_is_an_error_naming_it(tree: Path) -> None:
    jobs = list(trusted._collect([f"file:{tree}/"], None).values())
    (tree / "a" / "y" / "z").unlink()
    with pytest.raises(ManifestError, match=rf"vanished.*{tree}/a/y/z"):
        trusted._hash_all(jobs, False)


def test_loader_entrypoint_hash_is_filled(tree: Path) -> None:
    manifest: dict[str, Any] = {"loader": {"entrypoint": {"uri": f"file:{tree}/b.txt"}}}
    expand_trusted_files(manifest, progress=False)
    assert manifest["loader"]["entrypoint"] == {"uri": f"file:{tree}/b.txt", "sha256": sha(b"b")}
    # The pre-1.8 string form becomes a table.
    manifest = {"loader": {"entrypoint": f"file:{tree}/a.txt"}, "sgx": {"trusted_files": []}}
    expand_trusted_files(manifest, progress=False)
    assert manifest["loader"]["entrypoint"] == {
        "uri": f"file:{tree}/a.txt", "sha256": sha(b"a-dot-txt"),
    }
    assert manifest["sgx"]["trusted_files"] == []
    manifest = {"loader": {"entrypoint": {"uri": f"file:{tree}/a.txt", "sha256": "0" * 64}}}
    with pytest.raises(ManifestError, match="mismatch") as err:
        expand_trusted_files(manifest, progress=False)
    assert err.value.where == "loader.entrypoint"


def test_manifest_without_trusted_files_is_left_alone() -> None:
    manifest: dict[str, Any] = {"libos": {"entrypoint": "/x"}}
    expand_trusted_files(manifest, progress=False)
    assert manifest == {"libos": {"entrypoint": "/x"}}


def test_unreadable_entries_are_skipped_inside_directories() -> None:
    """Run as an unprivileged user: Gramine skips what os.access(R_OK) refuses."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    src = Path(geode.__file__).resolve().parent.parent
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    root = Path(tempfile.mkdtemp(prefix="geode-unreadable-"))
    try:
        os.chmod(root, 0o755)
        write(root / "d" / "readable", "ok")
        write(root / "d" / "secret", "no")
        write(root / "d" / "locked" / "inner", "no")
        write(root / "top-secret", "no")
        for p in (root / "d", root / "d" / "readable", root / "d" / "locked"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(root / "d" / "secret", 0o600)
        os.chmod(root / "d" / "locked", 0o700)
        os.chmod(root / "top-secret", 0o600)
        script = textwrap.dedent(f"""
            import json, sys
            sys.path.insert(0, {str(src)!r})
            from geode.errors import ManifestError
            from geode.manifest.trusted import expand_trusted_files
            m = {{"sgx": {{"trusted_files": ["file:{root}/d/"]}}}}
            expand_trusted_files(m, progress=False)
            try:
                expand_trusted_files({{"sgx": {{"trusted_files": ["file:{root}/top-secret"]}}}},
                                     progress=False)
                err = None
            except ManifestError as e:
                err = str(e)
            print(json.dumps([m["sgx"]["trusted_files"], err]))
        """)
        proc = subprocess.run([python, "-c", script], user=65534, group=65534,
                              capture_output=True, text=True, cwd="/")
        if proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr:
            pytest.skip(f"geode is not importable as an unprivileged user: {proc.stderr}")
        assert proc.returncode == 0, proc.stderr
        entries, err = json.loads(proc.stdout)
        assert entries == [{"uri": f"file:{root}/d/readable", "sha256": sha(b"ok")}]
        assert err is not None and "top-secret: not readable" in err
    finally:
        shutil.rmtree(root)


# --------------------------------------------------------------------------- chroot


@pytest.fixture
def chroot(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    write(root / "usr" / "lib" / "libx.so", "libx in image")
    write(root / "usr" / "lib" / "sub" / "liby.so", "liby in image")
    write(root / "etc" / "hostname", "image hostname")
    (root / "lib").symlink_to("/usr/lib")  # absolute: must resolve inside the image
    (root / "usr" / "lib" / "abs-link").symlink_to("/etc/hostname")
    (root / "usr" / "lib" / "escape").symlink_to("../../../../../../etc/hostname")
    return root


def test_chroot_paths_resolve_inside_the_chroot(chroot: Path) -> None:
    out = expand(["file:/lib/libx.so", "file:/usr/lib/abs-link"], chroot=chroot)
    # URIs stay as written; content comes from the image, not from the host.
    assert out == [
        {"uri": "file:/lib/libx.so", "sha256": sha(b"libx in image")},
        {"uri": "file:/usr/lib/abs-link", "sha256": sha(b"image hostname")},
    ]


def test_chroot_directory_children_use_the_resolved_path(chroot: Path) -> None:
    out = expand(["file:/lib/"], chroot=chroot)
    assert out == [
        {"uri": "file:/usr/lib/abs-link", "sha256": sha(b"image hostname")},
        {"uri": "file:/usr/lib/escape", "sha256": sha(b"image hostname")},
        {"uri": "file:/usr/lib/libx.so", "sha256": sha(b"libx in image")},
        {"uri": "file:/usr/lib/sub/liby.so", "sha256": sha(b"liby in image")},
    ]


def test_chroot_needs_absolute_paths(chroot: Path) -> None:
    with pytest.raises(ManifestError, match="only absolute paths"):
        expand(["file:usr/lib/libx.so"], chroot=chroot)


def test_resolve_in_chroot(chroot: Path, tmp_path: Path) -> None:
    from pathlib import PurePosixPath as P

    assert resolve_in_chroot(chroot, P("/lib/sub/../libx.so")) == P("/usr/lib/libx.so")
    assert resolve_in_chroot(chroot, P("/../../lib")) == P("/usr/lib")
    assert resolve_in_chroot(chroot, P("/lib/missing/x")) == P("/usr/lib/missing/x")
    (chroot / "loop").symlink_to("/loop")
    with pytest.raises(OSError, match="Too many levels"):
        resolve_in_chroot(chroot, P("/loop/x"))
    with pytest.raises(OSError, match="Not a directory"):
        resolve_in_chroot(chroot, P("/etc/hostname/x"))
    assert uri_to_host_path("file:/lib/libx.so", chroot) == chroot / "usr/lib/libx.so"
    assert uri_to_host_path("file:rel/x") == Path("rel/x")


# --------------------------------------------------------------------------- progress


def test_progress_output_only_when_asked(tree: Path, capfd: pytest.CaptureFixture[str]) -> None:
    manifest: dict[str, Any] = {"sgx": {"trusted_files": [f"file:{tree}/"]}}
    expand_trusted_files(manifest, progress=False)
    assert capfd.readouterr().err == ""
    expand_trusted_files({"sgx": {"trusted_files": [f"file:{tree}/"]}}, progress=None)
    assert capfd.readouterr().err == ""  # stderr is not a terminal here
    expand_trusted_files({"sgx": {"trusted_files": [f"file:{tree}/"]}}, progress=True)
    assert "Hashing trusted files" in capfd.readouterr().err


# --------------------------------------------------------------------------- properties


def gramine_model(entries: list[Any]) -> list[dict[str, str]]:
    """A direct pathlib statement of Gramine's expansion rules, for comparison."""

    def walk(directory: Path) -> Iterator[str]:
        for child in sorted(directory.glob("*")):
            if not child.is_file() and not child.is_dir():
                continue
            if not os.access(child, os.R_OK):
                continue
            if child.is_dir():
                if not child.is_symlink():
                    yield from walk(child)
            else:
                yield f"file:{child}"

    merged: dict[str, str | None] = {}
    for item in entries:
        uri, pinned = (item, None) if isinstance(item, str) else (item["uri"], item["sha256"])
        for u in walk(Path(uri[5:])) if uri.endswith("/") else [uri]:
            if merged.get(u) is None:
                merged[u] = pinned
    return [
        {"uri": u, "sha256": h or sha(Path(u[5:]).read_bytes())} for u, h in merged.items()
    ]


NAMES = st.text(alphabet="aAb._-0é ", min_size=1, max_size=3).filter(
    lambda n: n not in (".", "..")
)
LEAF = st.one_of(
    st.binary(max_size=64),
    st.just(("fifo",)),
    NAMES.map(lambda n: ("symlink", n)),
)
TREE = st.recursive(
    st.dictionaries(NAMES, LEAF, max_size=4),
    lambda children: st.dictionaries(NAMES, st.one_of(LEAF, children), max_size=4),
    max_leaves=24,
)


def build(root: Path, spec: dict[str, Any]) -> None:
    root.mkdir(exist_ok=True)
    for name, value in spec.items():
        path = root / name
        if isinstance(value, bytes):
            path.write_bytes(value)
        elif isinstance(value, dict):
            build(path, value)
        elif value[0] == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to(value[1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=TREE)
def test_expansion_is_sorted_unique_idempotent_and_matches_gramine(spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        build(root, spec)
        entries = [f"file:{root}/"]
        out = expand(entries)
        names = uris(out)
        assert len(names) == len(set(names))
        assert names == sorted(names, key=lambda u: u.split("/"))
        assert out == gramine_model(entries)
        for entry in out:
            assert entry["sha256"] == sha(Path(entry["uri"][5:]).read_bytes())
        # Idempotent: expanding the expanded list (all pinned) changes nothing.
        assert expand(out) == out
        # Listing the directory twice, or a file of it again, changes nothing either.
        assert expand(entries + entries + names[:1]) == out
