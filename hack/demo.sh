#!/usr/bin/env bash
# The whole product in one command, on a machine without a cluster:
#   1. builds (or reuses) `bulkhead` and the development control plane (debug profile, the
#      command hack/test.sh runs before its cargo test: every dependency is shared)
#   2. starts a throwaway etcd + kube-apiserver + kube-controller-manager from KUBEBUILDER_ASSETS
#      (else ../shared/envtest, as hack/test.sh does) with openssl-made certificates, all on
#      free loopback ports, in a temporary directory
#   3. applies crds-cluster/ (the cluster admin's step)
#   4. the operator as users run it, when this machine can start a node (hack/node.sh check:
#      root, Debian's containerd/runc/CNI plugins, kubelet beside the control plane): one real
#      node (hack/node.sh), the operator image built from the binary (hack/image.sh), and
#      `helm install` of the chart into namespace demo (labelled Pod Security `restricted`);
#      the pod reaches the API server through the `kubernetes` Service. Otherwise (or with
#      --process) the fallback: the chart rendered with helm and applied, and `bulkhead run` as
#      a local process with a token of the chart's ServiceAccount (exactly the chart's Role).
#      Either way the development control plane (mTLS) with the identity Secret
#   5. creates the Tenant and one Credential of each type, waits until all are Ready, prints
#      what to look at (Secret keys, never values) and a kubeconfig, and runs until Ctrl-C
#   6. on exit (Ctrl-C, an error, --for, --exit-when-ready) stops every process group it started
#      and removes its temporary directory
#
# With --context NAME it installs into that existing cluster instead (namespace demo, which
# must not exist yet; the CRDs only with --install-crds) and removes the namespace on exit.
#
# Usage: hack/demo.sh [--context NAME [--install-crds]] [--namespace NS] [--for SECONDS]
#                     [--exit-when-ready] [--keep] [--no-build] [--process]
#   BULKHEAD_TOOLS_DIR           where hack/install-tools.sh put helm and kubectl
#   BULKHEAD_DEMO_BULKHEAD       a prebuilt bulkhead binary (implies no build of it)
#   BULKHEAD_DEMO_DEV_CONTROL_PLANE  a prebuilt dev-control-plane example binary
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

context=""
install_crds=false
namespace="demo"
run_for=""
exit_when_ready=false
keep=false
build=true
force_process=false
while (($#)); do
  case "$1" in
    --context) context="${2:?--context needs a kubeconfig context name}"; shift 2 ;;
    --context=*) context="${1#*=}"; shift ;;
    --install-crds) install_crds=true; shift ;;
    --namespace|-n) namespace="${2:?--namespace needs a name}"; shift 2 ;;
    --namespace=*) namespace="${1#*=}"; shift ;;
    --for) run_for="${2:?--for needs a number of seconds}"; shift 2 ;;
    --for=*) run_for="${1#*=}"; shift ;;
    --exit-when-ready) exit_when_ready=true; shift ;;
    --keep) keep=true; shift ;;
    --no-build) build=false; shift ;;
    --process) force_process=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -n "$run_for" && ! "$run_for" =~ ^[0-9]+$ ]]; then
  echo "demo: --for takes whole seconds (e.g. --for 60), not $run_for" >&2
  exit 2
fi
if $install_crds && [[ -z "$context" ]]; then
  echo "demo: --install-crds goes with --context (the throwaway control plane always gets the CRDs)" >&2
  exit 2
fi

started_at=$SECONDS
say() { printf 'demo [%3ds]: %s\n' "$((SECONDS - started_at))" "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# ---- cleanup: every process group we start, the temporary directory ---------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-demo.XXXXXX")"
pids=()          # process-group leaders, in start order
node_started=false
created_namespace=false
cleaned=false
cleanup() {
  $cleaned && return
  cleaned=true
  trap '' INT TERM
  say "stopping everything this demo started"
  if $node_started; then
    say "stopping the node (hack/node.sh down: containers, mounts, network, iptables)"
    bash "$root/hack/node.sh" down "$work" >"$work/node-down.log" 2>&1 || { cat "$work/node-down.log" >&2 || true; }
  fi
  local i pid
  # Reverse start order: the operator releases its Lease while the API server still runs.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[i]}"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if $created_namespace; then
    say "deleting namespace $namespace from context $context"
    kubectl delete namespace "$namespace" --wait=false >/dev/null 2>&1 || true
  fi
  if $keep; then
    say "kept $work (logs, kubeconfigs)"
  else
    rm -rf "$work"
    say "removed $work"
  fi
  say "stopped"
}
trap cleanup EXIT
# Ctrl-C is how the demo is meant to end: clean up and exit 0.
trap 'exit 0' INT
trap 'exit 143' TERM

# Start a command in its own process group (setsid), logging to $work/NAME.log.
start() {
  local name="$1"
  shift
  setsid "$@" >"$work/$name.log" 2>&1 </dev/null &
  pids+=("$!")
  eval "pid_$name=$!"
}
alive() { kill -0 "$1" 2>/dev/null; }
# wait_for WHAT SECONDS PID COMMAND...: retry COMMAND until it succeeds; fail if PID dies.
wait_for() {
  local what="$1" seconds="$2" pid="$3" log="$4"
  shift 4
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$pid"; then
      tail -n 30 "$log" >&2 || true
      die "$what: the process exited (log above, $log)"
    fi
    ((SECONDS < deadline)) || { tail -n 30 "$log" >&2 || true; die "$what: not ready after ${seconds}s"; }
    sleep 0.2
  done
}
apiserver_ready() { [[ "$(kubectl get --raw=/readyz --request-timeout=5s 2>/dev/null)" == ok ]]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- tools ----------------------------------------------------------------------------------------
tools_bin="${BULKHEAD_TOOLS_DIR:-$root/.tools}/bin"
if [[ -d "$tools_bin" ]]; then export PATH="$tools_bin:$PATH"; fi
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required: $2"; }
need kubectl "run hack/install-tools.sh (puts helm and kubectl into .tools/bin)"
need helm "run hack/install-tools.sh (puts helm and kubectl into .tools/bin)"
need python3 "for free ports and the build's target directory"
need setsid "util-linux: every component runs in its own process group"
if [[ -z "$context" ]]; then
  need openssl "the throwaway control plane's certificates"
  need curl "health checks"
fi

# ---- build (or reuse) -------------------------------------------------------------------------
bulkhead="${BULKHEAD_DEMO_BULKHEAD:-}"
devcp="${BULKHEAD_DEMO_DEV_CONTROL_PLANE:-}"
if [[ -z "$bulkhead" || -z "$devcp" ]]; then
  need cargo "to build bulkhead (or set BULKHEAD_DEMO_BULKHEAD and BULKHEAD_DEMO_DEV_CONTROL_PLANE)"
  target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  if $build; then
    # The debug profile with the example: the dependencies `cargo test --all-targets` builds
    # (same profile, same features), and the very command hack/test.sh runs, so after the test
    # command this is a no-op, and never a second full build.
    say "building bulkhead and the dev control plane (cargo build, debug profile; up to several minutes on a fresh machine, seconds after hack/test.sh)"
    if ! cargo build --locked --bin bulkhead --example dev-control-plane 2>&1 |
      sed -u -n 's/^ *\(Compiling\|Finished\|error\)/demo: cargo: \1/p'; then
      die "cargo build failed (run it yourself to see why: cargo build --bin bulkhead --example dev-control-plane)"
    fi
  fi
  bulkhead="${bulkhead:-$target_dir/debug/bulkhead}"
  devcp="${devcp:-$target_dir/debug/examples/dev-control-plane}"
fi
for bin in "$bulkhead" "$devcp"; do
  [[ -x "$bin" ]] || die "$bin is missing: run without --no-build, or build it with cargo build --bin bulkhead --example dev-control-plane"
done
# Private copies: a later build into the same target directory cannot swap them mid-demo.
mkdir -p "$work/bin"
cp "$bulkhead" "$work/bin/bulkhead"
cp "$devcp" "$work/bin/dev-control-plane"
bulkhead="$work/bin/bulkhead"
devcp="$work/bin/dev-control-plane"

# ---- pod or process ---------------------------------------------------------------------------
# The operator runs as a pod from its image on a real node when this machine can start one; a
# local process otherwise. An existing cluster (--context) cannot load a local image: process.
readonly NODE_IP=10.244.0.1
mode=process
if [[ -z "$context" ]] && ! $force_process; then
  if [[ -z "${KUBEBUILDER_ASSETS:-}" ]]; then
    # shellcheck source=hack/control-plane.sh
    source hack/control-plane.sh
    find_control_plane >/dev/null 2>&1 || true
  fi
  if [[ -z "${KUBEBUILDER_ASSETS:-}" && -n "${BULKHEAD_E2E_KUBE_APISERVER:-}" ]]; then
    # The node binaries sit beside the control plane's.
    KUBEBUILDER_ASSETS="$(dirname "$BULKHEAD_E2E_KUBE_APISERVER")"
    export KUBEBUILDER_ASSETS
  fi
  if why="$(bash hack/node.sh check)"; then
    mode=pod
    say "the operator runs as a pod from its image, on a real node started here (hack/node.sh)"
  else
    say "the operator runs as a local process (no node here: $why; hack/node.sh install brings the runtime)"
  fi
fi

# ---- the cluster ------------------------------------------------------------------------------
kubeconfig="$work/kubeconfig"        # what the user points kubectl at (cluster admin)
write_kubeconfig() { # PATH SERVER CA USER TOKEN NAMESPACE
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bulkhead-demo
  cluster:
    server: $2
    certificate-authority: $3
users:
- name: $4
  user:
    token: $5
contexts:
- name: bulkhead-demo
  context: {cluster: bulkhead-demo, user: $4, namespace: $6}
current-context: bulkhead-demo
EOF
  chmod 600 "$1"
}

if [[ -z "$context" ]]; then
  # shellcheck source=hack/control-plane.sh
  source hack/control-plane.sh
  find_control_plane || die "no control plane binaries: $E2E_CONTROL_PLANE. Set KUBEBUILDER_ASSETS to a folder with etcd, kube-apiserver and kube-controller-manager (e.g. from setup-envtest), or use --context NAME for an existing cluster"
  etcd_bin="${BULKHEAD_E2E_ETCD:-${KUBEBUILDER_ASSETS:-}/etcd}"
  apiserver_bin="${BULKHEAD_E2E_KUBE_APISERVER:-${KUBEBUILDER_ASSETS:-}/kube-apiserver}"
  kcm_bin="${BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER:-${KUBEBUILDER_ASSETS:-}/kube-controller-manager}"
  for bin in "$etcd_bin" "$apiserver_bin" "$kcm_bin"; do
    [[ -x "$bin" ]] || die "$bin is not an executable ($E2E_CONTROL_PLANE)"
  done
  say "starting a throwaway control plane ($E2E_CONTROL_PLANE) in $work"

  pki="$work/pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bulkhead-demo-ca -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
      "extendedKeyUsage=serverAuth" "keyUsage=digitalSignature,keyEncipherment" >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out apiserver.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    # The API server's client certificate for the kubelet (logs, stats), X.509 v3.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      -keyout kubelet-client.key -out kubelet-client.csr
    printf '%s\n' "extendedKeyUsage=clientAuth" "keyUsage=critical,digitalSignature,keyEncipherment" >client.ext
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out kubelet-client.crt
  ) >"$work/openssl.log" 2>&1 || { cat "$work/openssl.log" >&2; die "openssl failed"; }
  admin_token="$(openssl rand -hex 24)"
  printf '%s,admin,admin-uid,"system:masters"\n' "$admin_token" >"$pki/tokens.csv"
  chmod 600 "$pki/tokens.csv" "$pki"/*.key

  etcd_port="$(free_port)"
  etcd_peer="$(free_port)"
  api_port="$(free_port)"
  kcm_port="$(free_port)"
  server="https://127.0.0.1:$api_port"
  write_kubeconfig "$kubeconfig" "$server" "$pki/ca.crt" admin "$admin_token" "$namespace"
  export KUBECONFIG="$kubeconfig"

  start etcd env -u ETCDCTL_API "$etcd_bin" --name=demo --data-dir="$work/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="demo=http://127.0.0.1:$etcd_peer" --initial-cluster-state=new
  # shellcheck disable=SC2154 # set by start
  wait_for "etcd" 60 "$pid_etcd" "$work/etcd.log" curl -sf "http://127.0.0.1:$etcd_port/health"

  if [[ "$mode" == pod ]]; then
    # Pods reach it through the kubernetes Service, whose endpoint is the advertised address
    # (the node's bridge); the kubelet is authorized by the Node authorizer.
    # shellcheck disable=SC2054 # Node,RBAC is one flag value
    api_mode=(--bind-address=0.0.0.0 --advertise-address="$NODE_IP" --authorization-mode=Node,RBAC
      --kubelet-client-certificate="$pki/kubelet-client.crt" --kubelet-client-key="$pki/kubelet-client.key"
      --kubelet-preferred-address-types=InternalIP)
    # This tree's controller manager adds openshift-service-ca.crt to pods' token volumes: its
    # publisher must run for a pod to start.
    kcm_controllers='*,-bootstrapsigner,-tokencleaner'
  else
    api_mode=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --authorization-mode=RBAC)
    kcm_controllers='*,-bootstrapsigner,-tokencleaner,-service-ca-certificate-publisher-controller'
  fi
  start kube_apiserver "$apiserver_bin" "${api_mode[@]}" \
    --secure-port="$api_port" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --cert-dir="$pki/apiserver-generated" --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --service-cluster-ip-range=10.0.0.0/24
  # shellcheck disable=SC2154 # set by start
  wait_for "kube-apiserver" 120 "$pid_kube_apiserver" "$work/kube_apiserver.log" \
    apiserver_ready

  # Garbage collection (deletionPolicy: Delete) and ServiceAccount tokens' controllers.
  start kube_controller_manager "$kcm_bin" --kubeconfig="$kubeconfig" \
    --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$pki/kcm-generated" \
    --controllers="$kcm_controllers" \
    --use-service-account-credentials --leader-elect=false \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range=10.0.0.0/24
  # shellcheck disable=SC2154 # set by start
  wait_for "kube-controller-manager" 120 "$pid_kube_controller_manager" "$work/kube_controller_manager.log" \
    curl -ksf "https://127.0.0.1:$kcm_port/healthz"
  say "control plane up at $server"

  if [[ "$mode" == pod ]]; then
    say "starting a node: containerd, kubelet, kube-scheduler, kube-proxy (hack/node.sh up)"
    node_started=true
    NODE_SERVER="$server" NODE_KUBECONFIG="$kubeconfig" NODE_CA_CRT="$pki/ca.crt" NODE_CA_KEY="$pki/ca.key" \
      bash hack/node.sh up "$work" 2>"$work/node-up.log" || { tail -n 30 "$work/node-up.log" >&2; die "the node did not start (log above)"; }
    say "node Ready at $NODE_IP"
    # The image from the binary this demo runs (debug symbols stripped: a smaller import).
    image_binary="$work/bin/bulkhead-image"
    if command -v strip >/dev/null 2>&1; then strip -o "$image_binary" "$bulkhead"; else cp "$bulkhead" "$image_binary"; fi
    say "building the operator image from $bulkhead (hack/image.sh: no registry) and loading it into the node"
    bash hack/image.sh operator --binary "$image_binary" --tag bulkhead.local/bulkhead:demo \
      --out "$work/operator-image.tar" >/dev/null 2>"$work/image.log" || { cat "$work/image.log" >&2; die "hack/image.sh failed"; }
    bash hack/node.sh import "$work" "$work/operator-image.tar"
  fi

  say "cluster admin: kubectl apply --server-side -f crds-cluster/"
  kubectl apply --server-side -f crds-cluster/ >"$work/crds.log"
else
  kctl=(kubectl --context "$context")
  "${kctl[@]}" get --raw=/readyz >/dev/null 2>&1 || die "context $context: the API server does not answer (kubectl --context $context get --raw=/readyz)"
  server="$("${kctl[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  if "${kctl[@]}" get namespace "$namespace" >/dev/null 2>&1; then
    die "namespace $namespace already exists in context $context: pick another with --namespace (the demo deletes its namespace on exit, so it never reuses one)"
  fi
  # One discovery document, not the whole discovery (`kubectl api-resources` fails as a whole
  # when any other group does not answer in time, which read as "not served" under load).
  if "${kctl[@]}" get --raw /apis/bulkhead.dev/v1alpha1 2>/dev/null | grep -q '"name":"credentials"'; then
    say "the Bulkhead CRDs are served in context $context (not touching them)"
  elif $install_crds; then
    say "--install-crds: kubectl --context $context apply --server-side -f crds-cluster/ (cluster-scoped: CRDs and two aggregated ClusterRoles; left in place on exit)"
    "${kctl[@]}" apply --server-side -f crds-cluster/ >"$work/crds.log"
  else
    die "the Bulkhead CRDs are not served in context $context. A cluster admin installs them once: kubectl --context $context apply --server-side -f crds-cluster/ — or rerun with --install-crds to let this demo do it (they stay after the demo)"
  fi
  "${kctl[@]}" config view --raw --minify --flatten >"$kubeconfig"
  chmod 600 "$kubeconfig"
  kubectl --kubeconfig "$kubeconfig" config set-context --current --namespace "$namespace" >/dev/null
  export KUBECONFIG="$kubeconfig"
fi
kubectl wait --for=condition=Established --timeout=60s crd/tenants.bulkhead.dev crd/credentials.bulkhead.dev >/dev/null

# ---- the team's install: the chart, as helm renders it ------------------------------------------
kubectl create namespace "$namespace" >/dev/null
[[ -n "$context" ]] && created_namespace=true
# The chart refuses an API-server egress open to any address: give it the API server's endpoint
# addresses (loopback for the throwaway control plane). The demo's operator runs as a local
# process, so the NetworkPolicy gates nothing here; it is rendered as a team would render it.
if [[ -z "$context" ]]; then
  api_cidrs="127.0.0.1/32"
else
  api_cidrs="$(kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes \
    -o jsonpath='{range .items[*].endpoints[*].addresses[*]}{@}/32,{end}' 2>/dev/null || true)"
  api_cidrs="${api_cidrs%,}"
fi
if [[ -n "$api_cidrs" ]]; then
  netpol=(--set "networkPolicy.apiServer.cidrs={$api_cidrs}")
else
  say "team: no EndpointSlice for the kubernetes Service readable: the NetworkPolicy's API-server egress is rendered open (networkPolicy.apiServer.allowAnyAddress=true)"
  netpol=(--set networkPolicy.apiServer.allowAnyAddress=true)
fi
if [[ "$mode" == pod ]]; then
  kubectl label namespace "$namespace" pod-security.kubernetes.io/enforce=restricted >/dev/null
fi

# ---- the development control plane and the identity Secret ---------------------------------------
# Before the operator: its Tenant link reads the identity Secret. A pod reaches it on the node's
# address, a local process on loopback.
cp_port="$(free_port)"
cp_host=127.0.0.1
[[ "$mode" == pod ]] && cp_host="$NODE_IP"
say "starting the development control plane (mTLS, in memory) on $cp_host:$cp_port"
start dev_control_plane "$devcp" --dir "$work/dev-pki" --tenant "$namespace" \
  --listen "$cp_host:$cp_port" --namespace "$namespace"
# shellcheck disable=SC2154 # set by start
wait_for "dev control plane" 30 "$pid_dev_control_plane" "$work/dev_control_plane.log" \
  grep -q 'Ctrl-C stops' "$work/dev_control_plane.log"
kubectl create secret generic bulkhead-identity -n "$namespace" --type=kubernetes.io/tls \
  --from-file=tls.crt="$work/dev-pki/tls.crt" --from-file=tls.key="$work/dev-pki/tls.key" \
  --from-file=ca.crt="$work/dev-pki/ca.crt" >/dev/null
say "identity Secret bulkhead-identity created (tenant id $namespace, endpoint https://$cp_host:$cp_port in its URI SANs)"

if [[ "$mode" == pod ]]; then
  say "team: helm install bulkhead ./chart -n $namespace --wait (ServiceAccount, Role, RoleBinding, Deployment, Service, NetworkPolicy; the image loaded above)"
  pod_started=$SECONDS
  helm install bulkhead chart --namespace "$namespace" "${netpol[@]}" --set image.repository=bulkhead.local/bulkhead \
    --set image.tag=demo --set image.pullPolicy=Never --wait --timeout 120s >"$work/helm.log" 2>&1 ||
    { cat "$work/helm.log" >&2; kubectl get pods -n "$namespace" -o wide >&2 || true; die "helm install failed (above)"; }
  operator_pod="$(kubectl get pods -n "$namespace" -l app.kubernetes.io/name=bulkhead -o jsonpath='{.items[0].metadata.name}')"
  say "operator pod $operator_pod Ready in $((SECONDS - pod_started)) s (admitted as restricted, Ready through /readyz)"
  metrics_addr="$(kubectl get service bulkhead-metrics -n "$namespace" -o jsonpath='{.spec.clusterIP}:{.spec.ports[0].port}')"
else
  say "team: the chart into namespace $namespace (helm template | kubectl apply: ServiceAccount, Role, RoleBinding, Deployment, Service, NetworkPolicy)"
  helm template bulkhead chart --namespace "$namespace" "${netpol[@]}" >"$work/chart.yaml"
  kubectl apply -n "$namespace" -f "$work/chart.yaml" >"$work/chart-apply.log"
  # Without a node the Deployment's pod cannot run; the same binary runs as a local process
  # instead, with the chart's ServiceAccount (exactly the chart's Role).
  kubectl scale deployment bulkhead -n "$namespace" --replicas=0 >/dev/null

  operator_kubeconfig="$work/operator.kubeconfig"
  sa_token="$(kubectl create token bulkhead -n "$namespace" --duration=24h)"
  ca_file="$work/pki/ca.crt"
  if [[ -n "$context" ]]; then
    ca_file="$work/cluster-ca.crt"
    kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$ca_file" 2>/dev/null || true
  fi
  write_kubeconfig "$operator_kubeconfig" "$server" "$ca_file" "system:serviceaccount:$namespace:bulkhead" "$sa_token" "$namespace"
  unset sa_token

  # ---- the operator, as the chart's ServiceAccount ------------------------------------------------
  metrics_port="$(free_port)"
  probe_port="$(free_port)"
  say "starting bulkhead run --namespace $namespace as system:serviceaccount:$namespace:bulkhead"
  start operator env KUBECONFIG="$operator_kubeconfig" "$bulkhead" run --namespace "$namespace" \
    --pod-name demo --metrics-addr "127.0.0.1:$metrics_port" --probe-addr "127.0.0.1:$probe_port" \
    --log-format text
  # shellcheck disable=SC2154 # set by start
  wait_for "bulkhead /readyz" 60 "$pid_operator" "$work/operator.log" curl -sf "http://127.0.0.1:$probe_port/readyz"
  say "operator ready (preflight passed: CRDs served, the Role grants what it needs and no more)"
  metrics_addr="127.0.0.1:$metrics_port"
fi
# Where the operator's log is: the pod's (kubectl logs) or the local process's file.
operator_log() {
  if [[ "$mode" == pod ]]; then
    kubectl logs -n "$namespace" deployment/bulkhead --tail=30 2>&1 || true
  else
    tail -n 30 "$work/operator.log" 2>&1 || true
  fi
}
operator_alive() { [[ "$mode" == pod ]] || alive "$pid_operator"; }

# ---- the team's objects -------------------------------------------------------------------------
say "team: a Tenant linked to the control plane and one Credential of each type"
kubectl apply -n "$namespace" -f - >/dev/null <<EOF
apiVersion: bulkhead.dev/v1alpha1
kind: Tenant
metadata: {name: tenant}
spec:
  displayName: Bulkhead demo
  contacts: [demo@example.com]
  controlPlane: {identitySecretName: bulkhead-identity, syncInterval: 1m}
  settings: {tier: demo}
---
apiVersion: bulkhead.dev/v1alpha1
kind: Credential
metadata: {name: db-password}
spec:
  type: Random
  random: {length: 32, alphabet: alphanumeric}
  rotation: {every: 720h}
---
apiVersion: bulkhead.dev/v1alpha1
kind: Credential
metadata: {name: session-keys}
spec:
  type: KeySet
  keySet: {size: 3}
  rotation: {schedule: "0 3 * * 1"}
---
apiVersion: bulkhead.dev/v1alpha1
kind: Credential
metadata: {name: spark-token}
spec:
  type: ControlPlaneToken
  controlPlaneToken: {audience: spark-jobs, ttl: 1h}
---
apiVersion: bulkhead.dev/v1alpha1
kind: Credential
metadata: {name: registry}
spec:
  type: RegistryCredentials
  registryCredentials: {server: registry.example.com}
EOF

ready_within=90
say "waiting (at most ${ready_within}s) for the Tenant to link and the four Credentials to be Ready"
deadline=$((SECONDS + ready_within))
until kubectl wait -n "$namespace" --for=condition=Ready --timeout=5s tenant/tenant credential/db-password \
  credential/session-keys credential/spark-token credential/registry >/dev/null 2>&1; do
  operator_alive || { operator_log >&2; die "the operator exited (log above)"; }
  if ((SECONDS >= deadline)); then
    kubectl get tenant,credentials -n "$namespace" -o wide >&2 || true
    operator_log >&2
    die "not Ready within ${ready_within}s (status and operator log above)"
  fi
done
say "ready: Tenant linked, 4 Credentials Ready"

echo
echo "\$ kubectl get tenant,credentials -n $namespace"
kubectl get tenant,credentials -n "$namespace"
echo
echo "Secrets written by Bulkhead (keys only; the values stay in the cluster):"
for secret in db-password session-keys spark-token registry; do
  # shellcheck disable=SC2016 # a go-template, not shell
  printf '  %-13s %-32s keys: %s\n' "$secret" \
    "$(kubectl get secret "$secret" -n "$namespace" -o jsonpath='{.type}')" \
    "$(kubectl get secret "$secret" -n "$namespace" -o go-template='{{range $k, $v := .data}}{{$k}} {{end}}')"
done
cat <<EOF

Look around (while this runs):
  export KUBECONFIG=$kubeconfig
  kubectl get tenant,credentials          # namespace $namespace is the context's default
  kubectl get tenant tenant -o yaml        # status: tenantId, identity, conditions
  kubectl get events --sort-by=.metadata.creationTimestamp
  $bulkhead status                # or as a kubectl plugin: kubectl bulkhead status (see README)
  $bulkhead rotate db-password    # then: kubectl get credential db-password -w
  curl -s http://$metrics_addr/metrics | grep ^bulkhead_
EOF
if [[ "$mode" == pod ]]; then
  cat <<EOF
  kubectl logs deployment/bulkhead         # the operator pod's JSON log
  kubectl get pods -o wide                 # the operator as a pod on node bulkhead-node

EOF
else
  printf '  less %s         # the operator%ss log\n\n' "$work/operator.log" "'"
fi

if $exit_when_ready; then
  say "--exit-when-ready: done"
  exit 0
fi
if [[ -n "$run_for" ]]; then
  say "running for ${run_for}s (--for), then cleaning up"
  end=$((SECONDS + run_for))
else
  say "running until Ctrl-C"
  end=""
fi
while [[ -z "$end" ]] || ((SECONDS < end)); do
  for pid in "${pids[@]}"; do
    alive "$pid" || die "a component exited unexpectedly (logs in $work; rerun with --keep to keep them)"
  done
  sleep 1 &
  wait $! || true
done
