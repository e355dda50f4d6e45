#!/usr/bin/env bash
# Throughput under load (issue 30): `tessera serve --model-path llama3-8b` (dummy weights, real
# shapes, bf16) with SGLang's CI offline workload shape, all 500 requests at once:
#   tessera bench serving --num-prompts 500 --random-input-len 4096 --random-output-len 2048
#                         --random-range-ratio 0
# then the server's retraction count (engine stats) and its retraction-rate log lines.
# PROFILE=1 also asks the server for a torch-profiler trace of 40 steps 60 s into the run (written
# under $OUT/profile) and summarizes it (scripts/gpu/trace_summary.py) into throughput_profile.txt.
# Needs fastapi/uvicorn/pyzmq/pydantic (carry .whl; installed from it when missing).
# Writes under $OUT: throughput_server.log, throughput_bench.json, throughput_summary.txt.
# Usage: OUT=/some/dir bash scripts/gpu/throughput.sh   (hard stop at ~9 min)
set -uo pipefail
source "$(dirname "$0")/common.sh"
SUMMARY="$OUT/throughput_summary.txt"
: >"$SUMMARY"
if ! "$PY" -c "import fastapi, uvicorn, zmq, pydantic" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "device", torch.cuda.get_device_name())' \
  | tee -a "$SUMMARY"
PORT=$("$PY" -c "from tessera.server.testing import free_port; print(free_port())")
BASE="http://127.0.0.1:$PORT"
[ "${PROFILE:-0}" = 1 ] && export TESSERA_PROFILE_DIR="$OUT/profile"
"$PY" -m tessera.launch_server --model-path llama3-8b --load-format dummy --port "$PORT" \
  ${SERVER_FLAGS:-} >"$OUT/throughput_server.log" 2>&1 &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null; sleep 5; kill -KILL $SERVER_PID 2>/dev/null' EXIT
wait_healthy "$BASE" "$SERVER_PID" || { tail -30 "$OUT/throughput_server.log"; exit 1; }
echo "server up after ${SECONDS}s" | tee -a "$SUMMARY"
grep -E "chunked prefill|max running|KV cache|captured" "$OUT/throughput_server.log" | head -8 | tee -a "$SUMMARY"
PROF=()
[ "${PROFILE:-0}" = 1 ] && PROF=(--profile --profile-steps 40 --profile-start-s 60)
timeout $((540 - SECONDS)) "$PY" -m tessera.bench.serving --base-url "$BASE" --num-prompts 500 \
  --random-input-len 4096 --random-output-len 2048 --random-range-ratio 0 "${PROF[@]}" \
  --output-file "$OUT/throughput_bench.json" 2>&1 | tail -30 | tee -a "$SUMMARY"
"$PY" -c "import httpx,sys; print(httpx.get(sys.argv[1] + '/get_server_info', timeout=10).json()['engine'])" \
  "$BASE" 2>&1 | tee -a "$SUMMARY"
grep -E "retract" "$OUT/throughput_server.log" | tail -8 | tee -a "$SUMMARY"
if [ "${PROFILE:-0}" = 1 ]; then
  for trace in "$OUT"/profile/*.trace.json.gz; do
    [ -e "$trace" ] && "$PY" scripts/gpu/trace_summary.py "$trace" >"$OUT/throughput_profile.txt" 2>&1
  done
fi
