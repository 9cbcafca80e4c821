#!/usr/bin/env bash
# An Apache Kafka broker and kcat on loopback, and
# the Kafka-fed echo test: kcat produces N keyed records to echo-input,
# `fnapi-loadgen kafka` bridges them through a worker to echo-output, kcat reads
# both topics back and the lists must be identical (nothing lost, nothing
# duplicated, same keys and values).
#
# Usage:
#   scripts/kafka.sh install            Apache Kafka's jars (Maven Central) + kcat (Debian)
#   scripts/kafka.sh start              fresh broker on a free port, topics echo-input and
#                                       echo-output (4 partitions) created; prints host:port
#   scripts/kafka.sh stop               stops (by PID) the broker `start` started in this state folder
#   scripts/kafka.sh kcat ARGS...       kcat against the broker
#   scripts/kafka.sh topic NAME [PARTITIONS]
#                                       creates a topic on the started broker (default 4 partitions)
#   scripts/kafka.sh dump TOPIC N FILE  every record of TOPIC as sorted "key<TAB>value" lines
#                                       in FILE, re-read until it holds N (or ~10 s passed)
#   scripts/kafka.sh records N          N keyed test records as `kcat -P -K:` input lines
#   scripts/kafka.sh echo-test --records N --pool HOST:PORT [fnapi-loadgen kafka args...]
#                                       needs a running pool; starts a fresh broker, runs the
#                                       test, stops the broker; exits non-zero on any difference
# The broker is Apache Kafka (single-node KRaft) run by scripts/services.sh, which
# pins its version. KAFKA_STATE is the started broker's state folder (pid,
# address, log, data), so independent users (the demo, the pytest suite,
# benchmarks) each run their own broker from one install.
# echo-test always uses a private state folder of its own.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${KAFKA_STATE:-$ROOT/.cache/kafka}"
export RUST_BACKTRACE=0
mkdir -p "$STATE"

services() { SERVICES_STATE="$STATE" "$ROOT/scripts/services.sh" "$@"; }

install() { services install kafka; }

kcat_() { kcat "$@"; }

broker() { services endpoint kafka; }

start() {
  services stop kafka >/dev/null 2>&1 || true
  services start kafka >/dev/null
  for topic in echo-input echo-output; do services topic "$topic" 4; done
  broker
}

stop() { services stop kafka; }

# Reads every record of a topic as "key<TAB>value" lines, sorted.
dump() { # topic expected-count out-file
  local tries=0
  while :; do
    kcat_ -C -b "$(broker)" -t "$1" -o beginning -e -q -f '%k\t%s\n' | LC_ALL=C sort >"$3"
    [[ $(wc -l <"$3") -ge $2 || $tries -ge 20 ]] && return
    tries=$((tries + 1)); sleep 0.5
  done
}

# N keyed records as kcat -K: input lines, ~100-byte values; a few with an empty value.
records() { # n
  awk -v n="$1" 'BEGIN {
      pad = sprintf("%080d", 0);
      for (i = 0; i < n; i++) {
        if (i % 1000 == 7) printf "key-%09d:\n", i;
        else printf "key-%09d:value-%09d-%s\n", i, i, pad;
      }
    }'
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
  records "$records" >"$work/input.txt"
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
  restart) services restart-kafka | tail -n 1 ;;
  kcat) kcat_ -b "$(broker)" "$@" ;;
  topic) services topic "$1" "${2:-4}" ;;
  echo-test) echo_test "$@" ;;
  dump) dump "$@" ;;
  records) records "$1" ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
