#!/usr/bin/env bash
# Creates (or reuses) the project's Python venv with the real Beam SDK and our package.
# Idempotent: a second run only checks what is already installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BEAM_RUST_VENV:-$ROOT/.venv}"
BEAM_VERSION="2.77.0"

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import apache_beam, sys; sys.exit(apache_beam.__version__ != '$BEAM_VERSION')" 2>/dev/null; then
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet "apache-beam==$BEAM_VERSION" pytest confluent-kafka
fi
if [[ -d "$ROOT/python" ]]; then
  "$PY" -m pip install --quiet --no-deps -e "$ROOT/python"
fi
echo "$VENV"
