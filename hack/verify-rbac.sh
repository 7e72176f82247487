#!/usr/bin/env bash
# The `kubectl auth can-i` matrix for a live Bulkhead release: what its ServiceAccount must be
# able to do, and what it must not (enumerate Secrets, act in another namespace, touch anything
# cluster-scoped, grant itself more). Prints a table; exits 1 on any surprise, 2 on usage errors.
#
# Usage: hack/verify-rbac.sh NAMESPACE [RELEASE]     (RELEASE defaults to "bulkhead")
# Needs: kubectl with rights to read the release's Deployment and to impersonate
# ServiceAccounts (a namespace or cluster admin). The lease name, watchManagedSecrets and the
# restart targets are read from the running Deployment's args, so the matrix fits the values.
set -euo pipefail

if (($# < 1 || $# > 2)); then
  echo "usage: $0 NAMESPACE [RELEASE]" >&2
  exit 2
fi
ns="$1"
release="${2:-bulkhead}"
kubectl="${KUBECTL:-kubectl}"

# Where the release lives and who it runs as.
deploy="$("$kubectl" -n "$ns" get deployments -l "app.kubernetes.io/instance=$release,app.kubernetes.io/name=bulkhead" \
  -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)"
if [[ -z "$deploy" ]]; then
  echo "verify-rbac: no Deployment of release $release in namespace $ns" >&2
  exit 2
fi
sa="$("$kubectl" -n "$ns" get deployment "$deploy" -o jsonpath='{.spec.template.spec.serviceAccountName}')"
args="$("$kubectl" -n "$ns" get deployment "$deploy" -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')"
lease="bulkhead"
identity="bulkhead-identity"
watch_secrets=false
targets=()
while IFS= read -r arg; do
  case "$arg" in
    --lease-name=*) lease="${arg#--lease-name=}" ;;
    --identity-secret=*) identity="${arg#--identity-secret=}" ;;
    --watch-managed-secrets=*) watch_secrets="${arg#--watch-managed-secrets=}" ;;
    --restart-target=*) targets+=("${arg#--restart-target=}") ;;
  esac
done <<<"$args"
as="system:serviceaccount:$ns:$sa"
other_ns="kube-system"
if [[ "$ns" == "$other_ns" ]]; then other_ns="default"; fi

echo "Release $release in $ns: ServiceAccount $sa, Lease $lease, identity Secret $identity, watchManagedSecrets=$watch_secrets, restart targets: ${targets[*]:-none}"
echo
printf '%-8s %-7s %-10s %-72s %s\n' EXPECT ACTUAL RESULT REQUEST NAMESPACE
surprises=0

# check EXPECT VERB RESOURCE [NAME] [--subresource=X] [-n NS | --all-namespaces | --cluster]
check() {
  local expect="$1" verb="$2" resource="$3"
  shift 3
  local name="" scope=(-n "$ns") where="$ns" sub=()
  while (($#)); do
    case "$1" in
      --subresource=*) sub=("$1") ;;
      -n) scope=(-n "$2"); where="$2"; shift ;;
      --all-namespaces) scope=(--all-namespaces); where="(all)" ;;
      --cluster) scope=(); where="(cluster)" ;;
      *) name="$1" ;;
    esac
    shift
  done
  local target="$resource${name:+/$name}"
  local answer
  answer="$("$kubectl" auth can-i "$verb" "$target" "${scope[@]}" "${sub[@]}" --as="$as" 2>/dev/null | head -n1 || true)"
  [[ "$answer" == yes || "$answer" == no ]] || answer="error"
  local result="ok"
  if [[ "$answer" != "$expect" ]]; then
    result="SURPRISE"
    surprises=$((surprises + 1))
  fi
  printf '%-8s %-7s %-10s %-72s %s\n' "$expect" "$answer" "$result" "$verb $target${sub[*]:+ (${sub[*]#--subresource=})}" "$where"
}

# --- what the operator needs (bulkhead rbac) ----------------------------------------------------
for verb in get list watch; do
  check yes "$verb" tenants.bulkhead.dev
  check yes "$verb" credentials.bulkhead.dev
done
check yes patch tenants.bulkhead.dev --subresource=status
check yes patch credentials.bulkhead.dev --subresource=status
check yes update credentials.bulkhead.dev --subresource=finalizers
for verb in get create patch; do check yes "$verb" secrets some-managed-secret; done
# The identity Secret's name-pinned watch (hot reload of the mTLS certificate).
check yes list secrets "$identity"
check yes watch secrets "$identity"
check yes get leases.coordination.k8s.io "$lease"
check yes patch leases.coordination.k8s.io "$lease"
# The standby's name-pinned watch (fieldSelector metadata.name) is authorized as these two.
check yes list leases.coordination.k8s.io "$lease"
check yes watch leases.coordination.k8s.io "$lease"
check yes create leases.coordination.k8s.io
check yes create events.events.k8s.io
check yes patch events.events.k8s.io
for t in "${targets[@]}"; do
  kind="${t%%/*}"
  resource="$(tr '[:upper:]' '[:lower:]' <<<"$kind")s.apps"
  check yes patch "$resource" "${t#*/}"
done

# --- what it must not do ------------------------------------------------------------------------
# Enumerating Secrets: only with the documented watchManagedSecrets trade-off.
if [[ "$watch_secrets" == true ]]; then
  check yes list secrets
  check yes watch secrets
else
  check no list secrets
  check no watch secrets
fi
check no delete secrets some-managed-secret
check no deletecollection secrets
check no update secrets some-managed-secret
# Leases other than its own; Bulkhead objects' spec (users own it).
check no patch leases.coordination.k8s.io not-bulkheads-lease
check no delete leases.coordination.k8s.io "$lease"
check no list leases.coordination.k8s.io
check no patch credentials.bulkhead.dev some-credential
check no delete credentials.bulkhead.dev some-credential
check no create tenants.bulkhead.dev
# Workloads: nothing beyond the pinned restart targets.
check no patch deployments.apps not-a-restart-target
check no list deployments.apps
check no create deployments.apps
check no patch statefulsets.apps not-a-restart-target
check no patch daemonsets.apps not-a-restart-target
# Pods, exec, ConfigMaps, tokens, core Events.
check no get pods
check no create pods
check no create pods --subresource=exec
check no get configmaps
check no create serviceaccounts --subresource=token
check no impersonate serviceaccounts
check no create events
# Granting itself more.
check no create roles.rbac.authorization.k8s.io
check no create rolebindings.rbac.authorization.k8s.io
check no patch roles.rbac.authorization.k8s.io "$deploy"
check no escalate roles.rbac.authorization.k8s.io
check no bind roles.rbac.authorization.k8s.io
check no '*' '*'
# Another namespace, and every namespace at once.
check no get secrets some-managed-secret -n "$other_ns"
check no list tenants.bulkhead.dev -n "$other_ns"
check no create events.events.k8s.io -n "$other_ns"
check no get leases.coordination.k8s.io "$lease" -n "$other_ns"
check no list secrets --all-namespaces
check no list credentials.bulkhead.dev --all-namespaces
# Cluster-scoped resources.
check no list nodes --cluster
check no list namespaces --cluster
check no get clusterroles.rbac.authorization.k8s.io --cluster
check no create clusterrolebindings.rbac.authorization.k8s.io --cluster
check no list customresourcedefinitions.apiextensions.k8s.io --cluster
check no create validatingwebhookconfigurations.admissionregistration.k8s.io --cluster
check no create mutatingwebhookconfigurations.admissionregistration.k8s.io --cluster
check no create certificatesigningrequests.certificates.k8s.io --cluster
check no list persistentvolumes --cluster

echo
if ((surprises > 0)); then
  echo "verify-rbac: $surprises surprise(s): the ServiceAccount's rights differ from what Bulkhead needs (compare with: bulkhead rbac)" >&2
  exit 1
fi
echo "verify-rbac: every right as expected"
