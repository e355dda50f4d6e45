#!/usr/bin/env bash
# Sampling ops on a CUDA GPU: the `gpu` tests of tests/sampling/test_sampling_ops.py (chi-square
# exactness at vocab 151936 with 50k samples for torch / triton / flashinfer-if-installed, renorm vs
# the reference at real size, batch independence, the Triton sampler replayed in a CUDA graph),
# then the benchmark (batch 1/32/128/512 x vocab 151936, top_k=50 + top_p=0.9; target: triton
# >= 3x faster than the torch sort-based reference at batch 128) with a small Triton config sweep.
# Writes under $OUT: sampling_tests.log, sampling_bench.json, sampling_bench.log.
# Usage: OUT=/some/dir bash scripts/gpu/sampling.sh    (~4-6 min on an H200 with compiles; hard
# stops keep it under 10 min)
set -uo pipefail
source "$(dirname "$0")/common.sh"

"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "device", torch.cuda.get_device_name())' | tee "$OUT/sampling_tests.log"
timeout 330 "$PY" -m pytest tests/sampling/test_sampling_ops.py -m gpu -v -rA -p no:cacheprovider \
  2>&1 | tee -a "$OUT/sampling_tests.log"
tests_rc=${PIPESTATUS[0]}

timeout 240 "$PY" -m tessera.bench.sampling --out "$OUT/sampling_bench.json" --sweep 2>&1 \
  | tee "$OUT/sampling_bench.log"
bench_rc=${PIPESTATUS[0]}

echo "tests rc=$tests_rc bench rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
