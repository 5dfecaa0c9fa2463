"""Print a file as hex (the certificate gramine-ratls wrote before exec'ing this)."""

import sys

with open(sys.argv[1], "rb") as f:
    print("cert:", f.read().hex())
