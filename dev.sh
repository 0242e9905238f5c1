#!/usr/bin/env bash
# bullwait's two commands, each doing its own set-up on a fresh machine (Python 3.11, Node 20):
#   bash dev.sh demo    workers plus demo traffic (embedded redis-server when none is configured)
#   bash dev.sh test    the whole test suite (starts its own redis-server on a free port)
# Other: bash dev.sh lint (ruff, ruff format --check, mypy) | bash dev.sh bench [--quick] | bash dev.sh setup
#   (setup also installs the docs extra: .venv/bin/mkdocs serve)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${BULLWAIT_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.bullwait-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e '.[test,docs]'
    touch "$stamp"
  fi
}

setup_node() {
  [ -f node-compat/package.json ] || return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "dev.sh: npm not found; the Node compatibility tests will be skipped" >&2
    return 0
  fi
  if [ ! -d node-compat/node_modules ] || [ node-compat/package-lock.json -nt node-compat/node_modules/.package-lock.json ]; then
    (cd node-compat && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup_python; setup_node ;;
  demo)  setup_python; exec "$VENV/bin/bullwait" demo "$@" ;;
  # Workers in parallel: most tests wait on Redis, subprocesses and sleeps, not on a core.
  # One test at a time per worker, so the long ones (started first) do not hold others up.
  # `bash dev.sh test -n 0` runs in one process; BULLWAIT_TEST_WORKERS sets how many.
  test)  setup_python; setup_node
         exec "$VENV/bin/python" -m pytest -n "${BULLWAIT_TEST_WORKERS:-4}" --maxschedchunk 1 "$@" ;;
  bench) setup_python; setup_node; exec "$VENV/bin/python" -m bench "$@" ;;
  lint)  setup_python; "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . && "$VENV/bin/mypy" bullwait ;;
  *) sed -n '2,6p' "$0"; exit 2 ;;
esac
