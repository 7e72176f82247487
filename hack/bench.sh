#!/usr/bin/env bash
# The per-instance cost benchmark (tests/bench.rs on the e2e harness): start-up to ready, idle
# RSS/CPU with 0/100/1000 Credentials, steady-state API requests and Lease writes (audit log),
# create→Secret latency p50/p95/p99, and 20 instances in 20 namespaces. Prints a markdown
# table for the README's Performance section. Takes about ten minutes.
#
# Needs a control plane as hack/e2e.sh finds it (KUBEBUILDER_ASSETS, the BULKHEAD_E2E_*
# binaries, or ../shared/envtest; nothing is downloaded). The controller manager is not used.
#
# Usage: hack/bench.sh          the table
#        hack/bench.sh knobs    idle RSS under runtime/allocator knobs (where the memory goes)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

source hack/control-plane.sh
if ! find_control_plane; then
  echo "bench: no control plane: $E2E_CONTROL_PLANE (this script never downloads one)" >&2
  exit 2
fi
echo "bench: control plane from $E2E_CONTROL_PLANE" >&2
for tool in openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is required" >&2; exit 2; }
done

hack/install-tools.sh >/dev/null
export PATH="${BULKHEAD_TOOLS_DIR:-$root/.tools}/bin:$PATH"

# Measured as shipped: an optimized build, run from a private copy (see hack/e2e.sh).
cargo build --locked --release --bin bulkhead
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$target_dir/release/bulkhead" "$work/bulkhead"
export BULKHEAD_E2E_OPERATOR="$work/bulkhead"

if [[ "${1:-}" == knobs ]]; then
  cargo test --locked --release --test bench -- --ignored --nocapture --exact memory_knobs
else
  cargo test --locked --release --test bench -- --ignored --nocapture --exact per_instance_cost
fi
