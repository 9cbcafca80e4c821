#!/usr/bin/env bash
# Kafka -> echo -> Kafka through a real Beam pipeline on Flink, with every step
# native in the Rust worker pool: no Java SDK harness, no Docker. On loopback only:
#   1. builds the worker (release) and the Python venv, installs Apache Kafka,
#      kcat and Beam's Flink job server (scripts/services.sh; cached after the
#      first run);
#   2. starts a fresh Apache Kafka broker with the topics echo-input and
#      echo-output (4 partitions), Flink's job server and the worker pool;
#   3. feeds 10,000 keyed messages to echo-input with kcat (`hello:world` among them);
#   4. runs examples/kafka_echo.py on Flink in streaming mode with checkpoints
#      (ReadFromKafka -> KvEcho -> WriteToKafka, one fused stage in the pool;
#      offsets committed when Flink finalizes the bundle after a checkpoint);
#   5. reads echo-output back with kcat and checks that every record came back
#      intact: same keys and values, nothing lost, nothing duplicated;
#   6. prints a summary and stops everything it started (also on Ctrl-C).
#
# Usage: scripts/demo.sh            (re-runnable; each run gets a fresh broker)
# Environment: DEMO_RECORDS (default 10000); DEMO_RUNNER flink (default), prism or
# embedded (Beam's Python runner in-process); DEMO_KEEP=1 keeps the work folder
# (pool log, inputs and outputs) even when the demo succeeds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RECORDS="${DEMO_RECORDS:-10000}"
RUNNER="${DEMO_RUNNER:-flink}"
case "$RUNNER" in flink | prism | embedded) ;; *) echo "DEMO_RUNNER must be flink, prism or embedded" >&2; exit 2 ;; esac
# The job server the demo starts, in a state folder of its own.
export SERVICES_STATE="${SERVICES_STATE:-$ROOT/.cache/services/demo}"
SERVICES="$ROOT/scripts/services.sh"
RUNNER_STARTED=""
# The demo's own broker state, so it never stops a broker that
# `scripts/kafka.sh start` started for something else (benchmarks, tests).
export KAFKA_STATE="${KAFKA_STATE:-$ROOT/.cache/kafka/demo}"
KAFKA="$ROOT/scripts/kafka.sh"
WORK="$(mktemp -d /tmp/beam-rust-demo.XXXXXX)"
POOL_PID=""
CHILD_PID=""
BROKER_STARTED=""

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# The terminal's stdout/stderr, for messages from traps that fire while a
# step's output is redirected to a log file.
exec 8>&1 9>&2

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  exec 1>&8 2>&9
  if [[ -n "$CHILD_PID" ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
    kill -TERM "$CHILD_PID" 2>/dev/null
    wait "$CHILD_PID" 2>/dev/null
  fi
  if [[ -n "$POOL_PID" ]] && kill -0 "$POOL_PID" 2>/dev/null; then
    kill -TERM "$POOL_PID" 2>/dev/null   # graceful: running bundles get --grace-secs
    for _ in $(seq 100); do kill -0 "$POOL_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$POOL_PID" 2>/dev/null
    wait "$POOL_PID" 2>/dev/null
  fi
  [[ -n "$BROKER_STARTED" ]] && "$KAFKA" stop
  [[ -n "$RUNNER_STARTED" ]] && "$SERVICES" stop "$RUNNER"
  if [[ $status -ne 0 || -n "${DEMO_KEEP:-}" ]]; then
    echo "work folder kept: $WORK (pool.log, pipeline.log, input.txt, output.txt)" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo "interrupted: stopping what the demo started" >&9; exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so Ctrl-C and SIGTERM
# are handled at once (bash runs traps only between foreground commands).
run() {
  "$@" 8>&- 9>&- &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
T_START=$(now)

say "building the worker (cargo build --release -p beam-rust-worker)"
run cargo build --release -q -p beam-rust-worker --bin beam-rust-worker
WORKER="$ROOT/target/release/beam-rust-worker"

say "Python venv with apache-beam (scripts/setup-python.sh)"
VENV="$(run "$ROOT/scripts/setup-python.sh" | tail -n 1)"
PY="$VENV/bin/python"

say "installing (if missing) and starting a fresh Apache Kafka broker, and kcat"
BROKER_STARTED=1
BROKER="$(run "$KAFKA" start | tail -n 1)"
echo "    broker at $BROKER, topics echo-input and echo-output (4 partitions each)"

case "$RUNNER" in
  embedded)
    RUNNER_ARGS=(--job_endpoint=embed) ;;
  flink | prism)
    say "installing (if missing) and starting $RUNNER's job server (scripts/services.sh start $RUNNER)"
    RUNNER_STARTED=1
    JOB_ENDPOINT="$(run "$SERVICES" start "$RUNNER" | tail -n 1)"
    echo "    job server at $JOB_ENDPOINT (log: $("$SERVICES" log "$RUNNER"))"
    RUNNER_ARGS=(--job_endpoint="$JOB_ENDPOINT")
    # Kafka pipelines run on Flink in streaming mode: checkpoints drive bundle
    # finalization, hence the offset commits; the bounded read's job ends 3 s
    # after the read has drained the topic.
    [[ "$RUNNER" == flink ]] && RUNNER_ARGS+=(--streaming --checkpointing_interval=1000
      --shutdown_sources_after_idle_ms=3000) ;;
esac

# The README's ports when they are free, else any free ones.
read -r POOL_PORT EXPANSION_PORT < <("$PY" - <<'EOF'
import socket
def pick(preferred):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", preferred))
    except OSError:
        s.close()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
    return s
a = pick(50000)
b = pick(8096)
print(a.getsockname()[1], b.getsockname()[1])
EOF
)
say "starting the worker pool: pool localhost:$POOL_PORT, expansion service localhost:$EXPANSION_PORT"
NO_COLOR=1 "$WORKER" --port "$POOL_PORT" --expansion-port "$EXPANSION_PORT" \
  --advertise "localhost:$POOL_PORT" >"$WORK/pool.log" 2>&1 8>&- 9>&- &
POOL_PID=$!
for port in "$POOL_PORT" "$EXPANSION_PORT"; do
  for _ in $(seq 300); do
    kill -0 "$POOL_PID" 2>/dev/null || die "the worker pool exited: $(tail -n 20 "$WORK/pool.log")"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "the worker pool is not listening on $port"
done

say "feeding $RECORDS keyed messages to echo-input with kcat"
awk -v n="$RECORDS" 'BEGIN {
    print "hello:world";
    for (i = 1; i < n; i++) printf "key-%06d:value-%06d the quick brown fox\n", i, i;
  }' >"$WORK/input.txt"
run "$KAFKA" kcat -P -t echo-input -K: -l "$WORK/input.txt"

say "running examples/kafka_echo.py (ReadFromKafka -> KvEcho -> WriteToKafka) on $RUNNER: ${RUNNER_ARGS[*]}"
T0=$(now)
if ! run "$PY" examples/kafka_echo.py --bootstrap_servers "$BROKER" \
    --input_topic echo-input --output_topic echo-output --group_id kafka-echo-demo \
    --expansion_service "localhost:$EXPANSION_PORT" "${RUNNER_ARGS[@]}" >"$WORK/pipeline.log" 2>&1; then
  tail -n 30 "$WORK/pipeline.log" >&2
  die "the pipeline failed (pool log: $WORK/pool.log)"
fi
T1=$(now)

say "reading echo-output back with kcat"
LC_ALL=C sort "$WORK/input.txt" | tr ':' '\t' >"$WORK/expected.txt"
run "$KAFKA" dump echo-output "$RECORDS" "$WORK/output.txt"

got=$(wc -l <"$WORK/output.txt")
if ! cmp -s "$WORK/expected.txt" "$WORK/output.txt"; then
  missing=$(LC_ALL=C comm -23 "$WORK/expected.txt" "$WORK/output.txt" | wc -l)
  extra=$(LC_ALL=C comm -13 "$WORK/expected.txt" "$WORK/output.txt" | wc -l)
  dup=$(uniq -d "$WORK/output.txt" | wc -l)
  diff "$WORK/expected.txt" "$WORK/output.txt" | head -n 10 >&2 || true
  die "echo-output holds $got records, expected $RECORDS: $missing missing, $extra unexpected, $dup duplicated"
fi
grep -q $'^hello\tworld$' "$WORK/output.txt" || die "the hello/world record did not come back"

# The worker logs each stage it plans: all three steps must be in one.
stages=$(grep -c 'stage planned' "$WORK/pool.log" || true)
fused=$(grep 'stage planned' "$WORK/pool.log" | grep 'kafka_read' | grep 'kv_echo' | grep -c 'kafka_write' || true)
[[ "$fused" -ge 1 ]] || die "no fused Kafka stage in the pool log ($stages stage(s) planned): see $WORK/pool.log"

PIPE_S=$(secs "$T0" "$T1")
RATE=$(awk -v n="$RECORDS" -v s="$PIPE_S" 'BEGIN { printf "%.0f", n / s }')
echo "    every record came back intact: $got of $RECORDS, same keys and values, none lost, none duplicated"
echo "    one fused stage in the pool: kafka_read -> kv_echo -> kafka_write"
# Informative only: the stage's time inside the pool, from its log timestamps
# (stage planned -> the runner closing the worker's control stream).
stamp() { grep -m1 "$1" "$WORK/pool.log" | awk '{ print $1 }'; }
planned=$(stamp 'stage planned'); closed=$(stamp 'runner closed the control stream')
if [[ -n "$planned" && -n "$closed" ]]; then
  STAGE_S=$(secs "$(date -d "$planned" +%s.%N)" "$(date -d "$closed" +%s.%N)")
  echo "    the stage itself took $STAGE_S s in the pool; the rest of the run is Beam's job start-up and expansion"
fi
echo "demo OK: $RECORDS records Kafka -> Rust worker -> Kafka in $PIPE_S s ($RATE records/s, pipeline run incl. Beam job start-up; whole demo $(secs "$T_START" "$(now)") s)"
