#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's instrumentation and runs each
# for SECONDS (default 20) from its seed corpus in corpus/<target>/.
# Prints the executions and crashes of each target; exits non-zero if any
# target crashed (the crashing input is in artifacts/<target>/: add it to
# corpus/<target>/ once the bug is fixed).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# The build uses plain cargo with the flags `cargo fuzz build` passes
# (SanitizerCoverage, --cfg fuzzing), so it needs neither cargo-fuzz nor a
# nightly toolchain; `cargo fuzz run <target>` works on the same crate too
# (with RUSTC_BOOTSTRAP=1 on a stable toolchain). FUZZ_SANITIZER=address
# adds AddressSanitizer (needs RUSTC_BOOTSTRAP=1, set here).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
all=(submit_json agent_message log_framing api_query mask)
targets=("${@:-${all[@]}}")
if [ $# -eq 0 ]; then targets=("${all[@]}"); fi

triple=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module"
flags+=" -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
flags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
flags+=" --cfg fuzzing"
if [ -n "${FUZZ_SANITIZER:-}" ]; then
  export RUSTC_BOOTSTRAP=1
  flags+=" -Zsanitizer=${FUZZ_SANITIZER}"
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
fi
# --target keeps the flags off build scripts and proc macros, as cargo fuzz does.
echo "== building ${#targets[@]} fuzz targets ($triple)"
start=$(date +%s)
RUSTFLAGS="$flags ${RUSTFLAGS:-}" cargo build --release --target "$triple" \
  $(printf -- '--bin %s ' "${targets[@]}")
echo "   built in $(( $(date +%s) - start ))s"

bin="target/$triple/release"
failed=0
summary=()
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  mkdir -p "artifacts/$t"
  log="artifacts/$t/last-run.log"
  # New inputs go to the first (scratch) directory: the seed corpus in the
  # repository stays as it is.
  set +e
  "$bin/$t" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 \
    -timeout=10 -max_len=65536 -artifact_prefix="artifacts/$t/" \
    "$work" "corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(grep -c 'Test unit written to' "$log" || true)
  if [ "$rc" -ne 0 ]; then
    failed=1
    crashes=$(( crashes > 0 ? crashes : 1 ))
    echo "!! $t crashed (exit $rc); log: fuzz/$log"
    grep -E 'panicked|ERROR|Test unit written to' "$log" | head -5 || true
  fi
  summary+=("$(printf '%-14s %10s execs in %ss, %s crash(es), corpus %s -> %s' \
    "$t" "${execs:-?}" "$secs" "$crashes" "$(ls "corpus/$t" | wc -l)" \
    "$(( $(ls "corpus/$t" | wc -l) + $(ls "$work" | wc -l) ))")")
  rm -rf "$work"
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
