"""Print the encrypted input: it opens only if provisioning set its key."""

import sys

try:
    with open("/enc/input.txt") as f:
        print("input:", f.read().strip())
except OSError as e:
    print(f"cannot open the encrypted input: {e.strerror}")
    sys.exit(1)
