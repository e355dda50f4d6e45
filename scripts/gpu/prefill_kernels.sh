#!/usr/bin/env bash
# Prefill kernel studies on one GPU (session 6): the GPU tests of the few-row linear kernel and of
# the extend attention (tile choice), then the sweeps behind their configs:
# benchmarks/prefill_opt/skinny_gemm.py (cuBLAS vs the skinny GEMM, every llama3-8b / qwen3-0.6b
# linear shape, 2..32 rows, inside CUDA graphs) and benchmarks/prefill_opt/extend_blocks.py
# (extend attention time by query tile, inside CUDA graphs).
# Writes under $OUT: prefill_kernel_tests.log, skinny_gemm.json + .log, extend_blocks.json + .log.
# Usage: OUT=/some/dir bash scripts/gpu/prefill_kernels.sh    (hard stop at ~6 min)
set -uo pipefail
source "$(dirname "$0")/common.sh"
run_setup prefill_kernels.sh 360 prefill_kernels_summary.txt 1
status=0

run prefill_kernel_tests 150 "$PY" -m pytest tests/ops/test_skinny_gemm.py \
  tests/attention/test_triton_attention.py -q -rA -p no:cacheprovider
run skinny_gemm 200 "$PY" benchmarks/prefill_opt/skinny_gemm.py --out "$OUT/skinny_gemm.json"
run extend_blocks 120 "$PY" benchmarks/prefill_opt/extend_blocks.py --out "$OUT/extend_blocks.json"
echo "[prefill_kernels.sh] done in ${SECONDS}s, status $status"
exit $status
