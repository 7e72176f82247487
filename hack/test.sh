#!/usr/bin/env bash
# The test command: everything that runs without a Kubernetes API server.
#   1. the chart tooling (real helm, kubectl, kubernetes-validate, checkov) via hack/install-tools.sh
#   2. cargo test: unit tests, CRD/CEL tests, controller scenarios against the in-process API
#      double, chart tests with the real helm binary; the e2e suite skips itself without the
#      BULKHEAD_E2E_* binaries
#   3. hack/verify-chart.sh: lint, kubernetes-validate --strict, checkov
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
hack/install-tools.sh
export PATH="${BULKHEAD_TOOLS_DIR:-$root/.tools}/bin:$PATH"
cargo test --locked --all-targets
hack/verify-chart.sh
