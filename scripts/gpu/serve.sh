#!/usr/bin/env bash
# Serving on one GPU: `tessera serve --model-path qwen3-0.6b` (dummy weights in the real shapes,
# bf16), then
#   1. `tessera bench serving`: 200 random prompts, input 512 / output 128 (exact: ignore_eos),
#      max concurrency 32, and again with all 200 at once;
#   2. `tessera bench gsm8k` 5-shot (synthetic problems: nothing can be downloaded there; random
#      weights make accuracy meaningless, the point is throughput and prefix reuse),
# and the same gsm8k run on a server restarted with --disable-radix-cache, for comparison.
# The server's /get_server_info and /metrics are logged after each run.
#
# Writes under $OUT (7 files): serve_bench.log (everything printed), server_radix.log and
# server_noradix.log (the servers' own logs), bench_serving_c32.json, bench_serving_all.json,
# gsm8k_radix.json, gsm8k_noradix.json.
# Needs fastapi/uvicorn/pyzmq/pydantic: installed from the wheels in .whl when missing (carry .whl).
# Usage: OUT=/some/dir bash scripts/gpu/serve.sh    (~4 min on an H200; hard stop at ~8 min)
#        SMOKE=1 bash scripts/gpu/serve.sh           (tiny model and counts: checks the script on a CPU)
set -uo pipefail
source "$(dirname "$0")/common.sh"
DEADLINE=$((SECONDS + 460))
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=(--model-path tiny-qwen3 --kv-cache-tokens 16384); N=8; IN=64; OUT_LEN=8; GSM_N=8
else
  MODEL=(--model-path qwen3-0.6b); N=200; IN=512; OUT_LEN=128; GSM_N=200
fi
LOG="$OUT/serve_bench.log"
: >"$LOG"
status=0
SERVER_PID=""

say() { echo "[serve.sh ${SECONDS}s] $*" | tee -a "$LOG"; }

if ! "$PY" -c "import fastapi, uvicorn, zmq, pydantic, prometheus_client, httpx" 2>/dev/null; then
  say "installing server dependencies from .whl"
  "$PY" -m pip install -q --no-index --find-links .whl fastapi uvicorn pyzmq pydantic \
    prometheus-client httpx 2>&1 | tee -a "$LOG"
fi
"$PY" -c 'import torch, fastapi, uvicorn, zmq; print("torch", torch.__version__, "device",
torch.cuda.get_device_name(), "fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__)' \
  2>&1 | tee -a "$LOG"

PORT=$("$PY" -c "from tessera.server.testing import free_port; print(free_port())")
BASE="http://127.0.0.1:$PORT"

# start_server NAME FLAGS...: start in the background, wait (<= 240 s) for /health
start_server() {
  local name=$1
  shift
  say "starting server $name: ${MODEL[*]} $*"
  "$PY" -m tessera.launch_server "${MODEL[@]}" --port "$PORT" "$@" \
    >"$OUT/server_$name.log" 2>&1 &
  SERVER_PID=$!
  if ! wait_healthy "$BASE" "$SERVER_PID"; then
    say "server $name failed to start; its log:"
    tail -n 40 "$OUT/server_$name.log" | tee -a "$LOG"
    return 1
  fi
  say "server $name is up"
  grep -E "tessera.server\]|KV cache|graph" "$OUT/server_$name.log" | tee -a "$LOG"
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 1 30); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  say "server stopped (rc $?)"
  SERVER_PID=""
}
trap stop_server EXIT

# run NAME LIMIT_S CMD...: at most LIMIT_S seconds (less if the deadline is nearer). Replaces
# common.sh's run: output goes to serve_bench.log, lines through say, skipped under 20 s left
run() {
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  shift 2
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    say "skipped $name: time budget spent"
    status=1
    return
  fi
  say "$name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "$name rc=$rc"
  [ "$rc" -eq 0 ] || status=1
}

server_state() {
  say "server state ($1):"
  "$PY" - "$BASE" <<'EOF' 2>&1 | tee -a "$LOG"
import sys, httpx
base = sys.argv[1]
print(httpx.get(f"{base}/get_server_info", timeout=10).json()["engine"])
for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
    if line.startswith("tessera:") and "_bucket" not in line:
        print(line)
EOF
}

GSM8K=(-m tessera.bench.gsm8k --base-url "$BASE" --synthetic --num-shots 5 --num-questions "$GSM_N"
       --parallel 64 --max-tokens "$OUT_LEN")
SERVING=(-m tessera.bench.serving --base-url "$BASE" --dataset random --num-prompts "$N"
         --random-input-len "$IN" --random-output-len "$OUT_LEN" --random-range-ratio 1.0)

if start_server radix; then
  run bench_serving_c32 150 "$PY" "${SERVING[@]}" --max-concurrency 32 \
    --output-file "$OUT/bench_serving_c32.json"
  run bench_serving_all 120 "$PY" "${SERVING[@]}" --request-rate inf \
    --output-file "$OUT/bench_serving_all.json"
  run gsm8k_radix 120 "$PY" "${GSM8K[@]}" --output-file "$OUT/gsm8k_radix.json"
  server_state "after the radix runs"
else
  status=1
fi
stop_server

if start_server noradix --disable-radix-cache; then
  run gsm8k_noradix 120 "$PY" "${GSM8K[@]}" --output-file "$OUT/gsm8k_noradix.json"
  server_state "after the no-radix run"
else
  status=1
fi
stop_server

say "done, status $status"
exit $status
