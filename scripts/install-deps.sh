#!/usr/bin/env bash
# Installs the system tools ztun's tests, demo and benchmarks use, if missing (Debian, root).
set -euo pipefail

declare -A packages=(
  [ip]=iproute2
  [iptables-restore]=iptables
  [nft]=nftables
  [tcpdump]=tcpdump
  [iperf3]=iperf3
  [cmake]=cmake
  [openssl]=openssl
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
# cargo-fuzz (scripts/fuzz.sh); libfuzzer-sys builds libFuzzer with a C++ compiler.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends g++
fi
