#!/bin/sh
# Start memcached in the shield, set and get a key with the text protocol, stop it.
set -eu
launcher=$1
port=$2
$launcher memcached &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
python3 - "$port" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(100):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("memcached did not start")
s.sendall(b"set geode 0 0 6\r\nshield\r\nget geode\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    data += s.recv(4096)
assert data == b"STORED\r\nVALUE geode 0 6\r\nshield\r\nEND\r\n", data
PY
echo "[ Success ]"
