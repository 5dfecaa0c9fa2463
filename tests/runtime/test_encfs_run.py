"""Encrypted mounts end to end: a real ``geode run`` killed with SIGKILL in the middle of a
write-back, with and without ``enable_recovery``.

The program (Debian's python3 in the shield) overwrites an 8 MiB encrypted file again and
again, generation after generation, with a recognisable pattern, calling fsync every 2 MiB.
The test watches the host file and kills the supervisor exactly while a write-back is half
done: it freezes it with SIGSTOP when it sees the half-done state, checks that the state is
still there, then sends SIGKILL (a real kill -9; nothing is simulated). A later run reads the
file back:

* with recovery, the pending-write flag is set at the kill; the next open replays the journal
  and the file holds what the last complete write-back left: generation g up to some byte and
  generation g-1 after it (the program's writes are sequential), never anything else;
* without recovery (or with recovery but its journal missing), the program gets EACCES and the
  log names the file: never wrong plaintext.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from geodetest import run

from geode.formats.pf import layout as L

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or not os.path.exists("/proc/self/ns/user")
    or not os.path.exists("/usr/bin/python3"),
    reason="needs FUSE, user namespaces and Debian's python3",
)

NODES = 2048  # 8 MiB of 4 KiB program blocks
KEY = bytes(range(16))

PROGRAM = """
import json, os, struct, sys

def block(gen, i):
    return struct.pack("<QQ", gen, i) * 256

mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "init":
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.pwrite(fd, b"".join(block(0, i) for i in range(n)), 0)
    os.fsync(fd)
    os.close(fd)
elif mode == "write":
    fd = os.open(path, os.O_RDWR)
    gen = 0
    while True:
        gen += 1
        for i in range(0, n, 64):
            os.pwrite(fd, b"".join(block(gen, j) for j in range(i, min(i + 64, n))), i * 4096)
            if (i + 64) % 512 == 0:
                os.fsync(fd)  # every 2 MiB (a write-back; the view caches up to 16 MiB)
        print(gen, flush=True)
elif mode == "read":
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        sys.stdout.write(json.dumps({"errno": e.errno}))
    else:
        sys.stdout.buffer.write(data)
"""

TEMPLATE = """
libos.entrypoint = "/usr/bin/python3"
loader.log_level = "error"
loader.insecure__use_cmdline_argv = true
loader.env.PATH = "/usr/bin:/bin"
fs.mounts = [
  { path = "/usr", uri = "file:/usr" },
  { path = "/lib", uri = "file:/lib" },
  { path = "/lib64", uri = "file:/lib64" },
  { path = "/etc", uri = "file:/etc" },
  { path = "/app", uri = "file:app" },
  { type = "encrypted", path = "/data", uri = "file:data", enable_recovery = {{ recovery }} },
  { type = "tmpfs", path = "/tmp" },
]
fs.insecure__keys.default = "KEY_HEX"
sgx.file_check_policy = "allow_all_but_log"
sgx.enclave_size = "4G"
sgx.max_threads = 64
""".replace("KEY_HEX", KEY.hex())


def block(gen: int, i: int) -> bytes:
    return struct.pack("<QQ", gen, i) * 256


def generation(gen: int) -> bytes:
    return b"".join(block(gen, i) for i in range(NODES))


def shape(data: bytes) -> tuple[int, int]:
    """(g, c) such that ``data`` is generation g up to byte c and generation g-1 after it
    (c = len for a whole generation); AssertionError for anything else."""
    assert len(data) == NODES * 4096, f"size {len(data)}"
    g = struct.unpack_from("<Q", data)[0]
    new = generation(g)
    if data == new:
        return g, len(data)
    c = next(i for i in range(len(data)) if data[i] != new[i])
    assert g >= 1 and data[c:] == generation(g - 1)[c:], "neither old nor new content"
    return g, c


class App:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.dir = workdir
        self.env = env
        (workdir / "app").mkdir()
        (workdir / "data").mkdir()
        (workdir / "app" / "prog.py").write_text(PROGRAM)
        (workdir / "app.manifest.template").write_text(TEMPLATE)
        self.host = workdir / "data" / "f"
        self.recovery = workdir / "data" / "f.gramine.recovery"

    def render(self, recovery: bool) -> None:
        run(["gramine-manifest", f"-Drecovery={'true' if recovery else 'false'}",
             "app.manifest.template", "app.manifest"], self.env, cwd=self.dir)

    def args(self, mode: str) -> list[str]:
        return ["geode", "run", "--manifest", "app.manifest", "app", "/app/prog.py", mode,
                "/data/f", str(NODES)]

    def read(self) -> tuple[bytes | int, str]:
        """The file's content as the program reads it, or the errno it got; and the log."""
        proc = subprocess.run(self.args("read"), cwd=self.dir, env=self.env,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        out = proc.stdout
        if out.startswith(b"{"):
            return int(json.loads(out)["errno"]), proc.stderr.decode()
        return out, proc.stderr.decode()

    def kill_mid_writeback(self, torn: bool) -> int:
        """Start the writer and SIGKILL it inside a write-back; return its last generation.

        ``torn``: wait for the root MHT node to change while the metadata node has not
        (nothing marks a write-back without recovery); else wait for the pending-write flag.
        """
        errors = self.dir / "writer.log"
        proc = subprocess.Popen(self.args("write"), cwd=self.dir, env=self.env,
                                stdout=subprocess.PIPE, stderr=errors.open("wb"))
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().strip()
            assert first == b"1", errors.read_text()  # one generation written
            fd = os.open(self.host, os.O_RDONLY)
            try:
                deadline = time.monotonic() + 60
                prev = os.pread(fd, 2 * L.NODE_SIZE, 0)
                while time.monotonic() < deadline:
                    cur = os.pread(fd, 2 * L.NODE_SIZE, 0)
                    if torn:
                        hit = cur[:L.NODE_SIZE] == prev[:L.NODE_SIZE] and \
                            cur[L.NODE_SIZE:] != prev[L.NODE_SIZE:]
                    else:
                        hit = bool(cur[L.OFF_FLAGS] & L.FLAG_PENDING_WRITE)
                    if hit:
                        proc.send_signal(signal.SIGSTOP)  # freeze it, then make sure
                        time.sleep(0.05)
                        now = os.pread(fd, 2 * L.NODE_SIZE, 0)
                        still = now[:L.NODE_SIZE] == cur[:L.NODE_SIZE] if torn else \
                            bool(now[L.OFF_FLAGS] & L.FLAG_PENDING_WRITE)
                        if still:
                            proc.send_signal(signal.SIGKILL)
                            proc.wait(30)
                            break
                        proc.send_signal(signal.SIGCONT)
                        cur = now
                    prev = cur
                else:
                    raise AssertionError("never saw a write-back in progress")
            finally:
                os.close(fd)
            rest = proc.stdout.read().split()
            return int(rest[-1]) if rest else 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def app(tmp_path: Path, geode_env: dict[str, str]) -> App:
    return App(tmp_path, geode_env)


def test_recovery_after_kill_9_mid_write(app: App) -> None:
    app.render(recovery=True)
    run(app.args("init"), app.env, cwd=app.dir)
    assert not app.recovery.exists()  # removed after a clean close
    last = app.kill_mid_writeback(torn=False)
    raw = app.host.read_bytes()
    assert raw[L.OFF_FLAGS] & L.FLAG_PENDING_WRITE and app.recovery.stat().st_size > 0
    crashed = (raw, app.recovery.read_bytes())

    # Without the journal the interrupted file is reported, never read.
    app.render(recovery=False)
    got, log = app.read()
    assert got == errno.EACCES
    assert "/data/f" in log and "recovery-needed" in log
    app.recovery.unlink()
    app.render(recovery=True)
    got, log = app.read()
    assert got == errno.EACCES and "/data/f" in log

    # With it, the next open replays the journal: the last complete write-back's state.
    app.host.write_bytes(crashed[0])
    app.recovery.write_bytes(crashed[1])
    got, log = app.read()
    assert isinstance(got, bytes), log
    g, cut = shape(got)
    assert 1 <= g <= last + 1 and (g, cut) != (0, len(got))
    assert not app.host.read_bytes()[L.OFF_FLAGS] & L.FLAG_PENDING_WRITE
    assert not app.recovery.exists()
    again, _ = app.read()
    assert again == got


def test_without_recovery_a_torn_write_back_is_reported(app: App) -> None:
    app.render(recovery=False)
    run(app.args("init"), app.env, cwd=app.dir)
    app.kill_mid_writeback(torn=True)
    assert not app.recovery.exists()
    got, log = app.read()
    assert got == errno.EACCES, "a torn file was read"
    assert "/data/f" in log and ("corrupt" in log or "does not authenticate" in log)
    assert KEY.hex() not in log
    # the file stays refused (nothing "repairs" it silently)
    got, _ = app.read()
    assert got == errno.EACCES


def test_random_kills_never_yield_wrong_plaintext(app: App, tmp_path: Path) -> None:
    """Kills at arbitrary moments: every reopen is a consistent state or an error."""
    app.render(recovery=False)
    run(app.args("init"), app.env, cwd=app.dir)
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen(app.args("write"), cwd=app.dir, env=app.env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stdout.readline()
        time.sleep(delay)
        proc.kill()
        proc.wait()
        got, log = app.read()
        if isinstance(got, int):
            assert got in (errno.EACCES, errno.EIO) and "/data/f" in log
            shutil.copy(app.host, tmp_path / f"torn-{delay}")
            app.host.unlink()  # start over
            run(app.args("init"), app.env, cwd=app.dir)
        else:
            shape(got)


# ------------------------------------------------------------------------------------------
# sealing keys end to end
# ------------------------------------------------------------------------------------------

SEAL_PROGRAM = """
import os, sys
mode, path = sys.argv[1], sys.argv[2]
try:
    if mode == "write":
        with open(path, "wb") as f:
            f.write(b"sealed by " + os.environ["WHO"].encode())
    else:
        sys.stdout.write(open(path, "rb").read().decode())
except OSError as e:
    sys.stdout.write(f"errno {e.errno}")
"""

SEAL_TEMPLATE = """
libos.entrypoint = "/usr/bin/python3"
loader.log_level = "error"
loader.insecure__use_cmdline_argv = true
loader.env.WHO = "{{ who }}"
fs.mounts = [
  { path = "/usr", uri = "file:/usr" },
  { path = "/lib", uri = "file:/lib" },
  { path = "/lib64", uri = "file:/lib64" },
  { path = "/etc", uri = "file:/etc" },
  { path = "/app", uri = "file:app" },
  { type = "encrypted", path = "/enclave", uri = "file:enclave", key_name = "_sgx_mrenclave" },
  { type = "encrypted", path = "/signer", uri = "file:signer", key_name = "_sgx_mrsigner" },
]
sgx.file_check_policy = "allow_all_but_log"
sgx.enclave_size = "4G"
sgx.max_threads = 64
"""


def test_sealing_key_mounts_with_the_sim_tee(tmp_path: Path, geode_env: dict[str, str]) -> None:
    for d in ("app", "enclave", "signer"):
        (tmp_path / d).mkdir()
    (tmp_path / "app" / "prog.py").write_text(SEAL_PROGRAM)
    (tmp_path / "app.manifest.template").write_text(SEAL_TEMPLATE)

    def build(who: str) -> None:
        run(["gramine-manifest", f"-Dwho={who}", "app.manifest.template", "app.manifest"],
            geode_env, cwd=tmp_path)
        run(["gramine-sgx-sign", "--manifest", "app.manifest", "--output",
             "app.manifest.sgx"], geode_env, cwd=tmp_path)

    def shield(*args: str, tee: str = "sim") -> subprocess.CompletedProcess[str]:
        return subprocess.run(["geode", "run", "--tee", tee, "app", "/app/prog.py", *args],
                              cwd=tmp_path, env=geode_env, capture_output=True, text=True,
                              timeout=120)

    build("a")
    # the none backend cannot seal: the start-up fails, naming the mount and the key
    proc = shield("read", "/enclave/f", tee="none")
    assert proc.returncode != 0 and proc.stdout == ""
    assert "fs.mounts[5].key_name" in proc.stderr and "_sgx_mrenclave" in proc.stderr
    assert "Traceback" not in proc.stderr

    for mount in ("/enclave", "/signer"):
        assert shield("write", f"{mount}/f").returncode == 0
        assert shield("read", f"{mount}/f").stdout == "sealed by a"
    raw = (tmp_path / "enclave" / "f").read_bytes()
    assert b"sealed by" not in raw and len(raw) == 4096

    # another build of the same signer: a new MRENCLAVE, the same MRSIGNER
    build("b")
    assert shield("read", "/signer/f").stdout == "sealed by a"
    assert shield("read", "/enclave/f").stdout == f"errno {errno.EACCES}"


# ------------------------------------------------------------------------------------------
# the encrypted mounts' own FUSE connections, through the sandbox
# ------------------------------------------------------------------------------------------

CONNECTION_PROGRAM = """
import json, os
out = {}
mounts = {l.split()[4]: l.split(" - ")[1].split()[0] for l in open("/proc/self/mountinfo")}
out["mounts"] = {p: mounts.get(p) for p in ("/", "/data", "/tmp", "/tmp/enc")}
out["before"] = os.stat("/data/f").st_size
with open("/dev/attestation/keys/mine", "wb") as f:
    f.write(bytes(range(16)))
out["after"] = os.stat("/data/f").st_size
out["read"] = open("/data/f").read()
with open("/tmp/enc/log", "wb", buffering=0) as f:
    for i in range(1000):
        f.write(b"%04d\\n" % i)
with open("/tmp/enc/log", "rb") as f:
    out["log"] = len(f.read())
os.rename("/tmp/enc/log", "/tmp/enc/log2")
out["listing"] = sorted(os.listdir("/tmp/enc"))
print(json.dumps(out))
"""

CONNECTION_TEMPLATE = """
libos.entrypoint = "/usr/bin/python3"
loader.log_level = "error"
loader.argv = ["python3", "/app/prog.py"]
fs.mounts = [
  { path = "/usr", uri = "file:/usr" },
  { path = "/lib", uri = "file:/lib" },
  { path = "/lib64", uri = "file:/lib64" },
  { path = "/app", uri = "file:app" },
  { type = "encrypted", path = "/data", uri = "file:data", key_name = "mine" },
  { type = "tmpfs", path = "/tmp" },
  { type = "encrypted", path = "/tmp/enc", uri = "file:enc" },
]
fs.insecure__keys.default = "KEY_HEX"
sgx.file_check_policy = "allow_all_but_log"
""".replace("KEY_HEX", KEY.hex())


def test_encrypted_mounts_get_connections_of_their_own(tmp_path: Path,
                                                       geode_env: dict[str, str]) -> None:
    """Each encrypted mount is a FUSE mount of its own in the sandbox (also below a tmpfs),
    and the write-back caching it gets keeps sizes right: a file stat'ed before its key
    arrived shows its real size afterwards."""
    from geode.formats.pf import decrypt_bytes, encrypt_bytes

    for d in ("app", "data", "enc"):
        (tmp_path / d).mkdir()
    (tmp_path / "app" / "prog.py").write_text(CONNECTION_PROGRAM)
    (tmp_path / "data" / "f").write_bytes(encrypt_bytes(b"secret", key=KEY, path="data/f"))
    (tmp_path / "app.manifest.template").write_text(CONNECTION_TEMPLATE)
    run(["gramine-manifest", "app.manifest.template", "app.manifest"], geode_env, cwd=tmp_path)
    proc = subprocess.run(["geode", "run", "app"], cwd=tmp_path, env=geode_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mounts"] == {"/": "fuse.geode", "/data": "fuse.geode", "/tmp": "tmpfs",
                             "/tmp/enc": "fuse.geode"}
    assert (out["before"], out["after"], out["read"]) == (0, 6, "secret")
    assert out["log"] == 5000 and out["listing"] == ["log2"]
    content = b"".join(b"%04d\n" % i for i in range(1000))
    assert decrypt_bytes((tmp_path / "enc" / "log2").read_bytes(), key=KEY,
                         path="enc/log2") == content
