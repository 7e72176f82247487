#!/usr/bin/env bash
# The end-to-end suite alone (tests/e2e, harness in tests/support/cluster.rs) against a real
# kube-apiserver + etcd + kube-controller-manager. hack/test.sh runs it too; this is the quick
# way to rerun it or one scenario. Nothing is downloaded or built here except the project itself
# and the chart tooling (helm, kubectl via hack/install-tools.sh). The control plane is, in order:
#   BULKHEAD_E2E_ETCD, BULKHEAD_E2E_KUBE_APISERVER, BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER
#   KUBEBUILDER_ASSETS   a folder with etcd, kube-apiserver, kube-controller-manager (envtest)
#   ../shared/envtest    beside the repository (unpacked once)
# A real node for the pod scenarios (hack/node.sh) when this machine can start one; the
# operator image from the release build unless BULKHEAD_E2E_OPERATOR_IMAGE names one.
# Optional: BULKHEAD_E2E_KEEP=1 keeps each test's directory (logs, audit.log, kubeconfigs);
# BULKHEAD_E2E_TMPDIR puts those directories elsewhere than $TMPDIR. Extra arguments go to
# the test binary (e.g. a test name filter).
#
# Usage: hack/e2e.sh [TEST-FILTER]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

source hack/control-plane.sh
if ! find_control_plane; then
  echo "e2e: no control plane: $E2E_CONTROL_PLANE" >&2
  echo "e2e: set KUBEBUILDER_ASSETS to a folder with etcd, kube-apiserver and kube-controller-manager (this script never downloads them)" >&2
  exit 2
fi
echo "e2e: control plane from $E2E_CONTROL_PLANE" >&2
for tool in openssl curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "e2e: $tool is required" >&2; exit 2; }
done

hack/install-tools.sh >/dev/null
export PATH="${BULKHEAD_TOOLS_DIR:-$root/.tools}/bin:$PATH"
if find_node; then
  echo "e2e: the pod scenarios run on a real node ($E2E_NODE)" >&2
  if [[ -z "${BULKHEAD_E2E_OPERATOR_IMAGE:-}" ]]; then
    echo "e2e: building the operator image (hack/image.sh operator: the release build)" >&2
    build_images
  fi
else
  echo "e2e: NO NODE ($E2E_NODE): the pod scenarios show as ignored" >&2
fi

# The operator runs from a private copy: a build of another checkout into a shared
# CARGO_TARGET_DIR would otherwise replace target/debug/bulkhead under the running suite.
# The dev control plane example too: tests/e2e/demo.rs runs hack/demo.sh with both.
cargo build --locked --bin bulkhead --example dev-control-plane
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$target_dir/debug/bulkhead" "$work/bulkhead"
cp "$target_dir/debug/examples/dev-control-plane" "$work/dev-control-plane"
export BULKHEAD_E2E_OPERATOR="$work/bulkhead"
export BULKHEAD_E2E_DEV_CONTROL_PLANE="$work/dev-control-plane"

# One test at a time: each starts its own control plane.
echo "e2e: cargo test --test e2e" >&2
cargo test --locked --test e2e -- --test-threads=1 "$@"
