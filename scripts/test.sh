#!/usr/bin/env bash
# The test command (README, CI): set up, check the layer contracts (docs/architecture.md), then
# run the whole suite. GPU tests skip without a GPU.
# pytest-xdist: one worker per core; tests sharing a module-scoped fixture (built runner, compiled
# backbone, started server) stay in one worker (tests/conftest.py's xdist groups). Tests marked
# `serial` assert wall-clock bounds (latency under load, shutdown deadlines): they run after the
# parallel part, alone, so another worker's load cannot break them. "-n 0" runs the first part in
# this process too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
lint-imports
PY=${PYTHON:-python3}
status=0
"$PY" -m pytest -q -p no:cacheprovider -n auto --dist loadgroup -m "not serial" "$@" || status=$?
serial=0
"$PY" -m pytest -q -p no:cacheprovider -m serial "$@" || serial=$?
[ "$serial" -eq 5 ] && serial=0  # the paths given hold no serial test
[ "$status" -ne 0 ] && exit "$status"
exit "$serial"
