#!/usr/bin/env bash
# Install kcap with its test and serve extras into .venv (or $KCAP_VENV), check the import contracts, run the test suite.
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${KCAP_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test,serve]"
# The import contracts of setup.cfg's [importlinter] (layers, no cycles): seconds, so first.
"$VENV/bin/lint-imports" setup.cfg
# Each test file on one of up to four worker processes (pytest-xdist): a file's slow
# fixtures are built once, and on two cores the suite takes about two thirds of the time.
# The files start in the order tests/conftest.py gives them, the longest first.
exec "$VENV/bin/python" -m pytest --numprocesses auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder "$@"
