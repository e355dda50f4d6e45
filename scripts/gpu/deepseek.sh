#!/usr/bin/env bash
# DeepSeek-V2-Lite on one GPU (issue 27's figures), dummy weights in the real shapes, in parts
# that each fit one device call:
#   PART=kernels: the GPU tests of the MLA, block-FP8 GEMM and FP8 fused-MoE kernels, then
#     scripts/gpu/fp8_gemm_bench.py (FP8 vs bf16 GEMM at the model's linear shapes).
#   PART=latency: `tessera bench latency` decode bs 1 / 32 and prefill 256 / 1024 for
#     deepseek-v2-lite (bf16) and deepseek-v2-lite-fp8, with decode graphs + PCG and with both
#     off; HF transformers eager (bf16, same weights and tokens) beside the bf16 run.
#   PART=serving: `tessera bench serving` (500 random prompts, in <= 1024, out <= 512, all at
#     once) against `tessera serve --model-path deepseek-v2-lite` with PCG on, then off.
# Writes under $OUT: <step>.log, *.json, deepseek_summary.txt.
# Usage: OUT=/some/dir PART=kernels bash scripts/gpu/deepseek.sh
set -uo pipefail
source "$(dirname "$0")/common.sh"
run_setup deepseek.sh "${BUDGET_S:-570}" deepseek_summary.txt 1
status=0
LAT=("$PY" -m tessera.bench.latency --load-format dummy --dtype bfloat16
     --attention-backend triton --batch-size 1 32 --input-len 256 1024 --output-len 16
     --warmup 1 --repeat 3)
NOGRAPH=(--disable-cuda-graph --disable-piecewise-cuda-graph)
case "${PART:-kernels}" in
kernels)
  run kernel_gpu_tests 200 "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider \
    tests/attention/test_triton_mla.py tests/ops/test_fp8_gemm.py tests/ops/test_fused_moe_fp8.py
  run fp8_gemm_bench 200 "$PY" scripts/gpu/fp8_gemm_bench.py --out "$OUT/fp8_gemm_bench.json"
  ;;
latency)
  run lat_bf16_graphs 150 "${LAT[@]}" --model-path deepseek-v2-lite \
    --out "$OUT/latency_dsv2lite_bf16_graphs.json"
  run lat_bf16_nographs_hf 200 "${LAT[@]}" --model-path deepseek-v2-lite "${NOGRAPH[@]}" \
    --compare hf --out "$OUT/latency_dsv2lite_bf16_nographs_hf.json"
  run lat_fp8_graphs 150 "${LAT[@]}" --model-path deepseek-v2-lite-fp8 \
    --out "$OUT/latency_dsv2lite_fp8_graphs.json"
  run lat_fp8_nographs 100 "${LAT[@]}" --model-path deepseek-v2-lite-fp8 "${NOGRAPH[@]}" \
    --out "$OUT/latency_dsv2lite_fp8_nographs.json"
  ;;
serving)
  for mode in pcg nopcg; do
    flags=(); [ "$mode" = nopcg ] && flags=(--disable-piecewise-cuda-graph)
    PORT=$("$PY" -c "from tessera.server.testing import free_port; print(free_port())")
    "$PY" -m tessera.launch_server --model-path deepseek-v2-lite --load-format dummy \
      --port "$PORT" "${flags[@]}" >"$OUT/server_$mode.log" 2>&1 &
    pid=$!
    if ! wait_healthy "http://127.0.0.1:$PORT" "$pid" 200; then
      tail -30 "$OUT/server_$mode.log"; status=1; continue
    fi
    run "serving_$mode" 200 "$PY" -m tessera.bench.serving --port "$PORT" --num-prompts 500 \
      --random-input-len 1024 --random-output-len 512 --random-range-ratio 0 \
      --output-file "$OUT/serving_dsv2lite_$mode.json"
    kill -TERM "$pid"; wait "$pid"
  done
  ;;
*) echo "PART must be kernels, latency or serving" >&2; exit 2 ;;
esac
exit $status
