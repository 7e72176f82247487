#!/usr/bin/env bash
# The end-to-end suite against a real kube-apiserver + etcd + kube-controller-manager
# (tests/e2e.rs, harness in tests/support/cluster.rs). Nothing is downloaded or built here
# except the project itself and the chart tooling (helm, kubectl via hack/install-tools.sh):
# the control-plane binaries are yours, named by
#   BULKHEAD_E2E_ETCD                      etcd
#   BULKHEAD_E2E_KUBE_APISERVER            kube-apiserver
#   BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER   kube-controller-manager (garbage collection)
# Optional: BULKHEAD_E2E_KEEP=1 keeps each test's directory (logs, audit.log, kubeconfigs);
# BULKHEAD_E2E_TMPDIR puts those directories elsewhere than $TMPDIR. Extra arguments go to
# the test binary (e.g. a test name filter).
#
# Usage: hack/e2e.sh [TEST-FILTER]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

missing=()
for var in BULKHEAD_E2E_ETCD BULKHEAD_E2E_KUBE_APISERVER BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER; do
  path="${!var:-}"
  if [[ -z "$path" ]]; then
    missing+=("$var is not set")
  elif [[ ! -x "$path" ]]; then
    missing+=("$var=$path is not an executable file")
  fi
done
if ((${#missing[@]})); then
  printf 'e2e: %s\n' "${missing[@]}" >&2
  echo "e2e: point the three variables at etcd, kube-apiserver and kube-controller-manager binaries (this script never downloads them)" >&2
  exit 2
fi
for tool in openssl curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "e2e: $tool is required" >&2; exit 2; }
done

hack/install-tools.sh >/dev/null
export PATH="${BULKHEAD_TOOLS_DIR:-$root/.tools}/bin:$PATH"

# The operator runs from a private copy: a build of another checkout into a shared
# CARGO_TARGET_DIR would otherwise replace target/debug/bulkhead under the running suite.
cargo build --locked --bin bulkhead
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$target_dir/debug/bulkhead" "$work/bulkhead"
export BULKHEAD_E2E_OPERATOR="$work/bulkhead"

# One test at a time: each starts its own control plane.
cargo test --locked --test e2e -- --test-threads=1 "$@"
