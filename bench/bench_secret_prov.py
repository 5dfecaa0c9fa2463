#!/usr/bin/env python3
"""RA-TLS and secret provisioning benchmark, on loopback against ``geode secret-prov serve``.

1. Pieces: making an RA-TLS certificate from the sim backend (P-384 key, sim quote,
   certificate) and verifying one (``RatlsVerifier.verify_der``), medians of N.
2. Latency: N sequential provisionings (TLS 1.3 handshake with the client's RA-TLS
   certificate, server-side verification and policy, request, secret), with certificates made
   beforehand; median and 90th percentile.
3. Load: C clients at once (threads; a tenth of them with a measurement the policy refuses),
   each with its own certificate and a 60 s bound. Every client must end either with the
   secret (good measurement) or with a clean refusal (the others), and the server must log
   exactly one decision per client: nothing lost.

The server runs as a subprocess (the CLI users run), the sim installation and CA are
throwaway. Usage: python bench/bench_secret_prov.py [--runs 50] [--clients 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "ratls"))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--clients", type=int, default=200)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-secret-prov-"))
    os.environ["GEODE_PKGLIBDIR"] = str(tmp / "pkglib")
    from ratls_helpers import ProvServer, make_identity

    from geode.errors import GeodeError
    from geode.ratls import cert as C
    from geode.ratls.secret_prov import provision_with
    from geode.ratls.verify import RatlsPolicy, RatlsVerifier
    from geode.tee.sim import SimBackend, write_collateral

    coll = tmp / "collateral"
    coll.mkdir()
    write_collateral(coll)
    good, bad = make_identity(1), make_identity(2)
    good_backend, bad_backend = SimBackend(good), SimBackend(bad)
    secret = hashlib.sha256(b"bench").digest()[:16]

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Linux {platform.release()}, Python {platform.python_version()}")

    # 1. pieces
    C.create(C.backend_source(good_backend))  # first: loads the authority
    times = []
    creds = []
    for _ in range(args.runs):
        t = time.perf_counter()
        creds.append(C.create(C.backend_source(good_backend)))
        times.append(time.perf_counter() - t)
    print(f"create RA-TLS cert (sim): median {1e3 * statistics.median(times):.2f} ms")
    verifier = RatlsVerifier([coll], allow_simulated=True,
                             policy=RatlsPolicy(mr_enclave=good.measurement.hex()))
    verifier.verify_der(creds[0].cert_der())
    times = []
    for c in creds:
        t = time.perf_counter()
        assert verifier.verify_der(c.cert_der()).ok
        times.append(time.perf_counter() - t)
    print(f"verify RA-TLS cert (sim quote, policy): median "
          f"{1e3 * statistics.median(times):.2f} ms")

    srv = ProvServer(tmp / "server", secret, "--collateral", str(coll), "--allow-simulated",
                     "--mrenclave", good.measurement.hex())
    try:
        servers = [("127.0.0.1", srv.port)]
        # 2. latency
        provision_with(creds[0], srv.ca, servers)
        times = []
        for c in creds:
            t = time.perf_counter()
            assert provision_with(c, srv.ca, servers).secret == secret
            times.append(time.perf_counter() - t)
        print(f"handshake + provisioning, sequential ({len(times)}): median "
              f"{1e3 * statistics.median(times):.1f} ms, p90 {1e3 * pct(times, 0.9):.1f} ms")

        # 3. load
        n = args.clients
        refused_every = 10
        client_creds = [C.create(C.backend_source(
            bad_backend if i % refused_every == 0 else good_backend)) for i in range(n)]
        outcomes: list[str | None] = [None] * n
        latency = [0.0] * n
        start = threading.Barrier(n + 1)

        def client(i: int) -> None:
            start.wait()
            t = time.perf_counter()
            try:
                got = provision_with(client_creds[i], srv.ca, servers, timeout=60).secret
                outcomes[i] = "served" if got == secret else "wrong secret"
            except GeodeError as e:
                outcomes[i] = "refused" if "without a secret" in str(e) else f"error: {e}"
            latency[i] = time.perf_counter() - t

        before = len(srv.lines())
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        start.wait()
        t0 = time.perf_counter()
        for th in threads:
            th.join(120)
        wall = time.perf_counter() - t0
        lines = srv.wait_lines(before + n, timeout=30)[before:]
        served = outcomes.count("served")
        refused = outcomes.count("refused")
        expected_refused = len(range(0, n, refused_every))
        other = [o for o in outcomes if o not in ("served", "refused")]
        granted_lines = sum("granted" in ln for ln in lines)
        refused_lines = sum("refused: policy.mr_enclave" in ln for ln in lines)
        print(f"{n} concurrent clients: {served} served, {refused} refused "
              f"(expected {n - expected_refused}/{expected_refused}), {len(other)} other "
              f"{other[:3]}; server logged {granted_lines} granted + {refused_lines} refused "
              f"of {len(lines)} lines; wall {wall:.2f} s, client latency median "
              f"{statistics.median(latency):.2f} s, max {max(latency):.2f} s")
        ok = (served == n - expected_refused and refused == expected_refused and not other
              and granted_lines == served and refused_lines == refused and len(lines) == n)
        print("load result:", "OK (none lost)" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        srv.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main())
