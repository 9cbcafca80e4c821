#!/usr/bin/env bash
# Creates (or reuses) the project's Python venv with the real Beam SDK and our package.
# Idempotent: a second run only checks what is already installed. Prints the venv's path.
#
# BEAM_RUST_VENV         the venv's folder (default .venv)
# BEAM_PYTHON_VERSION    the apache-beam release (default: scripts/versions.sh's BEAM_VERSION,
#                        the one the Java side and Prism use)
# BEAM_RUST_VENV_MINIMAL=1  apache-beam only (no test tools, no package), e.g. for reading
#                        another release's protos in the conformance test
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.sh
source "$ROOT/scripts/versions.sh"
VENV="${BEAM_RUST_VENV:-$ROOT/.venv}"
BEAM_PY="${BEAM_PYTHON_VERSION:-$BEAM_VERSION}"
MINIMAL="${BEAM_RUST_VENV_MINIMAL:-0}"

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import apache_beam, sys; sys.exit(apache_beam.__version__ != '$BEAM_PY')" 2>/dev/null; then
  "$PY" -m pip install --quiet --upgrade pip
  if [[ "$MINIMAL" == 1 ]]; then
    "$PY" -m pip install --quiet "apache-beam==$BEAM_PY"
  else
    "$PY" -m pip install --quiet "apache-beam==$BEAM_PY" pytest confluent-kafka
  fi
fi
if [[ "$MINIMAL" != 1 ]]; then
  # Aborts hung pipelines in integration/python (its pytest.ini sets the timeout).
  if ! "$PY" -c "import pytest_timeout" 2>/dev/null; then
    "$PY" -m pip install --quiet "pytest-timeout==2.4.0"
  fi
  # Our package from python/ directly (a .pth line), so python/ changes need no
  # reinstall. Not `pip install -e python`: python/pyproject.toml builds a wheel with
  # maturin, which would compile the worker binary first (scripts/build-wheel.sh).
  if [[ -d "$ROOT/python" ]] && ! "$PY" -c "import beam_rust_worker, sys; \
sys.exit(not beam_rust_worker.__file__.startswith('$ROOT/python/'))" 2>/dev/null; then
    site="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
    echo "$ROOT/python" > "$site/beam_rust_worker_dev.pth"
  fi
fi
echo "$VENV"
