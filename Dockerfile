# syntax=docker/dockerfile:1.7
# The medpool image: `medpool serve` as a non-root user on a slim Debian base.
#
#   docker build -t medpool:0.1.0 .
#   docker run --rm -p 5060:5060/udp -p 5060:5060/tcp medpool:0.1.0 --config /etc/medpool/medpool.toml
#
# Stage 1 builds the release binary with the toolchain rust-toolchain.toml pins; stage 2 holds the
# binary and nothing else (no compiler, no package manager cache). The Helm chart (helm/medpool)
# runs this image with a read-only root file system: medpool writes only to its data folder.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS build
ARG RUST_VERSION
# The toolchain of the image is the one rust-toolchain.toml pins; do not let rustup fetch another
# (or the components only developers need).
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never \
    CARGO_NET_RETRY=5
WORKDIR /src
# Only what the workspace needs to build (no tests' data, benchmarks, fuzz corpus or target/).
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY proto proto
COPY node node
COPY cluster cluster
COPY chaos-tests chaos-tests
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p medpool \
    && install -D -m 0755 target/release/medpool /out/medpool

FROM debian:${DEBIAN_SUITE}-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="medpool" \
      org.opencontainers.image.description="Clustered SIP Mediation Server pool (B2BUA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/medpool"
# A fixed, non-root uid/gid (10001) that the chart's securityContext names too; its data folder.
RUN groupadd --system --gid 10001 medpool \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/medpool --shell /usr/sbin/nologin medpool \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/medpool \
    && install -d -o root -g 10001 -m 0750 /etc/medpool
COPY --from=build --chown=root:root --chmod=0755 /out/medpool /usr/local/bin/medpool
# In a container the node listens on every address of its network namespace and keeps its Raft
# store in /var/lib/medpool (a volume in Kubernetes). Everything else is a flag or a MEDPOOL_*
# variable (`medpool serve --help`).
ENV MEDPOOL_SIP_LISTEN=0.0.0.0:5060 \
    MEDPOOL_DATA_DIR=/var/lib/medpool \
    MEDPOOL_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/medpool
# SIP (UDP and TCP), the internal service (Raft, forwarding, join), the admin API (gRPC,
# grpc.health.v1), Prometheus metrics.
EXPOSE 5060/udp 5060/tcp 7000/tcp 7001/tcp 9090/tcp
# medpool is PID 1 and handles SIGTERM itself (refuses new calls, lets transactions finish, exits).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/medpool", "serve"]
