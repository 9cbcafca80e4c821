#!/usr/bin/env bash
# Smoke test of the benchmark tooling, for the test suite: builds the load
# driver, then runs tiny versions of the benchmark
# matrix against every target (our worker, Beam's Python worker pool, the
# bare gRPC echo, the driver's loopback bound) and the Kafka-fed echo test against both workers. Checks
# correctness only (every output byte equals the input, kcat sees echo-output
# identical to echo-input) and the Flink end-to-end benchmark's quick mode
# (bench/e2e/run.py bench --quick: the seed's setup, Java KafkaIO + our KvEcho,
# our fused Kafka stage, every record checked); asserts no timings. Exits non-zero on any failure
# and then keeps its log folder (the path is printed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)
out="$(mktemp -d /tmp/beam-bench-smoke.XXXXXX)"
status=0
BENCH_OUT="$out" "$ROOT/scripts/bench.sh" --smoke >"$out/bench.log" 2>&1 || status=$?
summary="$(grep -E '^bench: [0-9]+ passed, [0-9]+ failed' "$out/bench.log" | tail -n 1 || true)"
if [[ $status -ne 0 ]]; then
  tail -n 40 "$out/bench.log" >&2
  echo "smoke-bench FAILED after $(($(date +%s) - start)) s (${summary:-no summary}); log: $out/bench.log" >&2
  if [[ -n "$summary" ]]; then
    echo "smoke-bench: ${summary#bench: }"
  else
    echo "smoke-bench: 0 passed, 1 failed"
  fi
  exit 1
fi
# The Flink end-to-end benchmark's quick mode: the seed's setup (a), Java KafkaIO +
# our KvEcho (b) and our fused Kafka stage (c), each with every record checked.
e2e_status=0
"$ROOT/.venv/bin/python" "$ROOT/bench/e2e/run.py" bench --quick --workdir "$out/e2e" \
  >"$out/e2e.log" 2>&1 || e2e_status=$?
passed="$(sed -E 's/^bench: ([0-9]+) passed, ([0-9]+) failed.*/\1/' <<<"$summary")"
failed="$(sed -E 's/^bench: ([0-9]+) passed, ([0-9]+) failed.*/\2/' <<<"$summary")"
if [[ $e2e_status -ne 0 ]]; then
  tail -n 40 "$out/e2e.log" >&2
  echo "smoke-bench: the Flink e2e quick run FAILED; log: $out/e2e.log" >&2
  echo "smoke-bench: $passed passed, $((failed + 1)) failed"
  exit 1
fi
tail -n 12 "$out/e2e.log"
echo "smoke-bench OK in $(($(date +%s) - start)) s"
echo "smoke-bench: $((passed + 1)) passed, $failed failed"
rm -rf "$out"
