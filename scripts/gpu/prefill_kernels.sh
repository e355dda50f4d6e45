#!/usr/bin/env bash
# Extend attention on one GPU (session 6): the attention tests compiled (the CPU-sized ones and
# the `gpu` ones: tile choice, prepared launches checked against the JIT, bf16 mixes), then the
# tile sweep behind `choose_tile`: benchmarks/prefill_opt/extend_blocks.py (time per launch by
# query tile, inside CUDA graphs).
# Writes under $OUT: attention_tests.log, extend_blocks.json + .log.
# Usage: OUT=/some/dir bash scripts/gpu/prefill_kernels.sh    (hard stop at ~5 min)
set -uo pipefail
source "$(dirname "$0")/common.sh"
run_setup prefill_kernels.sh 300 prefill_kernels_summary.txt 1
status=0

run attention_tests 200 "$PY" -m pytest tests/attention/test_triton_attention.py -q -rA \
  -p no:cacheprovider
run extend_blocks 100 "$PY" benchmarks/prefill_opt/extend_blocks.py --out "$OUT/extend_blocks.json"
echo "[prefill_kernels.sh] done in ${SECONDS}s, status $status"
exit $status
