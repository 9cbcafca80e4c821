#!/usr/bin/env bash
# Builds the platform wheel that carries both the `beam_rust_worker` Python package and
# the `beam-rust-worker` binary (maturin, `bindings = "bin"`, see python/pyproject.toml).
# `pip install <wheel>` then puts the pool on the venv's PATH beside the Python API.
# Prints the wheel's path on its last line.
#
# The build reuses the workspace's target directory (CARGO_TARGET_DIR, default target/),
# so only the worker crate itself is compiled again (maturin strips it), not its
# dependencies.
#
# WHEEL_DIR           where the wheel goes (default target/wheels)
# MATURIN_VERSION     the maturin release, installed into .cache/maturin-<version> (default 1.16.0)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${WHEEL_DIR:-$ROOT/target/wheels}"
MATURIN_VERSION="${MATURIN_VERSION:-1.16.0}"
TOOLS="$ROOT/.cache/maturin-$MATURIN_VERSION"

# maturin in a venv of its own: the project's venv stays as setup-python.sh made it.
if [[ ! -x "$TOOLS/bin/maturin" ]]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet "maturin==$MATURIN_VERSION"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$OUT"
# A wheel of an older build under the same name would otherwise be reported.
rm -f "$OUT"/beam_rust_worker-*.whl
(cd "$ROOT/python" && "$TOOLS/bin/maturin" build --release --out "$OUT" >&2)
wheel="$(ls "$OUT"/beam_rust_worker-*.whl)"
echo "$wheel"
