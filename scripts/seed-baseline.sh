#!/usr/bin/env bash
# The seed's setup reproduced with its own components (issue 8, item 4), checked
# record by record:
#   - the seed's pipeline.py and worker.py (bench/e2e/seed/: a copy with the Kafka
#     host changed to localhost and auto.offset.reset=earliest added; see the
#     CHANGED comments there), run as `python pipeline.py`, copied at run time
#     into the work folder;
#   - Beam's Flink job server (streaming, parallelism 2, as pipeline.py asks) on
#     localhost:8099 / artifacts :8098, Beam's Java expansion service with KafkaIO
#     (EMBEDDED environment) on :8096, Beam's Python worker pool (worker_pool_main +
#     Beam's Go boot) on :50000 as the EXTERNAL environment, Apache Kafka on :9092:
#     the seed's own ports, so pipeline.py needs no port change;
#   - kcat feeds N keyed records to echo-input (4 partitions), kcat reads
#     echo-output; every record must come back once as the seed's
#     kafka_record_processor makes it: key and value turned into their str()
#     form (str(b'k1') = "b'k1'").
# The streaming job runs until cancelled: once the output is complete it is
# cancelled through the job service (GetJobs/Cancel), then every service is
# stopped by PID (scripts/services.sh stop, private SERVICES_STATE).
#
# Usage: scripts/seed-baseline.sh [--records N] [--timeout SECS] [--workdir DIR]
#   --records N     records to send (default 1000)
#   --timeout SECS  how long to wait for the output (default 600)
#   --workdir DIR   logs, output dump and service state (default .cache/e2e/seed)
# Needs the seed's ports free (9092, 8099, 8098, 8096, 50000); installs what it
# needs through scripts/services.sh (Maven Central, Go module proxy, Debian).
# Exit status: 0 if every record came back exactly once with the expected
# content; non-zero on any missing, wrong, duplicate or unexpected record, or if
# a service or the job failed. The last lines printed are the summary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for a in "$@"; do
  case "$a" in -h | --help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
done
"$ROOT/scripts/setup-python.sh" >/dev/null
exec "$ROOT/.venv/bin/python" "$ROOT/bench/e2e/run.py" seed "$@"
