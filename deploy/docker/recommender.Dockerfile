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

# glibc and libgcc only, no shell; runs as the image's unprivileged user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/leash /usr/local/bin/leash
USER 65532:65532
EXPOSE 7443 8080
ENTRYPOINT ["/usr/local/bin/leash"]
CMD ["serve", "--help"]
