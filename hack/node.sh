#!/usr/bin/env bash
# One real Kubernetes node on this machine, for a control plane started by the e2e harness
# (tests/support/cluster.rs, `Cluster::start_with_node`) or by hack/demo.sh: containerd + runc +
# the CNI bridge, kubelet, kube-scheduler and kube-proxy from the control plane's binaries
# (KUBEBUILDER_ASSETS, i.e. ../shared/envtest: see its NODE.md). Pods then really run.
#
#   hack/node.sh install          install Debian's containerd, runc, CNI plugins, iptables and
#                                 busybox-static when missing (apt-get; root)
#   hack/node.sh up DIR           start the node with its state under DIR/node; needs
#                                 NODE_SERVER (https://127.0.0.1:PORT), NODE_KUBECONFIG (an admin
#                                 kubeconfig), NODE_CA_CRT and NODE_CA_KEY (the cluster CA, which
#                                 signs the kubelet's client certificate and whose clients the
#                                 kubelet trusts); returns once the Node is Ready and schedulable
#   hack/node.sh import DIR TAR.. load docker-archive images (hack/image.sh) into the node
#   hack/node.sh down DIR         stop it and remove every trace: processes, containers, mounts,
#                                 network namespaces, the bridge, iptables rules, cgroups
#   hack/node.sh leftovers        print what any node left on this machine; exit 1 if anything
#   hack/node.sh check            exit 0 if a node can start here, else print why and exit 1
#
# Machine-wide pieces (one node per machine at a time): the bridge bulkhead0 with 10.244.0.1/24,
# which is the node's address and the API server's advertised address (pod traffic never leaves
# the machine: no masquerading, no route out), iptables chains KUBE-*/CNI-*, cgroups kubepods*.
# Pods must use images that were imported (no registry is reachable): imagePullPolicy Never.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

readonly NODE_NAME=bulkhead-node
readonly BRIDGE=bulkhead0
readonly NODE_IP=10.244.0.1
readonly POD_CIDR=10.244.0.0/24
readonly PAUSE_IMAGE=registry.k8s.io/pause:3.10
readonly PACKAGES=(containerd runc containernetworking-plugins iptables busybox-static)
# containerd's sockets: a short fixed path (a unix socket path has at most 107 bytes, and DIR
# may be deep); one node per machine anyway.
readonly SOCKETS=/run/bulkhead-node
# Kernel settings the kubelet, kube-proxy and the bridge plugin change on the machine: saved by
# `up`, put back by `down`.
readonly SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)

say() { echo "node: $*" >&2; }
die() { echo "node: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- install ---------------------------------------------------------------------------------------
install_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    say "runtime packages present (${PACKAGES[*]})"
    return 0
  fi
  [[ "$(id -u)" == 0 ]] || die "missing ${missing[*]}: install them as root (apt-get install ${missing[*]})"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install containerd, runc, the CNI plugins (bridge, host-local, loopback) and busybox-static"
  say "installing ${missing[*]} (apt-get; the containerd service is not started)"
  apt-get update -qq >&2
  # policy-rc.d 101: do not start the containerd service the package ships; the node runs
  # its own containerd with its own paths.
  local policy=/usr/sbin/policy-rc.d
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    # Removed whatever happens: left behind it would keep every later package's service off.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# ---- helpers ---------------------------------------------------------------------------------------
assets() {
  local dir="${KUBEBUILDER_ASSETS:-}"
  [[ -n "$dir" ]] || die "KUBEBUILDER_ASSETS is not set (a folder with kubelet, kube-scheduler, kube-proxy: ../shared/envtest/unpack.sh prints one)"
  local bin
  for bin in kubelet kube-scheduler kube-proxy; do
    [[ -x "$dir/$bin" ]] || die "$dir/$bin is missing: the node needs kubelet, kube-scheduler and kube-proxy beside the control plane (../shared/envtest has them)"
  done
  echo "$dir"
}

ctr_() { ctr --address "$SOCKETS/containerd.sock" --namespace k8s.io "$@"; }

# Start a daemon in its own process group, logging to $node/NAME.log; its group id goes to
# $node/pids/NAME for `down`.
start() {
  local name="$1"
  shift
  setsid "$@" >"$node/$name.log" 2>&1 </dev/null &
  echo "$!" >"$node/pids/$name"
}

wait_until() { # WHAT SECONDS NAME COMMAND...: NAME's process must stay alive meanwhile
  local what="$1" seconds="$2" name="$3"
  shift 3
  local deadline=$((SECONDS + seconds)) pid
  pid="$(cat "$node/pids/$name")"
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$node/$name.log" >&2 || true
      die "$what: $name exited (log above: $node/$name.log)"
    fi
    ((SECONDS < deadline)) || { tail -n 30 "$node/$name.log" >&2 || true; die "$what: not within ${seconds}s ($node/$name.log)"; }
    sleep 0.2
  done
}

# ---- up --------------------------------------------------------------------------------------------
up() {
  local dir="$1"
  : "${NODE_SERVER:?NODE_SERVER: the API server URL}" "${NODE_KUBECONFIG:?NODE_KUBECONFIG: an admin kubeconfig}"
  : "${NODE_CA_CRT:?NODE_CA_CRT: the cluster CA certificate}" "${NODE_CA_KEY:?NODE_CA_KEY: the cluster CA key}"
  local bins started=$SECONDS
  bins="$(assets)"
  for tool in containerd ctr runc ip iptables python3 openssl gcc setsid; do
    command -v "$tool" >/dev/null || die "$tool is required: hack/node.sh install (as root) brings the runtime"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || die "the CNI plugins are missing in /usr/lib/cni: hack/node.sh install"
  [[ "$(id -u)" == 0 ]] || die "a node needs root (containerd, network namespaces, iptables)"
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    die "a node is already up on this machine (bridge $BRIDGE exists): stop it with hack/node.sh down DIR, or see hack/node.sh leftovers"
  fi
  # `down` removes every KUBE-*/CNI-* iptables chain and every kubepods cgroup as its own: so
  # there must be none of another Kubernetes (or of a node that was not torn down) here.
  if { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -qE '^:(KUBE|CNI)-' ||
    compgen -G '/sys/fs/cgroup/*/kubepods*' >/dev/null || compgen -G '/sys/fs/cgroup/kubepods*' >/dev/null; then
    die "this machine has KUBE-/CNI- iptables chains or kubepods cgroups already (another Kubernetes, or a node not torn down: hack/node.sh leftovers shows them)"
  fi
  node="$dir/node"
  mkdir -p "$node"/{pids,pki,cni/net.d,cni/ipam,kubelet,images,containerd,pod-logs} "$SOCKETS"
  local key value
  for key in "${SYSCTLS[@]}"; do
    if value="$(sysctl -n "$key" 2>/dev/null)"; then printf '%s=%s\n' "$key" "$value"; fi
  done >"$node/sysctl.saved"

  # The bridge first: it carries the node's address, which the kubelet serves on.
  echo "$BRIDGE" >"$node/bridge"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  # runc refuses the pod sandbox's oomScoreAdj (-998) on this kind of machine: raise each
  # bundle's oomScoreAdj to at least our own before exec'ing runc (NODE.md).
  cat >"$node/runc-wrapper" <<'EOF'
#!/bin/sh
bundle=""
prev=""
for arg in "$@"; do
  case "$prev" in --bundle|-b) bundle="$arg" ;; esac
  case "$arg" in --bundle=*) bundle="${arg#--bundle=}" ;; esac
  prev="$arg"
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  python3 - "$bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
with open("/proc/self/oom_score_adj") as f:
    floor = int(f.read().strip())
with open(path) as f:
    spec = json.load(f)
process = spec.get("process") or {}
if "oomScoreAdj" in process and process["oomScoreAdj"] < floor:
    process["oomScoreAdj"] = floor
    with open(path, "w") as f:
        json.dump(spec, f)
PY
fi
exec runc "$@"
EOF
  chmod 755 "$node/runc-wrapper"

  cat >"$node/containerd/config.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCKETS/containerd.sock"
[ttrpc]
  address = "$SOCKETS/containerd.ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      BinaryName = "$node/runc-wrapper"
      Root = "$node/runc"
      SystemdCgroup = false
EOF
  # No masquerading: pod traffic stays on this machine (the bridge and the pods' namespaces).
  cat >"$node/cni/net.d/10-bulkhead.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bulkhead",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$node/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF

  say "containerd (state under $node/containerd)"
  start containerd containerd --config "$node/containerd/config.toml"
  wait_until "containerd" 30 containerd ctr_ version

  # The pause image, built here: no registry is reachable.
  cat >"$node/images/pause.c" <<'EOF'
/* The pod sandbox's process: sleeps, reaps orphans, exits on SIGTERM/SIGINT. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
EOF
  mkdir -p "$node/images/pause-root"
  gcc -static -Os -s -o "$node/images/pause-root/pause" "$node/images/pause.c"
  python3 "$root/hack/image-archive.py" --root "$node/images/pause-root" --tag "$PAUSE_IMAGE" \
    --user 65535:65535 --entrypoint '["/pause"]' --out "$node/images/pause.tar"
  ctr_ images import --no-unpack=false "$node/images/pause.tar" >/dev/null

  # The kubelet's client certificate (the Node authorizer knows it by O and CN), X.509 v3.
  local pki="$node/pki"
  (
    cd "$pki"
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE_NAME" \
      -keyout kubelet.key -out kubelet.csr
    printf '%s\n' "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth" >client.ext
    openssl x509 -req -in kubelet.csr -CA "$NODE_CA_CRT" -CAkey "$NODE_CA_KEY" -CAcreateserial \
      -CAserial "$pki/ca.srl" -days 2 -extfile client.ext -out kubelet.crt
  ) >"$node/openssl.log" 2>&1 || { cat "$node/openssl.log" >&2; die "openssl failed"; }
  cat >"$node/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster: {server: "$NODE_SERVER", certificate-authority: "$NODE_CA_CRT"}
users:
- name: kubelet
  user: {client-certificate: "$pki/kubelet.crt", client-key: "$pki/kubelet.key"}
contexts:
- name: node
  context: {cluster: node, user: kubelet}
current-context: node
EOF
  local kubelet_port healthz_port
  kubelet_port="$(free_port)"
  healthz_port="$(free_port)"
  cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$NODE_CA_CRT"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$SOCKETS/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
resolvConf: ""
podLogsDir: $node/pod-logs
clusterDomain: cluster.local
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusReportFrequency: 10s
EOF
  say "kubelet ($NODE_NAME at $NODE_IP:$kubelet_port)"
  start kubelet "$bins/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --v 1
  local sched_port proxy_health proxy_metrics
  sched_port="$(free_port)"
  proxy_health="$(free_port)"
  proxy_metrics="$(free_port)"
  say "kube-scheduler, kube-proxy (iptables: the kubernetes Service reaches the API server)"
  start scheduler "$bins/kube-scheduler" --kubeconfig "$NODE_KUBECONFIG" \
    --authentication-kubeconfig "$NODE_KUBECONFIG" --authorization-kubeconfig "$NODE_KUBECONFIG" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$sched_port"
  start proxy "$bins/kube-proxy" --kubeconfig "$NODE_KUBECONFIG" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --conntrack-max-per-core 0 \
    --healthz-bind-address "127.0.0.1:$proxy_health" --metrics-bind-address "127.0.0.1:$proxy_metrics"

  local kubectl=(kubectl --kubeconfig "$NODE_KUBECONFIG")
  node_ready() {
    [[ "$("${kubectl[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
  }
  wait_until "Node $NODE_NAME Ready" 90 kubelet node_ready
  # Without the node lifecycle controller the not-ready taint stays; with it, it goes soon.
  # Either way the node is Ready: take the taint off now.
  "${kubectl[@]}" taint node "$NODE_NAME" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
  proxied() { iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https'; }
  wait_until "kube-proxy rules for the kubernetes Service" 60 proxy proxied
  scheduler_healthy() { curl -ksf "https://127.0.0.1:$sched_port/healthz"; }
  wait_until "kube-scheduler /healthz" 60 scheduler scheduler_healthy
  say "up in $((SECONDS - started)) s: Node $NODE_NAME Ready at $NODE_IP"
}

import_images() {
  local dir="$1"
  shift
  node="$dir/node"
  local tar
  for tar in "$@"; do
    ctr_ images import "$tar" >/dev/null || die "importing $tar into the node failed"
  done
}

# ---- down ------------------------------------------------------------------------------------------
stop_group() { # NAME SIGNAL: signal the group, KILL it after 5 s
  local file="$node/pids/$1" pid
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file")"
  kill "-$2" -- "-$pid" 2>/dev/null || true
  # Gone means no live member left: a killed process whose parent has exited can stay a
  # zombie for a while, which kill -0 would still find.
  live() { ps -e -o pgid=,stat= | awk -v g="$pid" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'; }
  for _ in $(seq 1 50); do live || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$file"
}

delete_iptables() { # every KUBE-*/CNI-* chain and every rule that jumps to one, IPv4 and IPv6
  local tool table chain chains numbers n
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for table in filter nat mangle raw; do
      # Jumps from the built-in chains, by rule number (highest first, so numbers hold).
      for chain in INPUT FORWARD OUTPUT PREROUTING POSTROUTING; do
        numbers="$("$tool" -w -t "$table" -L "$chain" -n --line-numbers 2>/dev/null |
          awk '$2 ~ /^(KUBE|CNI)-/ { print $1 }' | sort -rn || true)"
        for n in $numbers; do "$tool" -w -t "$table" -D "$chain" "$n" 2>/dev/null || true; done
      done
      # Then the chains themselves: emptied first (they jump to each other), then deleted.
      chains="$({ "$tool-save" -t "$table" 2>/dev/null || true; } | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p')"
      for chain in $chains; do "$tool" -w -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in $chains; do "$tool" -w -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}

down() {
  local dir="$1" t0=$SECONDS
  step() { [[ -z "${NODE_TRACE:-}" ]] || echo "node: down: $* at $((SECONDS - t0)) s" >&2; }
  node="$dir/node"
  [[ -d "$node" ]] || return 0
  # The kubelet first, so that it restarts nothing; kube-proxy's rules are removed below.
  stop_group kubelet KILL
  stop_group scheduler KILL
  stop_group proxy KILL
  step "daemons stopped"
  local netns=() ids=()
  if [[ -f "$node/pids/containerd" ]] && ctr_ version >/dev/null 2>&1; then
    # The pods' network namespaces, from the sandboxes' specs, before their containers go.
    local id
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      ids+=("$id")
      while IFS= read -r ns; do [[ -n "$ns" ]] && netns+=("$ns"); done < <(
        ctr_ containers info "$id" 2>/dev/null | python3 -c '
import json, sys
try:
    spec = json.load(sys.stdin).get("Spec") or {}
except ValueError:
    sys.exit(0)
for ns in (spec.get("linux") or {}).get("namespaces") or []:
    if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/"):
        print(ns["path"])')
    done
    # --force: SIGKILL and delete in one call, without waiting for a stop that SIGKILL makes sure of.
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  step "containers deleted"
  stop_group containerd TERM
  step "containerd stopped"
  # Shims that outlived containerd (their address names our socket).
  pkill -KILL -f "containerd-shim.*-address $SOCKETS/" 2>/dev/null || true
  # Whatever a container left running (a shim's children are in the pods' cgroups).
  local cg
  for cg in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods*; do
    [[ -d "$cg" ]] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -KILL 2>/dev/null || true
  done
  # Mounts under the node's folders (volumes, rootfs, sandbox shm), deepest first.
  local mounts
  for _ in 1 2 3; do
    mounts="$(findmnt -rn -o TARGET | grep -F "$node/" | sort -r || true)"
    [[ -n "$mounts" ]] || break
    while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done <<<"$mounts"
  done
  local ns
  for ns in "${netns[@]}"; do ip netns delete "$(basename "$ns")" 2>/dev/null || true; done
  if [[ -f "$node/bridge" ]]; then ip link delete "$BRIDGE" 2>/dev/null || true; fi
  # Processes exit and the kernel lets go of cgroups a moment after a kill: a few passes.
  for _ in 1 2 3 4 5; do
    delete_iptables
    for cg in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods*; do
      if [[ -d "$cg" ]]; then find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    done
    leftovers >/dev/null 2>&1 && break
    sleep 0.5
  done
  # What the kubelet and the CNI plugins keep outside DIR: log links, result caches.
  find /var/log/containers -maxdepth 1 -type l -lname "$node/*" -delete 2>/dev/null || true
  # The CNI result cache: the pods' network (bulkhead-ID-eth0) and containerd's loopback
  # (cni-loopback-ID-lo), for this node's sandboxes.
  for id in "${ids[@]}"; do rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null || true; done
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  if [[ -f "$node/sysctl.saved" ]]; then
    local line
    while IFS= read -r line; do sysctl -q -w "$line" >/dev/null 2>&1 || true; done <"$node/sysctl.saved"
  fi
  rm -rf "$node" "$SOCKETS"
  return 0
}

# ---- leftovers -------------------------------------------------------------------------------------
leftovers() {
  local found=0 what
  report() { if [[ -n "$2" ]]; then echo "leftover $1:"; echo "  ${2//$'\n'/$'\n'  }"; found=1; fi; }
  what="$(pgrep -a -f "kubelet --config|kube-scheduler|kube-proxy|containerd --config|containerd-shim.*-address $SOCKETS/" || true)"
  report processes "$what"
  what="$(findmnt -rn -o TARGET | grep -E '/node/(kubelet|containerd)/|/run/netns/cni-' || true)"
  report mounts "$what"
  what="$(ip netns list 2>/dev/null | grep -E '^cni-' || true)"
  report "network namespaces" "$what"
  what="$(ip -br link show 2>/dev/null | grep -E "^$BRIDGE" || true)"
  report "links" "$what"
  what="$({ iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -E '^(:|-A )(KUBE-|CNI-)|-j (KUBE-|CNI-)' || true)"
  report "iptables rules" "$what"
  what="$(ls -d /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods* 2>/dev/null || true)"
  report cgroups "$what"
  what="$({ find /var/log/containers -maxdepth 1 -type l -lname '*/node/pod-logs/*' 2>/dev/null; ls -d /var/lib/cni/results/bulkhead-* /var/lib/cni/results/cni-loopback-* "$SOCKETS" 2>/dev/null; } || true)"
  report files "$what"
  if ((found)); then return 1; fi
  echo "node: nothing left (processes, containers, mounts, network namespaces, links, iptables, cgroups, files)"
}

# Can a node start on this machine? Says why not (one line) and exits 1.
check() {
  [[ "$(uname -s)" == Linux ]] || { echo "not Linux"; return 1; }
  [[ "$(id -u)" == 0 ]] || { echo "not root (containerd, network namespaces and iptables need root)"; return 1; }
  local tool
  for tool in containerd ctr runc ip iptables gcc openssl python3 setsid busybox curl kubectl findmnt pgrep sysctl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (hack/node.sh install brings Debian's packages)"; return 1; }
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || { echo "the CNI plugins are missing in /usr/lib/cni (hack/node.sh install)"; return 1; }
  local dir="${KUBEBUILDER_ASSETS:-}"
  [[ -n "$dir" ]] || { echo "KUBEBUILDER_ASSETS is not set"; return 1; }
  for tool in kubelet kube-scheduler kube-proxy; do
    [[ -x "$dir/$tool" ]] || { echo "$dir has no $tool"; return 1; }
  done
  [[ -d /sys/fs/cgroup ]] || { echo "no /sys/fs/cgroup"; return 1; }
  return 0
}

case "${1:-}" in
  install) install_packages ;;
  check) check ;;
  up) [[ -n "${2:-}" ]] || die "usage: hack/node.sh up DIR"; up "$2" ;;
  import) [[ -n "${2:-}" && -n "${3:-}" ]] || die "usage: hack/node.sh import DIR TAR..."; dir="$2"; shift 2; import_images "$dir" "$@" ;;
  down) [[ -n "${2:-}" ]] || die "usage: hack/node.sh down DIR"; down "$2" ;;
  leftovers) leftovers ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
