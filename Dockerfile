# Build stage: compile the release binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY migrations ./migrations
COPY src ./src
COPY openapi ./openapi
# Cargo.toml names the integration-test target; cargo wants its file.
COPY tests/it ./tests/it
RUN cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis

# Runtime stage: a small image with only the binary.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/portcullis portcullis \
 && mkdir -p /var/lib/portcullis \
 && chown portcullis /var/lib/portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
USER portcullis
WORKDIR /var/lib/portcullis
VOLUME ["/var/lib/portcullis"]
ENV PORTCULLIS_DATA_DIR=/var/lib/portcullis/data \
    PORTCULLIS_PROXY_LISTEN=0.0.0.0:9080 \
    PORTCULLIS_ADMIN_LISTEN=127.0.0.1:9180
# The admin listener stays on the container's loopback unless you ask for
# it: -e PORTCULLIS_ADMIN_LISTEN=0.0.0.0:9180 -e PORTCULLIS_ALLOW_ADMIN=<your CIDR>
EXPOSE 9080 9180
ENTRYPOINT ["/usr/local/bin/portcullis"]
