#!/usr/bin/env bash
# The default example: Debian's python3 runs in the shield with its whole standard library
# as trusted files; the manifest is rendered, measured and signed with the gramine-* commands,
# the signature is verified before start, then a script exercising json, ssl, sqlite3 and
# subprocess runs inside.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

key="${XDG_CONFIG_HOME:-$HOME/.config}/gramine/enclave-key.pem"
[ -f "$key" ] || gramine-sgx-gen-private-key

cd examples/python
make -s clean
echo "== rendering and signing python.manifest (hashes the standard library)"
make -s SGX=1 DEBUG=0 >/dev/null
gramine-sgx-sigstruct-view python.sig
echo "== running scripts/test-stdlib.py in the shield"
gramine-direct ./python /scripts/test-stdlib.py
