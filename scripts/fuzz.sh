#!/usr/bin/env bash
# cargo-fuzz (libFuzzer, coverage-guided) over ztun's fuzz targets in fuzz/ (see fuzz/README.md).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#       Longer runs (default 60 s per target, every target), random seeds. The corpus grows in
#       fuzz/corpus/<target>/ (starting from fuzz/seeds/<target>/); failing inputs land in
#       fuzz/artifacts/<target>/ (both git-ignored). Once fixed, check a failing input in under
#       fuzz/regressions/<target>/ so tests/fuzz_regressions.rs replays it forever.
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
