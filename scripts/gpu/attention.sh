#!/usr/bin/env bash
# Triton attention backend on a CUDA GPU: the whole attention test file (small shapes compiled, plus
# the `gpu` tests: bf16 up to 32k context, batch mixes, CUDA graph replay), then the benchmark.
# Writes $OUT/attention_tests.log, $OUT/attention_bench.json (+ attention_bench.log).
# Usage: OUT=/some/dir bash scripts/gpu/attention.sh
set -uo pipefail
source "$(dirname "$0")/common.sh"

"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "device", torch.cuda.get_device_name())' | tee "$OUT/attention_tests.log"
"$PY" -m pytest tests/attention/test_triton_attention.py -v -rA -p no:cacheprovider \
  2>&1 | tee -a "$OUT/attention_tests.log"
tests_rc=${PIPESTATUS[0]}

"$PY" -m tessera.bench.attention --out "$OUT/attention_bench.json" 2>&1 \
  | tee "$OUT/attention_bench.log"
bench_rc=${PIPESTATUS[0]}

echo "tests rc=$tests_rc bench rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
