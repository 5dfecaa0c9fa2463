#!/bin/sh
# Start redis-server in the shield, SET and GET a key, stop it with SIGTERM.
set -eu
launcher=$1
port=$2
$launcher redis-server &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
i=0
until redis-cli -p "$port" ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "redis-server did not start" >&2; exit 1; }
    sleep 0.1
done
redis-cli -p "$port" set geode shield >/dev/null
[ "$(redis-cli -p "$port" get geode)" = shield ]
echo "[ Success ]"
