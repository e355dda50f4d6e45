#!/usr/bin/env bash
# Op layer on a CUDA GPU: every test in tests/ops and tests/platforms (the small-shape kernel tests
# now run compiled, plus the `gpu` tests: real bf16 sizes, a Llama-3-8B-shaped layer compiled with
# zero graph breaks, CUDA platform calls), then the fast-vs-native benchmark.
# Writes $OUT/ops_tests.log, $OUT/ops_bench.json (+ ops_bench.log).
# Usage: OUT=/some/dir bash scripts/gpu/ops.sh
set -uo pipefail
source "$(dirname "$0")/common.sh"

"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "device", torch.cuda.get_device_name())' | tee "$OUT/ops_tests.log"
"$PY" -m pytest -q -rA -p no:cacheprovider tests/ops tests/platforms 2>&1 \
  | tee -a "$OUT/ops_tests.log"
tests_rc=${PIPESTATUS[0]}

"$PY" -m tessera.bench.ops --out "$OUT/ops_bench.json" 2>&1 | tee "$OUT/ops_bench.log"
bench_rc=${PIPESTATUS[0]}

echo "tests rc=$tests_rc bench rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
