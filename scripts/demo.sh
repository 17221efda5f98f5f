#!/usr/bin/env bash
# The main job, end to end: builds ztun (release), creates a two-node cluster out of network
# namespaces, runs the built-in control plane and ztun on each node, sends real traffic
# through HBONE, prints the access log and a summary, and cleans up. Needs root.
# Idempotent: leftovers of an interrupted run are removed first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/demo.sh: needs root (network namespaces, iptables); rerun as root" >&2
  exit 1
fi
bash scripts/install-deps.sh

echo "== building ztun (release)"
cargo build --release --features testing --bins
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/ztun-lab" cleanup >/dev/null

mkdir -p "$target_dir/demo"
log="$target_dir/demo/processes.log"
# Process logs (ztun, control plane) go to a file; the report goes to the terminal.
if ! "$target_dir/release/ztun-lab" demo --ztun "$target_dir/release/ztun" "$@" 2>"$log"; then
  echo "demo failed; process logs: $log" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
echo "full process logs: $log"
