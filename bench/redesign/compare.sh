#!/usr/bin/env bash
# Throughput of two worker builds side by side, in one run: the load driver's
# kv-echo scenarios against a pool of each, interleaved (base, new, base, ...)
# for REPS repetitions, each pool a fresh process. Prints, per scenario, the
# median and min-max elements/s of each build and the median (min-max) of the
# per-repetition ratios new/base.
#
# Usage: bench/redesign/compare.sh BASE_BIN NEW_BIN [REPS]
# Used to check that the operator-graph harness (issue 9) loses no throughput
# against the commit before it; results in bench/redesign/results.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE="$1" NEW="$2" REPS="${3:-5}"
LOADGEN="$ROOT/target/release/fnapi-loadgen"
OUT="$(mktemp -d /tmp/redesign-compare.XXXXXX)"
# name|elements|key|value|bundle elements|chunk bytes|in flight|workers|max secs|order
SCENARIOS=(
  "big|1000000|10|100|1000000|1000000|1|1|30|request-first"
  "flink|1000000|10|100|1000|1000000|4|1|20|request-first"
  "latency|5000|10|100|1|1000000|1|1|10|request-first"
)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_one() { # build-name binary scenario-row rep
  local name="$1" bin="$2" row="$3" rep="$4"
  IFS='|' read -r sc elements key value bundle chunk inflight workers maxs order <<<"$row"
  local port; port="$(free_port)"
  "$bin" --port "$port" --expansion-port 0 >"$OUT/pool-$name.log" 2>&1 &
  local pid=$!
  "$LOADGEN" run --target kv-echo --pool "127.0.0.1:$port" --pool-pid "$pid" \
    --label "$sc" --elements "$elements" --key-size "$key" --value-size "$value" \
    --bundle-elements "$bundle" --chunk-bytes "$chunk" --in-flight "$inflight" \
    --workers "$workers" --max-seconds "$maxs" --order "$order" \
    --json "$OUT/$sc-$name-$rep.json" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

uptime
for row in "${SCENARIOS[@]}"; do
  for rep in $(seq 1 "$REPS"); do
    run_one base "$BASE" "$row" "$rep"
    run_one new "$NEW" "$row" "$rep"
  done
done
uptime
python3 - "$OUT" "$REPS" <<'EOF'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
def rate(sc, name, rep):
    d = json.load(open(f"{out}/{sc}-{name}-{rep}.json"))
    return d["elements_per_sec"]
print("| scenario | base elements/s (median, min-max) | new elements/s | new/base (median of per-rep ratios, min-max) |")
print("|---|---|---|---|")
for sc in ["big", "flink", "latency"]:
    b = [rate(sc, "base", r) for r in range(1, reps + 1)]
    n = [rate(sc, "new", r) for r in range(1, reps + 1)]
    ratios = [x / y for x, y in zip(n, b)]
    f = lambda v: f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"
    print(f"| {sc} | {f(b)} | {f(n)} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
EOF
