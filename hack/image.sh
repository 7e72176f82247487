#!/usr/bin/env bash
# Container images built here, without a registry or a container engine: a root filesystem
# folder written as a one-layer docker-archive tarball (hack/image-archive.py) that
# `hack/node.sh import` (ctr images import) loads into the test node. No base image is pulled.
#
#   hack/image.sh operator [--binary PATH] [--tag REF] [--out FILE]
#       The operator image, laid out like the Dockerfile's (the published build): the binary at
#       /usr/local/bin/bulkhead, the shared libraries `ldd` names (glibc, libm, libgcc_s, the
#       loader: what distroless/cc carries), /etc/passwd and /etc/group with nonroot 65532,
#       CA certificates; USER 65532:65532, ENTRYPOINT ["/usr/local/bin/bulkhead"], CMD ["run"],
#       ports 8080 and 8081, the Dockerfile's labels. No shell, no package manager.
#       Default binary: the release build (cargo build --release), as the Dockerfile builds it.
#   hack/image.sh workload [--tag REF] [--out FILE]
#       A tiny test workload: Debian's busybox-static as /bin/busybox and /bin/sh, user 65532,
#       for pods that consume the operator's Secrets in the e2e suite.
#
# Prints the tarball's path and the image's size. Defaults: --tag bulkhead.local/bulkhead:dev
# (operator) or bulkhead.local/workload:dev (workload); --out target/images/NAME.tar.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

die() { echo "image: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

kind="${1:-}"
[[ "$kind" == operator || "$kind" == workload ]] || usage
shift
binary=""
tag=""
out=""
while (($#)); do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --tag) tag="${2:?--tag needs an image reference}"; shift 2 ;;
    --out) out="${2:?--out needs a file}"; shift 2 ;;
    *) usage ;;
  esac
done
target_dir="$(cargo metadata --format-version 1 --no-deps --locked 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$root/target")"
out="${out:-$target_dir/images/$kind.tar}"
mkdir -p "$(dirname "$out")"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

# Labels, user, entrypoint, command and ports as the Dockerfile declares them; tests/image.rs
# checks that the two agree.
labels=(
  --label "org.opencontainers.image.title=bulkhead"
  --label "org.opencontainers.image.description=Namespace-confined Kubernetes operator for credentials"
  --label "org.opencontainers.image.licenses=Apache-2.0"
)
passwd() {
  mkdir -p "$rootfs/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  mkdir -p "$rootfs/tmp" "$rootfs/home/nonroot"
  chmod 1777 "$rootfs/tmp"
}

case "$kind" in
  operator)
    tag="${tag:-bulkhead.local/bulkhead:dev}"
    if [[ -z "$binary" ]]; then
      echo "image: cargo build --release --locked --bin bulkhead (the Dockerfile's build; several minutes on a fresh machine)" >&2
      cargo build --release --locked --bin bulkhead >&2
      binary="$target_dir/release/bulkhead"
    fi
    [[ -x "$binary" ]] || die "$binary is not an executable"
    passwd
    install -D -m 0755 "$binary" "$rootfs/usr/local/bin/bulkhead"
    # The shared libraries the binary needs, at the paths the loader looks them up under.
    while read -r lib; do
      [[ -n "$lib" ]] || continue
      install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    done < <(ldd "$binary" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p')
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
      install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    python3 hack/image-archive.py --root "$rootfs" --tag "$tag" --out "$out" --user 65532:65532 \
      --entrypoint '["/usr/local/bin/bulkhead"]' --cmd '["run"]' --expose 8080 --expose 8081 "${labels[@]}"
    ;;
  workload)
    tag="${tag:-bulkhead.local/workload:dev}"
    busybox="$(command -v busybox || true)"
    [[ -n "$busybox" ]] || die "busybox is missing: hack/node.sh install (Debian's busybox-static)"
    file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || ldd "$busybox" 2>&1 | grep -q 'not a dynamic' ||
      die "$busybox is not statically linked: install Debian's busybox-static"
    passwd
    install -D -m 0755 "$busybox" "$rootfs/bin/busybox"
    ln -s busybox "$rootfs/bin/sh"
    python3 hack/image-archive.py --root "$rootfs" --tag "$tag" --out "$out" --user 65532:65532 \
      --entrypoint '["/bin/sh"]' --label "org.opencontainers.image.title=bulkhead-e2e-workload"
    ;;
esac
size="$(du -sk "$rootfs" | cut -f1)"
echo "image: $tag in $out (root filesystem ${size} KiB, archive $(($(stat -c %s "$out") / 1024)) KiB)" >&2
echo "$out"
