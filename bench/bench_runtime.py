#!/usr/bin/env python3
"""Native vs Geode, side by side in one run: start-up, fork+exec, redis, nginx, first open.

Usage: python bench/bench_runtime.py [--runs N] [--only startup,fork,redis,nginx,verify]

Builds the examples (render + sign with the gramine-* commands) in a temporary directory,
then runs each workload natively and in the shield and prints both and their ratio.
Needs root (or unprivileged user namespaces), FUSE, and Debian's redis-server,
redis-benchmark, nginx and wrk (scripts/setup.sh installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def sh(args: list[str], cwd: Path | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, check=True, text=True, capture_output=True, env=ENV,
                          **kw)  # type: ignore[call-overload]


def timed(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env or ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def row(name: str, native: float, geode: float, unit: str, better: str = "lower") -> None:
    ratio = geode / native if native else float("nan")
    print(f"{name:<44} {native:>12.1f} {geode:>12.1f} {unit:<8} x{ratio:.2f} "
          f"({better} is better)")


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def server(args: list[str], port: int, cwd: Path | None = None) -> Iterator[None]:
    proc = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build(example: str, work: Path, *make_args: str) -> Path:
    d = work / example
    shutil.copytree(REPO / "examples" / example, d)
    # A developer's earlier build in examples/ would be copied too and look up to date.
    sh(["make", "-s", "clean"], cwd=d)
    sh(["make", "SGX=1", *make_args], cwd=d)
    return d


def bench_startup(work: Path, runs: int) -> None:
    d = build("python", work)
    # Native and Geode alternate, so that the machine's drift hits both alike.
    native: list[float] = []
    geode: list[float] = []
    # Building the example left its manifest remembered in geode.cache (gramine-sgx-sign
    # does that), as after any build; the other series has nothing remembered.
    first: list[float] = []
    command = [str(BIN / "gramine-direct"), "./python", "-c", "pass"]
    for _ in range(runs):
        native.append(timed(["/usr/bin/python3", "-c", "pass"]))
        geode.append(timed(command, cwd=d))
        first.append(timed(command, cwd=d, env=dict(ENV, GEODE_NO_CACHE="1")))
    stats = work / "stats.json"
    sh([str(BIN / "geode"), "run", "--stats-file", str(stats), "./python", "-c", "pass"], cwd=d)
    requests = json.loads(stats.read_text())["total"]
    row("python3 -c pass: wall time (median)", median_ms(native), median_ms(geode), "ms")
    paired = statistics.median(g - n for n, g in zip(native, geode, strict=True)) * 1000
    print(f"{'':<44} Geode - native = {median_ms(geode) - median_ms(native):.0f} ms "
          f"(median of paired differences {paired:.0f} ms); {requests} FUSE requests per start")
    row("python3 -c pass, nothing remembered (GEODE_NO_CACHE)", median_ms(native),
        median_ms(first), "ms")
    inner = ("import sys,time,subprocess; t=time.perf_counter(); "
             "subprocess.run([sys.executable,'-c','pass']); "
             "print(time.perf_counter()-t)")
    # The same child start measured from inside an already running shield (warm view).
    native_in = [float(sh(["/usr/bin/python3", "-c", inner]).stdout) for _ in range(runs)]
    geode_in = [float(sh([str(BIN / "gramine-direct"), "./python", "-c", inner],
                         cwd=d).stdout.split()[-1]) for _ in range(max(3, runs // 2))]
    row("python3 -c pass from inside (warm view)", median_ms(native_in), median_ms(geode_in),
        "ms")


def bench_fork(work: Path, runs: int) -> None:
    d = build("bash", work)
    loop = "TIMEFORMAT=%R; time (for i in $(seq 1000); do /usr/bin/true; done)"
    native: list[float] = []
    geode: list[float] = []
    for _ in range(runs):  # alternating, as for the start-up
        native.append(float(sh(["/bin/bash", "-c", loop]).stderr.split()[-1]))
        geode.append(float(sh([str(BIN / "gramine-direct"), "./bash", "-c", loop],
                              cwd=d).stderr.split()[-1]))
    row("bash: 1000 x fork+exec of true (median)", median_ms(native), median_ms(geode), "ms")
    paired = statistics.median(g / n for n, g in zip(native, geode, strict=True))
    print(f"{'':<44} median of paired ratios x{paired:.2f}")


def _rps(output: str, test: str) -> float:
    m = re.search(rf"^{test}: ([\d.]+) requests per second", output, re.M)
    if not m:
        raise RuntimeError(f"no {test} result in redis-benchmark output:\n{output}")
    return float(m.group(1))


def _paired(name: str, native: list[float], geode: list[float], unit: str) -> None:
    """A throughput row (medians) and the median of the per-round Geode/native ratios."""
    row(name, statistics.median(native), statistics.median(geode), unit, "higher")
    paired = statistics.median(g / n for n, g in zip(native, geode, strict=True))
    print(f"{'':<44} median of paired ratios x{paired:.2f} ({len(native)} rounds)")


def bench_redis(work: Path, runs: int) -> None:
    native_port, geode_port = 16379, 16380
    d = build("redis", work, f"PORT={geode_port}")
    cmd = ["redis-benchmark", "-q", "-t", "set,get", "-n", "100000", "-c", "50"]
    results: dict[str, dict[str, list[float]]] = {"native": {"SET": [], "GET": []},
                                                  "geode": {"SET": [], "GET": []}}
    native_srv = ["redis-server", "--save", "", "--bind", "127.0.0.1", "--port",
                  str(native_port)]
    geode_srv = [str(BIN / "gramine-direct"), "redis-server"]
    # Both servers run at once and the client alternates between them round by round, so
    # that the machine's drift hits both alike (an idle server costs nothing).
    with server(native_srv, native_port), server(geode_srv, geode_port, d):
        targets = [("native", native_port), ("geode", geode_port)]
        for i in range(max(1, runs // 2)):
            for name, port in targets if i % 2 == 0 else targets[::-1]:
                out = sh([*cmd, "-p", str(port)]).stdout
                for test in ("SET", "GET"):
                    results[name][test].append(_rps(out, test))
    for test in ("SET", "GET"):
        _paired(f"redis-benchmark {test} -c 50 (req/s, median)", results["native"][test],
                results["geode"][test], "req/s")


def bench_nginx(work: Path, runs: int) -> None:
    d = build("nginx", work)
    native_dir = work / "nginx-native"
    native_dir.mkdir()
    conf = (d / "conf" / "nginx.conf").read_text()
    conf = (conf.replace("listen 127.0.0.1:8002", "listen 127.0.0.1:8003")
            .replace("root /html", f"root {d / 'html'}")
            .replace("/tmp/", f"{native_dir}/"))
    (native_dir / "nginx.conf").write_text(conf)
    native_srv = ["nginx", "-e", "stderr", "-p", f"{native_dir}/", "-c",
                  str(native_dir / "nginx.conf")]
    geode_srv = [str(BIN / "gramine-direct"), "nginx"]
    results: dict[str, list[float]] = {"native": [], "geode": []}
    # Both servers at once, the client alternating between them (as for redis).
    with server(native_srv, 8003), server(geode_srv, 8002, d):
        targets = [("native", "http://127.0.0.1:8003/1K.txt"),
                   ("geode", "http://127.0.0.1:8002/1K.txt")]
        for _, url in targets:
            sh(["wrk", "-t2", "-c32", "-d1s", url])  # warm up
        for i in range(max(1, runs // 2)):
            for name, url in targets if i % 2 == 0 else targets[::-1]:
                out = sh(["wrk", "-t2", "-c32", "-d5s", url]).stdout
                m = re.search(r"Requests/sec:\s+([\d.]+)", out)
                assert m, out
                results[name].append(float(m.group(1)))
    _paired("wrk -t2 -c32 nginx 1 KiB static file", results["native"], results["geode"],
            "req/s")


VERIFY_TEMPLATE = """\
libos.entrypoint = "/usr/bin/dd"
loader.env.LD_LIBRARY_PATH = "/lib:{{ arch_libdir }}:/usr/{{ arch_libdir }}"
loader.insecure__use_cmdline_argv = true
fs.mounts = [
  { path = "/lib", uri = "file:{{ gramine.runtimedir() }}" },
  { path = "{{ arch_libdir }}", uri = "file:{{ arch_libdir }}" },
  { path = "/usr/{{ arch_libdir }}", uri = "file:/usr/{{ arch_libdir }}" },
  { path = "/usr/bin/dd", uri = "file:/usr/bin/dd" },
  { path = "/data", uri = "file:data" },
]
sgx.trusted_files = [
  "file:{{ gramine.runtimedir() }}/",
  "file:{{ arch_libdir }}/",
  "file:/usr/bin/dd",
  "file:data/big",
]
"""


def bench_verify(work: Path, runs: int) -> None:
    d = work / "verify"
    (d / "data").mkdir(parents=True)
    big = d / "data" / "big"
    with big.open("wb") as f:
        for _ in range(1024):
            f.write(os.urandom(1 << 20))
    (d / "dd.manifest.template").write_text(VERIFY_TEMPLATE)
    sh([str(BIN / "gramine-manifest"), "-Darch_libdir=/lib/x86_64-linux-gnu",
        "dd.manifest.template", "dd.manifest"], cwd=d)
    size_mb = big.stat().st_size / 1e6
    dd = ["dd", "of=/dev/null", "bs=1M"]
    native = [timed(["/usr/bin/dd", f"if={big}", *dd[1:]]) for _ in range(runs)]
    # Each run is a fresh view: the first open hashes the whole file, then dd reads it.
    geode = [timed([str(BIN / "gramine-direct"), "dd", "if=/data/big", *dd[1:]], cwd=d)
             for _ in range(max(2, runs // 2))]
    row("1 GiB trusted file, first open + read", size_mb / statistics.median(native),
        size_mb / statistics.median(geode), "MB/s", "higher")


BENCHES = {"startup": bench_startup, "fork": bench_fork, "redis": bench_redis,
           "nginx": bench_nginx, "verify": bench_verify}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Linux {os.uname().release}; runs={args.runs}")
    print(f"{'workload':<44} {'native':>12} {'geode':>12}")
    with tempfile.TemporaryDirectory(prefix="geode-bench-") as tmp:
        work = Path(tmp)
        ENV["XDG_CONFIG_HOME"] = str(work / "xdg")
        ENV["GEODE_CACHE_DIR"] = str(work / "cache")  # (not the developer's)
        sh([str(BIN / "gramine-sgx-gen-private-key"), "-q"])
        for name in args.only.split(","):
            BENCHES[name](work, args.runs)
    return 0


ENV = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
ENV.pop("PYTHONDONTWRITEBYTECODE", None)

if __name__ == "__main__":
    sys.exit(main())
