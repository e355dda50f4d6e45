#!/usr/bin/env bash
# Piecewise CUDA graphs on one GPU: the GPU tests of tests/compilation (real capture; replay ==
# eager in bf16 for every size, inductor pieces, pool shared with decode graphs, llama3-8b-shaped
# layers), then the prefill benchmarks: tessera.bench.pcg (device-event medians of
# ModelRunner.forward with PCG vs --disable-piecewise-cuda-graph, capture time and memory) and
# `tessera bench latency` prefill-only (--output-len 1: one engine step incl. sampling) with PCG.
# Models: llama3-8b N=16/256/1024 and qwen3-0.6b N=256, bf16, dummy weights in the real shapes.
# Targets (shared/BENCHMARKS.md): llama3-8b <= 4.5 / 6.5 / 24 ms, qwen3-0.6b <= 1.0 ms, PCG >= 3x
# eager for N <= 256, capture of all sizes (llama3-8b) <= 30 s and <= 1 GiB.
#
# Writes under $OUT: environment.log, pcg_tests.log, pcg_bench.json + .log,
# latency_pcg_<model>.json + .log, pcg_summary.txt (figures next to their targets).
# Usage: OUT=/some/dir bash scripts/gpu/pcg.sh    (hard stop at ~9 min)
set -uo pipefail
source "$(dirname "$0")/common.sh"
run_setup pcg.sh 530 pcg_summary.txt 1  # each step: at most what is left of ~9 minutes
status=0

"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "device", torch.cuda.get_device_name())' | tee "$OUT/environment.log"

run pcg_tests 270 "$PY" -m pytest tests/compilation -m gpu -v -rA -p no:cacheprovider --durations=10

run pcg_bench 300 "$PY" -m tessera.bench.pcg --case llama3-8b:16,256,1024 \
  --case qwen3-0.6b:256 --out "$OUT/pcg_bench.json"

LATENCY=("$PY" -m tessera.bench.latency --load-format dummy --dtype bfloat16
         --attention-backend triton --batch-size 1 --output-len 1 --warmup 3 --repeat 10)
run latency_pcg_llama3-8b 120 "${LATENCY[@]}" --model-path llama3-8b --input-len 16 256 1024 \
  --out "$OUT/latency_pcg_llama3-8b.json"
run latency_pcg_qwen3-0.6b 90 "${LATENCY[@]}" --model-path qwen3-0.6b --input-len 256 \
  --out "$OUT/latency_pcg_qwen3-0.6b.json"

OUT="$OUT" "$PY" - <<'EOF' | tee -a "$OUT/pcg_summary.txt"
import json, os

out = os.environ["OUT"]
path = os.path.join(out, "pcg_bench.json")
if os.path.exists(path):
    for model in json.load(open(path))["models"]:
        pcg = model["pcg"]
        print(f"{model['model']}: capture {pcg['capture_s']:.1f} s, {pcg['capture_gib']:.2f} GiB, "
              f"{pcg['graphs']} graphs ({len(pcg['capture_sizes'])} sizes x "
              f"{pcg['graph_pieces']} pieces), compiles {pcg['compiles']}, refused recompiles "
              f"{pcg['refused_recompiles']}; init {pcg['init_s']:.1f} s"
              + ("" if model["model"] != "llama3-8b" else
                 f" | capture target <= 30 s, <= 1 GiB: "
                 f"{'PASS' if pcg['meets_capture_targets'] else 'MISS'}"))
        for c in model["cases"]:
            line = (f"  N={c['num_tokens']:<5} PCG {c['pcg_ms']['median']:8.3f} ms ({c['path']}, "
                    f"host {c['pcg_host_ms']['median']:.3f} ms)  eager "
                    f"{c['eager_ms']['median']:8.3f} ms  x{c['speedup']:.2f}  logits diff "
                    f"{c['max_abs_logit_diff']:.3g}, same argmax {c['same_argmax']}")
            if "target_ms" in c:
                line += f" | <= {c['target_ms']} ms: {'PASS' if c['meets_target_ms'] else 'MISS'}"
            if "meets_target_speedup" in c:
                line += f" | >= 3x: {'PASS' if c['meets_target_speedup'] else 'MISS'}"
            print(line)
else:
    print("pcg_bench: no result")
for model in ("llama3-8b", "qwen3-0.6b"):
    path = os.path.join(out, f"latency_pcg_{model}.json")
    if not os.path.exists(path):
        print(f"latency_pcg_{model}: no result")
        continue
    for r in json.load(open(path))["results"]:
        print(f"latency {model} bs=1 in={r['input_len']}: prefill step "
              f"{r['prefill_ms']['median']:.3f} ms ({r['prefill_path']})")
EOF
echo "[pcg.sh] done in ${SECONDS}s, status $status"
exit $status
