# shellcheck shell=bash
# Sourced by hack/test.sh, hack/e2e.sh, hack/bench.sh and hack/demo.sh: finds the control-plane
# binaries for the e2e harness (tests/support/cluster.rs). Never downloads or builds anything.
#
# find_control_plane: returns 0 with KUBEBUILDER_ASSETS exported (or the BULKHEAD_E2E_* variables
# kept as given) and E2E_CONTROL_PLANE describing where they are; returns 1 with
# E2E_CONTROL_PLANE saying what is missing. Order:
#   1. BULKHEAD_E2E_ETCD and BULKHEAD_E2E_KUBE_APISERVER (and _KUBE_CONTROLLER_MANAGER), if set
#   2. KUBEBUILDER_ASSETS (the envtest convention: `setup-envtest use -p path` prints it)
#   3. ../shared/envtest beside the repository, unpacked once by its own unpack.sh
find_control_plane() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -n "${BULKHEAD_E2E_ETCD:-}" && -n "${BULKHEAD_E2E_KUBE_APISERVER:-}" ]]; then
    E2E_CONTROL_PLANE="BULKHEAD_E2E_ETCD=$BULKHEAD_E2E_ETCD, BULKHEAD_E2E_KUBE_APISERVER=$BULKHEAD_E2E_KUBE_APISERVER"
    return 0
  fi
  if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    E2E_CONTROL_PLANE="KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
    return 0
  fi
  local shared="$root/../shared/envtest"
  if [[ -f "$shared/unpack.sh" ]]; then
    echo "control-plane: unpacking $shared (once; checks SHA256SUMS)" >&2
    KUBEBUILDER_ASSETS="$(bash "$shared/unpack.sh")"
    export KUBEBUILDER_ASSETS
    E2E_CONTROL_PLANE="KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS (from ../shared/envtest)"
    return 0
  fi
  # shellcheck disable=SC2034 # read by the scripts that source this file
  E2E_CONTROL_PLANE="KUBEBUILDER_ASSETS is not set and there is no ../shared/envtest"
  return 1
}
