# The agentmesh image: every service binary and the CLI, on a slim base.
#   docker build -t agentmesh:latest .
# The Kubernetes manifests under k8s/ run one binary per Deployment.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
    && mkdir /out \
    && cp target/release/agentmesh target/release/agentmesh-* /out/ \
    && rm -f /out/*.d

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
WORKDIR /var/lib/agentmesh
ENTRYPOINT ["/usr/local/bin/agentmesh"]
CMD ["up", "--host", "0.0.0.0"]
