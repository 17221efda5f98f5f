#!/usr/bin/env bash
# cargo-fuzz (libFuzzer, coverage-guided) over ztun's fuzz targets in fuzz/ (see fuzz/README.md).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#       Longer runs (default 60 s per target, every target), random seeds. The corpus grows in
#       fuzz/corpus/<target>/ (starting from fuzz/seeds/<target>/); failing inputs land in
#       fuzz/artifacts/<target>/ (both git-ignored). Once fixed, check a failing input in under
#       fuzz/regressions/<target>/ so tests/fuzz_regressions.rs replays it forever.
#   scripts/fuzz.sh --coverage [cpu-seconds-per-target] [target...]
#       The coverage table of fuzz/README.md (default 600 CPU seconds per target).
#   scripts/fuzz.sh --check
#       What scripts/test.sh runs: every target, seed 1, FUZZ_CHECK_RUNS inputs (default
#       100000), from a temp copy of the committed seeds: deterministic, and nothing is written
#       into the repository but the build (fuzz/target/). Fails naming each target that crashed.
#
# Stable Rust: `--sanitizer none` (AddressSanitizer needs nightly); libFuzzer's coverage
# guidance is unaffected. cargo-fuzz itself comes from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

triple="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="$PWD/fuzz/target"
# 16 codegen units: the ztun crate builds on both cores (cargo-fuzz defaults to 1).
flags=(--sanitizer none --target "$triple" --target-dir "$target_dir" --codegen-units 16)
bin_dir="$target_dir/$triple/release"
# Per input; libFuzzer reports a slower input as a failure.
timeout_s=10

if [ "${1:-}" = "--check" ]; then
  runs="${FUZZ_CHECK_RUNS:-100000}"
  # Without address randomization a run repeats exactly (libFuzzer keys its tables of compared
  # values by code address); targets whose code hashes with random keys can still differ a little.
  norand=()
  if setarch "$(uname -m)" -R true 2>/dev/null; then
    norand=(setarch "$(uname -m)" -R)
  fi
  cargo fuzz build "${flags[@]}"
  tmp="$(mktemp -d)"
  failed=()
  start_all=$SECONDS
  for t in $(cargo fuzz list); do
    mkdir -p "$tmp/$t/corpus"
    cp fuzz/seeds/"$t"/* "$tmp/$t/corpus/"
    start=$SECONDS
    if (cd "$tmp/$t" && "${norand[@]}" "$bin_dir/$t" -seed=1 -runs="$runs" -timeout="$timeout_s" \
      -artifact_prefix="$tmp/$t/" corpus >log 2>&1); then
      echo "fuzz $t: $runs runs, $(grep -o 'cov: [0-9]*' "$tmp/$t/log" | tail -1), $((SECONDS - start)) s"
    else
      grep -A 3 'panicked at' "$tmp/$t/log" | head -n 20 || true
      tail -n 12 "$tmp/$t/log"
      echo "fuzz target $t FAILED: input and log in $tmp/$t/" >&2
      failed+=("$t")
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]}" >&2
    exit 1
  fi
  rm -rf "$tmp"
  echo "fuzz: every target clean ($((SECONDS - start_all)) s of runs)"
  exit 0
fi

if [ "${1:-}" = "--coverage" ]; then
  # The coverage table in fuzz/README.md: each target from a temp copy of its committed seeds,
  # seed 1, for a budget of CPU seconds (not wall-clock seconds, so that runs on a busy machine
  # are comparable), at idle priority (SCHED_IDLE) so other work is not slowed, JOBS targets at
  # a time. The per-input timeout is off: at idle priority an input may wait on the scheduler.
  # Prints one line per target: cov, ft, corpus, executions, exec/s (per CPU second).
  cpu_budget="${2:-600}"
  shift 2 || shift $#
  jobs="${FUZZ_JOBS:-2}"
  cargo fuzz build "${flags[@]}"
  mapfile -t targets < <(if [ $# -gt 0 ]; then printf '%s\n' "$@"; else cargo fuzz list; fi)
  tmp="$(mktemp -d)"
  tick="$(getconf CLK_TCK)"
  cover() {
    local t="$1" dir="$tmp/$1"
    mkdir -p "$dir/corpus"
    cp fuzz/seeds/"$t"/* "$dir/corpus/"
    (cd "$dir" && exec chrt -i 0 "$bin_dir/$t" -seed=1 -timeout=0 -print_final_stats=1 \
      -artifact_prefix="$dir/" corpus >log 2>&1) &
    local pid=$! cpu=0
    while kill -0 "$pid" 2>/dev/null; do
      # utime + stime of the fuzzer (fields 14 and 15 of /proc/PID/stat), in clock ticks.
      cpu=$(awk -v t="$tick" '{ print int(($14 + $15) / t) }' "/proc/$pid/stat" 2>/dev/null || echo 0)
      if [ "$cpu" -ge "$cpu_budget" ]; then
        kill -INT "$pid" 2>/dev/null || true
        break
      fi
      sleep 5
    done
    wait "$pid" || true
    if grep -q 'ERROR: libFuzzer\|panicked at' "$dir/log"; then
      echo "$t: FAILED, input and log in $dir/"
      return
    fi
    local last execs rate
    last="$(grep -E '(NEW|REDUCE|pulse|INITED).*cov:' "$dir/log" | tail -1)"
    execs="$(sed -n 's/^stat::number_of_executed_units: //p' "$dir/log")"
    execs="${execs:-0}"
    rate=$((execs / (cpu_budget > 0 ? cpu_budget : 1)))
    echo "$t: $(grep -o 'cov: [0-9]*' <<<"$last") $(grep -o 'ft: [0-9]*' <<<"$last")" \
      "$(grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' <<<"$last") execs: $execs exec/cpu-s: $rate"
  }
  for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    cover "$t" &
  done
  wait
  rm -rf "$tmp"
  exit 0
fi

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build "${flags[@]}"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  # New inputs go to the first corpus directory only; the seeds stay as committed.
  if ! cargo fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout="$timeout_s"; then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
