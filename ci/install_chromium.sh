#!/bin/sh
# Install headless Chromium (Debian package) for the dashboard test (tests/test_http_dashboard.py).
# Idempotent: does nothing when a chromium binary is already on PATH.
set -e
for bin in chromium chromium-browser google-chrome; do
    if command -v "$bin" >/dev/null 2>&1; then
        echo "chromium already installed: $(command -v "$bin")"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
