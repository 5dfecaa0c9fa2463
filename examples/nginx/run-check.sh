#!/bin/sh
# Start nginx in the shield, fetch a trusted page, stop it with SIGTERM.
set -eu
launcher=$1
$launcher nginx &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
i=0
until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/')" 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "nginx did not start" >&2; exit 1; }
    sleep 0.1
done
python3 -c "import urllib.request; assert b'Geode shield' in urllib.request.urlopen('http://127.0.0.1:8002/index.html').read()"
echo "[ Success ]"
