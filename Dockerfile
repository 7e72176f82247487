# syntax=docker/dockerfile:1
# Bulkhead operator image: a static-ish Rust binary on distroless cc (glibc + libgcc for ring and
# rustls; no shell, no package manager), running as the numeric non-root UID the chart expects.
# Build: docker build -t bulkhead .   (release.yml builds, signs and publishes it by digest)
#
# Base images are referenced by tag here; pin them by digest in your registry mirror or let a
# dependency bot do it (the release workflow records the resulting image digest and SBOM).

ARG RUST_VERSION=1.90

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
# cargo-auditable embeds the dependency tree in the binary, so scanners (cargo audit bin,
# trivy, grype) can audit the shipped image without the source.
RUN cargo install cargo-auditable --locked
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo auditable build --release --locked --bin bulkhead \
 && install -D -m 0755 target/release/bulkhead /out/bulkhead

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="bulkhead" \
      org.opencontainers.image.description="Namespace-confined Kubernetes operator for credentials" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/bulkhead /usr/local/bin/bulkhead
# 65532 = distroless "nonroot"; numeric so that runAsNonRoot can be verified by the kubelet.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/bulkhead"]
CMD ["run"]
