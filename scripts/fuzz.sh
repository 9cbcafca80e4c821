#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ (cargo-fuzz) for a set time each and
# reports executions, coverage and crashes per target. See fuzz/README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
ALL_TARGETS=(wire_coder row plan expansion)

usage() {
  cat <<EOF
Usage: scripts/fuzz.sh [--seconds N] [--max-len N] [--merge] [TARGET...]

Runs each fuzz target (default: all of ${ALL_TARGETS[*]}) for N seconds, one
after the other, one libFuzzer process at a time at nice 19, then prints per
target: executions, executions/s, coverage (libFuzzer's cov and ft), corpus
size and crashes. Exits 1 if any target crashed (the input is kept in
fuzz/artifacts/<target>/; replay it with
  cargo +nightly fuzz run --fuzz-dir fuzz -s none <target> fuzz/artifacts/<target>/<file>
then fix the bug, add a unit test naming it and copy the input into
fuzz/regressions/<target>/, where 'cargo test' replays it on stable Rust).

  --seconds N   time per target (default 300)
  --max-len N   longest input libFuzzer generates (default: 4096 for
                wire_coder and row, 16384 for plan and expansion, whose seeds
                are protobuf messages of up to a few KB)
  --merge       afterwards, add to fuzz/corpus/<target>/ (committed) only the
                inputs of this run that reach new coverage (libFuzzer -merge=1);
                check the corpus stays small before committing it
  -h, --help    this text

Needs nightly Rust (rustup toolchain install nightly): libFuzzer's coverage
instrumentation is a nightly rustc flag. Installs cargo-fuzz with
'cargo install cargo-fuzz' if it is missing. CI needs neither: the committed
corpus and regressions replay through the same harness functions in
'cargo test' (worker/tests/fuzz_corpus.rs).

New inputs the fuzzer finds go to fuzz/work/<target>/ (not committed) and
are reused by the next run. Each run appends its figures to
fuzz/work/runs.tsv, from which totals across runs are printed.
EOF
}

seconds=300
max_len=""
merge=0
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="${2:?--seconds needs a value}"; shift 2 ;;
    --max-len) max_len="${2:?--max-len needs a value}"; shift 2 ;;
    --merge) merge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (targets: ${ALL_TARGETS[*]})" >&2; exit 2; }
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "fuzz.sh: --seconds must be a positive integer" >&2; exit 2; }

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: nightly Rust is missing. Install it with 'rustup toolchain install nightly'" >&2
  echo "         (cargo-fuzz needs it; the stable test suite replays the corpus without it)." >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --locked
fi

# -s none: the code under test is safe Rust, where AddressSanitizer finds
# nothing the language does not already check, and it halves the speed.
# -a: debug assertions on (overflow checks), as in the unit tests.
build_flags=(--fuzz-dir "$FUZZ" -s none -a --release)
echo "fuzz.sh: building the targets ($(cargo +nightly --version))" >&2
nice -n 19 cargo +nightly fuzz build "${build_flags[@]}" >&2

mkdir -p "$FUZZ/work"
runs="$FUZZ/work/runs.tsv"
[[ -f "$runs" ]] || printf 'date\ttarget\tseconds\texecs\texec_per_s\tcov\tft\tcorpus\tcrashes\n' >"$runs"
status=0
summary=()
for t in "${targets[@]}"; do
  len="$max_len"
  if [[ -z "$len" ]]; then
    case "$t" in plan|expansion) len=16384 ;; *) len=4096 ;; esac
  fi
  mkdir -p "$FUZZ/work/$t" "$FUZZ/artifacts/$t"
  log="$FUZZ/work/$t.log"
  before=$(find "$FUZZ/artifacts/$t" -type f | wc -l)
  echo "fuzz.sh: $t for ${seconds}s (max_len $len), log $log" >&2
  rc=0
  # The first corpus folder receives new inputs; the committed seeds are read only.
  nice -n 19 cargo +nightly fuzz run "${build_flags[@]}" "$t" "$FUZZ/work/$t" "$FUZZ/corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  after=$(find "$FUZZ/artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  # A non-zero exit without an artifact (e.g. the build failed) is a failure too.
  if [[ $rc -ne 0 && $crashes -eq 0 ]]; then crashes=1; fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  # The last status line: "#N ... cov: C ft: F corp: K/SIZE ...".
  status_line=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status_line")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" \
    "${execs:-0}" "${rate:-0}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" >>"$runs"
  summary+=("$(printf '%-11s %12s %10s %7s %7s %7s %7s' "$t" "${execs:-0}" "${rate:-0}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")")
  if [[ $crashes -gt 0 ]]; then
    status=1
    echo "fuzz.sh: $t CRASHED (exit $rc); the end of its log:" >&2
    tail -n 30 "$log" >&2
  fi
  if [[ $merge -eq 1 ]]; then
    nice -n 19 cargo +nightly fuzz run "${build_flags[@]}" "$t" "$FUZZ/corpus/$t" "$FUZZ/work/$t" -- \
      -merge=1 -max_len="$len" >"$FUZZ/work/$t.merge.log" 2>&1
  fi
done

echo
echo "this run (${seconds}s per target):"
printf '%-11s %12s %10s %7s %7s %7s %7s\n' target execs exec/s cov ft corpus crashes
printf '%s\n' "${summary[@]}"
echo
echo "totals over every run recorded in fuzz/work/runs.tsv:"
awk -F'\t' 'NR > 1 { s[$2] += $3; e[$2] += $4; c[$2] += $9 }
  END { printf "%-11s %10s %12s %7s\n", "target", "seconds", "execs", "crashes";
        for (t in e) printf "%-11s %10d %12d %7d\n", t, s[t], e[t], c[t] }' "$runs"
exit $status
