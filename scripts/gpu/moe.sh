#!/usr/bin/env bash
# Mixture-of-experts on one GPU (issue 26's figures), in parts that each fit one device call:
#   PART=kernels: the GPU tests of the MoE path (fused MoE kernel vs the per-expert loop at
#     qwen3-30b-a3b / deepseek-v2-lite expert shapes, layers, HF parity, PCG), then
#     scripts/gpu/moe_bench.py (fused vs loop, and the copy-floor fraction at decode sizes).
#   PART=latency: `tessera bench latency` on qwen3-30b-a3b (dummy weights, real shapes, bf16):
#     decode bs 1 / 32, prefill 256 / 1024, with decode graphs + PCG, then with both off and HF
#     transformers eager on the same weights and tokens (run after tessera's device memory is
#     released: the 61 GB of bf16 weights do not fit twice on an 80 GB card).
#   PART=sweep: scripts/gpu/moe_small_sweep.py, the small-batch path's block sizes at T=1 / 4.
#   PART=tune SHAPE=qwen3-30b-a3b|deepseek-v2-lite: scripts/gpu/moe_tune.py, the grouped path's
#     block sizes per token count, written as the table tessera reads (fused_moe_E*_N*.json).
# Writes under $OUT: <step>.log, moe_small_sweep.json, moe_bench.json,
# latency_qwen3-30b-a3b_{graphs,nographs_hf}.json,
# moe_summary.txt. Usage: OUT=/some/dir PART=kernels bash scripts/gpu/moe.sh
set -uo pipefail
source "$(dirname "$0")/common.sh"
run_setup moe.sh "${BUDGET_S:-570}" moe_summary.txt 1
status=0
"$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton",
triton.__version__, "transformers", transformers.__version__, "device",
torch.cuda.get_device_name())' | tee -a "$OUT/moe_summary.txt"

case "${PART:-kernels}" in
kernels)
  run moe_gpu_tests 260 "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider \
    tests/ops/test_fused_moe.py tests/layers tests/models/test_hf_parity_moe.py \
    tests/compilation/test_piecewise_moe.py
  run moe_bench 200 "$PY" scripts/gpu/moe_bench.py --out "$OUT/moe_bench.json"
  ;;
latency)
  BENCH=("$PY" -m tessera.bench.latency --model-path qwen3-30b-a3b --load-format dummy
         --dtype bfloat16 --attention-backend triton --batch-size 1 32 --input-len 256 1024
         --output-len 16 --warmup 1 --repeat "${REPEAT:-3}")
  run latency_graphs 230 "${BENCH[@]}" --out "$OUT/latency_qwen3-30b-a3b_graphs.json"
  # COMPARE_HF=0: without HF (a shorter call)
  HF=(--compare hf); [ "${COMPARE_HF:-1}" = 0 ] && HF=()
  run latency_nographs_hf 290 "${BENCH[@]}" --disable-cuda-graph --disable-piecewise-cuda-graph \
    "${HF[@]}" --out "$OUT/latency_qwen3-30b-a3b_nographs_hf.json"
  ;;
sweep)  # block sizes of the small-batch path at decode sizes (T=1, 4)
  run moe_small_sweep 420 "$PY" scripts/gpu/moe_small_sweep.py --out "$OUT/moe_small_sweep.json"
  ;;
tune)  # grouped-path block sizes for SHAPE (qwen3-30b-a3b or deepseek-v2-lite); the table
  # $OUT/fused_moe_E*_N*.json goes to tessera/ops/triton/configs/
  run "moe_tune_${SHAPE:-qwen3-30b-a3b}" 560 "$PY" scripts/gpu/moe_tune.py \
    --shape "${SHAPE:-qwen3-30b-a3b}" --out-dir "$OUT"
  ;;
*) echo "PART must be kernels, latency, sweep or tune" >&2; exit 2 ;;
esac
exit $status
