#!/usr/bin/env bash
# The test command (README, CI): set up, check the layer contracts (docs/architecture.md), then
# run the whole suite. GPU tests skip without a GPU.
# pytest-xdist: one worker per core; tests sharing a module-scoped fixture (built runner, compiled
# backbone, started server) stay in one worker (tests/conftest.py's xdist groups). "-n 0" runs
# everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
lint-imports
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider -n auto --dist loadgroup "$@"
