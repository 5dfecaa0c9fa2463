#!/usr/bin/env python3
"""Evidence generation benchmark: how long a program waits for /dev/attestation/quote.

1. In-process (the backend alone): the sim backend's first quote of a run (loading the
   per-installation quoting authority from disk), then the median of N quotes (REPORT + CMAC
   + the simulated QE's check + two ECDSA P-256 signatures), a REPORT, and the same through
   a configfs-tsm directory when ``--tsm DIR --tsm-kind tdx|snp`` is given.
2. In the shield: examples/python built with ``RA_TYPE=dcap SGX_DEBUG=0`` and run with
   ``geode run --tee sim``; the program times its first quote, then N rounds of writing
   user_report_data and reading the quote (open + read through the FUSE view).

Usage: python bench/bench_attestation.py [--runs 200] [--no-shield]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHIELD_SCRIPT = """
import os, statistics, sys, time
runs = int(sys.argv[1])
def once(data):
    with open("/dev/attestation/user_report_data", "wb") as f:
        f.write(data)
    with open("/dev/attestation/quote", "rb") as f:
        return f.read()
t = time.perf_counter(); once(b"first"); first = time.perf_counter() - t
times = []
for i in range(runs):
    t = time.perf_counter(); once(os.urandom(64)); times.append(time.perf_counter() - t)
print(f"first {first * 1000:.2f} median {statistics.median(times) * 1000:.2f} "
      f"best {min(times) * 1000:.2f}")
"""


def timed(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, min(times) * 1000


def in_process(runs: int, tsm: Path | None, tsm_kind: str) -> None:
    from geode.formats.sigstruct import Sigstruct
    from geode.tee import EnclaveIdentity
    from geode.tee import sim as simmod
    from geode.tee.sim import SimBackend

    rnd = hashlib.sha256(b"bench").digest()
    sig = Sigstruct(modulus=rnd * 12, enclave_hash=hashlib.sha256(rnd).digest(),
                    attribute_flags=0x04, attribute_xfrm=0x03)
    ident = EnclaveIdentity(sig.enclave_hash, sig)
    simmod.authority()  # create it if this installation has none (not what is measured)
    simmod._authority_at.cache_clear()
    backend = SimBackend(ident)
    t = time.perf_counter()
    backend.evidence(bytes(64))
    first = (time.perf_counter() - t) * 1000
    med, best = timed(runs, lambda: backend.evidence(os.urandom(64)))
    print(f"sim quote (backend): first of a run {first:.2f} ms (loads the authority), "
          f"then median {med:.3f} ms, best {best:.3f} ms")
    ti = backend.my_target_info()
    med, best = timed(runs, lambda: backend.report(os.urandom(64), ti))
    print(f"sim REPORT (backend): median {med:.3f} ms, best {best:.3f} ms")
    if tsm is not None:
        from geode.tee.tsm import TsmBackend

        tb = TsmBackend(tsm_kind, ident, tsm)
        med, best = timed(runs, lambda: tb.evidence(os.urandom(64)))
        print(f"{tsm_kind} evidence through {tsm}: median {med:.3f} ms, best {best:.3f} ms")


def in_shield(runs: int) -> None:
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "python"
        shutil.copytree(REPO / "examples" / "python", work)
        # A developer's earlier build in examples/ would be copied too and look up to date.
        subprocess.run(["make", "-s", "clean"], cwd=work, check=True, capture_output=True)
        (work / "scripts" / "bench_quote.py").write_text(SHIELD_SCRIPT)
        env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        subprocess.run(["make", "SGX=1", "RA_TYPE=dcap", "SGX_DEBUG=0"], cwd=work, env=env,
                       check=True, capture_output=True)
        out = subprocess.run(["geode", "run", "--tee", "sim", "python",
                              "scripts/bench_quote.py", str(runs)], cwd=work, env=env,
                             check=True, capture_output=True, text=True).stdout.split()
        first, med, best = float(out[1]), float(out[3]), float(out[5])
        print(f"sim quote (python in the shield, write user_report_data + open/read quote): "
              f"first {first:.2f} ms, then median {med:.2f} ms, best {best:.2f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--no-shield", action="store_true", help="skip the in-shield measurement")
    p.add_argument("--tsm", type=Path, help="also time a configfs-tsm report directory")
    p.add_argument("--tsm-kind", choices=("tdx", "snp"), default="tdx")
    args = p.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    in_process(args.runs, args.tsm, args.tsm_kind)
    if not args.no_shield:
        in_shield(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
