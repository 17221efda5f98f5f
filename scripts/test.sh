#!/usr/bin/env bash
# Runs the whole test suite, including the e2e tests that build a cluster out of network
# namespaces (they need root). Works on a fresh Debian machine: missing tools are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the e2e tests create network namespaces and need root; rerun as root" >&2
  exit 1
fi

# Tools the tests (and the aws-lc-rs build) need, by command -> Debian package.
declare -A packages=(
  [ip]=iproute2
  [iptables-restore]=iptables
  [nft]=nftables
  [tcpdump]=tcpdump
  [iperf3]=iperf3
  [cmake]=cmake
)
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo build --features testing --bins

# Namespaces and temp dirs left by an earlier run that was killed (Drop never ran).
"${CARGO_TARGET_DIR:-target}/debug/ztun-lab" cleanup

cargo nextest run --features testing --no-fail-fast

# TODO: enable the lint gates:
# cargo fmt --all --check && cargo clippy --all-targets --features testing -- -D warnings
