# mesh-node in a FROM scratch image: a statically linked binary (glibc,
# +crt-static), non-root, stopped by SIGTERM. Name lookups go through
# hickory (feature `dns`), never getaddrinfo, so the image needs no NSS.
# Native modes only (in-process mTLS, an external or platform proxy); the
# managed-HAProxy mode needs deploy/image/Dockerfile.haproxy.
#
#   docker build -t mesh-node:0.1.0 .
#
# (The test suite builds the same image from a binary built on the host,
# deploy/image/Dockerfile.prebuilt, since its machines pull no base image.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# An explicit --target: +crt-static cannot build the proc-macros otherwise.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p mesh-node

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/mesh-node /mesh-node
# A numeric user needs no /etc/passwd; not consul-k8s's 5995/5996 nor
# Nomad's Envoy 101, whose traffic transparent proxies exclude.
USER 65532:65532
# The node handles SIGTERM and SIGINT as PID 1 (a clean Node::shutdown).
STOPSIGNAL SIGTERM
EXPOSE 7000 8080
ENTRYPOINT ["/mesh-node"]
