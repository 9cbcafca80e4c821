#!/usr/bin/env bash
# The project's whole test suite: the README's test command, and what CI runs.
# On a fresh machine it installs what it needs (the Python venv with apache-beam;
# Apache Kafka, kcat, Beam's Flink job server and Java expansion service, Prism
# and Beam's Python boot through scripts/services.sh, cached outside git) and
# stops every service it starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

step "Rust unit and integration tests (release: the 1M-element cases run at full speed)"
cargo test --workspace --release

step "deployment files: Kubernetes schema and Dockerfile lint, offline (scripts/check-deploy.sh)"
scripts/check-deploy.sh

step "Python venv with apache-beam (scripts/setup-python.sh)"
scripts/setup-python.sh

step "outside services: Apache Kafka, Flink job server, Prism, Java expansion service, Beam's Python pool"
scripts/services.sh install

step "real Beam pipelines on the embedded runner, Prism and Flink; Kafka; drop-in; proto conformance; the wheel"
.venv/bin/python -m pytest integration/python -q

if [[ -x scripts/smoke-bench.sh ]]; then
  step "smoke runs of the load driver, the Kafka-fed load test and the Flink end-to-end bench"
  scripts/smoke-bench.sh
fi
step "done"
