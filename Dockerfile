# syntax=docker/dockerfile:1
#
# switchboard image: `docker build -t switchboard:0.1.0 .`
#
# Stages: chef (toolchain + cargo-chef) -> planner (recipe of the dependency graph) ->
# builder (dependencies cooked in their own cached layer, then the crate) -> runtime
# (distroless, the binary only). A change under src/ rebuilds only the last two steps
# of the builder.
#
# Only Cargo.toml, Cargo.lock and src/ are copied, so target/, tests/ and .git never
# reach a layer or invalidate the cache, and no .dockerignore is needed for that
# (BuildKit transfers only the paths the COPY instructions name).

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.77

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /build

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Dependencies only: this layer stays cached until Cargo.toml or Cargo.lock change.
# (cook builds exactly the versions in the recipe's copy of Cargo.lock; it has no
# --locked flag of its own. The build below is --locked.)
RUN cargo chef cook --release --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin switchboard

# glibc, libgcc and CA certificates, no shell, no package manager; bookworm like the
# builder, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /build/target/release/switchboard /usr/local/bin/switchboard
# The distroless "nonroot" user, by number so runAsNonRoot can verify it.
USER 65532:65532
# 6000: chat (TCP, newline-delimited JSON); 8080: HTTP /livez, /readyz, /metrics.
EXPOSE 6000 8080
ENTRYPOINT ["/usr/local/bin/switchboard", "serve"]
