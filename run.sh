#!/usr/bin/env bash
# PAFO Studio: one script for setting up and running the app or the test suite on a fresh machine.
#   ./run.sh app    set up, then start the app on the built-in synthetic dataset
#   ./run.sh test   set up, then run the linter and the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.requirements.sha"
  local want
  want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
    echo "$want" > "$stamp"
  fi
}

browser() {
  # The browser test drives Debian's Chromium; never `playwright install` (it downloads a browser build).
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
}

case "${1:-}" in
  app)
    setup
    shift
    exec "$VENV/bin/streamlit" run app.py "$@"
    ;;
  test)
    setup
    browser || echo "run.sh: could not install chromium; the browser test will fail" >&2
    shift
    "$VENV/bin/ruff" check .
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh app | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
