#!/usr/bin/env bash
# The default example (examples/demo): Debian's python3 runs in the shield with
#   1. its whole standard library as trusted files (hashed into the signed manifest),
#   2. a directory of files encrypted with a key sealed to the manifest's measurement,
#   3. attestation: it writes a nonce to /dev/attestation/user_report_data and reads a quote
#      from the simulated TEE, which the host then verifies.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

key="${XDG_CONFIG_HOME:-$HOME/.config}/gramine/enclave-key.pem"
[ -f "$key" ] || gramine-sgx-gen-private-key

cd examples/demo
make -s clean
echo "== rendering, hashing and signing demo.manifest"
make -s all >/dev/null
gramine-sgx-sigstruct-view demo.sig
echo "== running it twice in the shield (geode run --tee sim), then verifying its quote"
make -s check
