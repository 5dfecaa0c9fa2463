#!/usr/bin/env python3
"""Encrypted mounts vs plain chroot mounts vs native, side by side in one run.

Usage: python bench/bench_encrypted.py [--size-mib 256] [--runs 3] [--random-reads 20000]
                                       [--only io,sqlite]

io      A view (``python -m geode.runtime.viewfs``, the FUSE file system ``geode run`` serves)
        with an encrypted mount and a plain chroot mount whose directory is in
        ``sgx.allowed_files``; this process reads and writes a file of --size-mib through
        both and natively: sequential write (1 MiB write() calls, then close; no fsync),
        sequential read (1 MiB read() calls) and 4 KiB random reads (pread at page-aligned
        random offsets, POSIX_FADV_RANDOM). Before each read pass the view's page cache of the
        file is dropped (POSIX_FADV_DONTNEED on the view's file), so every byte comes through
        Python; the host files, and the native file, stay in the host page cache, so the
        comparison is of software costs, not of the disk.
sqlite  Debian's sqlite3 runs the same generated workload (bulk inserts in transactions, an
        index, range selects, single-row updates, autocommit inserts, deletes, full scans)
        natively, in the shield with the database in an allowed directory (examples/sqlite)
        and in the shield with it in an encrypted mount (examples/sqlite-encrypted). Times are
        sqlite3's own ``.timer`` totals, so the shield's start-up is not counted.

Needs root (or unprivileged user namespaces), FUSE and Debian's sqlite3.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MiB = 1 << 20
KEY = bytes(range(16))
ENV = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")


# ------------------------------------------------------------------------------------------
# file I/O through the view
# ------------------------------------------------------------------------------------------


def start_view(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    import tomli_w

    for d in ("root", "enc", "plain", "native", "mnt"):
        (work / d).mkdir()
    manifest = {
        "fs": {"root": {"uri": "file:root"},
               "mounts": [{"type": "encrypted", "path": "/enc", "uri": "file:enc"},
                          {"path": "/plain", "uri": "file:plain"}],
               "insecure__keys": {"default": KEY.hex()}},
        "sgx": {"allowed_files": ["file:plain/"]},
    }
    (work / "view.toml").write_text(tomli_w.dumps(manifest))
    ready = work / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "geode.runtime.viewfs", str(work / "view.toml"),
                             str(work / "mnt"), "--base-dir", str(work), "--ready-file",
                             str(ready)], stderr=open(work / "view.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"view did not come up: {(work / 'view.log').read_text()}")
        time.sleep(0.02)
    return proc, work / "mnt"


def stop_view(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], stderr=subprocess.DEVNULL,
                   check=False)


def seq_write(path: Path, size: int, chunk: bytes) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // len(chunk)):
            os.write(fd, chunk)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _open_cold(path: Path, via_view: bool) -> int:
    fd = os.open(path, os.O_RDONLY)
    if via_view:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def seq_read(path: Path, via_view: bool) -> tuple[float, int]:
    fd = _open_cold(path, via_view)
    total = 0
    t0 = time.perf_counter()
    try:
        while piece := os.read(fd, MiB):
            total += len(piece)
    finally:
        os.close(fd)
    return time.perf_counter() - t0, total


def random_reads(path: Path, via_view: bool, offsets: list[int]) -> float:
    fd = _open_cold(path, via_view)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    t0 = time.perf_counter()
    try:
        for off in offsets:
            if len(os.pread(fd, 4096, off)) != 4096:
                raise SystemExit(f"short read at {off} in {path}")
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def wait_released() -> None:
    """FUSE sends RELEASE after close() returns; give the view a moment to write back."""
    time.sleep(0.5)


def bench_io(work: Path, size_mib: int, runs: int, nreads: int) -> None:
    size = size_mib * MiB
    proc, mnt = start_view(work)
    targets = {"encrypted": (mnt / "enc" / "file", True),
               "plain chroot": (mnt / "plain" / "file", True),
               "native": (work / "native" / "file", False)}
    chunk = os.urandom(MiB)
    rng = random.Random(42)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(nreads)]
    results: dict[str, dict[str, list[float]]] = {t: {"write": [], "read": [], "rand": []}
                                                  for t in targets}
    try:
        for _ in range(runs):
            for name, (path, via_view) in targets.items():
                r = results[name]
                r["write"].append(size / seq_write(path, size, chunk) / 1e6)
                if via_view:
                    wait_released()
                elapsed, total = seq_read(path, via_view)
                if total != size:
                    raise SystemExit(f"{path}: read {total} bytes, expected {size}")
                r["read"].append(size / elapsed / 1e6)
                r["rand"].append(nreads / random_reads(path, via_view, offsets))
        # the encrypted file really is encrypted and complete on the host
        raw_size = (work / "enc" / "file").stat().st_size
        assert raw_size > size and raw_size % 4096 == 0, raw_size
    finally:
        stop_view(proc, mnt)

    print(f"\nfile I/O, {size_mib} MiB file, best (median) of {runs} runs")
    print(f"{'':<32} {'encrypted':>18} {'plain chroot':>18} {'native':>18}   enc/plain enc/native")
    for key, label, unit in (("write", "sequential write", "MB/s"),
                             ("read", "sequential read", "MB/s"),
                             ("rand", "random 4 KiB reads", "reads/s")):
        best = {t: max(results[t][key]) for t in targets}
        med = {t: statistics.median(results[t][key]) for t in targets}
        cells = "".join(f" {best[t]:>9.0f} ({med[t]:>6.0f})" for t in targets)
        vs_plain = best["encrypted"] / best["plain chroot"]
        vs_native = best["encrypted"] / best["native"]
        print(f"{label + ' (' + unit + ')':<32}{cells}   {vs_plain:>9.2f} {vs_native:>10.3f}")


# ------------------------------------------------------------------------------------------
# sqlite3
# ------------------------------------------------------------------------------------------


def sqlite_workload(seed: int = 7) -> list[tuple[str, str]]:
    """(phase, SQL) pairs; every statement is timed by sqlite3's .timer."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = [("setup", "CREATE TABLE t(a INTEGER PRIMARY KEY, b INTEGER, "
                                   "c TEXT);")]
    for _ in range(200):
        out.append(("bulk inserts (200 tx x 500 rows)",
                    "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                    "WHERE i < 500) INSERT INTO t(b, c) SELECT abs(random()) % 1000000, "
                    "hex(randomblob(60)) FROM n; COMMIT;"))
    out.append(("create index", "CREATE INDEX t_b ON t(b);"))
    for _ in range(2000):
        lo = rng.randrange(1_000_000)
        out.append(("range selects (2000)", f"SELECT count(*), sum(length(c)) FROM t "
                    f"WHERE b BETWEEN {lo} AND {lo + 2000};"))
    for _ in range(100):
        keys = [rng.randrange(1, 100_001) for _ in range(100)]
        body = " ".join(f"UPDATE t SET c = hex(randomblob(60)) WHERE a = {k};" for k in keys)
        out.append(("updates (100 tx x 100 rows)", f"BEGIN; {body} COMMIT;"))
    for i in range(500):
        out.append(("autocommit inserts (500)", f"INSERT INTO t(b, c) VALUES ({i}, "
                    "hex(randomblob(60)));"))
    for _ in range(20):
        lo = rng.randrange(1, 99_000)
        out.append(("range deletes (20 tx)", f"DELETE FROM t WHERE a BETWEEN {lo} AND "
                    f"{lo + 200};"))
    for _ in range(10):
        out.append(("full scans (10)", "SELECT count(*), avg(length(c)), max(b) FROM t;"))
    return out


TIMER = re.compile(r"^Run Time: real ([0-9.]+)")


def run_sqlite(cmd: list[str], cwd: Path, workload: list[tuple[str, str]]) -> dict[str, float]:
    script = ".timer on\n" + "\n".join(sql for _, sql in workload) + "\n"
    proc = subprocess.run(cmd, input=script, text=True, capture_output=True, cwd=cwd, env=ENV)
    if proc.returncode != 0 and "re-render the manifest" in proc.stderr:
        # the Geode source changed since the example was built (a shared work tree)
        for old in cwd.glob("*.manifest"):
            old.unlink()
        subprocess.run(["make", "-s"], cwd=cwd, env=ENV, check=True, capture_output=True)
        for db in (cwd / "db").glob("bench.db*"):
            db.unlink()
        proc = subprocess.run(cmd, input=script, text=True, capture_output=True, cwd=cwd,
                              env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr[-2000:]}")
    times = [float(m.group(1)) for line in proc.stdout.splitlines()
             if (m := TIMER.match(line))]
    # the shell times each input line it runs (one line per item, BEGIN ... COMMIT included)
    if len(times) != len(workload):
        raise SystemExit(f"{cmd}: {len(times)} timer lines for {len(workload)} statements")
    phases: dict[str, float] = {}
    for (phase, _), t in zip(workload, times, strict=True):
        phases[phase] = phases.get(phase, 0.0) + t
    return phases


def build_example(name: str, work: Path) -> Path:
    target = work / name
    shutil.copytree(REPO / "examples" / name, target)
    # A developer's earlier build in examples/ would be copied too and look up to date.
    for args in (["make", "-s", "clean"], ["make", "-s"]):
        subprocess.run(args, cwd=target, env=ENV, check=True, capture_output=True)
    return target


def bench_sqlite(work: Path, runs: int) -> None:
    workload = sqlite_workload()
    plain_dir = build_example("sqlite", work)
    enc_dir = build_example("sqlite-encrypted", work)
    native_dir = work / "sqlite-native"
    native_dir.mkdir()
    setups: dict[str, tuple[list[str], Path, Callable[[], None]]] = {
        "native": (["sqlite3", "bench.db"], native_dir,
                   lambda: _rm(native_dir / "bench.db")),
        "shield, allowed dir": (["gramine-direct", "sqlite3", "/db/bench.db"], plain_dir,
                                lambda: _rm(plain_dir / "db" / "bench.db")),
        "shield, encrypted": (["gramine-direct", "sqlite3", "/db/bench.db"], enc_dir,
                              lambda: _rm(enc_dir / "db" / "bench.db")),
    }
    totals: dict[str, list[float]] = {k: [] for k in setups}
    per_phase: dict[str, dict[str, float]] = {}
    for _ in range(runs):
        for name, (cmd, cwd, reset) in setups.items():
            reset()
            phases = run_sqlite(cmd, cwd, workload)
            total = sum(phases.values())
            if not totals[name] or total < min(totals[name]):
                per_phase[name] = phases
            totals[name].append(total)
    raw = (enc_dir / "db" / "bench.db").read_bytes()[:4096]
    assert b"SQLite format 3" not in raw, "the encrypted database is plaintext on the host"

    names = list(setups)
    print(f"\nsqlite3 workload, seconds (sqlite3 .timer), best of {runs} runs; "
          "last column: encrypted speed as % of native")
    print(f"{'phase':<36}" + "".join(f"{n:>22}" for n in names) + f"{'% of native':>14}")
    for phase in dict.fromkeys(p for p, _ in workload):
        cells = "".join(f"{per_phase[n][phase]:>22.3f}" for n in names)
        pct = 100 * per_phase["native"][phase] / max(per_phase["shield, encrypted"][phase], 1e-9)
        print(f"{phase:<36}{cells}{pct:>13.0f}%")
    best = {n: min(totals[n]) for n in names}
    cells = "".join(f"{best[n]:>22.3f}" for n in names)
    print(f"{'total':<36}{cells}{100 * best['native'] / best['shield, encrypted']:>13.0f}%")
    med = {n: statistics.median(totals[n]) for n in names}
    cells = "".join(f"{med[n]:>22.3f}" for n in names)
    print(f"{'total (median)':<36}{cells}"
          f"{100 * med['native'] / med['shield, encrypted']:>13.0f}%")


def _rm(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--random-reads", type=int, default=20000)
    p.add_argument("--only", default="io,sqlite")
    args = p.parse_args()
    only = set(args.only.split(","))
    print(f"machine: {os.cpu_count()} CPUs, Linux {os.uname().release}, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="geode-bench-enc-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        if "io" in only:
            io_dir = work / "io"
            io_dir.mkdir()
            bench_io(io_dir, args.size_mib, args.runs, args.random_reads)
        if "sqlite" in only:
            bench_sqlite(work, args.runs)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
