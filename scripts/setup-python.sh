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
# Aborts hung pipelines in integration/python (its pytest.ini sets the timeout).
if ! "$PY" -c "import pytest_timeout" 2>/dev/null; then
  "$PY" -m pip install --quiet "pytest-timeout==2.4.0"
fi
# Our package, editable, so python/ changes need no reinstall.
if [[ -d "$ROOT/python" ]] && ! "$PY" -c "import beam_rust_worker, sys; \
sys.exit(not beam_rust_worker.__file__.startswith('$ROOT/python/'))" 2>/dev/null; then
  # setuptools' build warnings are noise here; show the output only on failure.
  if ! out="$("$PY" -m pip install --quiet --no-deps -e "$ROOT/python" 2>&1)"; then
    echo "$out" >&2
    exit 1
  fi
fi
echo "$VENV"
