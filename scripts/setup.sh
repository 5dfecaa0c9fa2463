#!/usr/bin/env bash
# Install everything Geode and its tests need on a fresh Debian 12 machine:
# Debian packages (as root, once), then a virtual environment in .venv with geode in it.
# Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
    # FUSE: fusermount3; headers to build pyfuse3 for the tests' configfs-tsm stand-in
    fuse3 libfuse3-dev pkg-config gcc make
    # Geode's C module for protected-file crypto (optional: cryptography stands in without it)
    libssl-dev python3-dev
    # real programs the examples and tests run in the shield
    bash coreutils python3 redis-server redis-tools nginx-light sqlite3 memcached curl
    # examples/ra-tls-secret-prov: cryptography for the shield's python3, openssl for its CA
    python3-cryptography openssl
    # benchmarks
    wrk hyperfine
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages (run as root to install): ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's server packages try to start their daemons; tests start their own.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.geode-installed
# (re-installed when the build's inputs change: the editable install builds the C module)
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py src -newer "$stamp" \
        \( -name pyproject.toml -o -name setup.py -o -name "*.c" \) -print -quit)" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[runtime,test]'
    touch "$stamp"
fi
# Byte-compile once: start-up time matters and PYTHONDONTWRITEBYTECODE may be set.
if [ ! -f .venv/.geode-compiled ] || [ -n "$(find src -name "*.py" -newer .venv/.geode-compiled -print -quit)" ]; then
    .venv/bin/python -m compileall -q src >/dev/null
    touch .venv/.geode-compiled
fi
echo "setup: ready (activate with: . .venv/bin/activate)" >&2
