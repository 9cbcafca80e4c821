#!/usr/bin/env bash
# Runs the benchmark matrix side by side: our worker (kv-echo), Beam's Python
# worker pool (pickled Map(identity)) and the bare gRPC echo (transport
# ceiling), same driver, same data; then the Kafka-fed test against both
# workers. Writes bench/results/latest.md and bench/results/latest.png.
#
# Bounded: every run has --max-seconds, the whole matrix takes a few minutes.
# Every pool is a fresh process per scenario (peak RSS is per scenario).
#
# Usage: scripts/bench.sh [--smoke] [--no-kafka] [--criterion]
#   --smoke      tiny element counts, all targets and scenarios (used by
#                scripts/smoke-bench.sh); writes to a temporary folder only
#   --no-kafka   skip the Kafka-fed test
#   --criterion  also run the criterion micro-benchmarks (about a minute)
# Environment: WORKER_BIN (a prebuilt beam-rust-worker to measure instead of
#   building target/release/beam-rust-worker), EXTRA_WORKERS="name=path ..."
#   (more kv-echo pools, e.g. a build without mimalloc, run on every scenario),
#   BENCH_OUT (results folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export RUST_BACKTRACE=0

SMOKE=0 KAFKA=1 CRITERION=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    --no-kafka) KAFKA=0 ;;
    --criterion) CRITERION=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [[ $SMOKE == 1 ]]; then
  OUT="${BENCH_OUT:-$(mktemp -d /tmp/beam-bench-smoke.XXXXXX)}"
  RAW="$OUT/raw"
else
  OUT="${BENCH_OUT:-$ROOT/bench/results}"
  RAW="$OUT/raw/$(date +%Y%m%d-%H%M%S)"
fi
mkdir -p "$RAW"
LOG="$RAW/logs"
mkdir -p "$LOG"

say() { printf '\n== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- build + setup
say "building (release)"
if [[ -z "${WORKER_BIN:-}" ]]; then
  cargo build --release -p beam-rust-worker
  WORKER_BIN="$ROOT/target/release/beam-rust-worker"
fi
cargo build --release -p beam-bench
LOADGEN="$ROOT/target/release/fnapi-loadgen"
ECHO_BIN="$ROOT/target/release/grpc-echo"

VENV="$("$ROOT/scripts/setup-python.sh" | tail -n 1)"
PY="$VENV/bin/python"
if [[ $SMOKE == 0 ]] && ! "$PY" -c "import matplotlib" 2>/dev/null; then
  say "installing matplotlib into $VENV (for the chart)"
  "$PY" -m pip install --quiet matplotlib
fi
"$PY" "$ROOT/bench/python/make_python_stage.py" --out "$RAW/python-stage.pb" 2>"$LOG/stage.log"
"$PY" "$ROOT/bench/python/make_python_stage.py" --nullable --out "$RAW/python-stage-nullable.pb" 2>>"$LOG/stage.log"

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------- pool processes
POOL_PID="" POOL_PORT=""
start_pool() { # kind name
  local kind=$1 name=$2 bin
  POOL_PORT="$(free_port)"
  case "$kind" in
    kv-echo)
      bin="$WORKER_BIN"
      [[ "$name" != rust ]] && bin="${EXTRA[$name]}"
      "$bin" --port "$POOL_PORT" --expansion-port 0 --log-level warn \
        >"$LOG/pool-$name.log" 2>&1 &
      ;;
    python-map)
      # The pool starts each worker as `python -c ...` from PATH: the venv's.
      PATH="$VENV/bin:$PATH" "$PY" -m apache_beam.runners.worker.worker_pool_main \
        --service_port="$POOL_PORT" >"$LOG/pool-$name.log" 2>&1 &
      ;;
    ceiling)
      "$ECHO_BIN" --port "$POOL_PORT" >"$LOG/pool-$name.log" 2>&1 &
      ;;
  esac
  POOL_PID=$!
}

descendants() { # pid -> all descendant pids
  local kids
  kids="$(pgrep -P "$1" || true)"
  for k in $kids; do echo "$k"; descendants "$k"; done
}

stop_pool() {
  [[ -z "$POOL_PID" ]] && return
  local kids
  kids="$(descendants "$POOL_PID")"
  kill "$POOL_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$POOL_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$POOL_PID" 2>/dev/null || true
  wait "$POOL_PID" 2>/dev/null || true
  for k in $kids; do kill "$k" 2>/dev/null || true; done
  POOL_PID=""
}
trap 'stop_pool' EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ scenarios
# name | elements | key B | value B | elements/bundle | chunk B | in flight | workers | max s | order
# (order: request-first = ProcessBundle then data, as Flink; data-first = as Beam's Python runner)
if [[ $SMOKE == 1 ]]; then
  SCENARIOS=(
    "big|20000|10|100|20000|100000|1|1|20|request-first"
    "flink-2w|4000|10|100|1000|1000000|4|2|20|request-first"
    "latency|50|10|100|1|1000000|1|1|20|request-first"
    "latency-df|50|10|100|1|1000000|1|1|20|data-first"
  )
  KAFKA_RECORDS=2000
else
  SCENARIOS=(
    "big|1000000|10|100|1000000|1000000|1|1|30|request-first"
    "flink|1000000|10|100|1000|1000000|4|1|20|request-first"
    "flink-2w|1000000|10|100|1000|1000000|4|2|20|request-first"
    "latency|5000|10|100|1|1000000|1|1|10|request-first"
    "latency-df|5000|10|100|1|1000000|1|1|10|data-first"
    "value-10B|1000000|10|10|10000|1000000|2|1|20|request-first"
    "value-100B|1000000|10|100|10000|1000000|2|1|20|request-first"
    "value-10KB|20000|10|10240|100|1000000|2|1|20|request-first"
  )
  KAFKA_RECORDS=200000
fi

declare -A EXTRA=()
TARGETS=("rust:kv-echo" "python:python-map" "ceiling:ceiling")
for spec in ${EXTRA_WORKERS:-}; do
  EXTRA[${spec%%=*}]="${spec#*=}"
  TARGETS+=("${spec%%=*}:kv-echo")
done

PASSED=0 FAILED=0
for row in "${SCENARIOS[@]}"; do
  IFS='|' read -r name elements key value bundle chunk inflight workers maxs order <<<"$row"
  for t in "${TARGETS[@]}"; do
    tname="${t%%:*}" kind="${t#*:}"
    say "$name on $tname"
    start_pool "$kind" "$tname"
    args=(run --target "$kind" --pool "127.0.0.1:$POOL_PORT" --pool-pid "$POOL_PID"
      --label "$name" --elements "$elements" --key-size "$key" --value-size "$value"
      --bundle-elements "$bundle" --chunk-bytes "$chunk" --in-flight "$inflight"
      --workers "$workers" --max-seconds "$maxs" --order "$order" --json "$RAW/run-$name-$tname.json")
    [[ $kind == python-map ]] && args+=(--python-descriptor "$RAW/python-stage.pb")
    if "$LOADGEN" "${args[@]}"; then
      PASSED=$((PASSED + 1))
    else
      echo "FAILED: $name on $tname (pool log: $LOG/pool-$tname.log)" >&2
      FAILED=$((FAILED + 1))
    fi
    stop_pool
  done
done

# ---------------------------------------------------------------- Kafka-fed
if [[ $KAFKA == 1 ]]; then
  say "Kafka-fed echo (scripts/kafka.sh installs tansu and kcat if missing)"
  for t in "rust:kv-echo" "python:python-map"; do
    tname="${t%%:*}" kind="${t#*:}"
    say "Kafka-fed echo on $tname ($KAFKA_RECORDS records)"
    start_pool "$kind" "$tname"
    kargs=(--target "$kind" --pool "127.0.0.1:$POOL_PORT" --pool-pid "$POOL_PID"
      --records "$KAFKA_RECORDS" --json "$RAW/kafka-$tname.json")
    [[ $kind == python-map ]] && kargs+=(--python-descriptor "$RAW/python-stage-nullable.pb")
    if "$ROOT/scripts/kafka.sh" echo-test "${kargs[@]}"; then
      PASSED=$((PASSED + 1))
    else
      echo "FAILED: Kafka-fed echo on $tname" >&2
      FAILED=$((FAILED + 1))
    fi
    stop_pool
  done
fi

if [[ $CRITERION == 1 ]]; then
  say "criterion micro-benchmarks"
  cargo bench -p beam-bench --bench data_path -- --warm-up-time 1 --measurement-time 3 \
    2>&1 | tee "$RAW/criterion.txt"
fi

# -------------------------------------------------------------------- report
say "report"
"$PY" "$ROOT/bench/python/render_report.py" --raw "$RAW" --out "$OUT" \
  --worker-bin "$WORKER_BIN" $([[ $SMOKE == 1 ]] && echo --smoke --no-chart) >"$RAW/report.md"
echo "results: $OUT/latest.md (raw: $RAW)" >&2
echo "bench: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
