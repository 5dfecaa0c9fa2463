#!/usr/bin/env python3
"""Protected-file library benchmark: encrypted vs plain file I/O in the same run.

Prints, for a file of --size-mib (default 256 MiB) on --dir:

1. sequential write MB/s: ``ProtectedFile.write`` in --chunk-kib pieces (then ``close``, which
   writes back the last dirty nodes) vs ``os.pwrite`` of the same pieces;
2. sequential read MB/s: ``ProtectedFile.read`` (every node authenticated) vs ``os.pread``;
3. 4 KiB random reads per second at random offsets (node cache of --cache-nodes) vs ``pread``;

each the best of --runs runs, with encrypted/plain ratios, and also per CPU second of this
process (less sensitive to other load on a shared machine). Neither side calls fsync: both
measure the page cache, so the difference is the library's cost (crypto and Python).

Usage: python bench/bench_pf.py [--size-mib 256] [--chunk-kib 1024 128] [--runs 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from geode.formats.pf import DEFAULT_CACHE_NODES, ProtectedFile

MIB = 1 << 20
KEY = os.urandom(16)


def best_of(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(best wall-clock time, best CPU time of this process) over ``runs`` runs."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def plain_write(path: Path, size: int, chunk: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, size, len(chunk)):
            os.pwrite(fd, chunk, off)
    finally:
        os.close(fd)


def plain_read(path: Path, size: int, chunk_size: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, size, chunk_size):
            os.pread(fd, chunk_size, off)
    finally:
        os.close(fd)


def pf_write(path: Path, size: int, chunk: bytes, cache: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pf = ProtectedFile.open(fd, key=KEY, path=str(path), create=True, cache_nodes=cache)
        for off in range(0, size, len(chunk)):
            pf.write(off, chunk)
        pf.close()
    finally:
        os.close(fd)


def pf_read(path: Path, size: int, chunk_size: int, cache: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        pf = ProtectedFile.open(fd, key=KEY, path=str(path), create=False, readonly=True,
                                cache_nodes=cache)
        for off in range(0, size, chunk_size):
            pf.read(off, chunk_size)
        pf.close()
    finally:
        os.close(fd)


def random_reads(path: Path, offsets: list[int], encrypted: bool, cache: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if encrypted:
            pf = ProtectedFile.open(fd, key=KEY, path=str(path), create=False, readonly=True,
                                    cache_nodes=cache)
            for off in offsets:
                pf.read(off, 4096)
            pf.close()
        else:
            for off in offsets:
                os.pread(fd, 4096, off)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--chunk-kib", type=int, nargs="+", default=[1024, 128])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--random-reads", type=int, default=20000)
    ap.add_argument("--cache-nodes", type=int, default=DEFAULT_CACHE_NODES)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    size = args.size_mib * MIB
    cache = args.cache_nodes
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"file: {args.size_mib} MiB on {args.dir}, node cache {cache} nodes, "
          f"best of {args.runs}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, enc = Path(tmp) / "plain.bin", Path(tmp) / "enc.pf"
        for chunk_kib in args.chunk_kib:
            chunk = os.urandom(chunk_kib * 1024)
            tw_plain = best_of(args.runs, lambda c=chunk: plain_write(plain, size, c))
            tw_pf = best_of(args.runs, lambda c=chunk: pf_write(enc, size, c, cache))
            tr_plain = best_of(args.runs, lambda n=chunk_kib * 1024: plain_read(plain, size, n))
            tr_pf = best_of(args.runs, lambda n=chunk_kib * 1024: pf_read(enc, size, n, cache))
            for what, t_pf, t_plain in (("write", tw_pf, tw_plain), ("read", tr_pf, tr_plain)):
                pf_mbs, plain_mbs = size / t_pf[0] / 1e6, size / t_plain[0] / 1e6
                print(f"sequential {what:5} {chunk_kib:5} KiB pieces: encrypted "
                      f"{pf_mbs:5.0f} MB/s, plain {plain_mbs:5.0f} MB/s, "
                      f"ratio {pf_mbs / plain_mbs:.3f}  (per CPU second: encrypted "
                      f"{size / t_pf[1] / 1e6:5.0f} MB, plain {size / t_plain[1] / 1e6:5.0f} MB)")
        rnd = random.Random(1)
        offsets = [rnd.randrange(0, size - 4096) for _ in range(args.random_reads)]
        t_pf = best_of(args.runs, lambda: random_reads(enc, offsets, True, cache))
        t_plain = best_of(args.runs, lambda: random_reads(plain, offsets, False, cache))
        n = len(offsets)
        print(f"random 4 KiB reads: encrypted {n / t_pf[0]:6.0f}/s, plain {n / t_plain[0]:6.0f}/s, "
              f"ratio {t_plain[0] / t_pf[0]:.3f}")


if __name__ == "__main__":
    main()
