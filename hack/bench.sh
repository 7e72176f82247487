#!/usr/bin/env bash
# The per-instance cost benchmark (tests/bench.rs on the e2e harness, real kube-apiserver + etcd):
# start-up to ready, idle VmRSS and RssAnon and CPU with 0/100/1000 Credentials, steady-state API
# requests and writes per minute (audit log), create→Secret latency p50/p95/p99, a cold restart
# with 1000 Credentials, and memory and requests before and after 2000 foreign 64 KiB Secrets.
# Prints markdown tables for the README's Performance section. Takes about fifteen minutes.
#
# Needs a control plane as hack/e2e.sh finds it (KUBEBUILDER_ASSETS, the BULKHEAD_E2E_*
# binaries, or ../shared/envtest; nothing is downloaded). The controller manager is not used.
#
# Usage: hack/bench.sh                  the per-instance tables
#        hack/bench.sh fleet N          N instances in N namespaces on one API server (N=300:
#                                       about 15 minutes; BULKHEAD_BENCH_FLEET_CREDENTIALS per
#                                       namespace, default 5)
#        hack/bench.sh startup          only process start → first Secret, five times, each with
#                                       the instance's requests on a timeline (audit log)
#        hack/bench.sh latency          only create→Secret one at a time (200, beside 100
#                                       Credentials), each create broken down by stage from
#                                       the audit log (API server vs. the rest)
#        hack/bench.sh concurrency [C...] burst of 200 and a cold start with 1000 at each
#                                       --max-concurrent-reconciles value (default 4 8 16 32)
#        hack/bench.sh knobs            idle RSS under runtime/allocator knobs (environment only)
#        hack/bench.sh profiles [V...]  idle memory of release builds with other profile settings
#                                       (V: today strip lto lto-abort opt-s; default all), each
#                                       built into its own target directory under
#                                       $BULKHEAD_BENCH_PROFILE_TARGET (default target/bench-profiles)
#
# BULKHEAD_BENCH_OPERATOR=path measures that binary instead of building one.
#
# The operator is measured as shipped: built with the release profile and run from a private
# copy (see hack/e2e.sh). The harness itself (tests/bench.rs) is built with the dev profile:
# it is not what is measured, and a release build of it would compile every dependency again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode="${1:-table}"
case "$mode" in
  table|knobs|profiles|startup|latency) ;;
  concurrency)
    shift
    [[ $# -eq 0 ]] || export BULKHEAD_BENCH_CONCURRENCY="$*" ;;
  fleet)
    [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "bench: usage: hack/bench.sh fleet N (N ≥ 1)" >&2; exit 2; }
    export BULKHEAD_BENCH_FLEET="$2" ;;
  *) echo "bench: unknown mode '$mode' (table, fleet N, knobs, profiles, startup, latency, concurrency)" >&2; exit 2 ;;
esac

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

target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

run_bench() {
  cargo test --locked --test bench -- --ignored --nocapture --exact "$1"
}

if [[ "$mode" == profiles ]]; then
  # Each variant spells out every setting it compares, so the table does not depend on what
  # Cargo.toml's [profile.release] says today (the CARGO_PROFILE_RELEASE_* variables override it).
  declare -A variants=(
    [today]="OPT_LEVEL=3 STRIP=debuginfo PANIC=unwind LTO=false CODEGEN_UNITS=16"
    [strip]="OPT_LEVEL=3 STRIP=symbols PANIC=unwind LTO=false CODEGEN_UNITS=16"
    [lto]="OPT_LEVEL=3 STRIP=symbols PANIC=unwind LTO=fat CODEGEN_UNITS=1"
    [lto-abort]="OPT_LEVEL=3 STRIP=symbols PANIC=abort LTO=fat CODEGEN_UNITS=1"
    [opt-s]="OPT_LEVEL=s STRIP=symbols PANIC=unwind LTO=fat CODEGEN_UNITS=1"
  )
  shift
  names=("$@")
  [[ ${#names[@]} -gt 0 ]] || names=(today strip lto lto-abort opt-s)
  base="${BULKHEAD_BENCH_PROFILE_TARGET:-$target_dir/bench-profiles}"
  list=""
  for name in "${names[@]}"; do
    [[ -n "${variants[$name]:-}" ]] || { echo "bench: unknown variant $name (${!variants[*]})" >&2; exit 2; }
    settings=()
    for kv in ${variants[$name]}; do settings+=("CARGO_PROFILE_RELEASE_$kv"); done
    echo "bench: building $name (${variants[$name]})" >&2
    env "${settings[@]}" CARGO_TARGET_DIR="$base/$name" cargo build --locked --release --bin bulkhead
    cp "$base/$name/release/bulkhead" "$work/bulkhead-$name"
    # label=path (the settings are printed here, not in the label: it may not hold '=').
    list+="$name=$work/bulkhead-$name;"
  done
  for name in "${names[@]}"; do echo "bench: $name = ${variants[$name]}" >&2; done
  export BULKHEAD_BENCH_BINARIES="$list"
  run_bench idle_memory_of_builds
  exit 0
fi

if [[ -n "${BULKHEAD_BENCH_OPERATOR:-}" ]]; then
  # A build made elsewhere (e.g. by `profiles`, with the same settings as [profile.release]).
  echo "bench: measuring $BULKHEAD_BENCH_OPERATOR (not building)" >&2
  cp "$BULKHEAD_BENCH_OPERATOR" "$work/bulkhead"
else
  cargo build --locked --release --bin bulkhead
  cp "$target_dir/release/bulkhead" "$work/bulkhead"
fi
export BULKHEAD_E2E_OPERATOR="$work/bulkhead"

case "$mode" in
  table) run_bench per_instance_cost ;;
  fleet) run_bench fleet ;;
  knobs) run_bench memory_knobs ;;
  startup) run_bench startup ;;
  latency) run_bench latency ;;
  concurrency) run_bench concurrency ;;
esac
