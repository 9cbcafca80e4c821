#!/usr/bin/env bash
# The project's whole test suite: the README's test command, and what CI runs.
# On a fresh machine it installs what it needs (Python venv with apache-beam,
# Kafka broker and kcat for the smoke load test) and stops what it starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

step "Rust unit and integration tests (release: the 1M-element cases run at full speed)"
cargo test --workspace --release

step "Python venv with apache-beam"
scripts/setup-python.sh

step "real Beam pipelines through the worker, and proto conformance against apache-beam"
.venv/bin/python -m pytest integration/python -q

if [[ -x scripts/smoke-bench.sh ]]; then
  step "smoke runs of the load driver and the Kafka-fed load test"
  scripts/smoke-bench.sh
fi
