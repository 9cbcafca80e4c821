#!/usr/bin/env bash
# Runs the benchmark matrix side by side, repeated with the targets
# interleaved (rust, python, echo, bound, rust, python, ...): our worker
# (kv-echo), Beam's Python worker pool (pickled Map(identity)), the transport
# reference (grpc-echo, a relay process that returns the runner's gRPC bytes
# verbatim) and the bound (no pool: the driver reads its own data stream back
# over one loopback connection), same driver, same data; then the Kafka scenarios on one Apache Kafka broker,
# also interleaved: the worker's fused Kafka -> echo -> Kafka stage against a
# bare rdkafka consume -> produce loop (its reference), and the driver-bridged
# Kafka-fed echo through both workers. Writes bench/results/latest.md (medians
# and min-max of every figure, ratios as the median of per-repetition ratios,
# goals marked met / not met / not established, the machine's load) and
# bench/results/latest.png.
#
# Bounded: every run has --max-seconds; the full matrix took about 9 minutes on 2 cores (2026-12-02, with the bound target and 1M Kafka records).
# Every pool is a fresh process per run (peak RSS is per run).
#
# Usage: scripts/bench.sh [--smoke | --quick] [--reps N] [--no-kafka] [--criterion]
#   --smoke      tiny element counts, 2 repetitions, all targets and scenarios
#                (used by scripts/smoke-bench.sh); writes to a temporary folder only
#   --quick      3 repetitions and fewer elements (a few minutes); figures are rougher
#   --reps N     repetitions per scenario (default: 5; --quick 3; --smoke 2)
#   --no-kafka   skip the Kafka scenarios
#   --no-counts  skip the instruction counts (scripts/bench-counts.sh, callgrind,
#                about 30 s; never run with --smoke)
#   --criterion  also run the criterion micro-benchmarks (about a minute)
# Environment: WORKER_BIN (a prebuilt beam-rust-worker to measure instead of
#   building target/release/beam-rust-worker), EXTRA_WORKERS="name=path ..."
#   (more kv-echo pools, e.g. a build without mimalloc, run on every scenario),
#   BENCH_OUT (results folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export RUST_BACKTRACE=0

SMOKE=0 QUICK=0 KAFKA=1 COUNTS=1 CRITERION=0 REPS=""
ARGS="$*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --quick) QUICK=1 ;;
    --reps) REPS="$2"; shift ;;
    --no-kafka) KAFKA=0 ;;
    --no-counts) COUNTS=0 ;;
    --criterion) CRITERION=1 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$REPS" ]]; then
  REPS=5
  [[ $QUICK == 1 ]] && REPS=3
  [[ $SMOKE == 1 ]] && REPS=2
fi

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
    echo)
      "$ECHO_BIN" --port "$POOL_PORT" >"$LOG/pool-$name.log" 2>&1 &
      ;;
    loopback) # no pool process: the driver is its own peer
      POOL_PID=""
      return
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
# A Kafka broker this script started (stopped on exit, by its PID file).
KAFKA_STATE=""
stop_kafka() {
  [[ -n "$KAFKA_STATE" ]] && SERVICES_STATE="$KAFKA_STATE" "$ROOT/scripts/services.sh" stop kafka >/dev/null 2>&1 || true
  KAFKA_STATE=""
}
trap 'stop_pool; stop_kafka' EXIT
trap 'exit 130' INT TERM

# The machine's load average around every measurement: the report shows it,
# because the machine is shared and other load moves the figures.
note_load() { # phase name target rep
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(date -u +%H:%M:%S)" >>"$RAW/load.tsv"
}

# ------------------------------------------------------------------ scenarios
# name | elements | key B | value B | elements/bundle | chunk B | in flight | workers | max s | order
# (order: request-first = ProcessBundle then data, as Flink; data-first = as Beam's Python runner)
# The time bound stops the slow Python pool early (its rate is over what it
# did, and the report says it was stopped); our worker and the references finish
# every element within it, and their runs last about a second or more, so a
# scheduling hiccup on the shared machine is a small part of each.
if [[ $SMOKE == 1 ]]; then
  SCENARIOS=(
    "big|20000|10|100|20000|100000|1|1|20|request-first"
    "flink-2w|4000|10|100|1000|1000000|4|2|20|request-first"
    "latency|50|10|100|1|1000000|1|1|20|request-first"
    "latency-df|50|10|100|1|1000000|1|1|20|data-first"
  )
  KAFKA_RECORDS=2000
elif [[ $QUICK == 1 ]]; then
  SCENARIOS=(
    "big|300000|10|100|300000|1000000|1|1|30|request-first"
    "flink|2000000|10|100|1000|1000000|4|1|3|request-first"
    "latency|5000|10|100|1|1000000|1|1|3|request-first"
    "value-10B|4000000|10|10|10000|1000000|2|1|3|request-first"
  )
  KAFKA_RECORDS=100000
else
  SCENARIOS=(
    "big|1000000|10|100|1000000|1000000|1|1|30|request-first"
    "flink|4000000|10|100|1000|1000000|4|1|4|request-first"
    "flink-2w|4000000|10|100|1000|1000000|4|2|4|request-first"
    "latency|20000|10|100|1|1000000|1|1|4|request-first"
    "latency-df|20000|10|100|1|1000000|1|1|4|data-first"
    "value-10B|10000000|10|10|10000|1000000|2|1|4|request-first"
    "value-100B|4000000|10|100|10000|1000000|2|1|4|request-first"
    "value-10KB|60000|10|10240|100|1000000|2|1|4|request-first"
  )
  KAFKA_RECORDS=1000000
fi

declare -A EXTRA=()
TARGETS=("rust:kv-echo" "python:python-map" "echo:echo" "bound:loopback")
for spec in ${EXTRA_WORKERS:-}; do
  EXTRA[${spec%%=*}]="${spec#*=}"
  TARGETS+=("${spec%%=*}:kv-echo")
done

PASSED=0 FAILED=0
passed() { PASSED=$((PASSED + 1)); }
failed() { echo "FAILED: $*" >&2; FAILED=$((FAILED + 1)); }

note_load begin all all 0
for row in "${SCENARIOS[@]}"; do
  IFS='|' read -r name elements key value bundle chunk inflight workers maxs order <<<"$row"
  for rep in $(seq "$REPS"); do
    for t in "${TARGETS[@]}"; do
      tname="${t%%:*}" kind="${t#*:}"
      say "$name on $tname (repetition $rep of $REPS)"
      start_pool "$kind" "$tname"
      args=(run --target "$kind" --pool "127.0.0.1:$POOL_PORT" ${POOL_PID:+--pool-pid "$POOL_PID"}
        --label "$name" --elements "$elements" --key-size "$key" --value-size "$value"
        --bundle-elements "$bundle" --chunk-bytes "$chunk" --in-flight "$inflight"
        --workers "$workers" --max-seconds "$maxs" --order "$order" --progress-secs 0
        --json "$RAW/run-$name-$tname-r$rep.json")
      [[ $kind == python-map ]] && args+=(--python-descriptor "$RAW/python-stage.pb")
      note_load start "$name" "$tname" "$rep"
      if "$LOADGEN" "${args[@]}"; then passed; else failed "$name on $tname, repetition $rep (pool log: $LOG/pool-$tname.log)"; fi
      note_load end "$name" "$tname" "$rep"
      stop_pool
    done
  done
done

# ------------------------------------------------------------------- Kafka
# One broker for every Kafka run; the input topic is filled once. Each target
# writes to its own output topic; every run must add exactly KAFKA_RECORDS
# records to it (end offsets), and in the first repetition the output must
# hold the same key/value pairs as the input (kcat, sorted).
kafka_end_offsets() { # topic -> sum of the partitions' end offsets
  local args=() p
  for p in 0 1 2 3; do args+=(-t "$1:$p:-1"); done
  kcat -b "$BROKER" -Q "${args[@]}" | awk '{ s += $NF } END { print s + 0 }'
}
kafka_dump() { # topic file
  kcat -C -b "$BROKER" -t "$1" -o beginning -e -q -f '%k\t%s\n' | LC_ALL=C sort >"$2"
}
kafka_check() { # topic before rep what
  local after
  after="$(kafka_end_offsets "$1")"
  if [[ $((after - $2)) -ne $KAFKA_RECORDS ]]; then
    failed "$4: $1 got $((after - $2)) records, expected $KAFKA_RECORDS"; return
  fi
  if [[ $3 == 1 ]]; then
    kafka_dump "$1" "$RAW/kafka-$1.sorted"
    if ! cmp -s "$RAW/kafka-input.sorted" "$RAW/kafka-$1.sorted"; then
      failed "$4: $1 differs from the input"; return
    fi
    rm -f "$RAW/kafka-$1.sorted"
  fi
  passed
}
kafka_run() { # name rep
  local name=$1 rep=$2 topic="out-$1" before ok=1
  local topics=(--brokers "$BROKER" --input-topic bench-input --output-topic "$topic")
  before="$(kafka_end_offsets "$topic")"
  say "Kafka $name (repetition $rep of $REPS, $KAFKA_RECORDS records)"
  note_load start "kafka-$name" "$name" "$rep"
  case "$name" in
    bare)
      "$ROOT/target/release/kafka-loop" "${topics[@]}" --records "$KAFKA_RECORDS" \
        --json "$RAW/kafka-$name-r$rep.json" || ok=0 ;;
    fused)
      start_pool kv-echo rust
      "$LOADGEN" kafka-stage --pool "127.0.0.1:$POOL_PORT" --pool-pid "$POOL_PID" "${topics[@]}" \
        --records "$KAFKA_RECORDS" --json "$RAW/kafka-$name-r$rep.json" || ok=0 ;;
    bridge-rust|bridge-python)
      local kind=kv-echo tname=rust extra=()
      if [[ $name == bridge-python ]]; then
        kind=python-map tname=python
        extra=(--python-descriptor "$RAW/python-stage-nullable.pb")
      fi
      start_pool "$kind" "$tname"
      "$LOADGEN" kafka --target "$kind" --pool "127.0.0.1:$POOL_PORT" --pool-pid "$POOL_PID" \
        "${topics[@]}" --records "$KAFKA_RECORDS" "${extra[@]}" \
        --json "$RAW/kafka-$name-r$rep.json" || ok=0 ;;
  esac
  note_load end "kafka-$name" "$name" "$rep"
  stop_pool
  if [[ $ok == 1 ]]; then kafka_check "$topic" "$before" "$rep" "Kafka $name, repetition $rep"
  else failed "Kafka $name, repetition $rep"; fi
}

if [[ $KAFKA == 1 ]]; then
  say "Kafka: one Apache Kafka broker (scripts/services.sh installs it and kcat if missing)"
  KAFKA_STATE="$RAW/kafka-broker"
  mkdir -p "$KAFKA_STATE"
  BROKER="$(SERVICES_STATE="$KAFKA_STATE" "$ROOT/scripts/services.sh" start kafka | tail -n 1)"
  KAFKA_TARGETS=(fused bare bridge-rust bridge-python)
  for topic in bench-input "${KAFKA_TARGETS[@]/#/out-}"; do
    SERVICES_STATE="$KAFKA_STATE" "$ROOT/scripts/services.sh" topic "$topic" 4
  done
  "$ROOT/scripts/kafka.sh" records "$KAFKA_RECORDS" >"$RAW/kafka-input.txt"
  kcat -P -b "$BROKER" -t bench-input -K: -l "$RAW/kafka-input.txt"
  rm -f "$RAW/kafka-input.txt"
  kafka_dump bench-input "$RAW/kafka-input.sorted"
  for rep in $(seq "$REPS"); do
    for name in "${KAFKA_TARGETS[@]}"; do kafka_run "$name" "$rep"; done
  done
  rm -f "$RAW/kafka-input.sorted"
  stop_kafka
fi
note_load end all all 0

if [[ $COUNTS == 1 && $SMOKE == 0 ]]; then
  say "instruction counts (callgrind)"
  if WORKER_BIN="$WORKER_BIN" "$ROOT/scripts/bench-counts.sh" --out "$RAW/counts" >"$LOG/counts.log" 2>&1; then
    cp "$RAW/counts/counts.md" "$RAW/counts.md"
    passed
  else
    failed "instruction counts (log: $LOG/counts.log)"
  fi
fi

if [[ $CRITERION == 1 ]]; then
  say "criterion micro-benchmarks"
  cargo bench -p beam-bench --bench data_path -- --warm-up-time 1 --measurement-time 3 \
    2>&1 | tee "$RAW/criterion.txt"
fi

# -------------------------------------------------------------------- report
say "report"
"$PY" "$ROOT/bench/python/render_report.py" --raw "$RAW" --out "$OUT" \
  --worker-bin "$WORKER_BIN" --command "scripts/bench.sh${ARGS:+ $ARGS}" \
  $([[ $SMOKE == 1 ]] && echo --smoke --no-chart) >"$RAW/report.md"
echo "results: $OUT/latest.md (raw: $RAW)" >&2
echo "bench: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
