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

# find_node: after find_control_plane, decides whether the pod scenarios (tests/e2e/as_users_run_it.rs) can
# run on a real node here (hack/node.sh: installs Debian's containerd, runc and CNI plugins when
# missing and root, then checks). Returns 0 with BULKHEAD_E2E_NODE=1 exported and E2E_NODE
# describing it; returns 1 with E2E_NODE saying why not (the scenarios then show as ignored).
# BULKHEAD_E2E_NODE=0 set beforehand turns the node off on purpose.
find_node() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ "${BULKHEAD_E2E_NODE:-}" == 0 ]]; then
    E2E_NODE="BULKHEAD_E2E_NODE=0 (turned off)"
    return 1
  fi
  if ! bash "$root/hack/node.sh" install >&2; then
    E2E_NODE="hack/node.sh install failed (needs root and apt-get, or the packages installed)"
    return 1
  fi
  local why
  if ! why="$(bash "$root/hack/node.sh" check)"; then
    E2E_NODE="$why"
    return 1
  fi
  export BULKHEAD_E2E_NODE=1
  # shellcheck disable=SC2034 # read by the scripts that source this file
  E2E_NODE="containerd $(containerd --version 2>/dev/null | awk '{print $3}'), kubelet from ${KUBEBUILDER_ASSETS:-the control plane folder}"
  return 0
}

# build_images: the operator image from the release binary (hack/image.sh operator, as the
# Dockerfile builds it) and the test workload image, for the pod scenarios; exports
# BULKHEAD_E2E_OPERATOR_IMAGE.
build_images() {
  local root out
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  out="$(bash "$root/hack/image.sh" operator)" || return 1
  export BULKHEAD_E2E_OPERATOR_IMAGE="$out"
}
