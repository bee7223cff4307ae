# The agentmesh image: the six service binaries and the CLI, on a distroless
# base (glibc, libgcc, CA certificates, /etc/passwd with `nonroot` = 65532; no
# shell, no package manager).
#
#   docker build -t agentmesh:dev .
#
# One image, one binary per container: the Kubernetes manifests and
# docker-compose.yml set the command (`/usr/local/bin/agentmesh-<service>`)
# and each service's address, peers and auth through AGENTMESH_… variables.
# Without a command it runs the whole mesh in one process (`agentmesh up`,
# the HTTP edge on 8080 included) on every address, so it asks every call for
# an API key: mount a keys file made with `agentmesh keys create --file
# keys.toml` (docs/identity.md):
#   docker run -p 127.0.0.1:50051-50055:50051-50055 -p 127.0.0.1:8080:8080 \
#     -v "$PWD/keys.toml:/etc/agentmesh/keys/keys.toml:ro" agentmesh:dev
# Without one it stops at start, naming the missing file.
#
# Base images are build arguments. Their defaults are version tags, so a
# checkout builds anywhere; a release pins each one by digest and checks
# that it did (docs/deploy.md, "Image and Compose"):
#   docker build \
#     --build-arg RUST_IMAGE=docker.io/library/rust:1.94-bookworm@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> .
#   python3 tools/deploy/docker_check.py --require-digests \
#     --build-arg RUST_IMAGE=… --build-arg RUNTIME_IMAGE=…
# The builder is Debian 12 (bookworm) like the runtime, so the binaries link
# against the glibc the runtime has. The Rust version is the workspace's
# rust-version.
ARG RUST_IMAGE=docker.io/library/rust:1.94-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# cargo-chef splits the build in two: the dependencies (a layer that depends
# only on Cargo.toml files and Cargo.lock) and the workspace's own code, so
# a change to the code rebuilds only the latter.
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.77
RUN cargo install --locked "cargo-chef@${CARGO_CHEF_VERSION}"
WORKDIR /src

# The recipe: every manifest and the lock file, nothing else.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# The dependency layer, built exactly as the lock file says.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# The binaries the image ships (each a [[bin]] of the workspace but the
# benchmark's floors, agentmesh-bench:
# tools/deploy/docker_check.py checks this list against the workspace), the
# configuration of `agentmesh up` in the image, and the working directory:
# distroless has no shell to make them in, so they are made here and copied.
RUN cargo build --release --locked --workspace --exclude agentmesh-bench --bins \
    && mkdir -p /out/bin /out/etc/agentmesh/keys /out/var/lib/agentmesh \
    && cp target/release/agentmesh \
          target/release/agentmesh-orchestrator \
          target/release/agentmesh-llm-gateway \
          target/release/agentmesh-tool-runner \
          target/release/agentmesh-audit \
          target/release/agentmesh-alerting \
          target/release/agentmesh-edge \
          /out/bin/ \
    && printf '%s\n' \
      '# agentmesh up in the image: every address, API keys required.' \
      '# (Its services call each other with keys made in memory at start.)' \
      '[auth]' \
      'methods = ["api_key"]' \
      'keys_file = "/etc/agentmesh/keys/keys.toml"' \
      > /out/etc/agentmesh/agentmesh.toml \
    && chmod 0755 /out/var/lib/agentmesh

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/bin/ /usr/local/bin/
# Configuration and the keys mount point belong to root: the services read
# them and never write them.
COPY --from=build /out/etc/agentmesh/ /etc/agentmesh/
# The working directory (data, audit spool, tool workspaces) belongs to the
# user the services run as: copied as a new directory, it takes the owner
# given here (WORKDIR would make it root's); a named volume mounted there
# starts with the same owner.
COPY --from=build --chown=65532:65532 /out/var/lib/agentmesh /var/lib/agentmesh
USER 65532:65532
WORKDIR /var/lib/agentmesh
# The tool runner sandboxes command tools by running its own binary again in
# a helper mode (/proc/self/exe): nothing else from the image is needed.
# Command tools run programs of the image, and distroless has none: an image
# for command tools adds them in a layer on top of this one.
EXPOSE 50051 50052 50053 50054 50055 8080
# `agentmesh up`'s readiness: every service SERVING (health checks need no
# credentials). A service run alone overrides it (docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/agentmesh", "health", "--host", "127.0.0.1"]
ENTRYPOINT ["/usr/local/bin/agentmesh"]
CMD ["up", "--host", "0.0.0.0", "--config", "/etc/agentmesh/agentmesh.toml"]
