#!/usr/bin/env bash
# A/B of two source trees on one GPU, one after the other in the same call: decode and prefill
# latency and graph capture cost, for llama3-8b and qwen3-0.6b (dummy weights in the real shapes,
# bf16, triton attention). BASE is a directory holding another tree's `tessera` package (e.g.
# `mkdir ab_base && git archive REV tessera | tar -x -C ab_base`, carried to the device); the
# other tree is this checkout. Each tree runs the same `tessera.bench.latency` commands:
#   decode: PCG off, decode graphs on, bs 1 and 32, 128 prompt tokens, 64 output tokens;
#   prefill: PCG on (decode graphs off), bs 1, 16 / 256 / 1024 prompt tokens, one output token;
#     its JSON also holds the graph runners' capture seconds and memory.
# ORDER="new base" runs this checkout first (the first run also pays for cold Triton and
# inductor caches, which shows in its capture time: run both orders).
# Writes under $OUT: <tree>_<run>.json + .log, ab_summary.txt (medians side by side, new / base).
# Usage: BASE=ab_base OUT=/some/dir bash scripts/gpu/ab_trees.sh   (~7 min on an H100)
set -uo pipefail
source "$(dirname "$0")/common.sh"
run_setup ab_trees.sh 560 ab_summary.txt
status=0
BASE=$(cd "${BASE:?BASE: the other tree}" && pwd)
NEW=$PWD

"$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
"device", torch.cuda.get_device_name())' | tee "$OUT/environment.log"

COMMON=(-m tessera.bench.latency --load-format dummy --dtype bfloat16 --attention-backend triton
        --max-running-requests 32 --cuda-graph-max-bs 32 --warmup 2 --repeat 5)
for model in llama3-8b qwen3-0.6b; do
  for tree in ${ORDER:-base new}; do
    dir=$BASE; [ "$tree" = new ] && dir=$NEW
    PYTHONPATH="$dir" run "${tree}_decode_$model" 120 "$PY" "${COMMON[@]}" --model-path "$model" \
      --disable-piecewise-cuda-graph --batch-size 1 32 --input-len 128 --output-len 64 \
      --out "$OUT/${tree}_decode_$model.json"
    PYTHONPATH="$dir" run "${tree}_prefill_$model" 120 "$PY" "${COMMON[@]}" --model-path "$model" \
      --disable-cuda-graph --chunked-prefill-size 1024 --piecewise-cuda-graph-max-tokens 1024 \
      --batch-size 1 --input-len 16 256 1024 --output-len 1 --out "$OUT/${tree}_prefill_$model.json"
  done
done

OUT="$OUT" "$PY" - <<'PYEOF' | tee -a "$OUT/ab_summary.txt"
import json, os

out = os.environ["OUT"]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


for model in ("llama3-8b", "qwen3-0.6b"):
    for kind, figure in (("decode", "decode_ms_per_step"), ("prefill", "prefill_ms")):
        base, new = load(f"base_{kind}_{model}.json"), load(f"new_{kind}_{model}.json")
        if base is None or new is None:
            print(f"{model} {kind}: missing result")
            continue
        for b, n in zip(base["results"], new["results"]):
            key = f"bs={b['batch_size']} in={b['input_len']}"
            bv, nv = b[figure]["median"], n[figure]["median"]
            print(f"{model} {kind} {key}: base {bv:.3f} ms, new {nv:.3f} ms ({nv / bv - 1:+.1%})")
        for tree, report in (("base", base), ("new", new)):
            for runner, cost in report.get("graph_capture", {}).items():
                print(f"{model} {kind} {tree} capture {runner}: {cost['seconds']:.2f} s, "
                      f"{cost['memory_mib']:.0f} MiB")
PYEOF
echo "[ab_trees.sh] done in ${SECONDS}s, status $status"
exit $status
