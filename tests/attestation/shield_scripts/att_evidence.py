# Run in the shield by tests/attestation/test_shield.py: evidence of any backend, in hex.
import os
import sys

DEV = "/dev/attestation"
print("files:", " ".join(sorted(os.listdir(DEV))))
with open(f"{DEV}/attestation_type") as f:
    print("type:", f.read())
with open(f"{DEV}/user_report_data", "wb") as f:
    f.write(bytes.fromhex(sys.argv[1]))
with open(f"{DEV}/quote", "rb") as f:
    print("quote:", f.read().hex())
if os.path.exists(f"{DEV}/certs"):
    with open(f"{DEV}/certs", "rb") as f:
        print("certs:", f.read().hex())
