"""End to end: real Debian programs run by ``run()`` in real namespaces over the real FUSE view.

Most tests call :func:`geode.runtime.supervisor.run` in the test process (the program's output
goes to the test's file descriptors, captured with ``capfd``). Tests that signal or kill the
supervisor run it in a child Python process. Tests "as an ordinary user" fork, drop to uid
65534 and call ``run()`` there.

Manifests here mount the host's system directories with ``allow_all_but_log`` (the file policy
itself is tested in test_viewfs.py); the strict-policy tests pin what they execute by hash.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geode.errors import GeodeError
from geode.runtime import sandbox
from geode.runtime.supervisor import run

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or not os.path.exists("/proc/self/ns/user"),
    reason="needs FUSE and user namespaces",
)

SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
OVERFLOW_ID = 65534


def base_manifest(argv: list[str], **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "libos": {"entrypoint": argv[0]},
        "loader": {"argv": argv, "log_level": "error",
                   "env": {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}},
        "fs": {"mounts": [{"path": p, "uri": f"file:{p}"} for p in SYSTEM]
               + [{"type": "tmpfs", "path": "/tmp"}]},
        "sgx": {"file_check_policy": "allow_all_but_log", "enclave_size": "4G",
                "max_threads": 64},
    }
    for section, table in extra.items():
        for key, value in table.items():
            if isinstance(value, dict) and isinstance(m.get(section, {}).get(key), dict):
                m[section][key].update(value)
            else:
                m.setdefault(section, {})[key] = value
    return m


def sh(script: str, **extra: Any) -> dict[str, Any]:
    return base_manifest(["/bin/sh", "-c", script], **extra)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """run() configures the "geode" logger; leave it as we found it."""
    saved = {}
    for name in ("geode",):
        lg = logging.getLogger(name)
        saved[name] = (list(lg.handlers), list(lg.filters), lg.level, lg.propagate)
    yield
    for name, (handlers, filters, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.filters[:] = filters
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """A world-readable directory (the manifest's directory, hence the view's fs.root)."""
    d = Path(tempfile.mkdtemp(prefix="geode-sandbox-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def go(m: dict[str, Any], app_dir: Path, host_args: list[str] | None = None) -> int:
    return run(m, manifest_path=app_dir / "app.manifest", host_args=host_args or [])


def go_ahead(m: dict[str, Any], app_dir: Path) -> int:
    """As a start command does: the sandbox forked before the manifest is looked at."""
    with sandbox.Sandbox.ahead() as early:
        early.advance()
        return run(m, manifest_path=app_dir / "app.manifest", host_args=[], sandbox=early)


# -------------------------------------------------------------------------------- basics


def test_true_exits_zero(app_dir: Path) -> None:
    assert go(base_manifest(["/bin/true"]), app_dir) == 0


def test_exit_status_is_propagated(app_dir: Path) -> None:
    assert go(sh("exit 7"), app_dir) == 7
    assert go(base_manifest(["/bin/false"]), app_dir) == 1


def test_death_by_signal_is_128_plus_signal(app_dir: Path) -> None:
    assert go(sh("kill -9 $$"), app_dir) == 137
    assert go(sh("kill -SEGV $$"), app_dir) == 128 + signal.SIGSEGV


def test_bash_pipeline_with_fork_and_exec(app_dir: Path, capfd: pytest.CaptureFixture[str]
                                          ) -> None:
    script = ("for i in 3 1 2; do echo $i; done | sort -n | tr '\\n' ' '; echo; "
              "x=$(echo sub | cat); echo \"[$x]\"; (exit 4); echo \"status $?\"")
    assert go(base_manifest(["/bin/bash", "-c", script]), app_dir) == 0
    out = capfd.readouterr().out
    assert "1 2 3 \n[sub]\nstatus 4\n" in out


def test_python_threads_fork_subprocess(app_dir: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    code = textwrap.dedent("""
        import os, subprocess, threading
        seen = []
        ts = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print("threads", sorted(seen) == list(range(8)))
        pid = os.fork()
        if pid == 0:
            os._exit(5)
        print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        p = subprocess.run(["/bin/sh", "-c", "echo $((6*7))"], capture_output=True, text=True)
        print("subprocess", p.stdout.strip())
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 9"], {})  # vfork-style spawn
        print("spawn", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        r, w = os.pipe()
        if os.fork() == 0:
            os.write(w, b"through a pipe"); os._exit(0)
        os.close(w); print(os.read(r, 100).decode()); os.wait()
    """)
    assert go(base_manifest(["/usr/bin/python3", "-c", code]), app_dir) == 0
    out = capfd.readouterr().out.splitlines()
    assert out == ["threads True", "fork 5", "subprocess 42", "spawn 9", "through a pipe"]


def test_shebang_script(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    script = app_dir / "hello.sh"
    script.write_text("#!/bin/sh\necho \"hello from $0 $1\"\n")
    script.chmod(0o755)
    assert go(base_manifest(["/hello.sh", "arg"]), app_dir) == 0
    assert capfd.readouterr().out == "hello from /hello.sh arg\n"


def test_signals_and_wait_inside(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    script = ("trap 'echo usr1' USR1; sleep 5 & p=$!; kill -USR1 $$; kill -TERM $p; "
              "wait $p; echo \"child $?\"")
    assert go(base_manifest(["/bin/bash", "-c", script]), app_dir) == 0
    assert capfd.readouterr().out == "usr1\nchild 143\n"


def test_sysv_and_posix_ipc_work_and_are_private(app_dir: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    host = subprocess.run(["ipcmk", "-Q"], capture_output=True, text=True, check=True)
    host_qid = host.stdout.split()[-1]
    try:
        code = textwrap.dedent("""
            import multiprocessing as mp, subprocess
            from multiprocessing import shared_memory
            print(subprocess.run(["ipcs", "-q"], capture_output=True, text=True).stdout.count("0x"))
            subprocess.run(["ipcmk", "-Q"], check=True, capture_output=True)
            subprocess.run(["ipcmk", "-M", "4096"], check=True, capture_output=True)
            subprocess.run(["ipcmk", "-S", "2"], check=True, capture_output=True)
            out = subprocess.run(["ipcs"], capture_output=True, text=True).stdout
            print(out.count("0x"))
            shm = shared_memory.SharedMemory(create=True, size=64)
            def child(name):
                s = shared_memory.SharedMemory(name=name); s.buf[0] = 99; s.close()
            p = mp.get_context("fork").Process(target=child, args=(shm.name,)); p.start(); p.join()
            print("shm", shm.buf[0]); shm.close(); shm.unlink()
            sem = mp.get_context("fork").Semaphore(0)
            p = mp.get_context("fork").Process(target=sem.release); p.start(); p.join()
            print("sem", sem.acquire(timeout=5))
            import ctypes, os
            rt = ctypes.CDLL("librt.so.1", use_errno=True)
            q = rt.mq_open(b"/geode-test", os.O_CREAT | os.O_RDWR, 0o600, None)
            if os.fork() == 0:
                rt.mq_send(q, b"via mqueue", 10, 0); os._exit(0)
            os.wait()
            buf = ctypes.create_string_buffer(8192)
            n = rt.mq_receive(q, buf, 8192, None)
            print(buf.raw[:n].decode()); rt.mq_unlink(b"/geode-test")
        """)
        assert go(base_manifest(["/usr/bin/python3", "-c", code]), app_dir) == 0
        assert capfd.readouterr().out.splitlines() == ["0", "3", "shm 99", "sem True",
                                                       "via mqueue"]
    finally:
        subprocess.run(["ipcrm", "-q", host_qid], check=False)
    # and nothing the sandbox created leaked into the host's IPC namespace
    host_ipcs = subprocess.run(["ipcs"], capture_output=True, text=True).stdout
    assert host_qid not in host_ipcs.split()


def test_pid_one_reaps_orphans(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    script = ("sh -c 'sleep 0.2 & sleep 0.1 &'; sleep 0.8; "
              "ps -eo stat= | grep -c '^Z' || true; ps -o pid=,comm= -p 1")
    assert go(sh(script), app_dir) == 0
    out = capfd.readouterr().out.split()
    assert out == ["0", "1", "geode-init"]


def test_leftover_processes_die_with_the_program(app_dir: Path) -> None:
    token = str(900000 + os.getpid() % 90000)
    t = time.monotonic()
    assert go(sh(f"sleep {token} & exit 3"), app_dir) == 3
    assert time.monotonic() - t < 20
    assert not processes_with(token)


# -------------------------------------------------------------------------------- the view


def test_only_the_view_is_visible(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    secret_dir = Path(tempfile.mkdtemp(prefix="geode-secret-"))
    (secret_dir / "secret").write_text("host secret")
    (app_dir / "in-view").write_text("visible")
    try:
        script = (f"cat /in-view; echo; ls {secret_dir} 2>/dev/null || echo no-secret; "
                  "ls /root /work /home 2>/dev/null || echo no-host-dirs; "
                  "ls /tmp | wc -l; ls /proc | grep -c '^[0-9]'; "
                  "cat /proc/1/cmdline | tr '\\0' '\\n' | head -1; "
                  "ls /proc/self/fd | tr '\\n' ' '; echo; hostname; "
                  "cat /proc/self/mountinfo | awk '{print $5}' | grep -c '^/$'")
        assert go(sh(script), app_dir) == 0
        out = capfd.readouterr().out.splitlines()
        assert out[0] == "visible"
        assert out[1] == "no-secret"
        assert out[2] == "no-host-dirs"
        assert out[3] == "0"  # /tmp is the sandbox's own tmpfs
        assert int(out[4]) <= 6  # only the sandbox's processes
        assert out[5] == "geode-init"  # PID 1 does not show the supervisor's command line
        assert out[6].split() == ["0", "1", "2", "3"]  # stdio only (3 is ls's own dir)
        assert out[7] == "localhost"
        assert out[8] == "1"  # one root, the view; the host's is detached
    finally:
        shutil.rmtree(secret_dir)


def test_start_dir_and_relative_entrypoint(app_dir: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    sub = app_dir / "srv"
    sub.mkdir()
    (sub / "run.sh").write_text("#!/bin/sh\npwd\n")
    (sub / "run.sh").chmod(0o755)
    m = base_manifest(["run.sh"], fs={"start_dir": "/srv"})
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out == "/srv\n"


def test_argv_and_environment(app_dir: Path, capfd: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_HOST_SECRET", "do-not-leak")
    monkeypatch.setenv("GEODE_PASSED", "passed-through")
    m = base_manifest(["/usr/bin/env"], loader={"env": {"A": "1", "B": {"value": "two"},
                                                       "GEODE_PASSED": {"passthrough": True}}})
    assert go(m, app_dir) == 0
    env = dict(line.split("=", 1) for line in capfd.readouterr().out.splitlines())
    assert env == {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "A": "1", "B": "two",
                   "GEODE_PASSED": "passed-through"}

    m = base_manifest(["/bin/echo"], loader={"insecure__use_cmdline_argv": True})
    del m["loader"]["argv"]
    assert go(m, app_dir, host_args=["x", "y z"]) == 0
    assert capfd.readouterr().out == "x y z\n"

    m = base_manifest(["/bin/echo"])
    del m["loader"]["argv"]
    with pytest.raises(GeodeError) as e:
        go(m, app_dir, host_args=["x"])
    assert "loader.argv" in str(e.value)


def test_missing_entrypoint_is_a_clear_error(app_dir: Path) -> None:
    with pytest.raises(GeodeError) as e:
        go(base_manifest(["/usr/bin/no-such-program"]), app_dir)
    msg = str(e.value)
    assert "libos.entrypoint" in msg and "/usr/bin/no-such-program" in msg
    assert "\n" not in msg


def test_bad_start_dir_is_a_clear_error(app_dir: Path) -> None:
    with pytest.raises(GeodeError) as e:
        go(base_manifest(["/bin/true"], fs={"start_dir": "/nowhere"}), app_dir)
    assert "fs.start_dir" in str(e.value)


def sha256_file(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def strict_manifest(app_sha: str) -> dict[str, Any]:
    interp = "/lib64/ld-linux-x86-64.so.2"
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    return {
        "libos": {"entrypoint": "/app"},
        "loader": {"log_level": "none"},
        "fs": {"mounts": [{"path": "/lib", "uri": "file:/lib"},
                          {"path": "/lib64", "uri": "file:/lib64"}]},
        "sgx": {"file_check_policy": "strict", "trusted_files": [
            {"uri": "file:app", "sha256": app_sha},
            {"uri": f"file:{interp}", "sha256": sha256_file(interp)},
            {"uri": f"file:{libc}", "sha256": sha256_file(libc)},
        ]},
    }


def test_strict_policy_trusted_entrypoint_runs_and_tampered_one_does_not(app_dir: Path
                                                                         ) -> None:
    shutil.copy("/usr/bin/true", app_dir / "app")
    good = sha256_file(str(app_dir / "app"))
    assert go(strict_manifest(good), app_dir) == 0
    with pytest.raises(GeodeError) as e:
        go(strict_manifest("0" * 64), app_dir)
    assert "libos.entrypoint" in str(e.value) and "Permission denied" in str(e.value)


# -------------------------------------------------------------------------------- confinement


def test_escape_attempts_fail(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = textwrap.dedent("""
        import ctypes, errno, os, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        def err(rc):
            return "ok" if rc == 0 else errno.errorcode[ctypes.get_errno()]
        print("mount", err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
        print("umount", err(libc.umount2(b"/proc", 2)))
        print("chroot", err(libc.chroot(b"/tmp")))
        print("pivot_root", err(libc.syscall(155, b"/tmp", b"/tmp")))
        print("unshare", err(libc.unshare(0x10000000)))
        print("ptrace", err(libc.ptrace(16, 1, 0, 0)))
        for path in ("/proc/1/mem", "/proc/1/root/.", "/proc/1/environ"):
            try:
                os.listdir(path) if path.endswith("/.") else open(path, "rb").read(1)
                print(path, "ok")
            except OSError as e:
                print(path, errno.errorcode[e.errno])
        # writing a global sysctl (its own current value: harmless were it to succeed)
        try:
            v = open("/proc/sys/kernel/core_pattern").read()
            open("/proc/sys/kernel/core_pattern", "w").write(v)
            print("sysctl ok")
        except OSError as e:
            print("sysctl", errno.errorcode[e.errno])
        r = subprocess.run(["mount", "-t", "tmpfs", "x", "/mnt"], capture_output=True)
        print("mount-tool", r.returncode != 0)
        r = subprocess.run(["unshare", "-r", "true"], capture_output=True)
        print("unshare-tool", r.returncode != 0)
        print("uid", os.getuid())
    """)
    assert go(base_manifest(["/usr/bin/python3", "-c", code]), app_dir) == 0
    res = dict(line.split() for line in capfd.readouterr().out.splitlines())
    for name in ("mount", "umount", "chroot", "pivot_root", "unshare", "ptrace"):
        assert res[name] == "EPERM", (name, res)
    for path in ("/proc/1/mem", "/proc/1/root/.", "/proc/1/environ"):
        assert res[path] in ("EACCES", "EPERM"), (path, res)
    assert res["sysctl"] in ("EACCES", "EPERM", "EROFS")
    assert res["mount-tool"] == res["unshare-tool"] == "True"
    assert res["uid"] == "0"  # root in its own namespace, and still confined


def test_uid_gid_and_no_capabilities(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    m = sh("id -u; id -g; grep -E '^Cap(Eff|Prm):' /proc/self/status | awk '{print $2}'",
           loader={"uid": 1000, "gid": 1001})
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out.split() == ["1000", "1001", "0000000000000000",
                                              "0000000000000000"]


def test_limits(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    m = sh("ulimit -s; ulimit -n; ulimit -v; ulimit -Hc; ulimit -s 2048 || echo fixed",
           sys={"stack": {"size": "1M"}, "fds": {"limit": 321}}, sgx={"enclave_size": "512M"})
    assert go(m, app_dir) == 0
    out = capfd.readouterr().out.split()
    # stack, files, address space; core dumps off; limits cannot be raised from inside
    assert out == ["1024", "321", str(512 * 1024), "0", "fixed"]


def test_disable_aslr(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert go(sh("cat /proc/self/personality"), app_dir) == 0
    m = sh("cat /proc/self/personality", loader={"insecure__disable_aslr": True})
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out.split() == ["00000000", "00040000"]


def test_enclave_size_bounds_each_process(app_dir: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    code = ("try:\n    b = bytearray(400 << 20); print('allocated')\n"
            "except MemoryError:\n    print('MemoryError')")
    m = base_manifest(["/usr/bin/python3", "-c", code], sgx={"enclave_size": "256M"})
    assert go(m, app_dir) == 0
    m = base_manifest(["/usr/bin/python3", "-c", code], sgx={"enclave_size": "1G"})
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out.split() == ["MemoryError", "allocated"]


def test_max_threads_bounds_tasks(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = textwrap.dedent("""
        import threading
        stop = threading.Event(); n = 0
        try:
            for _ in range(100):
                threading.Thread(target=stop.wait).start(); n += 1
        except RuntimeError:
            pass
        stop.set(); print(n)
    """)
    m = base_manifest(["/usr/bin/python3", "-c", code], sgx={"max_threads": 6},
                      sys={"disallow_subprocesses": True})
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out.split() == ["5"]  # the main thread is the sixth
    # A multi-process program is not bounded (Gramine's budget is per process).
    m = base_manifest(["/usr/bin/python3", "-c", code], sgx={"max_threads": 6})
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out.split() == ["100"]


def test_disallow_subprocesses(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = textwrap.dedent("""
        import errno, os, threading
        try:
            os.fork(); print("forked")
        except OSError as e:
            print(errno.errorcode[e.errno])
        t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
    """)
    m = base_manifest(["/usr/bin/python3", "-c", code], sys={"disallow_subprocesses": True})
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out.split() == ["EAGAIN", "thread"]


# -------------------------------------------------------------------------------- signals/teardown


RUNNER = """
import json, sys
from pathlib import Path
from geode.runtime.supervisor import run
m = json.loads(Path(sys.argv[1]).read_text())
sys.exit(run(m, manifest_path=Path(sys.argv[1]), host_args=[]))
"""


def processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def wait_for_process(token: str, timeout: float = 10) -> int:
    """The pid of a process whose command line contains ``token``, once one is seen. (A
    single look can miss it: the command line reads empty while the process execs.)"""
    deadline = time.monotonic() + timeout
    while not (found := processes_with(token)):
        assert time.monotonic() < deadline, f"no process with {token!r} appeared"
        time.sleep(0.02)
    return found[0]


def mount_namespaces_alive(inode: str) -> list[int]:
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == inode:
                    alive.append(int(entry))
            except OSError:
                pass
    return alive


def start_runner(m: dict[str, Any], app_dir: Path) -> subprocess.Popen[str]:
    (app_dir / "runner.py").write_text(RUNNER)
    (app_dir / "app.manifest.json").write_text(json.dumps(m))
    return subprocess.Popen([sys.executable, str(app_dir / "runner.py"),
                             str(app_dir / "app.manifest.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the program did not start"
    return proc.stdout.readline().strip()


def wait_gone(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while (left := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_view_readahead_is_raised(app_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("tuning the FUSE connection's readahead needs root")
    token = str(500000 + os.getpid() % 90000)
    proc = start_runner(sh(f"echo up; exec sleep {token}"), app_dir)
    try:
        assert read_line(proc) == "up"
        pid = wait_for_process(token)
        root = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                if line.split()[4] == "/"]
        assert root and root[0][root[0].index("-") + 1] == "fuse.geode"
        bdi = Path(f"/sys/class/bdi/{root[0][2]}/read_ahead_kb")
        assert wait_gone(lambda: bdi.read_text().strip() != "1024") is False
    finally:
        proc.kill()
        proc.wait()


def test_supervisor_sigkill_leaves_no_process_and_no_mount(app_dir: Path) -> None:
    token = str(800000 + os.getpid() % 90000)
    proc = start_runner(sh(f"echo $$; exec sleep {token}"), app_dir)
    try:
        assert read_line(proc) == "2"  # the program is PID 2, after geode-init
        mnt_ns = os.readlink(f"/proc/{wait_for_process(token)}/ns/mnt")
        assert mnt_ns != os.readlink("/proc/self/ns/mnt")
        assert mount_namespaces_alive(mnt_ns)
        proc.kill()
        proc.wait(timeout=10)
        assert not wait_gone(lambda: processes_with(token))
        assert not wait_gone(lambda: mount_namespaces_alive(mnt_ns))
    finally:
        proc.kill()
        proc.wait()


def test_supervisor_without_stdin_does_not_leak_a_descriptor(app_dir: Path) -> None:
    (app_dir / "runner.py").write_text(RUNNER)
    (app_dir / "app.manifest.json").write_text(
        json.dumps(sh("readlink /proc/self/fd/0; ls /proc/self/fd | wc -l")))
    proc = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" "$1" "$2" <&-', sys.executable,
         str(app_dir / "runner.py"), str(app_dir / "app.manifest.json")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["/dev/null", "4"]  # 0, 1, 2 and ls's own


@pytest.mark.parametrize("injection", [True, False])
def test_sigterm(app_dir: Path, injection: bool) -> None:
    script = ("trap 'echo got-term; exit 42' TERM; echo ready; "
              "while :; do sleep 0.05; done")
    m = sh(script, sys={"enable_sigterm_injection": injection})
    proc = start_runner(m, app_dir)
    try:
        assert read_line(proc) == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    if injection:
        assert proc.returncode == 42, err
        assert out == "got-term\n"
    else:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert out == ""


def test_sigint_tears_everything_down(app_dir: Path) -> None:
    token = str(700000 + os.getpid() % 90000)
    proc = start_runner(sh(f"echo go; sleep {token}; echo not-reached"), app_dir)
    try:
        assert read_line(proc) == "go"
        assert not wait_gone(lambda: not processes_with(token))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGINT
        assert "not-reached" not in out
        assert not wait_gone(lambda: processes_with(token))
    finally:
        proc.kill()


# -------------------------------------------------------------------------------- forked ahead


@pytest.mark.parametrize("how", [go, go_ahead])
def test_the_configuration_reaches_pid_1_whole(app_dir: Path, how: Any,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """PID 1 receives the configuration as a message: an environment bigger than any
    single message, non-ASCII arguments and limits all arrive intact, forked ahead or not."""
    big = {f"BIG{i}": str(i) * (100 * 1024) for i in range(5)}  # (one string: 128 KiB at most)
    script = 'echo "${#BIG0} ${#BIG4} ${BIG4:0:3} $1"; ulimit -s'
    m = base_manifest(["/bin/bash", "-c", script, "sh", "été ✓"], loader={"env": big},
                      sys={"stack": {"size": "3M"}})
    assert how(m, app_dir) == 0
    size = 100 * 1024
    assert capfd.readouterr().out.split("\n")[:2] == [f"{size} {size} 444 été ✓", "3072"]

def test_the_interpreter_and_c_library_are_served_from_memory(
        app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A dynamically linked entry point's ELF interpreter and C library are read-only copies
    of their verified bytes, bound over their paths: the program sees the same content,
    cannot write or unmount them, and cannot reach where PID 1 made them."""
    ld_so = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    script = (f"grep -c ' - tmpfs ' /proc/self/mountinfo; sha256sum {libc} | cut -c1-64; "
              f"cat /proc/self/mountinfo | awk '{{print $5}}' | grep -x {libc}; "
              f"(echo x >> {libc}) 2>&1 | grep -c 'Read-only'; "
              f"umount {libc} 2>/dev/null; echo umount $?; "
              f"ls /tmp | wc -l")
    m = base_manifest(["/bin/bash", "-c", script],
                      sgx={"trusted_files": [{"uri": f"file:{p}", "sha256": _sha(p)}
                                             for p in ("/bin/bash", ld_so, libc)]})
    assert go(m, app_dir) == 0
    tmpfs, digest, bound, readonly, umount, in_tmp = capfd.readouterr().out.split("\n")[:6]
    assert int(tmpfs) >= 3  # /tmp, /dev/shm, and the copies
    assert digest == _sha(libc)
    assert bound == libc and readonly == "1"
    assert umount != "umount 0"
    assert in_tmp == "0"


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_config_round_trip() -> None:
    from geode.runtime.process import Limits, ProcessSpec

    spec = ProcessSpec(path="/bin/sh", argv=("sh", "-c", "é"), env={"A": "1", "É": "ü"},
                       uid=5, gid=6, start_dir="/w",
                       limits=Limits(stack=1 << 20, nofile=77, address_space=None, tasks=9),
                       disallow_subprocesses=True, sigterm_injection=True, disable_aslr=True,
                       hostname="h")
    cfg = sandbox.SandboxConfig(
        spec=spec, ids=sandbox.id_mapping(5, 6),
        mounts=(sandbox.KernelMount("tmpfs", "/tmp"), sandbox.KernelMount("fuse", "/e", "w")),
        rlimits=((1, 2), (3, 4)), promote=True)
    import marshal

    back = sandbox._config_from(marshal.loads(marshal.dumps(sandbox._config_plain(cfg))))
    assert back == cfg
    assert type(back.spec.limits) is Limits and type(back.mounts[1]) is sandbox.KernelMount


def test_a_sandbox_discarded_before_its_start_leaves_nothing() -> None:
    """A start command forks the helpers before it reads the manifest; when the manifest
    is refused they are killed and reaped: C, and PID 1 that was waiting for its
    configuration."""
    early = sandbox.Sandbox.ahead()
    deadline = time.monotonic() + 10
    while early.init_pid is None and not early.errors:
        assert time.monotonic() < deadline, "PID 1 was not reported"
        early.advance()
        time.sleep(0.005)
    pids = [early.pid, early.init_pid]
    assert all(os.path.exists(f"/proc/{p}") for p in pids)
    titles = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] for p in pids}
    assert titles == {b"geode-sandbox", b"geode-init"}
    early.discard()
    assert early.ctl is None and early.pidfd is None and early.init_pidfd is None
    assert not wait_gone(lambda: [p for p in pids if os.path.exists(f"/proc/{p}")])


@pytest.mark.parametrize("when", ["before-ids", "waiting-for-config"])
def test_a_supervisor_killed_before_the_start_leaves_nothing(when: str) -> None:
    """The supervisor dies (SIGKILL) while its helpers wait: for their id maps, or, PID 1,
    for the configuration. They go too (end of the control socket, parent-death signals)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the supervisor
        try:
            os.close(r)
            early = sandbox.Sandbox()
            early.fork(None if when == "before-ids" else sandbox.early_id_mapping())
            pids = [early.pid]
            if when == "waiting-for-config":
                while early.init_pid is None and not early.errors:
                    early.advance()
                    time.sleep(0.005)
                pids.append(early.init_pid)
            os.write(w, json.dumps(pids).encode())
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        assert ready
        helpers = json.loads(os.read(r, 1000))
        assert len(helpers) == (1 if when == "before-ids" else 2) and all(helpers)
        assert all(os.path.exists(f"/proc/{p}") for p in helpers)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)

    def alive() -> list[int]:
        return [p for p in helpers if os.path.exists(f"/proc/{p}")
                and Path(f"/proc/{p}/cmdline").read_bytes()]  # (a zombie has none)

    assert not wait_gone(alive)


def test_a_sandbox_that_fails_to_fork_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the supervisor cannot finish forking C (here: no descriptor left for its pidfd),
    C is killed and reaped before the error propagates."""
    import errno

    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    def no_pidfd(pid: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(sandbox.os, "fork", fork)
    monkeypatch.setattr(sandbox.os, "pidfd_open", no_pidfd)
    with pytest.raises(OSError):
        sandbox.Sandbox.ahead()
    assert len(forked) == 1
    assert not os.path.exists(f"/proc/{forked[0]}")


# -------------------------------------------------------------------------------- ordinary user


@pytest.fixture
def fuse_for_everyone() -> Iterator[None]:
    """Debian's udev makes /dev/fuse 0666; some minimal machines leave it 0600. Make it 0666
    for the duration of the test (root only) and restore it."""
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if mode & 0o006 == 0o006:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("/dev/fuse is not usable by ordinary users here")
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


def _preload_run_path() -> None:
    """Import, as root, what run() imports lazily: this test's Python may live where the
    ordinary user cannot read it (e.g. under /root), as a real user's Python would not."""
    import geode.formats.pf  # noqa: F401  (encrypted mounts)
    import geode.manifest.build  # noqa: F401
    import geode.measurement  # noqa: F401
    import geode.runtime.encfs  # noqa: F401
    import geode.runtime.provision  # noqa: F401
    import geode.runtime.viewfs  # noqa: F401
    import geode.tee  # noqa: F401


def run_as(uid: int, m: dict[str, Any], app_dir: Path, how: Any = go) -> dict[str, Any]:
    """Fork, become ``uid`` for good (no capabilities left) and call run() there (through
    ``how``)."""
    _preload_run_path()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        result: dict[str, Any]
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            # a login of this user would be dumpable; setresuid from root cleared it
            ctypes.CDLL(None).prctl(sandbox.PR_SET_DUMPABLE, 1, 0, 0, 0)
            os.chdir("/")
            result = {"rc": how(m, app_dir)}
        except BaseException as e:  # report everything to the parent
            result = {"error": str(e), "type": type(e).__name__}
        finally:
            os.write(w, json.dumps(result).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return dict(json.loads(data))


unprivileged = pytest.mark.skipif(
    os.geteuid() != 0 or (Path("/proc/sys/user/max_user_namespaces").exists()
                          and Path("/proc/sys/user/max_user_namespaces").read_text().strip()
                          == "0"),
    reason="needs root to become an ordinary user, and user namespaces",
)


@unprivileged
@pytest.mark.parametrize("how", [go, go_ahead])
def test_ordinary_user(app_dir: Path, fuse_for_everyone: None,
                       capfd: pytest.CaptureFixture[str], how: Any) -> None:
    """(Forked ahead, an ordinary user's sandbox gets its id maps only with the
    configuration: they depend on the program's ids.)"""
    script = ("id -u; cat /proc/self/uid_map; echo data > /tmp/f; cat /tmp/f; "
              "python3 -c 'import threading, subprocess; "
              "print(subprocess.run([\"echo\", \"sub\"], capture_output=True, text=True).stdout)'"
              "; exit 6")
    res = run_as(OVERFLOW_ID, sh(script), app_dir, how)
    assert res == {"rc": 6}
    out = capfd.readouterr().out.split()
    assert out == ["0", "0", str(OVERFLOW_ID), "1", "data", "sub"]

    # another in-namespace id: the single id an ordinary user can map is then that one
    m = sh("id -u; id -g; grep '^CapEff' /proc/self/status | awk '{print $2}'",
           loader={"uid": 1000, "gid": 1000})
    assert run_as(OVERFLOW_ID, m, app_dir, how) == {"rc": 0}
    assert capfd.readouterr().out.split() == ["1000", "1000", "0000000000000000"]


@unprivileged
def test_ordinary_user_encrypted_mount(app_dir: Path, fuse_for_everyone: None,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    """An ordinary user's sandbox also gets the encrypted mount's own FUSE connection (a
    second FUSE mount inside the user namespace), with write-back caching."""
    from geode.formats.pf import decrypt_bytes

    enc = app_dir / "enc"
    enc.mkdir()
    os.chown(enc, OVERFLOW_ID, OVERFLOW_ID)
    key = bytes(range(16))
    m = sh("awk '$5 == \"/enc\"' /proc/self/mountinfo | grep -c ' - fuse.geode '; "
           "for i in 1 2 3 4 5; do echo line $i >> /enc/f; done; sync; cat /enc/f | wc -l",
           fs={"mounts": base_manifest(["/bin/true"])["fs"]["mounts"]
               + [{"type": "encrypted", "path": "/enc", "uri": "file:enc"}],
               "insecure__keys": {"default": key.hex()}})
    assert run_as(OVERFLOW_ID, m, app_dir) == {"rc": 0}
    assert capfd.readouterr().out.split() == ["1", "5"]
    data = decrypt_bytes((enc / "f").read_bytes(), key=key, path="enc/f")
    assert data == b"".join(b"line %d\n" % i for i in range(1, 6))


@unprivileged
def test_ordinary_user_killed_supervisor_leaves_nothing(app_dir: Path,
                                                        fuse_for_everyone: None) -> None:
    token = str(600000 + os.getpid() % 90000)
    _preload_run_path()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the supervisor, as an ordinary user, with its stdout on the pipe
        try:
            os.close(r)
            os.dup2(w, 1)
            os.setgroups([])
            os.setresgid(OVERFLOW_ID, OVERFLOW_ID, OVERFLOW_ID)
            os.setresuid(OVERFLOW_ID, OVERFLOW_ID, OVERFLOW_ID)
            ctypes.CDLL(None).prctl(sandbox.PR_SET_DUMPABLE, 1, 0, 0, 0)
            os.chdir("/")
            go(sh(f"echo up; exec sleep {token}"), app_dir)
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        assert ready and os.read(r, 100) == b"up\n"
        owner = os.stat(f"/proc/{wait_for_process(token)}").st_uid
        assert owner == OVERFLOW_ID  # really an ordinary user's sandbox
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert not wait_gone(lambda: processes_with(token))
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


@unprivileged
def test_missing_fuse_is_one_clear_line(app_dir: Path) -> None:
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o600)
    try:
        res = run_as(OVERFLOW_ID, base_manifest(["/bin/true"]), app_dir)
    finally:
        os.chmod("/dev/fuse", mode)
    assert res["type"] == "GeodeError"
    assert "FUSE" in res["error"] and "/dev/fuse" in res["error"]
    assert "\n" not in res["error"]


def test_no_user_namespaces_is_one_clear_line(app_dir: Path) -> None:
    """Where unshare(CLONE_NEWUSER) is refused (here by a seccomp filter on the supervisor,
    as a container runtime's profile would), run() fails with one line saying so."""
    from geode.runtime import seccomp

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        result: dict[str, Any]
        try:
            os.close(r)
            seccomp.install()
            result = {"rc": go(base_manifest(["/bin/true"]), app_dir)}
        except BaseException as e:
            result = {"error": str(e), "type": type(e).__name__}
        finally:
            os.write(w, json.dumps(result).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    res = json.loads(data)
    assert isinstance(res.get("error"), str), res
    assert res["type"] in ("GeodeError", "SandboxError")  # SandboxError is a GeodeError
    assert "user namespaces" in res["error"] and "\n" not in res["error"]


# -------------------------------------------------------------------------------- mount plan


def test_kernel_mounts_and_fuse_options() -> None:
    from geode.runtime.plan import ViewPlan
    from geode.runtime.supervisor import fuse_root, kernel_mounts

    m = {"fs": {"mounts": [
        {"type": "tmpfs", "path": "/data"},
        {"path": "/data/in", "uri": "file:/usr/share"},
        {"path": "/usr", "uri": "file:/usr"},
        {"type": "tmpfs", "path": "/scratch"},
        {"path": "/scratch", "uri": "file:/etc"},  # hides the tmpfs above
    ]}}
    plan = ViewPlan.from_manifest(m, base_dir=Path("/"))
    assert [(k.kind, k.path) for k in kernel_mounts(plan)] == [("tmpfs", "/data"),
                                                              ("view", "/data/in")]
    dev = ViewPlan.from_manifest({"fs": {"mounts": [{"type": "tmpfs", "path": "/dev"}]}},
                                 base_dir=Path("/"))
    assert [(k.kind, k.path) for k in kernel_mounts(dev)] == [("tmpfs", "/dev"),
                                                             ("view", "/dev/attestation")]
    root = fuse_root(["fsname=geode", "subtype=geode", "allow_other", "nodev", "nosuid",
                      "auto_unmount"])
    assert (root.source, root.fstype, root.options) == ("geode", "fuse.geode", "allow_other")
    assert root.flags & sandbox.MS_NODEV and root.flags & sandbox.MS_NOSUID


def test_view_mount_inside_a_tmpfs(app_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inner = app_dir / "inner"
    inner.mkdir()
    (inner / "file").write_text("from the view")
    m = sh("cat /data/in/file; echo; echo x > /data/new && ls /data | tr '\\n' ' '")
    m["fs"]["mounts"] += [{"type": "tmpfs", "path": "/data"},
                          {"path": "/data/in", "uri": "file:inner"}]
    assert go(m, app_dir) == 0
    assert capfd.readouterr().out.split("\n")[:2] == ["from the view", "in new "]
