# syntax=docker/dockerfile:1
# Multi-stage: build in the official Rust image, run on distroless (glibc, no shell),
# as a non-root user, with a read-only root filesystem (the spool lives on a volume).
#   docker build --build-arg HOOKRELAY_COMMIT="$(git rev-parse HEAD)" -t hookrelay .
FROM rust:1-bookworm AS build
# The commit `hookrelay --version` reports: build.rs reads it from the environment
# (the build context has no .git); the release workflow passes the tag's commit.
ARG HOOKRELAY_COMMIT=unknown
WORKDIR /src
# gcc, make and perl build librdkafka and OpenSSL from source; they are in the image.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY examples ./examples
COPY tests ./tests
RUN HOOKRELAY_COMMIT="${HOOKRELAY_COMMIT}" cargo build --release --locked --bin hookrelay \
    && strip target/release/hookrelay \
    && mkdir /volume

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hookrelay /usr/local/bin/hookrelay
# Listens on 0.0.0.0:8080 and :9090; the secret comes from QUICKASSIST_WEBHOOK_SECRET.
COPY examples/container.toml /etc/hookrelay/hookrelay.toml
# The volume's mount point, owned by the user below: a new volume (a named one, or
# the anonymous one `docker run` creates) starts as a copy of it, writable.
COPY --from=build --chown=65532:65532 /volume /var/lib/hookrelay
USER 65532:65532
WORKDIR /var/lib/hookrelay
VOLUME ["/var/lib/hookrelay"]
# 8080: webhooks; 9090: /metrics, /healthz, /readyz.
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/hookrelay", "health", "--admin", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/hookrelay"]
CMD ["run", "--config", "/etc/hookrelay/hookrelay.toml"]
