# syntax=docker/dockerfile:1
# Multi-stage: build in the official Rust image, run on distroless (glibc, no shell),
# as a non-root user, with a read-only root filesystem (the spool lives on a volume).
FROM rust:1-bookworm AS build
WORKDIR /src
# gcc, make and perl build librdkafka and OpenSSL from source; they are in the image.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY tests ./tests
RUN cargo build --release --locked --bin hookrelay \
    && strip target/release/hookrelay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hookrelay /usr/local/bin/hookrelay
COPY examples/quickstart.toml /etc/hookrelay/hookrelay.toml
USER 65532:65532
WORKDIR /var/lib/hookrelay
VOLUME ["/var/lib/hookrelay"]
# 8080: webhooks; 9090: /metrics, /healthz, /readyz.
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/hookrelay", "health", "--admin", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/hookrelay"]
CMD ["run", "--config", "/etc/hookrelay/hookrelay.toml"]
