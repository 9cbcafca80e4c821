#!/usr/bin/env bash
# Smoke test of the benchmark tooling, for the test suite: builds the load
# driver, then runs tiny versions of the benchmark
# matrix against all three targets (our worker, Beam's Python worker pool, the
# bare gRPC echo) and the Kafka-fed echo test against both workers. Checks
# correctness only (every output byte equals the input, kcat sees echo-output
# identical to echo-input); asserts no timings. Exits non-zero on any failure
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
echo "smoke-bench OK in $(($(date +%s) - start)) s"
echo "smoke-bench: ${summary#bench: }"
rm -rf "$out"
