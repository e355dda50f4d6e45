#!/usr/bin/env bash
# Device-machine driver for the decode_opt study (one H200). Usage:
#   OUT=/dir bash benchmarks/decode_opt/run_h200.sh study   # GEMV sweep + code-path variants
#   OUT=/dir bash benchmarks/decode_opt/run_h200.sh verify  # bench latency variants
# Every step gets at most what is left of BUDGET seconds (default 330) and logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
unset TRITON_INTERPRET
DEADLINE=$((SECONDS + ${BUDGET:-330}))
PY=python3
S=benchmarks/decode_opt/profile_decode.py

run() {  # run NAME LIMIT CMD...
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  shift 2
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 15 ]; then echo "[run_h200] skipped $name"; return; fi
  echo "[run_h200] $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "[run_h200] $name rc=$? at ${SECONDS}s"
  tail -n 40 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv > "$OUT/environment.log" 2>&1
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' \
  >> "$OUT/environment.log" 2>&1

BENCH=($PY -m tessera.bench.latency --load-format dummy --dtype bfloat16
       --attention-backend triton --disable-piecewise-cuda-graph --warmup 1 --repeat 3
       --input-len 128 --output-len 64)
case "${1:-study}" in
study)  # first run: GEMV sweep + code-path variants
  run gemv 140 $PY $S gemv --out "$OUT/gemv.json"
  run variants_qwen3-0.6b 75 $PY $S variants --model qwen3-0.6b --out "$OUT/variants_qwen3-0.6b.json"
  run variants_llama3-8b 110 $PY $S variants --model llama3-8b --out "$OUT/variants_llama3-8b.json"
  ;;
study2)  # second run: variants after the fixes, then the GPU tests
  run variants_qwen3-0.6b 60 $PY $S variants --model qwen3-0.6b --out "$OUT/variants_qwen3-0.6b.json"
  run variants_llama3-8b 90 $PY $S variants --model llama3-8b --out "$OUT/variants_llama3-8b.json"
  run gpu_tests 240 $PY -m pytest -q -p no:cacheprovider tests/ops tests/attention tests/runner \
    tests/models -m gpu -x
  ;;
verify)  # bench latency as shipped (GEMV, PDL), with torch linears, and without PDL
  run latency_qwen3-0.6b 40 "${BENCH[@]}" --model-path qwen3-0.6b --batch-size 1 32 \
    --out "$OUT/latency_qwen3-0.6b.json"
  run latency_llama3-8b 50 "${BENCH[@]}" --model-path llama3-8b --batch-size 1 32 \
    --out "$OUT/latency_llama3-8b.json"
  run latency_torch_linear_qwen3-0.6b 35 "${BENCH[@]}" --linear-backend torch \
    --model-path qwen3-0.6b --batch-size 1 32 --out "$OUT/latency_torch_linear_qwen3-0.6b.json"
  run latency_torch_linear_llama3-8b 45 "${BENCH[@]}" --linear-backend torch \
    --model-path llama3-8b --batch-size 1 32 --out "$OUT/latency_torch_linear_llama3-8b.json"
  run latency_nopdl_qwen3-0.6b 30 "${BENCH[@]}" --disable-pdl --model-path qwen3-0.6b \
    --batch-size 1 --out "$OUT/latency_nopdl_qwen3-0.6b.json"
  run latency_nopdl_llama3-8b 40 "${BENCH[@]}" --disable-pdl --model-path llama3-8b \
    --batch-size 1 --out "$OUT/latency_nopdl_llama3-8b.json"
  run variants_qwen3-0.6b 35 $PY $S variants --model qwen3-0.6b --out "$OUT/variants_qwen3-0.6b.json"
  run variants_llama3-8b 45 $PY $S variants --model llama3-8b --out "$OUT/variants_llama3-8b.json"
  ;;
esac
echo "[run_h200] done at ${SECONDS}s"
