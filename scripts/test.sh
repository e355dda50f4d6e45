#!/usr/bin/env bash
# The test command (README, CI): set up, check the layer contracts (docs/architecture.md), then
# run the whole suite. GPU tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
lint-imports
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@"
