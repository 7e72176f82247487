#!/usr/bin/env bash
# The test command, the one CI runs:
#   1. the chart tooling (real helm, kubectl, kubernetes-validate, checkov) via hack/install-tools.sh
#   2. a control plane for the end-to-end suite: KUBEBUILDER_ASSETS (or the BULKHEAD_E2E_*
#      binaries) when set, else ../shared/envtest unpacked once; without any, the e2e tests are
#      reported by cargo as ignored, with the reason
#   2b. a real node for the pod scenarios (hack/node.sh: Debian's containerd, runc and CNI
#      plugins installed when missing) and the operator image from the release binary
#      (hack/image.sh operator); without a node those scenarios show as ignored, with the
#      reason, unless BULKHEAD_REQUIRE_NODE=1 (CI sets it), which makes that a failure
#   3. cargo test: unit tests, CRD/CEL tests (and the crds-cluster/ drift check), controller
#      scenarios against the in-process API double, chart tests with the real helm binary, and
#      the e2e suite against the real kube-apiserver
#   4. hack/verify-chart.sh: lint, kubernetes-validate --strict, checkov
#   5. hack/module-cycles.py: no module of src/ imports a module that imports it
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
hack/install-tools.sh >/dev/null
export PATH="${BULKHEAD_TOOLS_DIR:-$root/.tools}/bin:$PATH"

source hack/control-plane.sh
if find_control_plane; then
  echo "test: the e2e suite runs against $E2E_CONTROL_PLANE"
  if find_node; then
    echo "test: the pod scenarios run on a real node ($E2E_NODE)"
    # The release build ends in a long single-threaded link (fat LTO, one codegen unit): the
    # debug build below runs beside it, in its own target directory (no lock between them).
    image_out="$root/target/images/operator.tar"
    image_log="$(mktemp)"
    echo "test: building the operator image in the background (hack/image.sh operator: cargo build --release into target/release-image; several minutes on a fresh machine)"
    CARGO_TARGET_DIR="$root/target/release-image" bash hack/image.sh operator --out "$image_out" >/dev/null 2>"$image_log" &
    image_pid=$!
    # Whatever ends this script early also ends that build.
    trap 'kill "$image_pid" 2>/dev/null || true' EXIT
  elif [[ "${BULKHEAD_REQUIRE_NODE:-}" == 1 ]]; then
    echo "test: NO NODE ($E2E_NODE), and BULKHEAD_REQUIRE_NODE=1: failing" >&2
    exit 1
  else
    echo "test: NO NODE ($E2E_NODE): the pod scenarios will show as ignored"
  fi
elif [[ "${BULKHEAD_REQUIRE_NODE:-}" == 1 ]]; then
  echo "test: NO CONTROL PLANE ($E2E_CONTROL_PLANE), and BULKHEAD_REQUIRE_NODE=1: failing" >&2
  exit 1
else
  echo "test: NO CONTROL PLANE ($E2E_CONTROL_PLANE): the e2e tests will show as ignored"
fi

# The dev control plane as a program, for hack/demo.sh and its e2e test (tests/e2e/demo.rs):
# cargo test --all-targets builds examples only as (empty) test harnesses. Every dependency is
# shared with the cargo test below (same profile and features), so this adds one crate.
echo "test: cargo build --locked --bin bulkhead --example dev-control-plane"
cargo build --locked --bin bulkhead --example dev-control-plane
if [[ -n "${image_pid:-}" ]]; then
  echo "test: waiting for the operator image build"
  if ! wait "$image_pid"; then
    cat "$image_log" >&2
    echo "test: hack/image.sh operator failed (above)" >&2
    exit 1
  fi
  trap - EXIT
  grep -v '^ *Compiling' "$image_log" || true
  rm -f "$image_log"
  export BULKHEAD_E2E_OPERATOR_IMAGE="$image_out"
  echo "test: operator image $BULKHEAD_E2E_OPERATOR_IMAGE"
fi
echo "test: cargo test --locked --all-targets (builds first: several minutes on a fresh machine)"
cargo test --locked --all-targets
hack/verify-chart.sh
echo "test: hack/module-cycles.py (no module of src/ imports a module that imports it)"
python3 hack/module-cycles.py
