# syntax=docker/dockerfile:1.7
# leash-agent image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t REGISTRY/leash-agent:TAG .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The kernel programs need nightly + rust-src and bpf-linker built against LLVM 22; the
# project's own idempotent set-up script installs exactly that (its lab tools are unused here).
COPY scripts/setup.sh scripts/setup.sh
RUN ./scripts/setup.sh
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p leash-agent --bin leash-agent \
    && install -D -m 0755 target/release/leash-agent /out/leash-agent \
    && strip /out/leash-agent

# glibc and libgcc only, no shell.
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /out/leash-agent /usr/local/bin/leash-agent
# UID 0 because Kubernetes puts added capabilities in the effective set only for root; the
# DaemonSet drops every capability except CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.
USER 0:0
ENTRYPOINT ["/usr/local/bin/leash-agent"]
