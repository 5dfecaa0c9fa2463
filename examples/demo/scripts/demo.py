"""Runs inside the shield: trusted code, sealed storage, attestation evidence."""

import hashlib
import json
import os
import sqlite3

# 1. Trusted files: this interpreter, its standard library and this script were hashed into
#    the signed manifest; every byte read here was verified against those hashes.
db = sqlite3.connect(":memory:")
print("1. trusted stdlib: sqlite", sqlite3.sqlite_version, "json", json.dumps([1, 2]))

# 2. Sealed files: /sealed is an encrypted mount keyed by _sgx_mrenclave, so only a program
#    with this exact measurement can read what an earlier run wrote.
counter = "/sealed/counter"
runs = int(open(counter).read()) if os.path.exists(counter) else 0
with open(counter, "w") as f:
    f.write(str(runs + 1))
print(f"2. sealed counter: this is run {runs + 1} of this measurement")

# 3. Attestation: bind a nonce into the evidence and hand the quote to the host.
nonce = hashlib.sha256(b"geode demo nonce").digest()
with open("/dev/attestation/attestation_type") as f:
    kind = f.read()
with open("/dev/attestation/user_report_data", "wb") as f:
    f.write(nonce)
with open("/dev/attestation/quote", "rb") as f:
    quote = f.read()
with open("/out/quote.bin", "wb") as f:
    f.write(quote)
print(f"3. attestation: {kind} quote of {len(quote)} bytes written to out/quote.bin")
