# agentmesh: the one entry point for building, running, testing and linting.
#
#   make run      all five services in one process (embedded mode: SQLite under ./data)
#   make test     every test: unit, in-process gRPC, real binaries with grpcurl, PostgreSQL,
#                 then deploy-check and deploy-smoke
#   make lint     rustfmt, clippy -D warnings, module structure, cargo deny, buf lint, buf format
#   make fuzz     every fuzz target for FUZZ_SECONDS each (default 60), then a summary
#                 of executions and findings per target (CI runs them too, 256 cases each)
#   make chaos    the chaos suite at full size (500 runs while processes are killed and
#                 restarted for 180 s; CI runs 100 runs for 60 s), then its report
#   make bench    agentmesh side by side with its floors, in one run (bench/run.py: the gateway
#                 against a null tonic server and the mock upstream called directly, runs across
#                 the five processes on SQLite and PostgreSQL, open runs' memory, a start burst,
#                 the same runs on LangGraph in process, the official openai SDK through the
#                 edge, audit ingest and tail lag, auth), written to
#                 bench/results/<timestamp>/report.md and results.json; then the benchmark
#                 programs that print figures (hop cost, run step, plan_execute against the tool
#                 loop per model call, gateway faults, rate limits, the HTTP edge next to
#                 LiteLLM, the web console drawing a 5,000-event run and a run streaming
#                 500 tokens/s in Chromium)
#   make bench-quick  every phase of bench/run.py at tiny sizes on the debug binaries (part of
#                 `make test`): it checks that each phase ran and produced figures, never a timing
#   make rules    check and unit-test the Prometheus alert rules (promtool)
#   make deploy-check  render every overlay and combination of kustomize components,
#                 validate them (Kubernetes, Istio and Prometheus Operator schemas),
#                 cross-check them against each other and the services; then its self-test
#   make build    the workspace
#   make deploy-smoke      run the rendered dev overlay as local processes (one pod per Deployment,
#                          its env, user, volumes and probes), one run and its audit events, and a
#                          run over HTTP through the edge (REST and Server-Sent Events); then
#                          each fault of SMOKE_MUTANTS must make it fail (root; needs the built binaries)
#   make deploy-resources  after the smoke, RUNS runs (default 200): peak RSS and CPU per 100 runs per container

CARGO ?= cargo
PYTHON ?= python3

.PHONY: all build run up test fuzz chaos lint fmt proto bench bench-quick rules clean deploy-check deploy-smoke deploy-resources

all: build

build:
	$(CARGO) build --workspace

OBJECTIVE ?= What is 17 * 23 + sqrt(144)?

run:
	$(CARGO) run -p agentmesh -- run "$(OBJECTIVE)"

up:
	$(CARGO) run -p agentmesh -- up

# Installs what is missing first (PostgreSQL, grpcurl, promtool, Alertmanager,
# the Python packages, cargo-nextest). The black-box tests drive the real
# binaries, so build them first; nextest runs each test in its own process,
# in parallel. Then the deployment: the manifests checked statically
# (deploy-check) and the dev overlay run as processes (deploy-smoke).
test:
	tools/install-test-deps test
	$(CARGO) build --workspace --bins
	$(CARGO) nextest run --workspace --no-fail-fast
	$(PYTHON) -m pytest -q tests/python
	$(MAKE) bench-quick
	$(MAKE) deploy-check
	$(MAKE) deploy-smoke

# Fuzz targets are property tests named fuzz_* (proptest on stable Rust,
# run through agentmesh_testkit::fuzz). `make test` runs each for
# PROPTEST_CASES cases (default 256); here each parser target runs for
# FUZZ_SECONDS instead, and the RPC targets of tests/fuzz_rpc.rs (when
# present) for FUZZ_RPC_CASES cases. --no-capture runs them one at a time,
# so each gets the whole time, and shows the line every target prints:
# "fuzz <target>: <n> executions in <s> s, <k> findings" (a finding fails
# the target and names its minimal failing input).
FUZZ_SECONDS ?= 60
FUZZ_RPC_CASES ?= 2000
FUZZ_FILTER = test(/(^|::)fuzz_/)$(if $(wildcard tests/fuzz_rpc.rs), | binary(=fuzz_rpc))

fuzz:
	@mkdir -p target
	{ FUZZ_SECONDS=$(FUZZ_SECONDS) PROPTEST_CASES=$(FUZZ_RPC_CASES) \
	  $(CARGO) nextest run --workspace --no-fail-fast --no-capture -E '$(FUZZ_FILTER)'; \
	  echo $$? > target/fuzz.status; } 2>&1 | tee target/fuzz.log
	@echo "== fuzz: executions and findings per target (FUZZ_SECONDS=$(FUZZ_SECONDS)) =="
	@grep -E '^fuzz [^ ]+: [0-9]+ executions|^fuzz [^ ]+: finding:|(PASS|FAIL) .*fuzz_rpc' target/fuzz.log || true
	@exit $$(cat target/fuzz.status)

# The chaos suite at full size (tests/chaos.rs): CHAOS_RUNS runs while
# processes are killed and restarted for CHAOS_SECONDS; `make test` runs a
# bounded size of it. CHAOS_SEED replays one run of it.
CHAOS_RUNS ?= 500
CHAOS_SECONDS ?= 180
chaos:
	AGENTMESH_CHAOS_RUNS=$(CHAOS_RUNS) AGENTMESH_CHAOS_SECONDS=$(CHAOS_SECONDS) \
	  $(if $(CHAOS_SEED),AGENTMESH_CHAOS_SEED=$(CHAOS_SEED)) \
	  $(CARGO) nextest run --workspace --no-capture -E 'binary(=chaos)'

# The side-by-side report first (release build; bench/run.py also runs the
# audit_ingest and auth programs and puts their figures in the report), then
# the benchmark programs that print figures. `install-test-deps bench` adds
# LangGraph (bench/requirements.txt) to the test tools.
bench:
	tools/install-test-deps bench
	$(CARGO) build --release --workspace --bins
	CARGO='$(CARGO)' $(PYTHON) bench/run.py
	$(CARGO) bench -p agentmesh-kit --bench hop
	$(CARGO) bench -p agentmesh-tests --bench run_step
	$(CARGO) bench -p agentmesh-tests --bench strategy_step
	$(CARGO) bench -p agentmesh-tests --bench gateway_faults
	$(CARGO) bench -p agentmesh-tests --bench rate_limits
	$(CARGO) bench -p agentmesh-tests --bench edge_overhead
	$(CARGO) build --workspace --bins
	$(PYTHON) tests/benches/console_render.py

# The report's harness at tiny sizes, on the binaries `make test` built.
bench-quick:
	$(PYTHON) bench/run.py --quick

# The Prometheus alert rules: syntax, their unit tests, and the generated
# PrometheusRule of the monitoring component (k8s/components/monitoring) being
# up to date.
rules:
	promtool check rules deploy/prometheus/agentmesh.rules.yml
	promtool test rules deploy/prometheus/agentmesh.rules.test.yml
	$(PYTHON) deploy/prometheus/gen-prometheusrule.py --check

# The manifests as a cluster would get them (tools/deploy/check.py says
# what is checked), then the check's self-test: each break it must catch,
# made on purpose in a rendered overlay, is caught. Both run; either fails it.
deploy-check:
	tools/install-test-deps deploy
	@status=0; \
	$(PYTHON) tools/deploy/check.py || status=1; \
	$(PYTHON) tools/deploy/check.py --self-test || status=1; \
	exit $$status

lint:
	tools/install-test-deps lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(PYTHON) tools/check_structure.py
	$(CARGO) deny check licenses bans sources
	buf lint
	buf format -d --exit-code

fmt:
	$(CARGO) fmt --all
	buf format -w

# Check the contract: lint, formatting, and no breaking change against main.
proto:
	buf lint
	buf format -d --exit-code
	buf breaking --against '.git#branch=main'

# The rendered manifests run as local processes (tools/deploy/smoke.py says
# what is emulated and how). The smoke must pass, then every mutant (one of
# the deployment faults the smoke exists to catch) must fail within
# SMOKE_MUTANT_TIMEOUT seconds; each prints the check that caught it. Last,
# optional Secrets (provider keys, callback secrets) left out must not keep a pod from starting.
SMOKE_DIR ?= k8s/overlays/dev
SMOKE_BIN_DIR ?= target/debug
SMOKE_MUTANTS ?= no-peer-env no-spool-volume no-workspaces-volume loopback-listen no-secret edge-orchestrator-nowhere
SMOKE_MUTANT_TIMEOUT ?= 20
SMOKE = $(PYTHON) tools/deploy/smoke.py --kustomize $(SMOKE_DIR) --bin-dir $(SMOKE_BIN_DIR)

deploy-smoke:
	$(SMOKE)
	@for m in $(SMOKE_MUTANTS); do \
	  echo "== mutant $$m: must fail"; \
	  $(SMOKE) --mutate $$m --timeout $(SMOKE_MUTANT_TIMEOUT) --expect-failure || exit 1; \
	done
	@echo "== without the Secrets referenced only as optional (provider keys, callback secrets): must still pass"
	$(SMOKE) --mutate no-optional-secrets

# The figures the manifests' resource requests and limits are set from
# (debug binaries unless SMOKE_BIN_DIR says otherwise).
RUNS ?= 200
deploy-resources:
	$(SMOKE) --measure $(RUNS)

clean:
	$(CARGO) clean
