#!/usr/bin/env bash
# Instructions per element on the worker's hot paths, counted by callgrind:
# counts that do not move with the machine's load, so one run shows whether a
# change to the worker helps.
#
# For each path, the pool runs under `valgrind --tool=callgrind` twice, driven
# by fnapi-loadgen with N and then 2N elements; instructions per element =
# (instructions(2N) - instructions(N)) / N. The difference cancels what does
# not scale with the elements (process start, StartWorker, the warm-up bundle,
# shutdown). Every output byte is still checked by the driver.
#
# Paths (125-byte KV elements, 1000-element bundles, 4 in flight):
#   pass-through  same coder in and out, 1 MB runner chunks (the Flink shape)
#   re-encode     kv(bytes, bytes) in, kv(nullable(bytes), nullable(bytes)) out:
#                 the worker decodes and re-encodes every element
#   batching      10-element (1250-byte) runner chunks: many small inbound
#                 messages whose output the worker gathers into fewer
#   one-element   1-element bundles, one at a time (per bundle: control and
#                 data round trips); reported per bundle
#
# Usage: scripts/bench-counts.sh [--elements N] [--top K] [--out DIR] [PATH...]
#   --elements N  elements of the smaller run (default 50000; one-element: N/50 bundles)
#   --top K       also list the K functions with the most instructions (default 12)
#   --out DIR     where callgrind files and counts.{md,json} go (default: a temp folder)
# Environment: WORKER_BIN (the worker to count, default target/release/beam-rust-worker,
#   built if missing). Compare two builds: run once per WORKER_BIN and diff counts.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ELEMENTS=50000 TOP=12 OUT="" PATHS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --elements) ELEMENTS="$2"; shift ;;
    --top) TOP="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "unknown argument: $1" >&2; exit 2 ;;
    *) PATHS+=("$1") ;;
  esac
  shift
done
[[ ${#PATHS[@]} -gt 0 ]] || PATHS=(pass-through re-encode batching one-element)
OUT="${OUT:-$(mktemp -d /tmp/beam-bench-counts.XXXXXX)}"
mkdir -p "$OUT"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

if [[ -z "${WORKER_BIN:-}" ]]; then
  cargo build --release -p beam-rust-worker >&2
  WORKER_BIN="$ROOT/target/release/beam-rust-worker"
fi
cargo build --release -p beam-bench >&2
LOADGEN="$ROOT/target/release/fnapi-loadgen"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Driver arguments of a path, for `count` elements (or bundles).
path_args() { # path count
  local common=(--key-size 10 --value-size 100 --in-flight 4 --bundle-elements 1000)
  case "$1" in
    pass-through) echo "${common[@]}" --chunk-bytes 1000000 --elements "$2" ;;
    re-encode) echo "${common[@]}" --chunk-bytes 1000000 --output-nullable --elements "$2" ;;
    batching) echo "${common[@]}" --chunk-bytes 1250 --elements "$2" ;;
    one-element) echo --bundle-elements 1 --in-flight 1 --elements "$2" ;;
    *) echo "unknown path: $1" >&2; return 2 ;;
  esac
}

POOL_PID=""
stop_pool() {
  [[ -z "$POOL_PID" ]] && return
  kill -INT "$POOL_PID" 2>/dev/null || true
  wait "$POOL_PID" 2>/dev/null || true
  POOL_PID=""
}
trap stop_pool EXIT

# Runs the pool under callgrind for one driver run; prints its total instructions.
count() { # path elements tag
  local port out="$OUT/callgrind.$1.$3"
  port="$(free_port)"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$WORKER_BIN" --port "$port" --expansion-port 0 --log-level warn --grace-secs 5 \
    >"$OUT/pool.$1.$3.log" 2>&1 &
  POOL_PID=$!
  # shellcheck disable=SC2046 # path_args prints separate words on purpose
  "$LOADGEN" run --target kv-echo --pool "127.0.0.1:$port" --pool-wait-secs 120 \
    --max-seconds 0 --progress-secs 0 --label "$1" $(path_args "$1" "$2") \
    --json "$OUT/run.$1.$3.json" >"$OUT/driver.$1.$3.log"
  stop_pool
  # "summary: N" (or "totals: N") is callgrind's total over every thread.
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

# The K functions with the most instructions (self), without file paths.
top_functions() { # callgrind file
  callgrind_annotate --threshold=100 "$1" 2>/dev/null |
    awk -v k="$TOP" '/file:function/ { table = 1; getline; next }
      table && /^ *[0-9,]+ \(/ && n < k {
        line = $0; sub(/^ +/, "", line)
        split(line, parts, "%\\) +"); fn = parts[2]
        sub(/ \[[^]]*\]$/, "", fn); sub(/^[^ ]*\.(rs|S|c|h):/, "", fn); sub(/^\?\?\?:/, "", fn)
        printf "%s%%)  %s\n", parts[1], fn; n++ }'
}

printf '{\n' >"$OUT/counts.json"
{
  echo "## Instructions per element (callgrind, the worker process)"
  echo
  echo "\`scripts/bench-counts.sh --elements $ELEMENTS\`: the pool runs under callgrind for a run of"
  echo "N and one of 2N elements; instructions per element = (I(2N) − I(N)) / N, so start-up, the"
  echo "warm-up bundle and shutdown cancel out. Counts do not depend on the machine's load."
  echo "Worker: \`$WORKER_BIN\` ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'))."
  echo
  echo "| path | N | I(N) | I(2N) | instructions per element |"
  echo "|---|---|---|---|---|"
} >"$OUT/counts.md"
rm -f "$OUT/counts.top.md"
first=1
for path in "${PATHS[@]}"; do
  n=$ELEMENTS unit=element
  if [[ $path == one-element ]]; then n=$((ELEMENTS / 50)); unit=bundle; fi
  echo "counting $path ($n and $((2 * n)) ${unit}s)" >&2
  small="$(count "$path" "$n" small)"
  large="$(count "$path" $((2 * n)) large)"
  per=$(awk -v a="$small" -v b="$large" -v n="$n" 'BEGIN { printf "%.0f", (b - a) / n }')
  echo "| $path | $n | $small | $large | $per per $unit |" >>"$OUT/counts.md"
  [[ $first == 1 ]] || printf ',\n' >>"$OUT/counts.json"
  first=0
  printf '  "%s": {"n": %s, "unit": "%s", "small": %s, "large": %s, "per_unit": %s}' \
    "$path" "$n" "$unit" "$small" "$large" "$per" >>"$OUT/counts.json"
  if [[ $TOP -gt 0 ]]; then
    {
      echo
      echo "<details><summary>$path: top $TOP functions of the 2N run (instructions, self)</summary>"
      echo
      echo '```'
      top_functions "$OUT/callgrind.$path.large"
      echo '```'
      echo "</details>"
      echo
    } >>"$OUT/counts.top.md"
  fi
done
printf '\n}\n' >>"$OUT/counts.json"
[[ -f "$OUT/counts.top.md" ]] && cat "$OUT/counts.top.md" >>"$OUT/counts.md"
cat "$OUT/counts.md"
echo "counts: $OUT/counts.md (callgrind files: $OUT/callgrind.*)" >&2
