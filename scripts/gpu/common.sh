# Shared prologue of the scripts/gpu/*.sh runners, sourced (never run) as their first step:
#   source "$(dirname "$0")/common.sh"
# Moves to the repository root; sets OUT (default ./out, created), PY ($PYTHON, default python3)
# and PYTHONPATH (this checkout first); unsets TRITON_INTERPRET. Defines run_setup and run below
# for the scripts that run their steps under one time budget.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-$PWD/out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled kernels here, never the interpreter

# run_setup TAG BUDGET_S SUMMARY [RC_TO_SUMMARY]: configures `run`. Its lines start with "[TAG]";
# every step gets at most what is left of BUDGET_S seconds from now (DEADLINE); skipped steps are
# noted in $OUT/SUMMARY, and so are the rc lines when RC_TO_SUMMARY is 1. A failed or skipped step
# sets status=1 (the script's exit status).
run_setup() {
  RUN_TAG=$1
  DEADLINE=$((SECONDS + $2))
  RUN_SUMMARY=$OUT/$3
  RUN_RC_TO_SUMMARY=${4:-0}
}

# run NAME LIMIT_S CMD...: at most LIMIT_S seconds (less if the deadline is nearer), output to
# $OUT/NAME.log; skipped when under 30 s are left
run() {
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  shift 2
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 30 ]; then
    echo "[$RUN_TAG] skipped $name: time budget spent" | tee -a "$RUN_SUMMARY"
    status=1
    return
  fi
  echo "[$RUN_TAG] $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$RUN_RC_TO_SUMMARY" = 1 ]; then
    echo "[$RUN_TAG] $name rc=$rc after ${SECONDS}s" | tee -a "$RUN_SUMMARY"
  else
    echo "[$RUN_TAG] $name rc=$rc after ${SECONDS}s"
  fi
  [ "$rc" -eq 0 ] || status=1
}

# wait_healthy BASE_URL PID [TIMEOUT_S]: until BASE_URL/health answers 200 (status 0), the server
# process PID exits, or TIMEOUT_S (default 240) seconds pass (status 1, with the reason on stderr)
wait_healthy() {
  "$PY" - "$1" "$2" "${3:-240}" <<'PYEOF'
import os, sys, time, httpx
base, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server exited during startup")
    try:
        if httpx.get(f"{base}/health", timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(1)
sys.exit(f"server not healthy after {limit:.0f} s")
PYEOF
}
