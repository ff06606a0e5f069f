# Gatehouse container image.
#
#   docker build -t gatehouse .
#   docker run -p 8080:8080 -v gatehouse-data:/data gatehouse
#
# Configuration is by environment (GATEHOUSE__SECTION__KEY, see config.example.toml).
# By default the server listens on 0.0.0.0:8080 and keeps its SQLite database in the
# /data volume; set GATEHOUSE__DATABASE__URL=postgres://… for PostgreSQL.

# ---------- build ----------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: built from the manifest and lock file with
# empty stand-in sources, so that editing our code does not rebuild them.
COPY Cargo.toml Cargo.lock ./
# Every target the manifest names must exist for cargo to read it, the bench included.
RUN mkdir -p src tests/api benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && touch src/lib.rs tests/api/main.rs \
    && cargo build --locked --release --bin gatehouse \
    && rm -rf src

# Then our sources (templates, migrations and the stylesheet are compiled in), and the
# build script with its function order for the linker (see build.rs).
COPY build.rs ./
COPY link ./link
COPY src ./src
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
COPY config.example.toml ./
# COPY keeps the files' own times, which can be older than the stand-ins built above;
# touching the crate roots makes cargo rebuild our crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --locked --release --bin gatehouse \
    && install -D -m 0755 target/release/gatehouse /out/gatehouse

# ---------- runtime ----------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gatehouse \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin gatehouse \
    && mkdir /data \
    && chown 10001:10001 /data

COPY --from=build /out/gatehouse /usr/local/bin/gatehouse

ENV GATEHOUSE__SERVER__BIND=0.0.0.0:8080 \
    GATEHOUSE__DATABASE__URL=sqlite:///data/gatehouse.db

USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8080

# `gatehouse healthcheck` asks the server's own /healthz at server.bind (over loopback
# when bound to 0.0.0.0), so it follows GATEHOUSE__SERVER__BIND; the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["gatehouse", "healthcheck"]

ENTRYPOINT ["gatehouse"]
CMD ["serve"]
