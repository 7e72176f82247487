#!/usr/bin/env bash
# Regenerate committed outputs of the binary: the cluster-admin CRD bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked -- crds > crds-cluster/bulkhead.yaml
echo "wrote crds-cluster/bulkhead.yaml"
