"""The view file system on real FUSE mounts (root only).

Each view is served by ``python -m geode.runtime.viewfs`` in a subprocess, so that the test
process can do blocking file I/O (and fork into a chroot of the view) while the view is
served; the fixture always unmounts (``fusermount3 -u -z``) and kills the server.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from geodetest import StartView, is_mounted, view_served_in_thread
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="real FUSE mounts need root, /dev/fuse and fusermount3",
)

KiB = 1024
MiB = 1024 * KiB
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def in_view(mnt: Path, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child chrooted into the view; return its result or exception."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.chroot(mnt)
            os.chdir("/")
            result: Any = ("ok", fn())
        except BaseException as e:  # noqa: BLE001
            result = ("err", e if isinstance(e, OSError) else RuntimeError(
                traceback.format_exc()))
        with os.fdopen(w, "wb") as f:
            pickle.dump(result, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value


def read_in_view(mnt: Path, path: str) -> bytes:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return bytes(in_view(mnt, read))


def trusted(path: Path) -> dict[str, str]:
    return {"uri": f"file:{path}", "sha256": sha256_file(path)}


# ------------------------------------------------------------------------------------------
# trusted files
# ------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "small.txt").write_bytes(b"hello trusted\n")
    (root / "big.bin").write_bytes(os.urandom(300 * KiB + 123))
    (root / "untrusted.txt").write_bytes(b"not in the manifest\n")
    return root


def base_manifest(root: Path, trusted_paths: list[Path], **sgx: Any) -> dict[str, Any]:
    return {"fs": {"root": {"uri": f"file:{root}"}, "mounts": []},
            "sgx": {"trusted_files": [trusted(p) for p in trusted_paths], **sgx}}


def test_a_listing_gives_each_entry_the_attributes_getattr_gives(tmp_path: Path,
                                                                 tree: Path) -> None:
    """READDIRPLUS entries (most packed straight from the host stat) carry what GETATTR of the
    same inode answers: trusted, allowed and denied files, a trusted soname-style symlink
    served as its file, a plain symlink, a directory, a verified file."""
    from geode.runtime import fuse
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS

    (tree / "etc" / "allowed.txt").write_bytes(b"allowed\n")
    (tree / "etc" / "other.txt").write_bytes(b"trusted, not opened\n")
    os.symlink("other.txt", tree / "etc" / "link.txt")  # trusted: served as the file
    os.symlink("nowhere", tree / "etc" / "dangling")
    (tree / "etc" / "sub").mkdir()
    for name in ("small.txt", "other.txt"):  # set-id bits never show on trusted files
        os.chmod(tree / "etc" / name, 0o4755)
    manifest = base_manifest(tree, [tree / "etc" / n for n in ("small.txt", "other.txt",
                                                                "link.txt")],
                             allowed_files=[f"file:{tree / 'etc' / 'allowed.txt'}"],
                             file_check_policy="allow_all_but_log")
    ctx = fuse.RequestContext(0, 0, 1)
    for owner in (None, (1000, 1001)):
        fs = ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest, owner=owner)
        try:
            etc = fs.lookup(fuse.ROOT_INODE, b"etc", ctx).st_ino
            verified = fs.lookup(etc, b"small.txt", ctx).st_ino
            fs.release(fs.open(verified, os.O_RDONLY, ctx).fh)  # (frozen attributes now)
            token = fuse.ReaddirToken(1 << 20)
            fs.readdir(etc, 0, 0, token)
            listed = {}
            for head, name in zip(token.parts[::3], token.parts[1::3], strict=True):
                fields = fuse._DIRENTPLUS.unpack(head)
                listed[name] = fields
            assert set(listed) >= {b"small.txt", b"link.txt", b"allowed.txt", b"dangling",
                                   b"sub", b".", b".."}
            for name, fields in listed.items():
                ino = fields[0]
                want = fuse._DIRENTPLUS.unpack(
                    fuse._pack_entry(fs.getattr(ino, ctx)) + fuse._DIRENT_HEAD.pack(
                        ino, fields[-3], fields[-2], fields[-1]))
                assert fields == want, name
            for name in (b"small.txt", b"other.txt", b"link.txt"):
                fields = listed[name]
                assert fields[15] & 0o7777 == 0o555 and fields[17:19] == (owner or (0, 0))
        finally:
            fs.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="aborting a FUSE connection needs root")
def test_an_aborted_connection_ends_the_view_quietly(tmp_path: Path, tree: Path) -> None:
    """A connection aborted through fusectl (as the supervisor does when a torn-down sandbox
    leaves a straggler) ends the server like an unmount: its readers get ECONNABORTED, not
    ENODEV, and that is no failure of the view."""
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS, serve

    manifest = base_manifest(tree, [tree / "etc" / "small.txt"])
    fs = ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ready, failures = threading.Event(), []

    def server() -> None:
        try:
            serve(fs, mnt, ready=ready.set)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)
            ready.set()

    t = threading.Thread(target=server, daemon=True)
    t.start()
    try:
        assert ready.wait(30) and not failures, failures
        assert (mnt / "etc" / "small.txt").read_bytes() == b"hello trusted\n"
        minor = os.minor(os.stat(mnt).st_dev)
        # (fusectl in a mount namespace of its own: the host's mount table stays as it is)
        subprocess.run(["unshare", "-m", "sh", "-c",
                        "mount -t fusectl none /sys/fs/fuse/connections && "
                        f"echo 1 > /sys/fs/fuse/connections/{minor}/abort"], check=True)
        t.join(30)
        assert not t.is_alive(), "the view server did not stop"
        assert failures == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], stderr=subprocess.DEVNULL, check=False)


def test_trusted_files_are_verified_once_and_read_only(start_view: StartView, tree: Path
                                                       ) -> None:
    files = [tree / "etc" / "small.txt", tree / "big.bin"]
    view = start_view(base_manifest(tree, files))
    big = (tree / "big.bin").read_bytes()
    for _ in range(3):
        assert (view.mnt / "big.bin").read_bytes() == big
    assert (view.mnt / "etc" / "small.txt").read_bytes() == b"hello trusted\n"
    with open(view.mnt / "big.bin", "rb") as f:  # unaligned reads across chunk boundaries
        f.seek(16 * KiB - 5)
        assert f.read(20) == big[16 * KiB - 5:16 * KiB + 15]
        f.seek(len(big) - 3)
        assert f.read(100) == big[-3:]
    st = os.stat(view.mnt / "big.bin")
    assert st.st_size == len(big)
    assert stat.S_IMODE(st.st_mode) & 0o222 == 0
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(PermissionError):
            os.open(view.mnt / "big.bin", flags)
    with pytest.raises(PermissionError):
        os.truncate(view.mnt / "big.bin", 0)
    with pytest.raises(PermissionError):
        os.unlink(view.mnt / "big.bin")
    with pytest.raises(PermissionError):
        os.rename(view.mnt / "big.bin", view.mnt / "moved.bin")
    with pytest.raises(PermissionError):
        os.chmod(view.mnt / "big.bin", 0o777)
    assert (tree / "big.bin").read_bytes() == big
    assert os.access(view.mnt / "big.bin", os.R_OK)
    assert not os.access(view.mnt / "big.bin", os.W_OK)
    assert not os.access(view.mnt / "untrusted.txt", os.R_OK)
    assert os.access(view.mnt / "untrusted.txt", os.F_OK)
    assert not os.access(view.mnt / "etc", os.W_OK)
    assert os.statvfs(view.mnt).f_blocks == os.statvfs(tree).f_blocks
    stats = view.stop()
    assert stats["verified_bytes"] == len(big) + len(b"hello trusted\n")
    assert "refusing to open trusted file /big.bin" in view.log_text()


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_tampered_before_first_open_is_eacces(start_view: StartView, tree: Path,
                                              damage: str) -> None:
    view = start_view(base_manifest(tree, [tree / "big.bin"]))
    data = bytearray((tree / "big.bin").read_bytes())
    if damage == "flip":
        data[200 * KiB] ^= 0x01
    elif damage == "truncate":
        del data[-1]
    else:
        data += b"x"
    (tree / "big.bin").write_bytes(bytes(data))
    with pytest.raises(PermissionError):
        (view.mnt / "big.bin").read_bytes()
    with pytest.raises(PermissionError):  # still refused on a second attempt
        os.open(view.mnt / "big.bin", os.O_RDONLY)
    view.stop()
    assert "trusted file /big.bin" in view.log_text()
    assert "does not match its sha256" in view.log_text()


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_or_errno(path: Path, offset: int, size: int, fd: int | None = None) -> bytes | int:
    own = fd is None
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    except OSError as e:
        return e.errno or -1
    finally:
        if own:
            os.close(fd)


@pytest.mark.parametrize("size", [300 * KiB + 123, 17 * MiB + 5])  # stored / not stored
@pytest.mark.parametrize("how", ["in_place", "replace"])
def test_changes_after_verification_never_reach_the_program(
        start_view: StartView, tmp_path: Path, size: int, how: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    host = root / "f.bin"
    original = os.urandom(size)
    host.write_bytes(original)
    view = start_view(base_manifest(root, [host]))
    vpath = view.mnt / "f.bin"
    keep = os.open(vpath, os.O_RDONLY)
    try:
        assert os.pread(keep, 4096, 0) == original[:4096]  # first open verified the file
        offset = size - 20 * KiB
        if how == "in_place":
            with open(host, "r+b") as f:
                f.seek(offset)
                f.write(b"\xff" * 100)
        else:
            tmp = root / "f.new"
            tmp.write_bytes(original[:offset] + b"\xff" * 100 + original[offset + 100:])
            os.rename(tmp, host)
        results = []
        results.append(read_or_errno(vpath, offset, 100, keep))
        results.append(read_or_errno(vpath, offset, 100))
        drop_cache(vpath)  # now the reads have to come from the host again
        results.append(read_or_errno(vpath, offset, 100, keep))
        results.append(read_or_errno(vpath, offset, 100))
        results.append(read_or_errno(vpath, 0, 100))
    finally:
        os.close(keep)
    for r in results:
        assert r in (original[offset:offset + 100], errno.EIO, original[:100]), r
    assert b"\xff" * 100 not in [r for r in results if isinstance(r, bytes)]
    view.stop()
    if errno.EIO in results:
        assert "changed after verification" in view.log_text()
    if how == "in_place":  # the host fd is the modified inode: the chunk check must fire
        assert results[2] == errno.EIO


def test_stored_file_read_again_from_the_host_after_its_pages_were_dropped(
        start_view: StartView, tmp_path: Path) -> None:
    """A verified file pushed into the page cache gets its chunk table only when a read
    reaches the view; the bytes are the verified ones, whatever the offset."""
    root = tmp_path / "root"
    root.mkdir()
    original = os.urandom(300 * KiB + 7)
    (root / "f.bin").write_bytes(original)
    view = start_view(base_manifest(root, [root / "f.bin"]))
    vpath = view.mnt / "f.bin"
    assert vpath.read_bytes() == original  # verified and pushed into the page cache
    for offset in (0, 16 * KiB - 3, len(original) - 10):
        drop_cache(vpath)
        assert read_or_errno(vpath, offset, 5000) == original[offset:offset + 5000]
    stats = view.stop()
    assert stats["read"] >= 3  # the reads did reach the view
    assert stats["verified_bytes"] == len(original)  # the re-hash is not a new verification
    assert "changed after verification" not in view.log_text()


def test_big_trusted_file_is_read_in_large_verified_requests(start_view: StartView,
                                                             tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(17 * MiB + 1)  # above STORE_MAX: reads come to Python and are checked
    (root / "big").write_bytes(data)
    view = start_view(base_manifest(root, [root / "big"]))
    dev = os.stat(view.mnt).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert bdi.read_text().strip() == "1024"
    assert hashlib.sha256((view.mnt / "big").read_bytes()).digest() == hashlib.sha256(
        data).digest()
    stats = view.stop()
    assert 17 <= stats["read"] <= 40, stats


def test_untrusted_files_strict_and_allow_all_but_log(start_view: StartView, tree: Path
                                                      ) -> None:
    strict = start_view(base_manifest(tree, []))
    st = os.stat(strict.mnt / "untrusted.txt")  # stat works, as in Gramine
    assert st.st_size == len(b"not in the manifest\n")
    with pytest.raises(PermissionError):
        (strict.mnt / "untrusted.txt").read_bytes()
    with pytest.raises(PermissionError):
        (strict.mnt / "new.txt").write_bytes(b"x")
    with pytest.raises(PermissionError):
        os.mkdir(strict.mnt / "newdir")
    assert sorted(os.listdir(strict.mnt)) == ["big.bin", "dev", "etc", "proc", "sys",
                                              "untrusted.txt"]
    strict.stop()
    assert "refusing to open /untrusted.txt" in strict.log_text()
    assert "refusing to create /new.txt" in strict.log_text()
    assert not (tree / "new.txt").exists()

    lax = start_view(base_manifest(tree, [], file_check_policy="allow_all_but_log"))
    assert (lax.mnt / "untrusted.txt").read_bytes() == b"not in the manifest\n"
    (lax.mnt / "new.txt").write_bytes(b"created")
    lax.stop()
    assert (tree / "new.txt").read_bytes() == b"created"
    text = lax.log_text()
    assert "WARNING" in text
    assert "/untrusted.txt" in text and "/new.txt" in text


def test_a_listing_resumes_by_name_while_entries_are_removed(start_view: StartView,
                                                             tmp_path: Path) -> None:
    """Directories open without a message, so a listing has no per-open snapshot: it
    resumes after the cookie of the last name it returned. Removing each entry while the
    listing runs (what rmtree-style loops do) skips and repeats nothing, over many chunks."""
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    names = {f"entry-with-a-longish-name-{i:05d}" for i in range(3000)}
    for name in names:
        (root / "data" / name).write_bytes(b"")
    manifest = {"fs": {"root": {"uri": f"file:{root}"}},
                "sgx": {"allowed_files": [f"file:{root}/data/"]}}
    view = start_view(manifest)
    seen: list[str] = []
    with os.scandir(view.mnt / "data") as it:
        for entry in it:
            seen.append(entry.name)
            os.unlink(entry.path)
    assert sorted(seen) == sorted(names)  # each exactly once
    assert os.listdir(root / "data") == []
    assert os.listdir(view.mnt / "data") == []
    # a name the host adds shows up once the directory's timeout (1 s) has passed
    (root / "data" / "late").write_bytes(b"")
    time.sleep(1.2)
    assert os.listdir(view.mnt / "data") == ["late"]


def test_directories_open_without_a_request(start_view: StartView, tmp_path: Path) -> None:
    """OPENDIR is answered ENOSYS once; after that the kernel sends no OPENDIR/RELEASEDIR and
    lists an unchanged directory again from its cache."""
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    for i in range(50):
        (root / "lib" / f"f{i}").write_bytes(b"x")
    manifest = {"fs": {"root": {"uri": f"file:{root}"}},
                "sgx": {"trusted_files": [
                    {"uri": f"file:{root}/lib/f{i}", "sha256": hashlib.sha256(b"x").hexdigest()}
                    for i in range(50)]}}
    view = start_view(manifest)
    for _ in range(20):
        assert sorted(os.listdir(view.mnt / "lib")) == sorted(f"f{i}" for i in range(50))
    stats = view.stop()
    assert "opendir" not in stats and "releasedir" not in stats
    assert stats["readdir"] <= 3  # the first listing only (a chunk or two, then the end)


def test_allowed_files_are_read_write_passthrough(start_view: StartView, tmp_path: Path
                                                  ) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "old.txt").write_text("old")
    (root / "log.txt").write_text("")
    (root / "other").mkdir()
    manifest = {"fs": {"root": {"uri": f"file:{root}"}},
                "sgx": {"allowed_files": [f"file:{root}/data/", f"file:{root}/log.txt"]}}
    view = start_view(manifest)
    m = view.mnt
    assert (m / "data" / "old.txt").read_text() == "old"
    (m / "data" / "new.txt").write_text("new content")
    assert (root / "data" / "new.txt").read_text() == "new content"
    with open(m / "data" / "new.txt", "r+") as f:
        f.seek(4)
        f.write("CONTENT")
    assert (m / "data" / "new.txt").read_text() == "new CONTENT"
    assert "log.txt" in os.listdir(m)  # the listing of / is cached from now on
    with open(m / "log.txt", "a") as f:
        f.write("line 1\n")
    assert "log.txt" in os.listdir(m)  # readdirplus must not bring back the old size
    assert os.stat(m / "log.txt").st_size == len("line 1\n")
    with open(m / "log.txt", "a") as f:
        f.write("line 2\n")
        f.flush()
        os.fsync(f.fileno())
    assert (root / "log.txt").read_text() == "line 1\nline 2\n"
    os.rename(m / "data" / "new.txt", m / "data" / "renamed.txt")
    assert not (root / "data" / "new.txt").exists()
    assert (m / "data" / "renamed.txt").read_text() == "new CONTENT"
    os.truncate(m / "data" / "renamed.txt", 3)
    assert (root / "data" / "renamed.txt").read_text() == "new"
    os.chmod(m / "data" / "renamed.txt", 0o600)
    assert stat.S_IMODE((root / "data" / "renamed.txt").stat().st_mode) == 0o600
    os.utime(m / "data" / "renamed.txt", ns=(1_000_000_000, 2_000_000_000))
    assert (root / "data" / "renamed.txt").stat().st_mtime_ns == 2_000_000_000
    os.mkdir(m / "data" / "sub")
    (m / "data" / "sub" / "f").write_text("deep")
    os.rename(m / "data" / "sub", m / "data" / "sub2")
    assert (m / "data" / "sub2" / "f").read_text() == "deep"
    assert (root / "data" / "sub2" / "f").read_text() == "deep"
    os.symlink("renamed.txt", m / "data" / "link")
    assert os.readlink(m / "data" / "link") == "renamed.txt"
    assert os.readlink(root / "data" / "link") == "renamed.txt"
    os.link(m / "data" / "renamed.txt", m / "data" / "hard")
    assert (root / "data" / "hard").stat().st_ino == (root / "data" / "renamed.txt").stat(
    ).st_ino
    os.mkfifo(m / "data" / "fifo")
    assert stat.S_ISFIFO(os.stat(m / "data" / "fifo").st_mode)
    os.chmod(m / "data" / "fifo", 0o640)
    assert stat.S_IMODE((root / "data" / "fifo").stat().st_mode) == 0o640
    with socket.socket(socket.AF_UNIX) as srv:  # a unix socket in an allowed directory
        srv.bind(str(m / "data" / "sock"))
        srv.listen()
        os.chmod(m / "data" / "sock", 0o700)
        with socket.socket(socket.AF_UNIX) as cli:
            cli.connect(str(m / "data" / "sock"))
            conn, _ = srv.accept()
            cli.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()
    assert stat.S_ISSOCK((root / "data" / "sock").stat().st_mode)
    os.unlink(m / "data" / "sock")
    with open(m / "data" / "tmp", "w+") as f:  # unlinked while open
        f.write("still here")
        os.unlink(m / "data" / "tmp")
        f.flush()
        assert os.fstat(f.fileno()).st_size == len("still here")
        f.seek(0)
        assert f.read() == "still here"
    for name in ("link", "hard", "fifo", "renamed.txt", "old.txt", "sub2/f"):
        os.unlink(m / "data" / name)
    os.rmdir(m / "data" / "sub2")
    assert sorted(os.listdir(root / "data")) == []
    assert sorted(os.listdir(m / "data")) == []
    with pytest.raises(PermissionError):  # the allowed file's directory is not allowed
        (m / "logx.txt").write_text("x")
    with pytest.raises(PermissionError):
        os.rename(m / "log.txt", m / "other" / "log.txt")
    assert (root / "log.txt").exists()


def test_symlink_and_dotdot_escapes_stay_in_the_view(start_view: StartView, tmp_path: Path
                                                     ) -> None:
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_text("host secret")
    root = tmp_path / "root"
    mdir = tmp_path / "mdir"
    root.mkdir()
    (mdir / "d").mkdir(parents=True)
    (mdir / "d" / "secret").write_text("inside")
    os.symlink(secret, mdir / "abs")
    os.symlink("../outside/secret", mdir / "rel")
    os.symlink("../../../../../../../..", mdir / "up")
    # everything would be readable by policy: only confinement can stop the escapes
    manifest = {"fs": {"root": {"uri": f"file:{root}"},
                       "mounts": [{"path": "/m", "uri": f"file:{mdir}"}]},
                "sgx": {"file_check_policy": "allow_all_but_log"}}
    view = start_view(manifest)
    assert read_in_view(view.mnt, "/m/d/secret") == b"inside"
    for path in ("/m/abs", "/m/rel", "/m/../outside/secret", "/m/../../outside/secret",
                 f"/m/up{secret}", "/m/up/outside/secret"):
        with pytest.raises(FileNotFoundError):
            read_in_view(view.mnt, path)
    assert os.readlink(view.mnt / "m" / "abs") == str(secret)  # shown as a symlink
    # the host swaps a directory the kernel has cached for a symlink out of the mount
    assert (view.mnt / "m" / "d" / "secret").exists()
    shutil.rmtree(mdir / "d")
    os.symlink(secret.parent, mdir / "d")
    for path in (view.mnt / "m" / "d" / "secret",):
        with pytest.raises(OSError) as e:
            path.read_text()
        assert e.value.errno in (errno.ENOENT, errno.ESTALE)
    assert secret.read_text() == "host secret"


def test_openat2_confines_host_resolution(tmp_path: Path) -> None:
    from geode.runtime.viewfs import IN_ROOT, openat2

    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink("/secret", tmp_path / "root" / "abs")
    os.symlink("../../secret", tmp_path / "root" / "sub" / "rel")
    rootfd = os.open(tmp_path / "root", os.O_PATH)
    try:
        for rel in ("../secret", "sub/../../secret", "abs", "sub/rel", "/secret"):
            with pytest.raises(FileNotFoundError):
                os.close(openat2(rootfd, rel, os.O_RDONLY, resolve=IN_ROOT))
        (tmp_path / "root" / "secret").write_text("inside")
        fd = openat2(rootfd, "sub/rel", os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"inside"
        finally:
            os.close(fd)
    finally:
        os.close(rootfd)


def test_composition_mount_points_and_outside_paths(start_view: StartView, tmp_path: Path
                                                    ) -> None:
    root = tmp_path / "root"
    (root / "opt").mkdir(parents=True)
    (root / "opt" / "shadowed").write_text("root's")
    (root / "dev").mkdir()
    (root / "dev" / "hostfile").write_text("hidden by the virtual /dev")
    (tmp_path / "next-to-root").write_text("outside")
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("a")
    (b / "from_b").write_text("b")
    manifest = {"fs": {"root": {"uri": f"file:{root}"}, "mounts": [
        {"path": "/opt", "uri": f"file:{a}"},
        {"path": "/opt/deep/er", "uri": f"file:{b}"},
        {"path": "/tmp", "type": "tmpfs"},
        {"path": "/tmp/in/tmpfs", "uri": f"file:{b}"},  # re-exposed by the launcher
        {"path": "/x", "uri": f"file:{a}"},
        {"path": "/x", "uri": f"file:{b}"},
        {"path": "/etc/hostname", "uri": f"file:{tmp_path / 'next-to-root'}"},
    ]}, "sgx": {"file_check_policy": "allow_all_but_log"}}
    view = start_view(manifest)
    m = view.mnt
    assert sorted(os.listdir(m)) == ["dev", "etc", "opt", "proc", "sys", "tmp", "x"]
    assert sorted(os.listdir(m / "opt")) == ["deep", "from_a"]
    assert os.listdir(m / "opt" / "deep") == ["er"]
    assert (m / "opt" / "deep" / "er" / "from_b").read_text() == "b"
    assert sorted(os.listdir(m / "x")) == ["from_b"]  # the later mount shadows the earlier
    assert (m / "etc" / "hostname").read_text() == "outside"  # a single-file mount
    assert os.listdir(m / "tmp") == ["in"]
    assert os.listdir(m / "tmp" / "in" / "tmpfs") == ["from_b"]
    assert not (m / "opt" / "shadowed").exists()
    assert not (m / "dev" / "hostfile").exists()
    assert not (m / "next-to-root").exists()
    assert not (m / "usr").exists()
    with pytest.raises(FileNotFoundError):
        read_in_view(m, "/../next-to-root")
    st1, st2 = os.stat(m / "opt" / "from_a"), os.stat(m / "x" / "from_b")
    assert st1.st_ino != st2.st_ino
    assert os.stat(m / "opt" / "from_a").st_ino == st1.st_ino
    assert os.stat(m / "opt" / "deep" / "er" / "from_b").st_ino == st2.st_ino  # same host file


def test_dev_placeholders_and_links(start_view: StartView, tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    view = start_view({"fs": {"root": {"uri": f"file:{tmp_path / 'root'}"}}})
    dev = view.mnt / "dev"
    assert sorted(os.listdir(dev)) == sorted(
        ["null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd",
         "stdin", "stdout", "stderr", "attestation"])
    assert stat.S_ISREG(os.stat(dev / "null").st_mode)
    with pytest.raises(OSError) as e:
        open(dev / "urandom", "rb").close()  # noqa: SIM115
    assert e.value.errno == errno.ENXIO
    assert os.readlink(dev / "stdin") == "/proc/self/fd/0"
    assert os.path.isdir(dev / "pts") and os.listdir(dev / "pts") == []
    assert (dev / "attestation" / "attestation_type").read_bytes() == b"none"


def test_attestation_keys(start_view: StartView, tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    key = bytes(range(16))
    view = start_view({"fs": {"root": {"uri": f"file:{tmp_path / 'root'}"},
                              "insecure__keys": {"default": key.hex()}}})
    keys = view.mnt / "dev" / "attestation" / "keys"
    assert os.listdir(keys) == ["default"]
    assert (keys / "default").read_bytes() == key
    new = os.urandom(16)
    (keys / "mine").write_bytes(new)
    assert (keys / "mine").read_bytes() == new
    assert sorted(os.listdir(keys)) == ["default", "mine"]
    (keys / "default").write_bytes(new)  # keys can be replaced
    assert (keys / "default").read_bytes() == new
    for bad in (b"short", os.urandom(17), b""):
        fd = os.open(keys / "mine", os.O_WRONLY)
        try:
            if bad:
                with pytest.raises(PermissionError):
                    os.write(fd, bad)
        finally:
            os.close(fd)
    assert (keys / "mine").read_bytes() == new
    with pytest.raises(FileNotFoundError):
        (keys / "never_set").read_bytes()
    fd = os.open(keys / "half", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    with pytest.raises(FileNotFoundError):  # created but never written: still not a key
        (keys / "half").read_bytes()
    with pytest.raises(PermissionError):
        (view.mnt / "dev" / "attestation" / "attestation_type").write_bytes(b"dcap")


def test_keys_api_and_bad_insecure_keys(tmp_path: Path) -> None:
    from geode.errors import ManifestError
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS

    manifest: dict[str, Any] = {"fs": {"root": {"uri": f"file:{tmp_path}"},
                                       "insecure__keys": {"k": "00" * 16}},
                                "sgx": {"remote_attestation": "dcap"}}
    from geode.formats.sigstruct import Sigstruct
    from geode.tee import EnclaveIdentity
    from geode.tee.sim import SimBackend

    fs = ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    try:
        assert fs.keys == {"k": bytes(16)}
        assert fs.keys is fs.attestation.keys
        # the attestation type is the backend's, not the manifest's wish
        assert fs.attestation.files["attestation_type"].size() == len(b"none")
    finally:
        fs.close()
    sim = SimBackend(EnclaveIdentity(bytes(32), Sigstruct()))
    fs = ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest, tee=sim)
    try:
        assert fs.attestation.files["attestation_type"].size() == len(b"dcap")
    finally:
        fs.close()
    manifest["fs"]["insecure__keys"] = {"k": "zz" * 16}
    with pytest.raises(ManifestError, match="fs.insecure__keys.k"):
        ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)


# ------------------------------------------------------------------------------------------
# executing programs from the view
# ------------------------------------------------------------------------------------------


def gramine_style(tmp_path: Path, binaries: list[str], **loader: Any) -> dict[str, Any]:
    """/lib is the host's library dir (like Gramine's runtime dir), /bin has the binaries."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    libs = [LIBDIR / "libc.so.6", LIBDIR / "ld-linux-x86-64.so.2"]
    return {"loader": loader,
            "fs": {"root": {"uri": f"file:{root}"},
                   "mounts": [{"path": "/lib", "uri": f"file:{LIBDIR}"},
                              {"path": "/bin", "uri": "file:/usr/bin"}]},
            "sgx": {"trusted_files": [trusted(p) for p in
                                      [*libs, *(Path("/usr/bin") / b for b in binaries)]]}}


def test_lib64_interpreter_link_and_exec_through_chroot(start_view: StartView, tmp_path: Path
                                                        ) -> None:
    view = start_view(gramine_style(tmp_path, ["echo"]))
    link = view.mnt / "lib64" / "ld-linux-x86-64.so.2"
    assert os.readlink(link) == "/lib/ld-linux-x86-64.so.2"
    r = subprocess.run(["chroot", str(view.mnt), "/bin/echo", "hello", "view"],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "hello view\n"), r.stderr
    # a binary that is not trusted cannot be executed
    r = subprocess.run(["chroot", str(view.mnt), "/bin/true"], capture_output=True, text=True)
    assert r.returncode == 126
    assert "Permission denied" in r.stderr
    view.stop()
    assert "refusing to open /bin/true" in view.log_text()


def test_lib64_link_follows_ld_library_path(start_view: StartView, tmp_path: Path) -> None:
    manifest = gramine_style(tmp_path, ["echo"], env={"LD_LIBRARY_PATH": "/nothere:/glibc"})
    manifest["fs"]["mounts"].append({"path": "/glibc", "uri": f"file:{LIBDIR}"})
    view = start_view(manifest)
    assert os.readlink(view.mnt / "lib64" / "ld-linux-x86-64.so.2") == (
        "/glibc/ld-linux-x86-64.so.2")
    manifest = gramine_style(tmp_path, ["echo"])
    manifest["fs"]["mounts"].append({"path": "/lib64", "uri": f"file:{tmp_path}"})
    view = start_view(manifest)
    assert not os.path.lexists(view.mnt / "lib64" / "ld-linux-x86-64.so.2")


def test_tampered_library_stops_the_program(start_view: StartView, tmp_path: Path) -> None:
    libs = tmp_path / "libs"
    shutil.copytree(LIBDIR, libs, ignore=lambda d, names: [
        n for n in names if n not in ("libc.so.6", "ld-linux-x86-64.so.2")])
    manifest = gramine_style(tmp_path, ["echo"])
    manifest["fs"]["mounts"][0]["uri"] = f"file:{libs}"
    manifest["sgx"]["trusted_files"][:2] = [trusted(libs / "libc.so.6"),
                                            trusted(libs / "ld-linux-x86-64.so.2")]
    with open(libs / "libc.so.6", "r+b") as f:
        f.seek(100_000)
        b = f.read(1)
        f.seek(100_000)
        f.write(bytes([b[0] ^ 0xFF]))
    view = start_view(manifest)
    r = subprocess.run(["chroot", str(view.mnt), "/bin/echo", "hi"], capture_output=True,
                       text=True)
    assert r.returncode != 0
    assert r.stdout == ""
    view.stop()
    assert "trusted file /lib/libc.so.6" in view.log_text()


def python_manifest(tmp_path: Path) -> dict[str, Any]:
    """A strict manifest for the host's /usr/bin/python3 with Gramine-style trusted files."""
    entries = []
    for d in ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages",
              "/usr/local/lib/python3.11"):
        for dirpath, dirs, files in os.walk(d):
            dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(dirpath, x))]
            entries += [Path(dirpath) / f for f in files]
    entries += [Path(p) for p in (
        "/usr/bin/python3", "/usr/bin/python3.11", "/etc/ld.so.cache", "/etc/localtime",
        "/usr/lib/locale/C.utf8/LC_CTYPE", "/usr/share/locale/locale.alias",
        "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache", "/lib64/ld-linux-x86-64.so.2")]
    entries += [Path("/lib/x86_64-linux-gnu") / n for n in (
        "libc.so.6", "libm.so.6", "libz.so.1", "libexpat.so.1", "ld-linux-x86-64.so.2")]
    root = tmp_path / "root"
    root.mkdir()
    return {"fs": {"root": {"uri": f"file:{root}"},
                   "mounts": [{"path": p, "uri": f"file:{p}"}
                              for p in ("/usr", "/lib", "/lib64", "/etc")]},
            "sgx": {"trusted_files": [trusted(p) for p in entries if p.is_file()]}}


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3.11"), reason="needs Debian python3.11")
def test_python_runs_in_a_strict_view_with_few_requests(start_view: StartView,
                                                        tmp_path: Path) -> None:
    view = start_view(python_manifest(tmp_path))
    t0 = time.perf_counter()
    r = subprocess.run(["chroot", str(view.mnt), "/usr/bin/python3", "-c",
                        "import json, os; print(json.dumps(sorted(os.listdir('/'))))"],
                       capture_output=True, text=True)
    cold = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["dev", "etc", "lib", "lib64", "proc", "sys", "usr"]
    stats = view.stop()
    print(f"\npython3 cold in the view: {cold * 1000:.0f} ms, {stats['total']} requests, "
          f"{stats['verified_bytes'] / MiB:.1f} MiB verified")
    assert stats["total"] < 400, stats
    assert stats.get("read", 0) < 50, stats  # verified files went to the page cache
    assert "refusing" not in view.log_text()


# ------------------------------------------------------------------------------------------
# serve() in process: ready callback, cancellation unmounts
# ------------------------------------------------------------------------------------------


def test_serve_in_process_ready_and_clean_unmount(tmp_path: Path) -> None:

    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS

    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("data")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    manifest: dict[str, Any] = {"fs": {"root": {"uri": f"file:{root}"}},
                                "sgx": {"trusted_files": [trusted(root / "f")]}}
    fs = ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    with view_served_in_thread(fs, mnt):
        assert is_mounted(mnt)
        assert (mnt / "f").read_text() == "data"
        assert fs.stats["open"] == 1
        assert fs.verified_bytes == 4
    assert not is_mounted(mnt)


@pytest.mark.parametrize("change", [None, "rewritten", "replaced"])
def test_prefetched_entry_point_is_served_only_if_unchanged(tmp_path: Path, change: str | None,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The supervisor hashes the entry point while the sandbox is built; its first open uses
    that result only for the very same, unchanged host file, else it hashes what it opens
    (a file changed in between is refused, never served)."""
    from geode.runtime import viewfs
    from geode.runtime.plan import ViewPlan

    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    app = root / "bin" / "app"
    content = os.urandom(3 << 20)  # big enough for the parallel hashing path
    app.write_bytes(content)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    manifest: dict[str, Any] = {"fs": {"root": {"uri": f"file:{root}"}},
                                "sgx": {"trusted_files": [trusted(app)]}}
    fs = viewfs.ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    fs.prefetch("/bin/app")
    [job] = fs._prefetched.values()
    assert job.done.wait(30) and job.digest == hashlib.sha256(content).hexdigest()
    if change == "rewritten":  # same inode, same size, new bytes
        with open(app, "r+b") as f:
            f.write(b"X" * 16)
    elif change == "replaced":
        (root / "bin" / "new").write_bytes(b"Y" * len(content))
        os.replace(root / "bin" / "new", app)
    hashed = _count_hashing(monkeypatch)
    with view_served_in_thread(fs, mnt):
        if change is None:
            assert (mnt / "bin" / "app").read_bytes() == content
            assert hashed == []  # the prefetched result was used
        else:
            with pytest.raises(PermissionError):
                (mnt / "bin" / "app").read_bytes()
            assert hashed == [len(content)]
        if change != "replaced":  # (the old inode's result is dropped when the view closes)
            assert fs._prefetched == {}
    assert fs._prefetched == {}


LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LD_SO = "/lib64/ld-linux-x86-64.so.2"


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the files the view hashes from now on (appended as it does)."""
    from geode.runtime import viewfs

    hashed: list[int] = []
    real = viewfs._hash_fd
    monkeypatch.setattr(viewfs, "_hash_fd", lambda fd, size, **kw: (hashed.append(size),
                                                                    real(fd, size, **kw))[1])
    return hashed


def _wait_prefetched(fs: Any, root: Path) -> dict[tuple[int, int], Any]:
    """The prefetch's jobs once all are done (those of the libraries are queued before the
    entry point's is hashed)."""
    app = os.stat(root / "bin" / "app")
    assert fs._prefetched[(app.st_dev, app.st_ino)].done.wait(30)
    jobs = dict(fs._prefetched)
    for job in jobs.values():
        assert job.done.wait(30)
    return jobs


def _run_app(fs: Any, tmp_path: Path) -> None:
    """Run the view's /bin/app (chroot into the mounted view); it must succeed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with view_served_in_thread(fs, mnt):
        r = subprocess.run(["chroot", str(mnt), "/bin/app"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def _dynamic_tree(tmp_path: Path) -> tuple[Any, Path, dict[str, str]]:
    """A view whose /bin/app is `true` with its interpreter and C library where ld.so finds
    them, all trusted, and an untrusted C library in /opt: (view, root, files)."""
    from geode.runtime import viewfs
    from geode.runtime.plan import ViewPlan

    root = tmp_path / "root"
    for d in ("bin", "opt", "lib64", "lib/x86_64-linux-gnu"):
        (root / d).mkdir(parents=True)
    files = {"bin/app": "/usr/bin/true", LD_SO[1:]: LD_SO, LIBC[1:]: LIBC,
             "opt/libc.so.6": LIBC}
    for rel, src in files.items():
        shutil.copy(src, root / rel)
    trusted_files = [trusted(root / rel) for rel in files if not rel.startswith("opt/")]
    manifest: dict[str, Any] = {"fs": {"root": {"uri": f"file:{root}"}},
                                "sgx": {"trusted_files": trusted_files}}
    return viewfs.ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest), root, files


def test_prefetch_follows_the_entry_points_libraries(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter and the libraries a dynamically linked entry point needs are hashed
    ahead too, found as ld.so finds them (an untrusted copy earlier in the search path is
    passed over), and the program's opens use those results."""

    fs, root, files = _dynamic_tree(tmp_path)
    fs.prefetch("/bin/app", ["/opt", "relative", "/missing", ""])
    idents = {(os.stat(root / rel).st_dev, os.stat(root / rel).st_ino): rel for rel in files}
    jobs = _wait_prefetched(fs, root)
    assert sorted(idents[k] for k in jobs) == ["bin/app", "lib/x86_64-linux-gnu/libc.so.6",
                                               "lib64/ld-linux-x86-64.so.2"]
    hashed = _count_hashing(monkeypatch)
    _run_app(fs, tmp_path)
    assert hashed == []
    assert fs._prefetched == {}


def test_prefetch_follows_a_library_s_soname_link(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A library found under its soname, a trusted symlink to the file (as Debian installs
    most libraries), is hashed ahead too, and ld.so's open of the link uses that result."""
    from geode.runtime import viewfs
    from geode.runtime.plan import ViewPlan

    root = tmp_path / "root"
    libdir = root / "lib" / "x86_64-linux-gnu"
    for d in (root / "bin", root / "lib64", libdir):
        d.mkdir(parents=True)
    shutil.copy("/usr/bin/true", root / "bin" / "app")
    shutil.copy(LD_SO, root / LD_SO[1:])
    shutil.copy(LIBC, libdir / "libc-2.36.so")
    os.symlink("libc-2.36.so", libdir / "libc.so.6")
    trusted_files = [trusted(p) for p in (root / "bin" / "app", root / LD_SO[1:],
                                          libdir / "libc.so.6")]
    manifest: dict[str, Any] = {"fs": {"root": {"uri": f"file:{root}"}},
                                "sgx": {"trusted_files": trusted_files}}
    fs = viewfs.ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    fs.prefetch("/bin/app")
    target = os.stat(libdir / "libc.so.6")
    app = os.stat(root / "bin" / "app")
    assert fs._prefetched[(app.st_dev, app.st_ino)].done.wait(30)  # (dependencies queued)
    assert fs._prefetched[(target.st_dev, target.st_ino)].done.wait(30)
    assert fs.runtime_libraries("/bin/app") == [LD_SO, LIBC]
    for job in list(fs._prefetched.values()):
        assert job.done.wait(30)
    hashed = _count_hashing(monkeypatch)
    _run_app(fs, tmp_path)
    assert hashed == []


def test_prefetch_leaves_out_what_the_program_reads_elsewhere(tmp_path: Path) -> None:
    """Files PID 1 serves from the sandbox's memory are not hashed ahead for the view."""
    fs, root, files = _dynamic_tree(tmp_path)
    fs.prefetch("/bin/app", ["/opt"], exclude={LIBC})
    idents = {(os.stat(root / rel).st_dev, os.stat(root / rel).st_ino): rel for rel in files}
    app = os.stat(root / "bin" / "app")
    assert fs._prefetched[(app.st_dev, app.st_ino)].done.wait(30)  # (dependencies queued)
    jobs = dict(fs._prefetched)
    for job in jobs.values():
        assert job.done.wait(30)
    assert sorted(idents[k] for k in jobs) == ["bin/app", "lib64/ld-linux-x86-64.so.2"]
    fs.close()


def test_libraries_and_their_verified_copies(tmp_path: Path) -> None:
    """What PID 1 serves from the sandbox's memory: the interpreter and libraries of the
    entry point (not the entry point, not an untrusted copy earlier in the search path, not
    a trusted file that does not match the manifest), as sealed copies of verified bytes."""
    import fcntl

    fs, root, _ = _dynamic_tree(tmp_path)
    libc, ld_so = LIBC, LD_SO
    assert fs.libraries("/bin/app", ["/opt"]) == [ld_so, libc]
    assert fs.runtime_libraries("/bin/app", ["/opt"]) == [ld_so, libc]
    assert fs.runtime_libraries(ld_so) == []  # (ld.so needs nothing; nor is it its own)
    memfd = fs.verified_copy(libc)
    assert memfd is not None
    try:
        assert os.pread(memfd, 64 << 20, 0) == Path(libc).read_bytes()
        seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(PermissionError):
            os.pwrite(memfd, b"x", 0)
    finally:
        os.close(memfd)
    assert fs.verified_copy("/opt/libc.so.6") is None  # not trusted
    assert fs.verified_copy("/bin/missing") is None
    with open(root / libc[1:], "r+b") as f:  # changed since the manifest was made
        f.seek(100)
        f.write(b"\xff")
    assert fs.verified_copy(libc) is None
    fs.close()


def test_runtime_libraries_found_beyond_the_entry_points_own_needs(tmp_path: Path) -> None:
    """An entry point that reaches the C library only through another library (its own
    needs do not name libc.so.6) still gets it: the whole dependency walk is taken then."""
    from geode.runtime import viewfs
    from geode.runtime.plan import ViewPlan

    root = tmp_path / "root"
    libdir = root / "lib" / "x86_64-linux-gnu"
    for d in (root / "bin", root / "lib64", libdir):
        d.mkdir(parents=True)
    app = Path("/usr/bin/true").read_bytes()
    assert app.count(b"libc.so.6\0") == 1
    (root / "bin" / "app").write_bytes(app.replace(b"libc.so.6\0", b"libz.so.1\0"))
    shutil.copy(LD_SO, root / LD_SO[1:])
    shutil.copy(LIBC, root / LIBC[1:])
    shutil.copy("/lib/x86_64-linux-gnu/libz.so.1", libdir / "libz.so.1")  # needs libc.so.6
    trusted_files = [trusted(p) for p in (root / "bin" / "app", root / LD_SO[1:],
                                          root / LIBC[1:], libdir / "libz.so.1")]
    manifest: dict[str, Any] = {"fs": {"root": {"uri": f"file:{root}"}},
                                "sgx": {"trusted_files": trusted_files}}
    fs = viewfs.ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    try:
        assert fs.libraries("/bin/app") == [LD_SO, "/lib/x86_64-linux-gnu/libz.so.1", LIBC]
        assert fs.runtime_libraries("/bin/app") == [LD_SO, LIBC]
    finally:
        fs.close()


def test_a_library_is_hashed_once_by_the_prefetch_or_for_its_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C library is hashed once per start: a copy for PID 1 takes the prefetch's result,
    and the prefetch leaves out a file promoted after it was queued."""
    import fcntl

    fs, root, _ = _dynamic_tree(tmp_path)
    fs.prefetch("/bin/app", ["/opt"])
    _wait_prefetched(fs, root)
    hashed = _count_hashing(monkeypatch)
    memfd = fs.verified_copy(LIBC)
    assert memfd is not None and hashed == []
    try:
        assert os.pread(memfd, 64 << 20, 0) == Path(LIBC).read_bytes()
        assert fcntl.fcntl(memfd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
    finally:
        os.close(memfd)
    fs.close()

    class PromotedMeanwhile(set[str]):
        """Not excluded when the prefetch queues a path, excluded when it comes to it."""

        asked: set[str] = set()

        def __contains__(self, path: object) -> bool:
            if path in self.asked:
                return True
            self.asked.add(str(path))
            return False

    fs, root, _ = _dynamic_tree(tmp_path / "again")
    fs.prefetch("/bin/app", ["/opt"], exclude=PromotedMeanwhile())
    jobs = _wait_prefetched(fs, root)
    libc = os.stat(root / LIBC[1:])
    app = os.stat(root / "bin" / "app")
    assert jobs[(libc.st_dev, libc.st_ino)].blocks is None  # left out: not hashed
    assert jobs[(app.st_dev, app.st_ino)].blocks is not None
    fs.close()


def test_prefetch_follows_gramines_interpreter_link(tmp_path: Path) -> None:
    """With /lib mounted and no /lib64 (Gramine's usual manifest), the interpreter the ELF
    names, /lib64/ld-linux-x86-64.so.2, is the view's symlink into /lib: what it points to
    is queued first, in the order ld.so opens files."""
    from geode.runtime import viewfs
    from geode.runtime.plan import ViewPlan

    root, lib = tmp_path / "root", tmp_path / "lib"
    (root / "bin").mkdir(parents=True)
    lib.mkdir()
    shutil.copy("/usr/bin/true", root / "bin" / "app")
    shutil.copy("/lib64/ld-linux-x86-64.so.2", lib / "ld-linux-x86-64.so.2")
    shutil.copy("/lib/x86_64-linux-gnu/libc.so.6", lib / "libc.so.6")
    files = [root / "bin" / "app", lib / "ld-linux-x86-64.so.2", lib / "libc.so.6"]
    manifest: dict[str, Any] = {
        "loader": {"env": {"LD_LIBRARY_PATH": "/lib"}},
        "fs": {"root": {"uri": f"file:{root}"}, "mounts": [{"path": "/lib", "uri": f"file:{lib}"}]},
        "sgx": {"trusted_files": [trusted(f) for f in files]}}
    fs = viewfs.ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    assert fs.interp_target == "/lib/ld-linux-x86-64.so.2"
    fs.prefetch("/bin/app", ["/lib"])
    app = os.stat(files[0])
    assert fs._prefetched[(app.st_dev, app.st_ino)].done.wait(30)
    order = list(fs._prefetched)
    assert order == [(os.stat(f).st_dev, os.stat(f).st_ino) for f in files]
    for job in fs._prefetched.values():
        assert job.done.wait(30) and job.blocks is not None
    fs.close()


def test_prefetch_skips_what_it_cannot_use(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A script, a static file of junk, an untrusted or missing entry point: nothing is
    queued beyond the entry point itself, nothing fails, and what no open took is dropped."""
    from geode.runtime import viewfs
    from geode.runtime.plan import ViewPlan

    root = tmp_path / "root"
    root.mkdir()
    (root / "script").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "junk").write_bytes(b"\x7fELF\x02\x01" + os.urandom(4000))
    (root / "untrusted").write_bytes(b"x")
    manifest: dict[str, Any] = {"fs": {"root": {"uri": f"file:{root}"}},
                                "sgx": {"trusted_files": [trusted(root / "script"),
                                                          trusted(root / "junk")]}}
    fs = viewfs.ViewFS(ViewPlan.from_manifest(manifest, base_dir=tmp_path), manifest)
    monkeypatch.setattr(viewfs, "PREFETCH_KEEP", 0.5)
    for name in ("script", "junk", "untrusted", "missing"):
        fs.prefetch("/" + name, ["/"])
    for job in list(fs._prefetched.values()):
        assert job.done.wait(30)
    assert len(fs._prefetched) == 2
    # Results nobody opened are dropped after PREFETCH_KEEP.
    deadline = time.monotonic() + 30
    while fs._prefetched and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fs._prefetched == {}
    fs.close()


@pytest.mark.parametrize("stop", ["unmount", "ready-fails"])
def test_serve_stopped_leaves_no_mount(tmp_path: Path, stop: str) -> None:
    from geode.runtime import fuse
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS, serve

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fs = ViewFS(ViewPlan.from_manifest({}, base_dir=tmp_path), {})
    result: list[BaseException | None] = []

    def ready() -> None:
        if stop == "ready-fails":
            raise RuntimeError("launcher failed")
        fuse.unmount(str(mnt))  # as the SIGTERM handler of `python -m geode.runtime.viewfs`

    def thread() -> None:
        try:
            serve(fs, mnt, ready=ready)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - checked below
            result.append(e)

    t = threading.Thread(target=thread, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert not t.is_alive(), "serve() hung when stopped"
    assert not is_mounted(mnt)
    if stop == "ready-fails":
        assert isinstance(result[0], RuntimeError)
    else:
        assert result == [None]


def test_serve_refuses_a_missing_mountpoint(tmp_path: Path) -> None:
    from geode.errors import GeodeError
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS, serve

    fs = ViewFS(ViewPlan.from_manifest({}, base_dir=tmp_path), {})
    with pytest.raises(GeodeError, match="not a directory"):
        serve(fs, tmp_path / "nope")
    fs.close()


@given(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=60),
       st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=20))
def test_listing_cookies_order_and_stability(names: list[str], more: list[str]) -> None:
    """Cookies ascend from 3, one per entry, and a name keeps its cookie when other names
    come and go (barring a 30-bit hash collision, which the sort resolves by bumping)."""
    from geode.runtime.viewfs import _Listing

    listing = _Listing([(n, "host") for n in names])
    assert sorted(n for n, _ in listing.entries) == sorted(names)
    assert all(3 <= a < b for a, b in zip(listing.cookies, listing.cookies[1:], strict=False))
    assert not listing.cookies or listing.cookies[0] >= 3
    cookie = dict(zip((n for n, _ in listing.entries), listing.cookies, strict=True))
    grown = _Listing([(n, "host") for n in dict.fromkeys(names + more)])
    hashes = [3 + (hash(n) & 0x3FFF_FFFF) for n in dict.fromkeys(names + more)]
    if len(set(hashes)) == len(hashes):  # no collision: every old name keeps its cookie
        for n, c in zip((n for n, _ in grown.entries), grown.cookies, strict=True):
            assert cookie.get(n, c) == c


_COMPONENT = st.sampled_from(["a", "b", "ab", "a.b"])
_ABS_PATH = st.lists(_COMPONENT, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(allowed=st.lists(_ABS_PATH, max_size=4), hosts=st.lists(_ABS_PATH, min_size=1))
def test_the_view_allows_exactly_what_the_plan_allows(allowed: list[str],
                                                      hosts: list[str]) -> None:
    """The view's one-call check of allowed paths (on every lookup and listed entry) agrees
    with the plan's rule: an allowed path allows itself and everything below it, "/a" not
    "/ab"."""
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import Policy, ViewFS

    manifest: dict[str, Any] = {"sgx": {"allowed_files": [f"file:{p}" for p in allowed]}}
    plan = ViewPlan.from_manifest(manifest, base_dir="/")
    fs = ViewFS(plan, manifest)
    try:
        for host in hosts:
            assert (fs.classify(host)[0] is Policy.ALLOWED) == plan.is_allowed(host), host
    finally:
        fs.close()


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("blocks", [0, 1, 2, 3, 7])
def test_hash_fd_whole_and_chunked(tmp_path: Path, parallel: bool, blocks: int) -> None:
    """The whole-file digest, chunk table and kept blocks of _hash_fd, with the whole-file
    hash on its own thread or not, for files of 0 to 7 read blocks (and a partial one)."""
    from geode.runtime import viewfs

    size = blocks * viewfs.HASH_BLOCK + (123 if blocks else 0)
    content = os.urandom(size)
    (tmp_path / "f").write_bytes(content)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        digest, table, kept = viewfs._hash_fd(fd, size, keep=True, parallel=parallel)
        with pytest.raises(OSError):  # asked for more than the file holds
            viewfs._hash_fd(fd, size + 1, parallel=parallel)
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(content).hexdigest()
    assert kept is not None and b"".join(kept) == content
    chunks = [content[i:i + viewfs.CHUNK_SIZE] for i in range(0, size, viewfs.CHUNK_SIZE)]
    assert table == b"".join(hashlib.sha256(c).digest()[:viewfs.CHUNK_HASH_SIZE]
                             for c in chunks)
