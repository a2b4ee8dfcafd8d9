#!/usr/bin/env bash
# Set up ./.venv (see ci/bootstrap.sh) and run the whole test suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
ci/bootstrap.sh test
sh ci/install_chromium.sh || echo "ci/test.sh: chromium could not be installed; the dashboard test will say so"
set +e
.venv/bin/pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "ci/test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
