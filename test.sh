#!/usr/bin/env bash
# Set up with the dev extras and the tools the tests use, then lint, check formatting and run the whole
# test suite (what CI runs). Arguments go to pytest, e.g. ./test.sh -k serving -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh dev
# Debian packages the suite drives: Chromium (the web page test; Playwright downloads no browser here) and
# kubectl (`kubectl kustomize` builds the k8s overlays offline; these machines' image ships it). Installed only
# where missing. Debian bookworm's own kubernetes-client (1.20) is too old for the overlays: the test says so.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}
command -v chromium >/dev/null || { echo "== installing chromium (Debian)"; apt_install chromium; }
command -v kubectl >/dev/null || { echo "== installing kubectl"; apt_install kubectl || echo "!! no kubectl package: the kustomize tests will fail"; }
ruff check .
ruff format --check .
# Two workers (one per core; each module's tests stay in one, see tests/conftest.py); PYTEST_WORKERS=0 runs
# everything in this process.
python -m pytest -n "${PYTEST_WORKERS:-2}" --durations=25 "$@"
