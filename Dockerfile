# The agentmesh image: every service binary and the CLI, on a slim base.
#   docker build -t agentmesh:latest .
# The Kubernetes manifests under k8s/ run one binary per Deployment, with
# their own address and auth settings.
#
# By default the image runs the whole mesh (`agentmesh up`) on every address,
# so it asks every call for an API key: mount a keys file made with
# `agentmesh keys create --file keys.toml` (docs/identity.md):
#   docker run -p 50051-50055:50051-50055 \
#     -v "$PWD/keys.toml:/etc/agentmesh/keys/keys.toml:ro" agentmesh:latest
# Without one it stops at start, naming the missing file.
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
# The address and the auth settings go together: `up --host 0.0.0.0` with
# this file. (The services of `up` call each other with keys they make in
# memory at start.)
RUN mkdir -p /etc/agentmesh/keys \
    && printf '%s\n' \
      '# agentmesh up in the image: every address, API keys required.' \
      '[auth]' \
      'methods = ["api_key"]' \
      'keys_file = "/etc/agentmesh/keys/keys.toml"' \
      > /etc/agentmesh/agentmesh.toml
USER 65532:65532
WORKDIR /var/lib/agentmesh
ENTRYPOINT ["/usr/local/bin/agentmesh"]
CMD ["up", "--host", "0.0.0.0", "--config", "/etc/agentmesh/agentmesh.toml"]
