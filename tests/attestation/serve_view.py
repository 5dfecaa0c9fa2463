"""Serve a view with a TEE backend until SIGTERM (tests of /dev/attestation over FUSE).

    python serve_view.py MANIFEST.toml MOUNTPOINT --tee NAME [--sig APP.sig] --ready FILE

The view is mounted from the host's pid namespace, so FUSE requests carry host pids.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tomllib
from pathlib import Path

from geode.formats.sigstruct import Sigstruct
from geode.runtime import fuse
from geode.runtime.plan import ViewPlan
from geode.runtime.viewfs import ViewFS, serve
from geode.tee import EnclaveIdentity, open_backend


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("manifest", type=Path)
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--tee", default="none")
    p.add_argument("--sig", type=Path)
    p.add_argument("--ready", type=Path, required=True)
    args = p.parse_args()
    manifest = tomllib.loads(args.manifest.read_text())
    sig = Sigstruct.unpack(args.sig.read_bytes()) if args.sig else None
    identity = EnclaveIdentity(sig.enclave_hash if sig else bytes(32), sig, manifest)
    fs = ViewFS(ViewPlan.from_manifest(manifest, base_dir=args.manifest.parent), manifest,
                tee=open_backend(args.tee, identity))

    def stop(signum: int, frame: object) -> None:
        fuse.unmount(str(args.mountpoint))

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        serve(fs, args.mountpoint, ready=lambda: args.ready.write_text("ok"))
    finally:
        fs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
