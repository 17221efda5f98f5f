# syntax=docker/dockerfile:1
#
# ztun's node-proxy image: a drop-in for Istio's ztunnel image in the ztunnel DaemonSet.
#
#   docker build -t ztun:0.1.0 .
#
# The builder is pinned to the Rust release the project is developed and tested with. The
# runtime is distroless "cc": glibc and libgcc_s (all the binary links against), CA
# certificates for XDS_ROOT_CA=SYSTEM, no shell.

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the target directory between builds (BuildKit);
# the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ztun \
    && install -D -m 0755 target/release/ztun /out/ztun

# Distroless publishes no versioned tags; pin by digest in a release pipeline.
# hadolint ignore=DL3007
FROM gcr.io/distroless/cc-debian12:latest
COPY --from=builder /out/ztun /usr/local/bin/ztun
# ztunnel's default paths are relative to `/` (./var/run/secrets/istio/root-cert.pem,
# ./var/run/secrets/tokens/istio-token), where Istio's chart mounts them.
WORKDIR /
# The Istio release whose charts and istiod this image is built to run with: reported to istiod
# as the proxy's ISTIO_VERSION metadata and as the `tag` label of `istio_build`. Override it in
# the chart's `env` when running with another istiod release.
ENV ISTIO_META_ISTIO_VERSION=1.31.1
# The chart runs the container as uid 0 / gid 1337 (see its securityContext) and passes
# `proxy ztunnel` as args.
ENTRYPOINT ["/usr/local/bin/ztun"]
CMD ["proxy", "ztunnel"]
