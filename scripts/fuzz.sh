#!/usr/bin/env bash
# Longer fuzzing run with random seeds: scripts/fuzz.sh [seconds-per-target] [target...]
# Failing inputs land in fuzz/artifacts/<target>/; fix them, then move them to
# fuzz/regressions/<target>/ so tests/fuzz_regressions.rs replays them forever.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cargo build --release --features testing --bin ztun-fuzz
"${CARGO_TARGET_DIR:-target}/release/ztun-fuzz" --seconds "$seconds" --random-seed \
  --artifacts fuzz/artifacts --corpus fuzz/corpus "${targets[@]}"
