#!/usr/bin/env bash
# Creates .venv and installs the project with the locked versions (requirements*.lock, written by
# scripts/lock.py from the environment the suite passed in). torch is installed FIRST and pinned, so pip
# takes the local CPU wheel instead of pulling gigabytes of CUDA packages (README: "CPU torch").
# Usage: source scripts/setup.sh [dev]
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
extras=""
lock=requirements.lock
if [ "${1:-}" = "dev" ]; then
  extras="[dev]"
  lock=requirements-dev.lock
fi
stamp=".venv/.installed${extras}-$(cat pyproject.toml "$lock" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  # The rest of the lock with uv: 5 s instead of pip's 71 s here. Exactly the pinned set (--no-deps, no
  # resolution); torch left out, because uv does not look at the local CPU wheel and would fetch a CUDA build.
  # pip remains the fallback where uv cannot be installed or reach the index.
  grep -v '^torch==' "$lock" > .venv/lock-without-torch.txt
  # --compile-bytecode (pip compiles by default, uv does not): with PYTHONDONTWRITEBYTECODE set, as on these
  # machines, nothing else writes .pyc files and every process compiled mlflow, GX, optuna... from source again,
  # 7-10 s per process here (import mlflow 10.7 s -> 4.0 s, great_expectations 18 s -> 8.4 s), in every stage,
  # sweep worker, promotion and test server.
  if ! { python -m pip install -q "uv==0.13.9" \
    && uv pip install -q --compile-bytecode --python .venv/bin/python --no-deps -r .venv/lock-without-torch.txt; }; then
    python -m pip install -q -r "$lock"
  fi
  python -m pip install -q --no-deps -e ".${extras}"
  python -m pip check >/dev/null || { python -m pip check; echo "the locked set does not fit pyproject.toml: regenerate it (scripts/lock.py)"; exit 1; }
  touch "$stamp"
fi
# The project's own modules too (an editable install is never compiled); only changed files are recompiled.
python -m compileall -q mlops >/dev/null
