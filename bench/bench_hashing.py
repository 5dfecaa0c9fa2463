#!/usr/bin/env python3
"""Trusted-file hashing and manifest rendering benchmark.

Prints, in one run:

1. hashing throughput of one page-cached file (default 1 GiB) with Geode's ``hash_file``
   and with the native ``sha256sum`` on the same file, and their ratio;
2. the same for a tree (a few large files and thousands of small ones) expanded with
   ``expand_trusted_files`` versus ``sha256sum`` over all its files;
3. the warm render time (median of N runs) of a manifest that trusts the whole Python
   standard library directory: render + TOML parse + trusted-file expansion and hashing.

Usage: python bench/bench_hashing.py [--size-mib 1024] [--runs 10] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geode.manifest.render import parse_toml, render
from geode.manifest.trusted import expand_trusted_files, hash_file

MIB = 1 << 20


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_all(paths: list[Path]) -> None:
    """Bring files into the page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 * MIB):
                pass


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def make_tree(root: Path) -> list[Path]:
    """8 x 32 MiB, 4000 files of 1-128 KiB, spread over nested directories."""
    files = []
    for i in range(8):
        path = root / "big" / f"blob{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_file(path, 32 * MIB)
        files.append(path)
    data = os.urandom(128 * 1024)
    for i in range(4000):
        path = root / f"d{i % 20}" / f"s{i // 20 % 10}" / f"f{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: 1024 + (i * 7919) % (127 * 1024)])
        files.append(path)
    return files


def sha256sum(paths: list[Path]) -> None:
    subprocess.run(["sha256sum", "--", *map(str, paths)], check=True,
                   stdout=subprocess.DEVNULL)


def sha256sum_tree(root: Path) -> None:
    find = subprocess.Popen(["find", str(root), "-type", "f", "-print0"], stdout=subprocess.PIPE)
    subprocess.run(["xargs", "-0", "sha256sum", "--"], stdin=find.stdout, check=True,
                   stdout=subprocess.DEVNULL)
    assert find.stdout is not None
    find.stdout.close()
    find.wait()


STDLIB_TEMPLATE = """\
# python with its whole standard library trusted (Gramine-style template)
loader.entrypoint.uri = "file:{{ gramine.libos }}"
libos.entrypoint = "{{ entrypoint }}"
loader.env.LD_LIBRARY_PATH = "/lib:{{ arch_libdir }}"
fs.mounts = [
  { path = "/lib", uri = "file:{{ gramine.runtimedir() }}" },
  { path = "{{ entrypoint }}", uri = "file:{{ entrypoint }}" },
  { path = "{{ stdlib }}", uri = "file:{{ stdlib }}" },
]
sgx.trusted_files = [
  "file:{{ gramine.libos }}",
  "file:{{ entrypoint }}",
  "file:{{ gramine.runtimedir() }}/",
{% for lib in ldd(entrypoint) %}  "file:{{ lib }}",
{% endfor %}  "file:{{ stdlib }}/",
]
"""


def render_stdlib(stdlib: Path, entrypoint: str) -> dict[str, Any]:
    text = render(STDLIB_TEMPLATE, name="python.manifest.template", defines={
        "entrypoint": entrypoint, "arch_libdir": "/lib/x86_64-linux-gnu", "stdlib": str(stdlib),
    })
    manifest = parse_toml(text, name="python.manifest.template")
    expand_trusted_files(manifest, progress=False)
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the single file")
    parser.add_argument("--runs", type=int, default=10, help="runs of the render benchmark")
    parser.add_argument("--hash-runs", type=int, default=3, help="runs of each hashing test")
    parser.add_argument("--dir", type=Path, default=None, help="where to create test data")
    parser.add_argument("--stdlib", type=Path, default=None,
                        help="stdlib dir to trust (default /usr/lib/python3.11 or sysconfig's)")
    args = parser.parse_args()
    native = shutil.which("sha256sum")

    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="geode-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("GEODE_PKGLIBDIR", str(work / "pkglib"))

        # 1. One big page-cached file.
        big = work / "big.bin"
        size = args.size_mib * MIB
        make_file(big, size)
        read_all([big])
        t_geode = best_of(args.hash_runs, lambda: hash_file(big))
        line = f"single file {args.size_mib} MiB: geode {size / t_geode / 1e9:.2f} GB/s"
        if native:
            t_native = best_of(args.hash_runs, lambda: sha256sum([big]))
            line += (f", sha256sum {size / t_native / 1e9:.2f} GB/s, "
                     f"ratio {t_native / t_geode:.2f}x")
        openssl = shutil.which("openssl")
        if openssl:
            t_ssl = best_of(args.hash_runs, lambda: subprocess.run(
                [openssl, "dgst", "-sha256", str(big)], check=True, stdout=subprocess.DEVNULL))
            line += f"; openssl dgst {size / t_ssl / 1e9:.2f} GB/s"
        print(line)
        big.unlink()

        # 2. A tree.
        root = work / "tree"
        files = make_tree(root)
        total = sum(p.stat().st_size for p in files)
        read_all(files)

        def expand_tree() -> None:
            expand_trusted_files({"sgx": {"trusted_files": [f"file:{root}/"]}}, progress=False)

        t_geode = best_of(args.hash_runs, expand_tree)
        line = (f"tree {len(files)} files {total / MIB:.0f} MiB: geode expand+hash "
                f"{t_geode * 1e3:.0f} ms ({total / t_geode / 1e9:.2f} GB/s)")
        if native:
            t_native = best_of(args.hash_runs, lambda: sha256sum_tree(root))
            line += (f", find|xargs sha256sum {t_native * 1e3:.0f} ms, "
                     f"ratio {t_native / t_geode:.2f}x")
        print(line)

        # 3. Warm render of a manifest trusting the whole stdlib directory.
        stdlib = args.stdlib or Path("/usr/lib/python3.11")
        if not stdlib.is_dir():
            stdlib = Path(sysconfig.get_paths()["stdlib"])
        entrypoint = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        manifest = render_stdlib(stdlib, entrypoint)  # warm-up: runtime dir, page cache
        count = len(manifest["sgx"]["trusted_files"])
        hashed = sum(os.stat(e["uri"][5:]).st_size for e in manifest["sgx"]["trusted_files"])
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            render_stdlib(stdlib, entrypoint)
            times.append(time.perf_counter() - start)
        print(f"render {stdlib}/ ({count} trusted files, {hashed / MIB:.0f} MiB): "
              f"median {statistics.median(times) * 1e3:.0f} ms, min {min(times) * 1e3:.0f} ms "
              f"over {args.runs} warm runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
