#!/usr/bin/env bash
# Side-by-side benchmark on the two-node namespace cluster: every figure through two ztuns
# (one data-plane worker thread each) against direct TCP between pods of the same run and a
# floor (two plain relays plus AES-GCM, and a relay pair carrying every connection over one
# link), at RUST_LOG=warn and at the shipped info (access log on). With `--ztunnel PATH` (a
# ztunnel binary you supply) every tunnelled figure is also measured through two ztunnels in
# the same run, alternating with ztun, same settings, and the table shows ztun / ztunnel. Prints the table and writes JSON to target/bench/. Needs
# root. Other arguments go to `ztun-lab bench` (e.g. --runs 5 --seconds 10 --idle 1000,10000
# --levels warn --only throughput,connections; --floor-work-us 10,20,30 adds the floor's
# what-if rows: the relay pair with that much user-space work per end and connection, and each
# tunnel's connection rate placed on that curve). Leftovers of a killed run: `ztun-lab cleanup`,
# only when no other lab (tests) runs on the machine.
# `scripts/bench.sh --state [--ztunnel PATH] [--workloads N] [--runs N]`: the state-at-scale
# figures instead (below); `scripts/bench.sh --control-plane [--workloads N] [--nodes N]`: the
# control plane serving that mesh to N nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/bench.sh: needs root (network namespaces); rerun as root" >&2
  exit 1
fi
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = "--ztunnel" ]; then
    z="${args[$((i + 1))]:-}"
    if [ ! -x "$z" ]; then
      echo "scripts/bench.sh: --ztunnel needs an executable ztunnel binary, got '$z'" >&2
      exit 1
    fi
  fi
done
target_dir="${CARGO_TARGET_DIR:-target}"
if [ "${1:-}" = "--state" ]; then
  # State at scale: one dedicated tunnel in its own lab namespace fed a generated mesh over
  # xDS and from a file; with `--ztunnel PATH`, ztunnel measured the same way in the same run.
  # Extra arguments go to `ztun-lab state-bench` (--workloads N --runs N --ztunnel PATH
  # --baseline PATH (another ztun build, same run) --only xds|file).
  # Touches no other lab's namespaces.
  shift
  cargo build --release --features testing --bins
  mkdir -p "$target_dir/bench"
  out="$target_dir/bench/state-$(date -u +%Y%m%dT%H%M%SZ).json"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  exec "$target_dir/release/ztun-lab" state-bench --ztun "$target_dir/release/ztun" --out "$out" "$@"
fi
if [ "${1:-}" = "--control-plane" ]; then
  # `ztun control-plane` serving the state bench's mesh to N in-process delta-ADS clients
  # (default 50 000 workloads, 100 nodes): its RSS and CPU, the initial push, one change.
  # Extra arguments go to `ztun-lab control-plane-bench` (--workloads N --nodes N --changes N).
  shift
  cargo build --release --features testing --bins
  mkdir -p "$target_dir/bench"
  out="$target_dir/bench/control-plane-$(date -u +%Y%m%dT%H%M%SZ).json"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  exec "$target_dir/release/ztun-lab" control-plane-bench --ztun "$target_dir/release/ztun" --out "$out" "$@"
fi
bash scripts/install-deps.sh
cargo build --release --features testing --bins
mkdir -p "$target_dir/bench"
out="$target_dir/bench/bench-$(date -u +%Y%m%dT%H%M%SZ).json"
echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
"$target_dir/release/ztun-lab" bench --ztun "$target_dir/release/ztun" --out "$out" "${args[@]}" 2>"$target_dir/bench/processes.log"
