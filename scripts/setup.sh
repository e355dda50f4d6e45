#!/usr/bin/env bash
# Installs tessera and its test dependencies into the current Python environment.
# torch is installed only when none is importable: GPU machines keep their CUDA build, and a CPU
# machine gets the CPU wheel (torch==2.13.0) instead of a multi-GB CUDA download.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] torch not importable: installing torch==2.13.0 (CPU build)"
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test,triton]"
echo "[setup] tessera installed: $("$PY" -c 'import torch, tessera; print("tessera", tessera.__version__, "torch", torch.__version__)')"
