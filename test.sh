#!/usr/bin/env bash
# Set up with the dev extras, then lint, check formatting and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh dev
ruff check .
ruff format --check .
python -m pytest "$@"
