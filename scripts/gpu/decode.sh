#!/usr/bin/env bash
# Decode CUDA graphs on one GPU: the GPU tests of tests/runner (graph replay == eager decoding),
# then `tessera bench latency` for llama3-8b and qwen3-0.6b (dummy weights in the real shapes, bf16,
# triton attention) at bs 1 / 32 / 128 with HF transformers on the same weights and tokens, and
# eager (no decode graph) baselines at bs 1, and llama3-8b bs 1 with --disable-overlap-schedule
# (every step read before the next). Piecewise graphs are off: this measures decode.
# Targets (shared/BENCHMARKS.md): llama3-8b bs=1 <= 4.1 ms/step, qwen3-0.6b bs=1 <= 1.0 ms/step.
#
# Writes under $OUT: decode_tests.log, latency_<run>.json + .log per benchmark run,
# decode_summary.txt (the figures next to their targets).
# Usage: OUT=/some/dir bash scripts/gpu/decode.sh    (~6 min on an H200; hard stop at ~9 min)
set -uo pipefail
source "$(dirname "$0")/common.sh"
run_setup decode.sh 520 decode_summary.txt  # each step: at most what is left of ~9 minutes
status=0

"$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "cuda",
torch.version.cuda, "triton", triton.__version__, "transformers", transformers.__version__,
"device", torch.cuda.get_device_name())' | tee "$OUT/environment.log"

run decode_tests 180 "$PY" -m pytest tests/runner -m gpu -v -rA -p no:cacheprovider

BENCH=("$PY" -m tessera.bench.latency --load-format dummy --dtype bfloat16
       --attention-backend triton --disable-piecewise-cuda-graph --warmup 1 --repeat 3)
run latency_llama3-8b 200 "${BENCH[@]}" --model-path llama3-8b --batch-size 1 32 128 \
  --input-len 128 --output-len 64 --compare hf --out "$OUT/latency_llama3-8b.json"
run latency_qwen3-0.6b 150 "${BENCH[@]}" --model-path qwen3-0.6b --batch-size 1 32 128 \
  --input-len 128 --output-len 64 --compare hf --out "$OUT/latency_qwen3-0.6b.json"
# the same decode with every step read before the next is launched (the overlap schedule off)
run latency_llama3-8b_sync 90 "${BENCH[@]}" --model-path llama3-8b --batch-size 1 \
  --input-len 128 --output-len 64 --disable-overlap-schedule --out "$OUT/latency_llama3-8b_sync.json"
run latency_llama3-8b_eager 90 "${BENCH[@]}" --model-path llama3-8b --batch-size 1 \
  --input-len 128 --output-len 32 --disable-cuda-graph --out "$OUT/latency_llama3-8b_eager.json"
run latency_qwen3-0.6b_eager 90 "${BENCH[@]}" --model-path qwen3-0.6b --batch-size 1 \
  --input-len 128 --output-len 32 --disable-cuda-graph --out "$OUT/latency_qwen3-0.6b_eager.json"

OUT="$OUT" "$PY" - <<'EOF' | tee -a "$OUT/decode_summary.txt"
import json, os

out = os.environ["OUT"]
targets = {("llama3-8b", 1): 4.1, ("qwen3-0.6b", 1): 1.0}
for run in ("llama3-8b", "qwen3-0.6b", "llama3-8b_sync", "llama3-8b_eager", "qwen3-0.6b_eager"):
    path = os.path.join(out, f"latency_{run}.json")
    if not os.path.exists(path):
        print(f"{run}: no result")
        continue
    report = json.load(open(path))
    model = report["model"]
    for r in report["results"]:
        ms = r["decode_ms_per_step"]["median"]
        line = (f"{run:<18} bs={r['batch_size']:<4} decode {ms:7.3f} ms/step "
                f"({r['decode_tok_s']['median']:9.1f} tok/s, {r['decode_path']}), "
                f"prefill {r['prefill_ms']['median']:8.2f} ms")
        device = r.get("decode_forward_device_ms")
        if device:  # device time of the forward: the rest of the step is host work
            line += f", forward on device {device['median']:.3f} ms"
        target = targets.get((model, r["batch_size"]))
        if target is not None and not run.endswith(("_eager", "_sync")):
            line += f" | target <= {target}: {'PASS' if ms <= target else 'MISS'}"
        if "hf" in r:
            line += (f" | HF decode {r['hf']['decode_ms_per_step']['median']:.2f} ms/step "
                     f"(x{r['speedup_vs_hf']['decode']:.2f}), HF prefill "
                     f"{r['hf']['prefill_ms']['median']:.2f} ms (x{r['speedup_vs_hf']['prefill']:.2f})"
                     f", logits diff {r['hf_check']['max_abs_logit_diff']:.3g}"
                     f"/{r['hf_check']['max_abs_logit']:.3g}")
        print(line)
EOF
echo "[decode.sh] done in ${SECONDS}s, status $status"
exit $status
