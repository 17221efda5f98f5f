#!/usr/bin/env bash
# Runs the whole test suite, including the e2e tests that build a cluster out of network
# namespaces (they need root). Works on a fresh Debian machine: missing tools are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the e2e tests create network namespaces and need root; rerun as root" >&2
  exit 1
fi

bash scripts/install-deps.sh

# Kubernetes packaging: manifests, Helm values, Dockerfile, shell scripts (offline after first run).
bash scripts/check-manifests.sh

cargo build --features testing --bins

# Namespaces and temp dirs left by an earlier run that was killed (Drop never ran).
"${CARGO_TARGET_DIR:-target}/debug/ztun-lab" cleanup

cargo nextest run --features testing --no-fail-fast

# Every cargo-fuzz target: seed 1, a fixed number of runs, from the committed seeds (fuzz/README.md).
bash scripts/fuzz.sh --check

# Lint gates (STYLE.md §9).
cargo fmt --all --check
cargo clippy --all-targets --features testing -- -D warnings
