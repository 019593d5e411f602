# syntax=docker/dockerfile:1
#
# patgate container image.
#
#   docker build -t patgate:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/my.yaml:/etc/patgate/patgate.yaml:ro" patgate:0.1.0
#   docker run --rm patgate:0.1.0 check-config          # validates $PATGATE_CONFIG
#   docker run --rm -p 8080:8080 patgate:0.1.0 dev --listen 0.0.0.0:8080
#
# The config must set `listen: 0.0.0.0:8080` (and `admin.listen: 0.0.0.0:9091` when the
# admin port is probed from outside the container): the defaults bind 127.0.0.1, which
# is unreachable from outside the container. See deploy/README.md for Kubernetes.

# The toolchain the crate is built with; Cargo.toml's rust-version is the minimum.
ARG RUST_VERSION=1.95

# ---------------------------------------------------------------- builder
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# 1. Dependencies only, in their own layer: rebuilt when Cargo.toml / Cargo.lock (or a
#    benchmark) change, not on every source edit. benches/ comes along because cargo
#    refuses to load a manifest whose [[bench]] files are missing, even when building
#    only the binary; the lib and bin are stubbed, built, and the stubs' own artifacts
#    dropped so the real build below recompiles them.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin patgate \
 && rm -rf src \
           target/release/patgate target/release/patgate.d target/release/libpatgate.* \
           target/release/.fingerprint/patgate-* \
           target/release/deps/patgate-* target/release/deps/libpatgate-*

# 2. The real source. `touch` so cargo never mistakes it for the stubs (COPY keeps
#    the build context's mtimes, which may be older than the stub build).
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin patgate \
 && ./target/release/patgate --version

# ---------------------------------------------------------------- runtime
# distroless/cc: glibc + libgcc_s (the binary links them dynamically), CA
# certificates, tzdata, no shell, no package manager. `:nonroot` runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="patgate" \
      org.opencontainers.image.description="Reverse-proxy authentication gateway for Personal Access Tokens" \
      org.opencontainers.image.source="https://github.com/patgate/patgate" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /src/target/release/patgate /usr/local/bin/patgate

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532

# Used by every subcommand when no --config is given (e.g. `check-config`).
ENV PATGATE_CONFIG=/etc/patgate/patgate.yaml

# 8080: data plane (`listen`); 9091: admin API, /healthz, /readyz, /metrics
# (`admin.listen`) — keep 9091 off the public network.
EXPOSE 8080 9091

# SIGTERM drains: stop accepting, finish in-flight requests for up to
# timeouts.shutdown_grace_seconds (default 30), flush usage counts, exit 0.
# Give the runtime at least that long before SIGKILL (docker stop -t 35).
STOPSIGNAL SIGTERM

# No HEALTHCHECK: the orchestrator probes GET /healthz (liveness) and GET /readyz
# (readiness) on the admin port; distroless has no curl to run one anyway.
ENTRYPOINT ["/usr/local/bin/patgate"]
CMD ["serve", "--config", "/etc/patgate/patgate.yaml"]
