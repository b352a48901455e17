# walcache container images, built from this repository.
#
#   docker build -t walcached .                                  # the daemon (the last stage)
#   docker build --target example -t walcache-example-service .  # the example HTTP service
#
# Run the daemon with its configuration mounted (secrets from the environment, never in the
# file):
#
#   docker run --rm -v $PWD/walcached.toml:/etc/walcached/walcached.toml:ro \
#     -e WALCACHED_POSTGRES_PASSWORD=... -e WALCACHED_REDIS_URL=redis://redis:6379/ walcached
#
# The file's http.listen must be 0.0.0.0:9187 (not the default 127.0.0.1) for /metrics,
# /healthz and /readyz to be reachable from outside the container. Other subcommands:
#   docker run --rm ... walcached check --config /etc/walcached/walcached.toml

# --- builder: the release binaries ----------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        -p walcached -p walcache-examples --bin walcached --bin service \
    && mkdir -p /out \
    && cp target/release/walcached target/release/service /out/

# --- runtime: what both images share --------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 walcache \
    && useradd --system --uid 10001 --gid walcache --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin walcache

# --- example: the HTTP service of examples/service.rs ---------------------------------------
FROM runtime AS example
COPY --from=builder /out/service /usr/local/bin/walcache-example-service
USER 10001:10001
ENV LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/walcache-example-service"]

# --- walcached: the daemon (the default target) ---------------------------------------------
FROM runtime AS walcached
COPY --from=builder /out/walcached /usr/local/bin/walcached
USER 10001:10001
# /metrics, /healthz, /readyz (http.listen)
EXPOSE 9187
# `run` handles SIGTERM itself: it finishes the publishes in flight, confirms, and exits 0.
ENTRYPOINT ["/usr/local/bin/walcached"]
CMD ["run", "--config", "/etc/walcached/walcached.toml"]
