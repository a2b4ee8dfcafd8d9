#!/usr/bin/env bash
# Set up ./.venv with mq9fast built (Cython extensions compiled) from this checkout.
#   ci/bootstrap.sh            -> the broker only
#   ci/bootstrap.sh test       -> plus the test dependencies (extras "test")
#   ci/bootstrap.sh test,bench -> plus the benchmark dependencies
# On a fresh Debian machine it first installs what a build needs (a C compiler, Python headers,
# venv) with apt-get, as root or through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${VENV:-.venv}"
py="${PYTHON:-python3}"

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
"$py" - <<'PY' || need+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
"$py" -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "ci/bootstrap.sh: installing system packages: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
target="."
[ -n "$extras" ] && target=".[$extras]"
"$venv/bin/python" -m pip install -q "$target"
venv_py="$(cd "$venv" && pwd)/bin/python"
(cd / && "$venv_py" -c "import mq9fast._parser, mq9fast._router, mq9fast; print('mq9fast', mq9fast.__version__, 'installed in $venv (compiled core OK)')")
