# syntax=docker/dockerfile:1.7
# leash (the recommender, `leash serve`) image. Build from the repository root:
#   docker build -f deploy/docker/recommender.Dockerfile -t REGISTRY/leash-recommender:TAG .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# No eBPF here: the stable toolchain of the image builds `leash` (SQLite is compiled in by
# rusqlite's `bundled` feature with the image's C compiler; protobuf with pure-Rust protox).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p leash --bin leash \
    && install -D -m 0755 target/release/leash /out/leash \
    && strip /out/leash

# `leash pr` and `serve --pr-repo` run the `git` command (HTTPS, and SSH through ssh), so the
# runtime is Debian slim with git, openssh-client and the CA certificates, and nothing else;
# it runs as the unprivileged user 65532 with HOME on the writable /tmp (the root file system
# is read-only in the manifests).
FROM docker.io/library/debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/leash /usr/local/bin/leash
ENV HOME=/tmp
USER 65532:65532
EXPOSE 7443 8080
ENTRYPOINT ["/usr/local/bin/leash"]
CMD ["serve", "--help"]
