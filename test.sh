#!/usr/bin/env bash
# Set up with the dev extras, then lint, check formatting and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh dev
# The web page test drives Debian's Chromium (Playwright downloads no browser here).
if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium >/dev/null; }
fi
ruff check .
ruff format --check .
python -m pytest "$@"
