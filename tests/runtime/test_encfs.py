"""Encrypted mounts on real FUSE mounts (root only): file operations, sharing, mmap, keys,
Gramine compatibility of bound paths, and attacks on files at rest and while open.

Views are served by ``python -m geode.runtime.viewfs`` in a subprocess (as in test_viewfs.py),
so the test process does its I/O through the real kernel FUSE client. Host files are checked
with the protected-file library and ``gramine-sgx-pf-crypt``. Tests that tamper with files at
rest stop the view first, so that nothing of the file is still open or cached.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from geodetest import StartView, View, is_mounted, view_served_in_thread

from geode.errors import GeodeError
from geode.formats.pf import PfError, decrypt_bytes, encrypt_bytes
from geode.formats.pf import layout as L

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="real FUSE mounts need root, /dev/fuse and fusermount3",
)

KEY = bytes(range(16))
OTHER_KEY = bytes(range(100, 116))
NODE = 4096
BIN = Path(sys.executable).parent


def manifest(*mounts: dict[str, Any], key: bytes | None = KEY,
             keys: dict[str, bytes] | None = None) -> dict[str, Any]:
    fs: dict[str, Any] = {"root": {"uri": "file:root"}, "mounts": list(mounts)}
    table = dict(keys or {})
    if key is not None:
        table["default"] = key
    if table:
        fs["insecure__keys"] = {name: value.hex() for name, value in table.items()}
    return {"fs": fs}


def enc(path: str = "/data", uri: str = "file:data", **kw: Any) -> dict[str, Any]:
    return {"type": "encrypted", "path": path, "uri": uri, **kw}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or 0
    return 0


def read_until_error(path: Path, size: int) -> tuple[bytes, int]:
    """Read ``path`` node by node; the bytes read and the errno that stopped it (0: none)."""
    got = bytearray()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return b"", e.errno or 0
    try:
        while len(got) < size + NODE:
            try:
                piece = os.pread(fd, NODE, len(got))
            except OSError as e:
                return bytes(got), e.errno or 0
            if not piece:
                break
            got += piece
    finally:
        os.close(fd)
    return bytes(got), 0


def pf_crypt(*args: str, cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    proc = subprocess.run(["gramine-sgx-pf-crypt", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ------------------------------------------------------------------------------------------
# file operations
# ------------------------------------------------------------------------------------------


def test_file_operations_keep_host_files_encrypted_and_bound(start_view: StartView,
                                                             base: Path) -> None:
    view = start_view(manifest(enc()), base_dir=base)
    d = view.mnt / "data"
    host = base / "data"
    p = d / "a.txt"
    p.write_bytes(b"hello")
    assert p.read_bytes() == b"hello"
    assert p.stat().st_size == 5
    with open(p, "ab") as f:  # O_APPEND
        f.write(b" world")
    expect = b"hello world"
    with open(p, "r+b") as f:  # a write past the end leaves a hole of zeros
        f.seek(10_000)
        piece = os.urandom(500_000)
        f.write(piece)
    expect += bytes(10_000 - len(expect)) + piece
    assert p.read_bytes() == expect and p.stat().st_size == len(expect)
    os.truncate(p, 5000)
    os.truncate(p, 6000)
    expect = expect[:5000] + bytes(1000)
    assert p.read_bytes() == expect and p.stat().st_size == 6000

    # fsync writes the file back while it is open; the host never holds plaintext
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"X", 0)
        os.fsync(fd)
        expect = b"X" + expect[1:]
        raw = (host / "a.txt").read_bytes()
        assert len(raw) % NODE == 0 and b"world" not in raw and expect[:4000] not in raw
        assert decrypt_bytes(raw, key=KEY, path="data/a.txt") == expect
    finally:
        os.close(fd)

    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"short")
    assert p.read_bytes() == b"short"
    expect = b"short"

    # mkdir + rename into it: the bound path is rewritten
    (d / "sub").mkdir()
    os.rename(p, d / "sub" / "b.txt")
    assert not (host / "a.txt").exists()
    assert (d / "sub" / "b.txt").read_bytes() == expect
    raw = (host / "sub" / "b.txt").read_bytes()
    assert decrypt_bytes(raw, key=KEY, path="data/sub/b.txt") == expect
    with pytest.raises(PfError):
        decrypt_bytes(raw, key=KEY, path="data/a.txt")

    # names and directories are plaintext on the host, as in Gramine
    assert sorted(os.listdir(d)) == ["sub"] and sorted(os.listdir(host)) == ["sub"]
    assert os.listdir(d / "sub") == ["b.txt"]

    # rename over an existing file, then unlink
    (d / "c").write_bytes(b"to be replaced")
    os.replace(d / "sub" / "b.txt", d / "c")
    assert (d / "c").read_bytes() == expect
    assert decrypt_bytes((host / "c").read_bytes(), key=KEY, path="data/c") == expect
    (d / "c").chmod(0o640)
    assert stat.S_IMODE((host / "c").stat().st_mode) == 0o640
    os.utime(d / "c", (1_000_000, 2_000_000))
    assert (host / "c").stat().st_mtime == 2_000_000
    os.unlink(d / "c")
    assert not (host / "c").exists()

    # directories: a non-empty one keeps its bindings by refusing to move (mv copies)
    (d / "dir").mkdir()
    (d / "dir" / "f").write_bytes(b"f")
    assert errno_of(lambda: os.rename(d / "dir", d / "dir2")) == errno.EXDEV
    mv = subprocess.run(["mv", str(d / "dir"), str(d / "dir2")], capture_output=True)
    assert mv.returncode == 0, mv.stderr
    assert (d / "dir2" / "f").read_bytes() == b"f"
    os.rename(d / "sub", d / "sub2")  # empty: renamed
    os.rmdir(d / "sub2")

    # no symlinks, hard links or special files in an encrypted mount
    assert errno_of(lambda: os.symlink("x", d / "l")) == errno.EPERM
    assert errno_of(lambda: os.link(d / "dir2" / "f", d / "hard")) == errno.EPERM
    assert errno_of(lambda: os.mkfifo(d / "fifo")) == errno.EPERM
    os.symlink("/etc/passwd", host / "hostlink")
    assert errno_of(lambda: (d / "hostlink").read_bytes()) == errno.EACCES

    # an empty host file is not a protected file (a truncation must not read as empty)
    (host / "empty").write_bytes(b"")
    assert errno_of(lambda: (d / "empty").read_bytes()) == errno.EACCES
    assert "/data/empty" in view.log_text()
    assert KEY.hex() not in view.log_text()
    view.stop()  # mv's copy is written back when its last handle is released, at the latest now
    assert decrypt_bytes((host / "dir2" / "f").read_bytes(), key=KEY, path="data/dir2/f") == \
        b"f"


def test_files_survive_restarts_and_match_gramine_pf_crypt(start_view: StartView,
                                                           base: Path) -> None:
    """Bound paths are the URI path as written + the path in the mount, normalized: files
    encrypted with ``gramine-sgx-pf-crypt encrypt -o <that path>`` open in the mount."""
    (base / "abs").mkdir()
    plain = base / "plain"
    plain.write_bytes(os.urandom(70_000))
    (base / "key").write_bytes(KEY)
    out = pf_crypt("encrypt", "-w", "key", "-i", "plain", "-o", "data/from-host", cwd=base)
    assert '"data/from-host"' in out
    out = pf_crypt("encrypt", "-w", "key", "-i", "plain", "-o", f"{base}/abs/x", cwd=base)
    assert f'"{base}/abs/x"' in out

    m = manifest(enc(), enc("/abs", f"file:{base}/abs"), enc("/dotted", "file:./data/"),
                 enc("/single", "file:data/from-host"))
    view = start_view(m, base_dir=base)
    want = plain.read_bytes()
    assert (view.mnt / "data" / "from-host").read_bytes() == want
    assert (view.mnt / "abs" / "x").read_bytes() == want
    assert (view.mnt / "dotted" / "from-host").read_bytes() == want  # "./data//x" -> data/x
    assert (view.mnt / "single").read_bytes() == want
    assert (view.mnt / "single").stat().st_size == len(want)
    assert (view.mnt / "data" / "from-host").stat().st_size == len(want)
    new = os.urandom(12_345)
    (view.mnt / "data" / "made-inside").write_bytes(new)
    view.stop()

    view = start_view(m, base_dir=base)  # files survive a restart
    assert (view.mnt / "data" / "made-inside").read_bytes() == new
    assert (view.mnt / "dotted" / "made-inside").read_bytes() == new
    view.stop()
    pf_crypt("decrypt", "-V", "-w", "key", "-i", "data/made-inside", "-o", "out", cwd=base)
    assert (base / "out").read_bytes() == new


def test_mmap_through_the_page_cache(start_view: StartView, base: Path) -> None:
    view = start_view(manifest(enc()), base_dir=base)
    p = view.mnt / "data" / "m"
    start = os.urandom(5 * NODE + 100)
    p.write_bytes(start)
    expect = bytearray(start)
    with open(p, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)  # MAP_SHARED, writable
        try:
            assert mm[:] == start
            mm[5000:5005] = b"abcde"
            mm[-3:] = b"end"
            mm.flush()
        finally:
            mm.close()
    expect[5000:5005] = b"abcde"
    expect[-3:] = b"end"
    # another process sees the mapped writes through read()
    seen = subprocess.run([sys.executable, "-c", f"import sys; sys.stdout.buffer.write("
                           f"open({str(p)!r}, 'rb').read())"], capture_output=True, check=True)
    assert seen.stdout == bytes(expect)
    with open(p, "rb") as f:  # a read-only private mapping of what was written with write()
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            assert mm[:] == bytes(expect)
        finally:
            mm.close()
    view.stop()
    raw = (base / "data" / "m").read_bytes()
    assert decrypt_bytes(raw, key=KEY, path="data/m") == bytes(expect)


WRITER = textwrap.dedent("""
    import os, sys
    path, me, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    fd = os.open(path, os.O_RDWR)
    for r in range(rounds):
        for block in range(me, 256, n):
            os.pwrite(fd, bytes([me + 1]) * 4096, block * 4096)
        # read what the others wrote so far: every block holds only its owner's bytes or
        # the initial zeros (a read racing a write of the same page may see both: the page
        # cache does not make them atomic, natively either; the final check is exact)
        data = os.pread(fd, 256 * 4096, 0)
        for block in range(256):
            piece = data[block * 4096:(block + 1) * 4096]
            assert set(piece) <= {0, block % n + 1}, (block, set(piece))
    os.fsync(fd)
    os.close(fd)
    with open(path + ".log", "a") as log:
        for i in range(50):
            log.write(f"writer {me} line {i}\\n")
""")


def test_processes_share_one_protected_file(start_view: StartView, base: Path) -> None:
    view = start_view(manifest(enc()), base_dir=base)
    p = view.mnt / "data" / "shared"
    p.write_bytes(bytes(256 * NODE))
    (view.mnt / "data" / "shared.log").write_bytes(b"")
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(p), str(i), str(n), "5"],
                              stderr=subprocess.PIPE) for i in range(n)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    data = p.read_bytes()
    assert data == b"".join(bytes([b % n + 1]) * NODE for b in range(256))
    lines = (view.mnt / "data" / "shared.log").read_text().splitlines()
    assert len(lines) == n * 50 and len(set(lines)) == n * 50  # O_APPEND from 4 processes
    view.stop()
    raw = (base / "data" / "shared").read_bytes()
    assert decrypt_bytes(raw, key=KEY, path="data/shared") == data


# ------------------------------------------------------------------------------------------
# keys
# ------------------------------------------------------------------------------------------


def test_missing_key_is_eacces_until_the_program_writes_it(start_view: StartView,
                                                           base: Path) -> None:
    (base / "data" / "f").write_bytes(encrypt_bytes(b"secret", key=KEY, path="data/f"))
    view = start_view(manifest(enc(key_name="mine"), key=None), base_dir=base)
    f = view.mnt / "data" / "f"
    assert os.listdir(view.mnt / "data") == ["f"]  # names stay visible
    assert f.stat().st_size == 0  # size unknown without the key
    assert errno_of(f.read_bytes) == errno.EACCES
    assert errno_of(lambda: (view.mnt / "data" / "new").write_bytes(b"x")) == errno.EACCES
    assert not (base / "data" / "new").exists()
    log = view.log_text()
    assert "key 'mine' is not set" in log and "/data" in log
    (view.mnt / "dev" / "attestation" / "keys" / "mine").write_bytes(KEY)
    assert f.stat().st_size == 6  # (a new inode: the write-back cache keeps an inode's size)
    assert f.read_bytes() == b"secret"
    (view.mnt / "data" / "new").write_bytes(b"x")
    assert (view.mnt / "data" / "new").read_bytes() == b"x"


def test_encrypted_mount_is_served_on_its_own_write_back_connection(start_view: StartView,
                                                                   base: Path) -> None:
    view = start_view(manifest(enc()), base_dir=base)
    mounts = {line.split()[4]: line.split(" - ")[1].split()[0]
              for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    assert mounts[str(view.mnt)] == mounts[str(view.mnt / "data")] == "fuse.geode"
    lines = [b"line %04d\n" % i for i in range(2000)]
    with open(view.mnt / "data" / "log", "wb", buffering=0) as f:
        for i, line in enumerate(lines):
            assert f.write(line) == len(line)
            if i % 40 == 0:
                os.fsync(f.fileno())  # (as a database does at every commit)
        assert os.fstat(f.fileno()).st_size == 20000  # the kernel's size, before write-back
        os.fsync(f.fileno())
    assert (view.mnt / "data" / "log").read_bytes() == b"".join(lines)
    # times in whole seconds (the connection's granularity), so 51 fsyncs flushed them
    # only when a second had passed, not at every fsync
    st = (view.mnt / "data" / "log").stat()
    assert st.st_mtime_ns % 10**9 == 0 and st.st_ctime_ns % 10**9 == 0
    # the host file is a protected file with that content (read without the view's caches)
    assert b"line" not in (base / "data" / "log").read_bytes()
    assert decrypt_bytes((base / "data" / "log").read_bytes(), key=KEY,
                         path="data/log") == b"".join(lines)
    stats = view.stop()
    assert 0 < stats["write"] < 150, stats  # 2000 write() calls merged by the kernel
    assert stats["fsync"] == 51 and stats.get("setattr", 0) <= 10, stats


def test_encrypted_files_have_no_set_id_bits_and_chown_needs_no_getattr(
        start_view: StartView, base: Path) -> None:
    """The view never shows or sets set-id bits on encrypted files, so an encrypted mount's
    own connection tells the kernel it clears them itself: a chown (sqlite chowns every
    journal it creates, as root) is then one SETATTR, without a GETATTR before it."""
    view = start_view(manifest(enc()), base_dir=base)
    f = view.mnt / "data" / "journal"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, b"page") == 4
        for _ in range(20):
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o6755)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o755
        os.fsync(fd)
    finally:
        os.close(fd)
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    assert not (base / "data" / "journal").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    # set on the host, they stay invisible in the view
    os.chmod(base / "data" / "journal", 0o6644)
    assert stat.S_IMODE((view.mnt / "data" / "journal").stat().st_mode) & 0o6000 == 0
    assert f.read_bytes() == b"page"
    stats = view.stop()
    assert stats.get("getattr", 0) < 5, stats
    assert stats.get("setattr", 0) >= 21, stats


def test_which_encrypted_mounts_get_a_connection_of_their_own(base: Path) -> None:
    """Only an encrypted mount of a host directory with no other mount below it: the others
    stay on the root connection (a file cannot be a FUSE root here, and a nested mount would
    be served with write-back caching it must not have)."""
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS

    for d in ("own", "outer", "inner"):
        (base / d).mkdir()
    (base / "single").write_bytes(encrypt_bytes(b"x", key=KEY, path="single"))
    m = manifest(enc("/own", "file:own"), enc("/outer", "file:outer"),
                 {"path": "/outer/inner", "uri": "file:inner"},
                 enc("/single", "file:single"), enc("/missing", "file:missing"))
    fs = ViewFS(ViewPlan.from_manifest(m, base_dir=base), m)
    try:
        assert [mount.path for mount in fs.own_connections] == ["/own"]
        assert fs.connection_root("/") == 1
        assert fs.connection_root("/own") != 1
        with pytest.raises(GeodeError):
            fs.connection_root("/outer")
    finally:
        fs.close()


def test_wrong_key_is_eacces_and_names_the_file(start_view: StartView, base: Path) -> None:
    (base / "data" / "f").write_bytes(encrypt_bytes(b"secret", key=KEY, path="data/f"))
    view = start_view(manifest(enc(), key=OTHER_KEY), base_dir=base)
    f = view.mnt / "data" / "f"
    assert errno_of(f.read_bytes) == errno.EACCES
    assert errno_of(lambda: f.write_bytes(b"overwrite")) == errno.EACCES
    log = view.log_text()
    assert "/data/f" in log and "wrong-key" in log
    assert OTHER_KEY.hex() not in log and "secret" not in log
    assert decrypt_bytes((base / "data" / "f").read_bytes(), key=KEY, path="data/f") == \
        b"secret"


def test_sealing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """_sgx_mrenclave / _sgx_mrsigner come from the TEE backend: read-only key files, usable
    as mount keys; a backend that cannot derive them stops the start-up."""

    from geode.errors import GeodeError
    from geode.formats.sigstruct import Sigstruct
    from geode.runtime.plan import ViewPlan
    from geode.runtime.viewfs import ViewFS
    from geode.tee import EnclaveIdentity, TeeBackend
    from geode.tee.sim import SimBackend

    monkeypatch.setenv("GEODE_PKGLIBDIR", str(tmp_path / "pkglib"))
    (tmp_path / "root").mkdir()
    (tmp_path / "sealed").mkdir()
    m = manifest(enc("/sealed", "file:sealed", key_name="_sgx_mrenclave"), key=None)
    plan = ViewPlan.from_manifest(m, base_dir=tmp_path)
    with pytest.raises(GeodeError) as e:
        ViewFS(plan, m, tee=TeeBackend(EnclaveIdentity(bytes(32))))
    assert "fs.mounts[0].key_name" in str(e.value) and "_sgx_mrenclave" in str(e.value)
    assert "/sealed" in str(e.value)
    m2 = manifest(enc("/x", "file:sealed", key_name="_other"), key=None)
    with pytest.raises(GeodeError, match="unknown special key _other"):
        ViewFS(ViewPlan.from_manifest(m2, base_dir=tmp_path), m2)

    sim = SimBackend(EnclaveIdentity(os.urandom(32), Sigstruct()))
    fs = ViewFS(plan, m, tee=sim)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with view_served_in_thread(fs, mnt):
        keys = mnt / "dev" / "attestation" / "keys"
        assert sorted(os.listdir(keys)) == ["_sgx_mrenclave", "_sgx_mrsigner"]
        seal = (keys / "_sgx_mrenclave").read_bytes()
        assert seal == sim.seal_key("_sgx_mrenclave") and len(seal) == 16
        assert stat.S_IMODE((keys / "_sgx_mrsigner").stat().st_mode) == 0o400
        assert errno_of(lambda: (keys / "_sgx_mrenclave").write_bytes(bytes(16))) == \
            errno.EACCES
        (mnt / "sealed" / "s").write_bytes(b"sealed data")
        assert (mnt / "sealed" / "s").read_bytes() == b"sealed data"
    assert not is_mounted(mnt)
    raw = (tmp_path / "sealed" / "s").read_bytes()  # written back when the view closed
    assert decrypt_bytes(raw, key=seal, path="sealed/s") == b"sealed data"


# ------------------------------------------------------------------------------------------
# attacks: files at rest
# ------------------------------------------------------------------------------------------

#: 100 data nodes + the metadata's 3 KiB: a second MHT node (physical 98) and nodes after it
SIZE = L.MD_DATA_SIZE + 100 * NODE - 1000
PHYSICAL = L.physical_node_count(SIZE)


@pytest.fixture(scope="module")
def pristine() -> tuple[bytes, bytes]:
    """(plaintext, protected file bound to data/f): as written by the library."""
    plain = os.urandom(SIZE)
    raw = encrypt_bytes(plain, key=KEY, path="data/f")
    assert len(raw) == PHYSICAL * NODE == 103 * NODE  # meta, root, 96 data, MHT, 4 data
    return plain, raw


def attack(start_view: StartView, base: Path, raw: bytes, plain: bytes, *,
           name: str = "f", errnos: tuple[int, ...] = (errno.EACCES, errno.EIO)) -> View:
    """Serve ``raw`` at data/<name>; the program must get an error and never wrong bytes."""
    (base / "data" / name).write_bytes(raw)
    view = start_view(manifest(enc()), base_dir=base)
    got, err = read_until_error(view.mnt / "data" / name, len(plain))
    assert err in errnos, f"read {len(got)} bytes, errno {err}"
    assert got == plain[:len(got)], "wrong plaintext returned"
    log = view.log_text()
    assert f"/data/{name}" in log
    assert KEY.hex() not in log
    return view


# (physical node, byte offset in it); the metadata node's header, MAC, nonce, flags and
# encrypted part, the root MHT node, data nodes of both groups, the second MHT node, the last
# node. (The metadata node's zero padding after byte 3943 is not authenticated in Gramine's
# format either: flipping it changes no plaintext.)
FLIPS = [(0, 0), (0, 9 - 1), (0, 20), (0, 50), (0, 58), (0, 59), (0, 700), (0, 800),
         (0, 3900), (1, 0), (1, 4095), (2, 0), (2, 2048), (50, 17), (97, 4095), (98, 100),
         (99, 0), (PHYSICAL - 1, 123)]


@pytest.mark.parametrize(("node", "offset"), FLIPS)
def test_flipped_bit_in_any_node(start_view: StartView, base: Path,
                                 pristine: tuple[bytes, bytes], node: int, offset: int) -> None:
    plain, raw = pristine
    bad = bytearray(raw)
    bad[node * NODE + offset] ^= 0x04
    attack(start_view, base, bytes(bad), plain)


@pytest.mark.parametrize(("a", "b"), [(2, 3), (2, 99), (1, 98), (97, 98)])
def test_swapped_nodes(start_view: StartView, base: Path, pristine: tuple[bytes, bytes],
                       a: int, b: int) -> None:
    plain, raw = pristine
    nodes = [raw[i * NODE:(i + 1) * NODE] for i in range(PHYSICAL)]
    nodes[a], nodes[b] = nodes[b], nodes[a]
    attack(start_view, base, b"".join(nodes), plain)


@pytest.mark.parametrize("cut", [0, NODE, 10, (PHYSICAL - 1) * NODE, 5 * NODE])
def test_truncated_file(start_view: StartView, base: Path, pristine: tuple[bytes, bytes],
                        cut: int) -> None:
    plain, raw = pristine
    view = attack(start_view, base, raw[:cut], plain)
    assert "/data/f" in view.log_text()


@pytest.mark.parametrize("extra", [NODE, 1, 7 * NODE])
def test_extended_file(start_view: StartView, base: Path, pristine: tuple[bytes, bytes],
                       extra: int) -> None:
    plain, raw = pristine
    attack(start_view, base, raw + bytes(extra), plain)


def test_file_copied_to_another_path(start_view: StartView, base: Path,
                                     pristine: tuple[bytes, bytes]) -> None:
    plain, raw = pristine
    (base / "data" / "sub").mkdir()
    (base / "data" / "sub" / "f").write_bytes(raw)  # same name, other directory
    view = attack(start_view, base, raw, plain, name="g")
    assert "path-mismatch" in view.log_text()
    got, err = read_until_error(view.mnt / "data" / "sub" / "f", SIZE)
    assert (got, err) == (b"", errno.EACCES)


# ------------------------------------------------------------------------------------------
# attack: rollback while the file is open
# ------------------------------------------------------------------------------------------


def test_rollback_to_an_older_copy_while_open(start_view: StartView, base: Path) -> None:
    m = manifest(enc())
    size = 8 << 20
    v1 = os.urandom(size)
    view = start_view(m, base_dir=base)
    (view.mnt / "data" / "f").write_bytes(v1)
    view.stop()
    old = (base / "data" / "f").read_bytes()

    v2 = os.urandom(size)
    view = start_view(m, base_dir=base)
    (view.mnt / "data" / "f").write_bytes(v2)
    view.stop()

    view = start_view(m, base_dir=base)
    fd = os.open(view.mnt / "data" / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, NODE, 0) == v2[:NODE]
        with open(base / "data" / "f", "r+b") as host:  # the host rolls the file back in place
            host.write(old)
        # regions not read yet come from the host: refused, never v1's bytes
        for offset in (6 << 20, 3 << 20, size - NODE):
            try:
                got = os.pread(fd, NODE, offset)
            except OSError as e:
                assert e.errno in (errno.EACCES, errno.EIO)
            else:
                raise AssertionError(f"read {len(got)} bytes after a rollback: "
                                     f"{'v1' if got == v1[offset:offset + NODE] else 'other'}")
        # what was read before is still the authentic v2 (served from the page cache or
        # refused), never v1
        try:
            assert os.pread(fd, NODE, 0) == v2[:NODE]
        except OSError as e:
            assert e.errno in (errno.EACCES, errno.EIO)
    finally:
        os.close(fd)
    log = view.log_text()
    assert "/data/f" in log and "corrupt" in log
    view.stop()
    # As in Gramine, a rollback while the file is *closed* is not detected (the format keeps
    # no version outside the file): documented limitation.
    view = start_view(m, base_dir=base)
    assert (view.mnt / "data" / "f").read_bytes() == v1


def test_rename_exchange_and_recovery_files_follow(start_view: StartView, base: Path) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange = 2

    def exchange(a: Path, b: Path) -> None:
        if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), rename_exchange) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    view = start_view(manifest(enc(enable_recovery=True)), base_dir=base)
    d, host = view.mnt / "data", base / "data"
    (d / "a").write_bytes(b"A" * 10_000)
    (d / "b").write_bytes(b"B" * 5_000)
    assert sorted(os.listdir(d)) == ["a", "b"]  # recovery journals are hidden...
    with open(d / "a", "r+b") as fa, open(d / "b", "r+b") as fb:
        fa.write(b"a")
        fa.flush()
        os.fsync(fa.fileno())
        fb.write(b"b")
        fb.flush()
        os.fsync(fb.fileno())
        # ...but exist on the host while the files are open (Gramine's names)
        assert {"a.gramine.recovery", "b.gramine.recovery"} <= set(os.listdir(host))
        a_rec = os.stat(host / "a.gramine.recovery").st_ino
        exchange(d / "a", d / "b")
        assert os.stat(host / "b.gramine.recovery").st_ino == a_rec  # followed its file
        os.rename(d / "b", d / "c")
        assert os.stat(host / "c.gramine.recovery").st_ino == a_rec
        fa.write(b"more")  # the open handle writes to the renamed file (at position 1)
    assert (d / "c").read_bytes() == b"amore" + b"A" * 9_995
    assert (d / "a").read_bytes() == b"b" + b"B" * 4_999
    view.stop()  # every file written back and closed
    assert sorted(os.listdir(host)) == ["a", "c"]  # journals removed at the clean close
    assert decrypt_bytes((host / "c").read_bytes(), key=KEY, path="data/c") == \
        b"amore" + b"A" * 9_995
    assert decrypt_bytes((host / "a").read_bytes(), key=KEY, path="data/a") == \
        b"b" + b"B" * 4_999
