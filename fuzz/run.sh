#!/usr/bin/env bash
# Runs fuzz targets (fuzz/README.md), one at a time at nice 19, each for SECONDS over its
# committed seeds (fuzz/seeds/<target>) and a working corpus ($FUZZ_WORK/corpus/<target>),
# with its dictionary when there is one. Prints one summary line per target:
#   <target> execs=<n> cov=<edges> ft=<features> corpus=<inputs> result=<ok|FINDING ...>
# and exits 1 if any target found a crash, a leak, a timeout (one input running 25 s; the
# config evaluator alone may take 5 s by design, slower under ASan on a loaded machine)
# or an out-of-memory (the input
# is kept as $FUZZ_WORK/artifacts/<target>-crash-…; replay it with `<binary> <file>`).
# Usage: fuzz/run.sh SECONDS [TARGET...]   (default: every fuzz/fuzz-* target)
# Environment: FUZZ_BIN (default .build-fuzz/release), FUZZ_WORK (default .build-fuzz/fuzz),
# FUZZ_RUNS (stop each target after that many executions instead; SECONDS still caps it),
# FUZZ_ARGS (more libFuzzer flags).
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || for d in fuzz/fuzz-*/; do targets+=("$(basename "$d")"); done
bin=${FUZZ_BIN:-.build-fuzz/release}
# A Swift trap is reported by libFuzzer's stack trace; the Swift backtracer would run first and
# trip ASan in its own crash handler, hiding the trap's message behind a report about itself.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
work=${FUZZ_WORK:-.build-fuzz/fuzz}
mkdir -p "$work/artifacts" "$work/logs"

# Guest-memory images and message streams need longer inputs than libFuzzer's default 4096.
max_len() {
  case $1 in
    fuzz-virtqueue|fuzz-virtio-blk|fuzz-vhost-user|fuzz-virtio-net) echo 20000 ;;
    fuzz-migration) echo 8192 ;;
    fuzz-qcow2) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

failed=0
for t in "${targets[@]}"; do
  exe=$bin/$t
  if [[ ! -x $exe ]]; then echo "$t: $exe missing (make fuzz)"; failed=1; continue; fi
  mkdir -p "$work/corpus/$t"
  args=(-max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -max_len="$(max_len "$t")"
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$t-")
  [[ -n ${FUZZ_RUNS:-} ]] && args+=(-runs="$FUZZ_RUNS")
  [[ -f fuzz/dict/$t.dict ]] && args+=(-dict="fuzz/dict/$t.dict")
  seeds=(); [[ -d fuzz/seeds/$t ]] && seeds=("fuzz/seeds/$t")
  log=$work/logs/$t.log
  # shellcheck disable=SC2086
  nice -n 19 "$exe" "${args[@]}" ${FUZZ_ARGS:-} "$work/corpus/$t" "${seeds[@]}" >"$log" 2>&1
  status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  if [[ $status -eq 0 ]]; then result=ok; else
    result="FINDING (exit $status): $(grep -m1 -E 'ERROR: |Fatal error|fatal error' "$log" | cut -c1-160); log $log"
    failed=1
  fi
  echo "$t execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} seconds=$seconds result=$result"
done
exit $failed
