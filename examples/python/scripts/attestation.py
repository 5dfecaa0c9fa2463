"""Read this program's attestation evidence from /dev/attestation, as Gramine programs do.

    attestation.py [USER_REPORT_DATA_HEX]

Prints the attestation type; when a quote is available, writes USER_REPORT_DATA (hex, up to
64 bytes, zero-padded; default: 64 zero bytes) to /dev/attestation/user_report_data, reads
/dev/attestation/quote and prints its size, the identity fields of an SGX quote, and the
whole quote in hex on a line "quote: ...". Run it under `geode run --tee sim` (or tdx/snp).
"""

import os
import sys

DEV = "/dev/attestation"

with open(f"{DEV}/attestation_type") as f:
    kind = f.read()
print(f"attestation type: {kind}")

if not os.path.exists(f"{DEV}/quote"):
    print("no /dev/attestation/quote: run with a TEE backend (geode run --tee sim ...)")
    sys.exit(0)

data = bytes.fromhex(sys.argv[1]) if len(sys.argv) > 1 else b""
with open(f"{DEV}/user_report_data", "wb") as f:
    f.write(data)

with open(f"{DEV}/quote", "rb") as f:
    quote = f.read()

print(f"quote size: {len(quote)}")
version = int.from_bytes(quote[0:2], "little")
tee_type = int.from_bytes(quote[4:8], "little")
if version == 3 and tee_type == 0:  # SGX: the report body follows the 48-byte header
    body = quote[48:48 + 384]
    print(f"  debug:       {bool(body[48] & 2)}")
    print(f"  mr_enclave:  {body[64:96].hex()}")
    print(f"  mr_signer:   {body[128:160].hex()}")
    print(f"  isv_prod_id: {int.from_bytes(body[256:258], 'little')}")
    print(f"  isv_svn:     {int.from_bytes(body[258:260], 'little')}")
    print(f"  report_data: {body[320:384].hex()}")
print(f"quote: {quote.hex()}")
