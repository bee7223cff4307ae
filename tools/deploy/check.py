#!/usr/bin/env python3
"""`make deploy-check`: the Kubernetes manifests as rendered, checked against
their schemas, against each other, and against what the services need.

    tools/deploy/check.py              render, validate, cross-check, run the generators' checks
    tools/deploy/check.py --self-test  break a rendered overlay on purpose and see each break caught

How data flows:

1. Render. Every overlay under k8s/overlays/, and every combination (the
   power set) of the kustomize Components (k8s/components/*, and istio/ when
   its kustomization is a Component) on top of k8s/base, each through a
   kustomization generated under target/deploy-check/gen/ (inside the
   repository, so kustomize's load restrictions hold) and `kubectl
   kustomize`. Renders are cached under target/deploy-check/cache/, keyed by
   the content of k8s/, istio/ and deploy/ and the kubectl version.
2. Schema. Core objects against the Kubernetes JSON schemas of
   `kubernetes-validate` (strict: unknown fields fail) for K8S_VERSIONS;
   Istio and Prometheus Operator objects against the openAPIV3Schema of
   their CRDs vendored in deploy/schemas/ (strict as well). An object of a
   kind neither knows fails. Each distinct object is validated once.
3. Rules (RULES below) on each render, each failure named by its rule id:
   cross-references
     service-selector, target-port  Services select pods that have the port
     probe-port                     probes ask a port the container declares
     probe-protocol                 gRPC probes ask a gRPC port (the edge
                                    serves no gRPC health); HTTP probes ask
                                    the admin port, liveness and start-up
                                    on /livez or /healthz, never /readyz
     listen-address                 every service listens beyond loopback
                                    (server.host), or its Service reaches
                                    nothing
     monitor-port                   ServiceMonitor/PodMonitor ports exist
     authz-port, authz-selector     AuthorizationPolicy ports/selectors exist
     principal                      principals are ServiceAccounts of the render
                                    (namespace too when the render has one)
     peer-env, peer-url             every peer address a service needs is set,
                                    and every http(s) URL in env names a
                                    Service and port (reaching the right
                                    service's grpc port), or EXTERNAL_HOSTS
     advertised-peer                a replica's advertised own address
                                    (http://$(POD_IP):port, used on
                                    PostgreSQL) is routable in the mesh: a
                                    headless Service selects its pods on that
                                    port, leaves the protocol to Istio's
                                    detection and publishes not-ready pods
     secret-ref, configmap-ref,     what the pods mount or read exists, is
     pvc-ref, service-account,      optional, or is a Secret the operator
     hpa-target                     creates (OPERATOR_SECRETS)
     netpol-selector, netpol-port   NetworkPolicies select pods and ports
     route-host, route-port-match,  VirtualServices route to Service ports,
     h2-upgrade                     per port; no h2 upgrade of HTTP/1 ports
     scrape-mtls                    STRICT mTLS leaves scraped ports open
     outlier-provider               outlier detection counts only the pod's
                                    own (local-origin) failures: a provider
                                    outage answered as UNAVAILABLE (503) must
                                    not eject healthy llm-gateway pods
     mesh-retries                   every in-mesh and ingress route sets
                                    retries.attempts 0, and with Istio every
                                    Service has an in-mesh VirtualService:
                                    Istio's default (2 retries on
                                    unavailable/reset) would replay
                                    server-streaming RPCs and model calls
   static rules
     read-only-root, writable-path  read-only root; every path the service
                                    writes (WRITABLE_PATHS) on a writable volume
     emptydir-data, emptydir-size   SQLite data never on emptyDir; scratch
                                    on emptyDir only with a sizeLimit
     image-latest, image-untagged,  images pinned, never :latest; pull
     pull-policy, pull-policy-unset policy set, and not Always when pinned
     termination-grace              terminationGracePeriodSeconds > the app's
                                    grace_period + drain_delay
     sidecar-drain                  with Istio in the render, the sidecar
                                    drains (proxy.istio.io/config, else
                                    Istio's 5 s) at least the app's grace
                                    period, unless it is a native sidecar
     alerting-leader, rwo-replicas  alerting x2 only on PostgreSQL; no RWO
                                    claim shared by replicas
     pdb                            every workload has a PodDisruptionBudget
     provider-keys                  the gateway's provider keys from a
                                    Secret, optional
   A few only make sense for what is deployed as is, so they apply to
   overlays only (OVERLAY_ONLY): image-untagged and pull-policy-unset (the
   base leaves the tag to the overlays' `images:`) and pdb.
4. Calls: the generators' own checks when the tree has them
   (tools/deploy/policies.py --check, tools/deploy/docker_check.py,
   deploy/prometheus/gen-prometheusrule.py --check).

Output: one line per failure, `FAIL <render> <kind>/<name>: <rule>: <what>
(<field>)`; a failure found in several renders is printed once, with the
number of other renders it also appears in. Then a summary line; the exit
status is 1 on any failure.
"""

import argparse
import atexit
import concurrent.futures
import copy
import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "deploy-check"
SCHEMAS = ROOT / "deploy" / "schemas"

# Two Kubernetes versions the manifests support: the oldest and the newest
# minor release we claim (kubernetes-validate ships the schemas of both).
K8S_VERSIONS = ("1.30", "1.33")

# The services, as the binaries name their configuration sections
# (environment AGENTMESH_<SECTION>__…): five gRPC services and the HTTP edge.
SERVICES = ("orchestrator", "llm-gateway", "tool-runner", "audit", "alerting", "edge")
# Services that speak HTTP, not gRPC: no gRPC health (HTTP probes on the
# admin port), and no credential of their own (the edge passes its callers'
# `authorization` on).
HTTP_SERVICES = frozenset({"edge"})
# The admin server's paths (libs/kit admin.rs) a probe may ask: /livez and
# /healthz answer while the process does, /readyz follows the dependencies.
LIVE_PATHS = frozenset({"/livez", "/healthz"})
ADMIN_PROBE_PATHS = LIVE_PATHS | {"/readyz"}

# The peer addresses each service needs (all default to 127.0.0.1, which in
# a pod is the pod itself): env key -> the service that must answer there.
REQUIRED_PEERS = {
    "orchestrator": {
        "AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL": "llm-gateway",
        "AGENTMESH_ORCHESTRATOR__TOOL_RUNNER_URL": "tool-runner",
        "AGENTMESH_ORCHESTRATOR__AUDIT__URL": "audit",
    },
    "llm-gateway": {"AGENTMESH_LLM_GATEWAY__AUDIT__URL": "audit"},
    "tool-runner": {"AGENTMESH_TOOL_RUNNER__AUDIT__URL": "audit"},
    "alerting": {
        "AGENTMESH_ALERTING__AUDIT__URL": "audit",
        "AGENTMESH_ALERTING__SOURCE__URL": "audit",
    },
    "edge": {
        "AGENTMESH_EDGE__ORCHESTRATOR_URL": "orchestrator",
        "AGENTMESH_EDGE__LLM_GATEWAY_URL": "llm-gateway",
        "AGENTMESH_EDGE__TOOL_RUNNER_URL": "tool-runner",
    },
}

# Directories each service writes, with the binaries' defaults (relative to
# the working directory): (what, env key suffix after AGENTMESH_<SECTION>__,
# default, kind). "data" holds the SQLite databases (used only without a
# PostgreSQL storage URL) and must survive a rollout; "scratch" may be lost
# with the pod. The audit client spools in <spool_dir>/<service>/ (libs/
# audit-client), the tool runner keeps one workspace per run (tool-runner
# config), the storage opens <data_dir>/<service>.db (libs/storage).
WRITABLE_PATHS = {
    "orchestrator": [("audit spool", "AUDIT__SPOOL_DIR", "data/spool", "scratch"),
                     ("data dir", "STORAGE__DATA_DIR", "data", "data")],
    "llm-gateway": [("audit spool", "AUDIT__SPOOL_DIR", "data/spool", "scratch")],
    "tool-runner": [("audit spool", "AUDIT__SPOOL_DIR", "data/spool", "scratch"),
                    ("workspaces dir", "WORKSPACES_DIR", "data/workspaces", "scratch")],
    "audit": [("data dir", "STORAGE__DATA_DIR", "data", "data")],
    "alerting": [("audit spool", "AUDIT__SPOOL_DIR", "data/spool", "scratch"),
                 ("data dir", "STORAGE__DATA_DIR", "data", "data")],
    # The edge writes no file: no audit producer, no storage.
    "edge": [],
}

# The server's shutdown defaults (libs/kit config.rs): grace_period 30 s,
# counted from the moment health turns NOT_SERVING and including
# drain_delay (0 s), during which the listener still accepts.
DEFAULT_GRACE_S = 30.0
DEFAULT_DRAIN_S = 0.0
# Istio's sidecar drain when proxy.istio.io/config does not set one.
ISTIO_DEFAULT_DRAIN_S = 5.0

# The working directory of the image (the Dockerfile's last WORKDIR), where
# relative paths of the configuration land unless a container sets
# workingDir. Read from the Dockerfile; this is the fallback.
DEFAULT_WORKDIR = "/"

# Secrets the operator creates before applying (k8s/base/kustomization.yaml
# and docs/identity.md: the keys file and each service's credential; the
# PostgreSQL storage: the database URLs). The provider keys' Secret is not
# here: those references must be optional (rule_provider_keys).
# A reference to a Secret outside this list must be optional or the Secret
# must be part of the render (components/secrets-example).
# The edge has no credential: a reference to one is a Secret nobody makes.
OPERATOR_SECRETS = frozenset(
    {"agentmesh-keys", "agentmesh-databases", "agentmesh-edge-session-key"}
    | {f"agentmesh-{service}-credential" for service in SERVICES if service not in HTTP_SERVICES}
)

# The protocols a Service port can declare to Istio, by its name's prefix
# (`<protocol>[-<suffix>]`) or its appProtocol (istio.io, "Protocol
# Selection"); a port declaring none is left to Istio's detection.
ISTIO_PROTOCOLS = ("grpc-web", "http2", "https", "http", "tcp", "tls", "grpc", "mongo", "mysql", "redis", "udp")

# Hosts outside the cluster that env URLs may name (the model providers).
EXTERNAL_HOSTS = frozenset({"api.openai.com", "api.anthropic.com"})

# Principals of workloads outside the rendered manifests that policies may
# let in: the Istio ingress gateway and Prometheus (patterns, fnmatch-style).
EXTERNAL_PRINCIPALS = (
    "*/ns/istio-system/sa/*",
    "*/ns/istio-ingress/sa/*",
    "*/ns/monitoring/sa/*",
)

# Ports the injected sidecar listens on in every pod (status and health,
# merged metrics, Envoy's own metrics): a policy may name them.
ISTIO_SIDECAR_PORTS = frozenset({15020, 15021, 15090})

# The provider keys the llm-gateway reads (llm-gateway config: api_key_env).
PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")

OVERLAY_ONLY = frozenset({"image-untagged", "pull-policy-unset", "pdb"})

CALLS = (
    ("tools/deploy/policies.py", ["--check"]),
    ("tools/deploy/docker_check.py", []),
    ("deploy/prometheus/gen-prometheusrule.py", ["--check"]),
)


@dataclasses.dataclass(frozen=True)
class Failure:
    """One broken rule: where (render, object), which rule, what, which field."""

    render: str
    kind: str
    name: str
    rule: str
    what: str
    field: str

    def key(self):
        return (self.kind, self.name, self.rule, self.what, self.field)

    def line(self, others=0):
        also = f" [also in {others} other render{'s' if others != 1 else ''}]" if others else ""
        return f"FAIL {self.render} {self.kind}/{self.name}: {self.rule}: {self.what} ({self.field}){also}"


# ---------------------------------------------------------------- rendering


def _kustomization(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = directory / name
        if path.is_file():
            return yaml.safe_load(path.read_text()) or {}
    return None


def discover():
    """(overlays, components): [(name, dir)] each, in a stable order."""
    overlays = []
    overlay_root = ROOT / "k8s" / "overlays"
    if overlay_root.is_dir():
        for directory in sorted(overlay_root.iterdir()):
            if directory.is_dir() and _kustomization(directory) is not None:
                overlays.append((f"overlay/{directory.name}", directory))
    components = []
    component_root = ROOT / "k8s" / "components"
    candidates = sorted(component_root.iterdir()) if component_root.is_dir() else []
    candidates.append(ROOT / "istio")
    for directory in candidates:
        kustomization = _kustomization(directory) if directory.is_dir() else None
        if kustomization and kustomization.get("kind") == "Component":
            components.append((directory.name, directory))
    return overlays, components


def _tree_digest():
    digest = hashlib.sha256()
    version = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True)
    digest.update(version.stdout.encode())
    # This script too: it writes the generated kustomizations.
    digest.update(pathlib.Path(__file__).read_bytes())
    for top in ("k8s", "istio", "deploy"):
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def render_plan():
    """[(render name, kustomization dir, is_overlay)]: overlays, then the
    base with every subset of the components."""
    overlays, components = discover()
    plan = [(name, directory, True) for name, directory in overlays]
    # One directory per run (removed at exit), so runs side by side do not
    # clash; the cache is keyed by render name, not by this directory.
    (WORK / "gen").mkdir(parents=True, exist_ok=True)
    gen = pathlib.Path(tempfile.mkdtemp(dir=WORK / "gen"))
    atexit.register(shutil.rmtree, gen, True)
    for size in range(len(components) + 1):
        for subset in itertools.combinations(components, size):
            name = "+".join(["base"] + [c for c, _ in subset])
            directory = gen / name
            directory.mkdir(parents=True)
            rel = lambda p: os.path.relpath(p, directory)  # noqa: E731
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [rel(ROOT / "k8s" / "base")],
            }
            if subset:
                kustomization["components"] = [rel(d) for _, d in subset]
            (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
            plan.append((name, directory, False))
    return plan


# libyaml's parser when PyYAML has it: the renders are large.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml_all(text):
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]


def _render_one(name, directory, cache):
    """(name, objects, error): a render, from the cache (parsed, as JSON)
    when the tree has not changed since it was made."""
    cached = cache / (name.replace("/", "_") + ".json")
    if cached.is_file():
        return name, json.loads(cached.read_text()), None
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        return name, None, result.stderr.strip() or f"kubectl kustomize exited {result.returncode}"
    try:
        objects = _load_yaml_all(result.stdout)
    except yaml.YAMLError as error:
        return name, None, f"output is not YAML: {error}"
    cached.write_text(json.dumps(objects))
    return name, objects, None


def _kustomize_error(stderr):
    """The message of kubectl's last error line, without the log prefix."""
    lines = [line for line in stderr.splitlines() if line.strip()] or ["kubectl kustomize failed"]
    line = re.sub(r"^[EWIF]\d{4} [\d:.]+\s+\d+ [^\]]+\] ", "", lines[-1])
    match = re.search(r'err="(.*)"\s*$', line)
    if match:
        line = match.group(1).replace('\\"', '"')
    line = line.replace(str(ROOT) + "/", "")
    # kustomize puts the object first and the reason last: keep both ends.
    return line if len(line) <= 500 else line[:200] + " … " + line[-300:]


def render_all(plan):
    """{render name: [objects]} and the render failures."""
    cache_root = WORK / "cache"
    cache = cache_root / _tree_digest()
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache_root.iterdir():
        if stale != cache:
            shutil.rmtree(stale, ignore_errors=True)
    renders, failures = {}, []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        jobs = [pool.submit(_render_one, name, directory, cache) for name, directory, _ in plan]
        for job in jobs:
            name, objects, error = job.result()
            if error is not None:
                directory, is_overlay = next((d, o) for n, d, o in plan if n == name)
                # Named alike across the generated ones, so the same error in
                # several combinations is reported once.
                label = os.path.relpath(directory, ROOT) if is_overlay else "base+components"
                failures.append(Failure(name, "Kustomization", label, "render", _kustomize_error(error),
                                        "kubectl kustomize"))
                continue
            renders[name] = objects
    return renders, failures


# ------------------------------------------------------------------ schemas


def _strict(schema):
    """A CRD schema that, like `kubectl apply --validate=strict`, rejects
    fields it does not list (unless it preserves unknown fields)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            out[key] = _strict(value)
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


class Schemas:
    """Validators for core kinds (per Kubernetes version) and CRD kinds,
    built once each; results cached per distinct object."""

    def __init__(self):
        try:
            import jsonschema
            import kubernetes_validate.utils as kv
        except ImportError as error:
            raise SystemExit(f"FAIL setup: {error} (tools/install-test-deps deploy installs it)") from None

        self._jsonschema = jsonschema
        self._kv = kv
        supported = kv.all_versions()
        self.versions = []
        for wanted in K8S_VERSIONS:
            match = [v for v in supported if kv.major_minor(v) == wanted]
            if not match:
                raise SystemExit(f"kubernetes-validate {kv.__version__} has no schemas for Kubernetes {wanted} "
                                 f"(it has {', '.join(kv.major_minor(v) for v in supported)}): update K8S_VERSIONS")
            self.versions.append(match[-1])
        self._core = {}
        self._defs = {}
        self._crds = {}
        for path in sorted(SCHEMAS.glob("*.yaml")):
            for crd in _load_yaml_all(path.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec.get("versions", []):
                    schema = version.get("schema", {}).get("openAPIV3Schema")
                    if version.get("served", True) and schema:
                        key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                        self._crds[key] = (path.name, schema)
        self._crd_validators = {}
        self._results = {}

    @staticmethod
    def is_core(api_version):
        group = api_version.rpartition("/")[0]
        return group == "" or "." not in group or group.endswith(".k8s.io")

    def _core_validator(self, version, api_version, kind):
        key = (version, api_version, kind)
        if key not in self._core:
            from referencing import Registry, Resource

            directory = f"kubernetes-json-schema/v{version}-local-strict"
            api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
            try:
                schema = self._kv.schema_contents(f"{directory}/{kind.lower()}-{api}.json", version)
            except FileNotFoundError:
                self._core[key] = None
                return None
            if version not in self._defs:
                self._defs[version] = self._kv.schema_contents(f"{directory}/_definitions.json", version)
            registry = Resource.from_contents(schema) @ Registry()
            registry = Resource.from_contents(self._defs[version]) @ registry
            self._core[key] = self._jsonschema.Draft202012Validator(schema, registry=registry)
        return self._core[key]

    def _crd_validator(self, api_version, kind):
        key = (api_version, kind)
        if key not in self._crd_validators:
            found = self._crds.get(key)
            if found is None:
                self._crd_validators[key] = None
            else:
                # The API server takes apiVersion, kind and metadata on every
                # object, whether the CRD's schema lists them (Istio's do not).
                schema = copy.deepcopy(found[1])
                schema.setdefault("properties", {})
                schema["properties"].setdefault("apiVersion", {"type": "string"})
                schema["properties"].setdefault("kind", {"type": "string"})
                schema["properties"].setdefault("metadata", {"type": "object"})
                self._crd_validators[key] = (found[0], self._jsonschema.Draft4Validator(_strict(schema)))
        return self._crd_validators[key]

    def check(self, obj):
        """[(rule, what, field)] for `obj`, computed once per distinct object."""
        key = json.dumps(obj, sort_keys=True)
        if key in self._results:
            return self._results[key]
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        problems = []
        if self.is_core(api_version):
            for version in self.versions:
                validator = self._core_validator(version, api_version, kind)
                if validator is None:
                    problems.append(("unknown-kind", f"no Kubernetes {self._kv.major_minor(version)} schema "
                                     f"for {kind} {api_version}", "apiVersion/kind"))
                    continue
                problems.extend(self._errors(validator, obj, f"Kubernetes {self._kv.major_minor(version)} schema"))
        else:
            found = self._crd_validator(api_version, kind)
            if found is None:
                problems.append(("unknown-kind", f"no CRD schema for {kind} {api_version} in deploy/schemas/ "
                                 "(add it to deploy/schemas/vendor.py)", "apiVersion/kind"))
            else:
                problems.extend(self._errors(found[1], obj, f"CRD schema {found[0]}"))
        self._results[key] = problems
        return problems

    @staticmethod
    def _errors(validator, obj, against):
        out = []
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))[:5]:
            message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
            field = ".".join(str(p) for p in error.absolute_path) or "(object)"
            out.append(("schema", f"{against}: {message}", field))
        return out


# -------------------------------------------------------------- the render


def _parse_duration(text):
    """Seconds in a humantime ("25s", "1m 30s", "500ms") or Go ("1m30s")
    duration; None when it is not one."""
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str):
        return None
    units = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip().lower())
    if not parts or re.sub(r"[\d.\sa-z]", "", text.strip().lower()):
        return None
    total = 0.0
    for number, unit in parts:
        if unit not in units:
            return None
        total += float(number) * units[unit]
    return total


def _labels_match(selector, labels):
    """A matchLabels-style selector (dict) selects `labels`; an empty one
    selects nothing here (a Service without selector is not ours)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _match_labels(selector):
    if not isinstance(selector, dict):
        return {}
    return selector.get("matchLabels", {}) or {}


def _selects(selector, labels):
    """A full LabelSelector (matchLabels and matchExpressions, as the
    Prometheus Operator's monitors take) selects `labels`; an empty one, or
    one with an operator this does not know, selects nothing here."""
    if not isinstance(selector, dict):
        return False
    match = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expression in expressions:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        if operator == "In":
            ok = key in labels and labels[key] in values
        elif operator == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif operator == "Exists":
            ok = key in labels
        elif operator == "DoesNotExist":
            ok = key not in labels
        else:
            ok = False
        if not ok:
            return False
    return True


def _selector_text(selector):
    """A monitor's selector as a failure names it."""
    if not isinstance(selector, dict):
        return "{}"
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(map(str, expression.get("values") or []))
        parts.append(f"{expression.get('key')} {expression.get('operator')}" + (f" ({values})" if values else ""))
    return "{" + ", ".join(parts) + "}"


@dataclasses.dataclass
class Container:
    """A container of a workload, with what the rules ask of it."""

    workload: dict
    spec: dict
    index: int
    init: bool = False

    @property
    def field(self):
        return f"spec.template.spec.{'initContainers' if self.init else 'containers'}[{self.index}]"

    @property
    def service(self):
        command = self.spec.get("command") or []
        if command:
            base = posixpath.basename(str(command[0]))
            if base.startswith("agentmesh-") and base[len("agentmesh-"):] in SERVICES:
                return base[len("agentmesh-"):]
        name = self.spec.get("name")
        return name if name in SERVICES else None

    def port_names(self):
        return {p.get("name"): p.get("containerPort") for p in self.spec.get("ports", []) or [] if p.get("name")}

    def port_numbers(self):
        return {p.get("containerPort") for p in self.spec.get("ports", []) or []}


class Render:
    """The objects of one render, indexed for the rules."""

    def __init__(self, name, objects, is_overlay):
        self.name = name
        self.objects = objects
        self.is_overlay = is_overlay
        self.by_kind = {}
        for obj in objects:
            self.by_kind.setdefault(obj.get("kind"), []).append(obj)
        # The one namespace the objects are in (an overlay's `namespace:`),
        # None when they leave it to `kubectl apply -n` (the base).
        namespaces = {(o.get("metadata") or {}).get("namespace") for o in objects} - {None}
        self.namespace = next(iter(namespaces)) if len(namespaces) == 1 else None
        self.istio = any(o.get("apiVersion", "").split("/")[0].endswith("istio.io") for o in objects) or any(
            ((o.get("metadata") or {}).get("labels") or {}).get("istio-injection") == "enabled"
            for o in self.by_kind.get("Namespace", [])
        )

    def kind(self, kind):
        return self.by_kind.get(kind, [])

    def get(self, kind, name):
        return next((o for o in self.kind(kind) if (o.get("metadata") or {}).get("name") == name), None)

    def workloads(self):
        return self.kind("Deployment") + self.kind("StatefulSet")

    def containers(self, workload, init=False):
        pod = _pod(workload)
        out = [Container(workload, c, i) for i, c in enumerate(pod.get("containers", []) or [])]
        if init:
            out += [Container(workload, c, i, True) for i, c in enumerate(pod.get("initContainers", []) or [])]
        return out

    def selected_workloads(self, selector):
        return [w for w in self.workloads() if _labels_match(selector, _pod_labels(w))]

    def env(self, container):
        """{name: (value or None, source)}: literal values and ConfigMap
        keys the render holds; Secret-sourced values are not known here."""
        out = {}
        for ref in container.spec.get("envFrom", []) or []:
            config_map = ref.get("configMapRef")
            if config_map:
                data = (self.get("ConfigMap", config_map.get("name")) or {}).get("data", {}) or {}
                for key, value in data.items():
                    out[ref.get("prefix", "") + key] = (value, "configMap")
        for var in container.spec.get("env", []) or []:
            name = var.get("name")
            if "value" in var:
                out[name] = (str(var["value"]), "value")
                continue
            source = var.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                data = (self.get("ConfigMap", ref.get("name")) or {}).get("data", {}) or {}
                out[name] = (data.get(ref.get("key")), "configMap")
            elif "secretKeyRef" in source:
                out[name] = (None, "secret")
            else:
                out[name] = (None, "other")
        return out


def _pod(workload):
    return ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}


def _pod_labels(workload):
    return (((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def _pod_annotations(workload):
    return (((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations") or {}


def _meta(obj):
    """(kind, name) of an object, "?" for what it lacks."""
    return str(obj.get("kind", "?")), str((obj.get("metadata") or {}).get("name", "?"))


def _dockerfile_workdir():
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.is_file():
        return DEFAULT_WORKDIR
    workdir = DEFAULT_WORKDIR
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"\s*FROM\s", line, re.I)
        if match:
            workdir = DEFAULT_WORKDIR
        match = re.match(r"\s*WORKDIR\s+(\S+)", line, re.I)
        if match:
            workdir = posixpath.join(workdir, match.group(1))
    return workdir


WORKDIR = _dockerfile_workdir()


# -------------------------------------------------------------------- rules
#
# Each rule takes a Render and yields (object, rule id, what, field).


def _url_target(value):
    """(host, port or None) of an http(s) URL in `value`, else None."""
    match = re.fullmatch(r"https?://([^/:\s]+)(?::(\d+))?(/\S*)?", value.strip()) if isinstance(value, str) else None
    if not match:
        return None
    return match.group(1), (int(match.group(2)) if match.group(2) else None)


def _service_of_host(render, host):
    """The Service a cluster host name (`svc`, `svc.ns`, `svc.ns.svc`,
    `svc.ns.svc.cluster.local`) names in the render, or a reason it does not."""
    labels = host.split(".")
    if len(labels) == 1:
        name, namespace = labels[0], None
    elif len(labels) == 2 or labels[2:] in (["svc"], ["svc", "cluster", "local"]):
        name, namespace = labels[0], labels[1]
    else:
        return None, f"{host} is neither a Service of the render nor in EXTERNAL_HOSTS"
    service = render.get("Service", name)
    if service is None:
        return None, f"no Service {name} in the render"
    if namespace and render.namespace and namespace != render.namespace:
        return None, f"names namespace {namespace}, the render is in {render.namespace}"
    return service, None


def _target_container_port(render, service, port_number):
    """The (container, port) behind Service `service` port `port_number`."""
    ports = [p for p in (service.get("spec") or {}).get("ports", []) or [] if p.get("port") == port_number]
    if not ports:
        return None
    target = ports[0].get("targetPort", port_number)
    for workload in render.selected_workloads((service.get("spec") or {}).get("selector") or {}):
        for container in render.containers(workload):
            if isinstance(target, str) and target in container.port_names():
                return container, target
            if isinstance(target, int) and target in container.port_numbers():
                return container, target
    return None


def _own_pod_address(container, key, variable, port):
    """Why `key`=`http://$(variable):port` is not this pod's own gRPC
    address, or None when it is: `variable` is set before `key` in the
    container's env (Kubernetes expands only earlier ones) from the Downward
    API's `status.podIP`, and `port` is its grpc port."""
    for var in container.spec.get("env", []) or []:
        if var.get("name") == key:
            break
        if var.get("name") != variable:
            continue
        field = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field != "status.podIP":
            return f"$({variable}) is not set from fieldRef status.podIP"
        if port is None or port != container.port_names().get("grpc"):
            return f"port {port} is not the container's grpc port"
        return None
    return f"$({variable}) is not set before it is used in this container's env"


def rule_peer_urls(render):
    """Every peer a service needs has its URL set, and every URL in env names
    a Service and port of the render (or an allowed external host)."""
    for workload in render.workloads():
        for container in render.containers(workload, init=True):
            env = render.env(container)
            required = REQUIRED_PEERS.get(container.service, {}) if not container.init else {}
            for key, callee in required.items():
                if key not in env:
                    yield (workload, "peer-env", f"{key} is not set: the {callee} address defaults to 127.0.0.1",
                           f"{container.field}.env")
                    continue
                value, source = env[key]
                if value is None:
                    continue  # from a Secret: not visible here
                target = _url_target(value)
                if target is None:
                    yield workload, "peer-url", f"{key}={value} is not an http(s) URL", f"{container.field}.env.{key}"
                    continue
                service, _ = _service_of_host(render, target[0])
                if service is None or target[1] is None:
                    continue  # reported below with every URL
                found = _target_container_port(render, service, target[1])
                if found is None:
                    continue
                if found[0].service != callee:
                    yield (workload, "peer-url", f"{key}={value} reaches {found[0].service or 'another workload'}, "
                           f"not {callee}", f"{container.field}.env.{key}")
                elif found[1] not in ("grpc", found[0].port_names().get("grpc")):
                    yield (workload, "peer-url", f"{key}={value} reaches {callee}'s port {found[1]}, not its grpc port",
                           f"{container.field}.env.{key}")
            for key, (value, _) in env.items():
                target = _url_target(value)
                if target is None:
                    continue
                host, port = target
                if host in EXTERNAL_HOSTS:
                    continue
                field = f"{container.field}.env.{key}"
                variable = re.fullmatch(r"\$\((\w+)\)", host)
                if variable:
                    # The pod's own address, advertised to its replicas
                    # (alerting's leader): only from the Downward API's
                    # status.podIP, and only on this container's grpc port.
                    reason = _own_pod_address(container, key, variable.group(1), port)
                    if reason:
                        yield workload, "peer-url", f"{key}={value}: {reason}", field
                    continue
                if host in ("localhost", "0.0.0.0") or host.startswith("127.") or host == "[::1]":
                    yield workload, "peer-url", f"{key}={value} is the pod itself, not a peer", field
                    continue
                service, reason = _service_of_host(render, host)
                if service is None:
                    yield workload, "peer-url", f"{key}={value}: {reason}", field
                    continue
                if port is None:
                    yield workload, "peer-url", f"{key}={value} names no port", field
                    continue
                ports = [p.get("port") for p in (service.get("spec") or {}).get("ports", []) or []]
                if port not in ports:
                    yield workload, "peer-url", f"{key}={value}: Service {host} has no port {port} (it has {ports})", field
                elif _target_container_port(render, service, port) is None:
                    yield workload, "peer-url", f"{key}={value}: no pod behind Service {host} port {port}", field


def _istio_protocol(port):
    """The protocol a Service port declares to Istio, None when it leaves
    it to detection."""
    if port.get("appProtocol"):
        return str(port["appProtocol"])
    name = str(port.get("name", "")).lower()
    return next((p for p in ISTIO_PROTOCOLS if name == p or name.startswith(p + "-")), None)


def rule_advertised_peers(render):
    """A replica's advertised own address, `http://$(POD_IP):port` (the
    orchestrator's advertise_url, alerting's leader.advertise_url; the other
    replicas dial it, so it matters on PostgreSQL only), is routable through
    Istio's sidecars. gRPC is routed by :authority, and a bare pod IP is no
    host the mesh knows: a call to it is refused (REGISTRY_ONLY) or sent in
    plaintext (ALLOW_ANY), unless a headless Service selects the pods on that
    port with a protocol Istio leaves to detection, for which Istio sets up
    a listener per pod IP. Not-ready pods must stay published: a draining
    orchestrator still serves its runs' followers, an unready leader still
    leads."""
    services = render.kind("Service")
    for workload in render.workloads():
        labels = _pod_labels(workload)
        for container in render.containers(workload):
            if container.service is None or not _storage_is_postgres(render, container):
                continue
            for key, (value, _) in render.env(container).items():
                target = _url_target(value)
                variable = re.fullmatch(r"\$\((\w+)\)", target[0]) if target else None
                if not variable or _own_pod_address(container, key, variable.group(1), target[1]):
                    continue  # not an advertised own address (peer-url reports a wrong one)
                port = target[1]
                field = f"{container.field}.env.{key}"
                headless = [
                    (service, i, spec_port)
                    for service in services
                    if (service.get("spec") or {}).get("clusterIP") == "None"
                    and _labels_match((service.get("spec") or {}).get("selector") or {}, labels)
                    for i, spec_port in enumerate(_service_ports(service))
                    if spec_port.get("port") == port
                ]
                if not headless:
                    yield (workload, "advertised-peer", f"{key}={value}: no headless Service (clusterIP: None) "
                           f"selects these pods on port {port}: under Istio a call to a bare pod IP matches no route",
                           field)
                    continue
                for service, i, spec_port in headless:
                    found = _target_container_port(render, service, port)
                    if found is None or found[1] not in ("grpc", found[0].port_names().get("grpc")):
                        yield (service, "advertised-peer", f"port {port} does not reach the grpc port of "
                               f"{_meta(workload)[1]} ({key})", f"spec.ports[{i}].targetPort")
                    declared = _istio_protocol(spec_port)
                    if declared in ("http", "http2", "grpc", "grpc-web") or "h2c" in (declared or ""):
                        yield (service, "advertised-peer", f"port {port} declares {declared} to Istio, which then "
                               "routes it by :authority (the bare pod IP here: no route) instead of a listener "
                               "per pod IP; name it without a protocol prefix and drop appProtocol",
                               f"spec.ports[{i}]")
                    elif declared:
                        yield (service, "advertised-peer", f"port {port} declares {declared} to Istio: the pods' "
                               "gRPC port would then be opaque to it, for these calls and, where this Service "
                               "is the older one, for every call (the authorization policy's paths never match "
                               "there); leave the protocol to detection", f"spec.ports[{i}]")
                    if (service.get("spec") or {}).get("publishNotReadyAddresses") is not True:
                        yield (service, "advertised-peer", "not-ready pods are not published: a draining or "
                               f"unready {_meta(workload)[1]} replica that its peers still call drops out of the "
                               "mesh's routes", "spec.publishNotReadyAddresses")


def rule_services(render):
    """Service selectors select a workload whose pods have the targetPort."""
    for service in render.kind("Service"):
        spec = service.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector:
            continue
        workloads = render.selected_workloads(selector)
        if not workloads:
            yield service, "service-selector", f"selector {selector} matches no workload's pod labels", "spec.selector"
            continue
        for i, port in enumerate(spec.get("ports", []) or []):
            target = port.get("targetPort", port.get("port"))
            ok = any(
                (target in c.port_names()) if isinstance(target, str) else (target in c.port_numbers())
                for w in workloads for c in render.containers(w)
            )
            if not ok:
                yield service, "target-port", f"targetPort {target} is not a container port of the selected pods", \
                    f"spec.ports[{i}].targetPort"


def _probe_ports(container):
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        spec = container.spec.get(probe)
        if not spec:
            continue
        for handler in ("grpc", "httpGet", "tcpSocket"):
            if handler in spec and "port" in spec[handler]:
                yield probe, handler, spec[handler]["port"]


def rule_probes(render):
    """Every probe asks a port the container declares."""
    for workload in render.workloads():
        for container in render.containers(workload):
            for probe, handler, port in _probe_ports(container):
                known = port in container.port_names() if isinstance(port, str) else port in container.port_numbers()
                if not known:
                    yield workload, "probe-port", f"{probe} port {port} is not a port of container " \
                        f"{container.spec.get('name')}", f"{container.field}.{probe}.{handler}.port"


def rule_probe_protocols(render):
    """A gRPC probe asks the container's gRPC port (an HTTP service such as
    the edge has none: it serves no gRPC health, and the kubelet's gRPC
    probe would fail forever); an HTTP probe of a service asks its admin
    port (`http-admin`) on a path the admin server serves, and liveness and
    start-up never ask `/readyz`, which follows the dependencies (an outage
    elsewhere would restart every pod)."""
    for workload in render.workloads():
        for container in render.containers(workload):
            if container.service is None:
                continue
            names = container.port_names()
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                spec = container.spec.get(probe) or {}
                field = f"{container.field}.{probe}"
                if "grpc" in spec:
                    port = spec["grpc"].get("port")
                    if "grpc" not in names or port not in ("grpc", names["grpc"]):
                        what = (f"{container.service} serves no gRPC health (an HTTP service): probe its admin "
                                "port over HTTP" if "grpc" not in names else f"port {port} is not its grpc port")
                        yield workload, "probe-protocol", f"{probe} is a gRPC probe: {what}", f"{field}.grpc.port"
                if "httpGet" in spec:
                    port, path = spec["httpGet"].get("port"), spec["httpGet"].get("path", "/")
                    if port not in ("http-admin", names.get("http-admin")):
                        yield workload, "probe-protocol", f"{probe} asks port {port}, not the admin port " \
                            "(http-admin), where the health endpoints are", f"{field}.httpGet.port"
                    elif path not in ADMIN_PROBE_PATHS:
                        yield workload, "probe-protocol", f"{probe} asks {path}: the admin server serves " \
                            f"{', '.join(sorted(ADMIN_PROBE_PATHS))}", f"{field}.httpGet.path"
                    elif probe != "readinessProbe" and path not in LIVE_PATHS:
                        yield workload, "probe-protocol", f"{probe} asks {path}, which follows the dependencies: " \
                            "an outage elsewhere would restart every pod (use /livez)", f"{field}.httpGet.path"


def rule_listen_addresses(render):
    """Every service listens beyond loopback: its server.host defaults to
    127.0.0.1, where its Service (the pod IP) reaches nothing. The admin
    host follows server.host unless set."""
    import ipaddress

    for workload in render.workloads():
        for container in render.containers(workload):
            if container.service is None:
                continue
            section = container.service.replace("-", "_").upper()
            env = render.env(container)
            for key, fallback in ((f"AGENTMESH_{section}__SERVER__HOST", None),
                                  (f"AGENTMESH_{section}__SERVER__ADMIN_HOST", f"AGENTMESH_{section}__SERVER__HOST")):
                value, source = env.get(key, (None, None))
                if source is None and fallback is not None:
                    continue  # the admin host follows server.host (checked on its own)
                field = f"{container.field}.env"
                if source is None:
                    yield workload, "listen-address", f"{key} is not set: {container.service} listens on " \
                        "127.0.0.1 (the default), and its Service reaches nothing", field
                    continue
                if value is None:
                    continue  # from a Secret: not visible here
                try:
                    loopback = ipaddress.ip_address(value.strip("[]")).is_loopback
                except ValueError:
                    yield workload, "listen-address", f"{key}={value} is not an IP address", f"{field}.{key}"
                    continue
                if loopback:
                    yield workload, "listen-address", f"{key}={value}: loopback, which its Service does not " \
                        "reach", f"{field}.{key}"


def rule_monitors(render):
    """ServiceMonitor ports name ports of selected Services; PodMonitor ports
    name container ports of selected pods."""
    for monitor in render.kind("ServiceMonitor"):
        spec = monitor.get("spec") or {}
        selector = spec.get("selector")
        services = [s for s in render.kind("Service")
                    if _selects(selector, (s.get("metadata") or {}).get("labels") or {})]
        if not services:
            yield monitor, "monitor-port", f"selector {_selector_text(selector)} matches no Service", "spec.selector"
            continue
        for i, endpoint in enumerate(spec.get("endpoints", []) or []):
            port = endpoint.get("port")
            if port is None:
                continue
            missing = [_meta(s)[1] for s in services
                       if port not in {p.get("name") for p in (s.get("spec") or {}).get("ports", []) or []}]
            if missing:
                yield monitor, "monitor-port", f"port {port} is not a port of Service(s) {', '.join(missing)}", \
                    f"spec.endpoints[{i}].port"
    for monitor in render.kind("PodMonitor"):
        spec = monitor.get("spec") or {}
        workloads = [w for w in render.workloads() if _selects(spec.get("selector"), _pod_labels(w))]
        if not workloads:
            yield monitor, "monitor-port", f"selector {_selector_text(spec.get('selector'))} matches no pods", \
                "spec.selector"
            continue
        for i, endpoint in enumerate(spec.get("podMetricsEndpoints", []) or []):
            port = endpoint.get("port")
            if port is None:
                continue
            missing = [_meta(w)[1] for w in workloads
                       if not any(port in c.port_names() for c in render.containers(w))]
            if missing:
                yield monitor, "monitor-port", f"port {port} is not a container port of {', '.join(missing)}", \
                    f"spec.podMetricsEndpoints[{i}].port"


def _principal_parts(principal):
    """(namespace or None, service account) of a SPIFFE-style principal
    (`<td>/ns/<ns>/sa/<sa>`, `*/ns/<ns>/sa/<sa>`, `*/sa/<sa>`), else None."""
    match = re.fullmatch(r"(?:[^/]+/ns/([^/]+)|\*)/sa/([^/]+)", principal)
    return (match.group(1), match.group(2)) if match else None


def rule_authorization(render):
    """AuthorizationPolicy ports exist on the selected workloads; principals
    are ServiceAccounts of the render (or allowed outside ones)."""
    import fnmatch

    for policy in render.kind("AuthorizationPolicy"):
        spec = policy.get("spec") or {}
        selector = _match_labels(spec.get("selector"))
        workloads = render.selected_workloads(selector) if selector else render.workloads()
        if selector and not workloads:
            yield policy, "authz-selector", f"selector {selector} matches no workload", "spec.selector"
        numbers = {n for w in workloads for c in render.containers(w) for n in c.port_numbers()} | ISTIO_SIDECAR_PORTS
        for i, rule in enumerate(spec.get("rules", []) or []):
            for j, to in enumerate(rule.get("to", []) or []):
                operation = to.get("operation") or {}
                for field in ("ports", "notPorts"):
                    for port in operation.get(field, []) or []:
                        if workloads and not (str(port).isdigit() and int(port) in numbers):
                            yield policy, "authz-port", f"port {port} is not a container port of the selected " \
                                "workloads (nor a sidecar port)", f"spec.rules[{i}].to[{j}].operation.{field}"
            for j, source in enumerate(rule.get("from", []) or []):
                source = source.get("source") or {}
                for field in ("principals", "notPrincipals"):
                    for principal in source.get(field, []) or []:
                        where = f"spec.rules[{i}].from[{j}].source.{field}"
                        if principal == "*" or any(fnmatch.fnmatchcase(principal, p) for p in EXTERNAL_PRINCIPALS):
                            continue
                        parts = _principal_parts(principal)
                        if parts is None:
                            yield policy, "principal", f"{principal} is not <trust domain>/ns/<ns>/sa/<name> " \
                                "or */sa/<name>", where
                            continue
                        namespace, account = parts
                        if render.get("ServiceAccount", account) is None:
                            yield policy, "principal", f"{principal}: no ServiceAccount {account} in the render", where
                        elif namespace and render.namespace and namespace != render.namespace:
                            yield policy, "principal", f"{principal}: namespace {namespace}, the render is in " \
                                f"{render.namespace}", where


def _secret_refs(pod):
    """(kind, name, optional, field) of every Secret/ConfigMap/PVC the pod uses."""
    for i, volume in enumerate(pod.get("volumes", []) or []):
        field = f"spec.template.spec.volumes[{i}]"
        if "secret" in volume:
            yield "Secret", volume["secret"].get("secretName"), volume["secret"].get("optional", False), field
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"].get("name"), volume["configMap"].get("optional", False), field
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"].get("claimName"), False, field
        for j, source in enumerate((volume.get("projected") or {}).get("sources", []) or []):
            for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                if key in source:
                    yield kind, source[key].get("name"), source[key].get("optional", False), \
                        f"{field}.projected.sources[{j}]"
    for group in ("containers", "initContainers"):
        for i, container in enumerate(pod.get(group, []) or []):
            base = f"spec.template.spec.{group}[{i}]"
            for j, var in enumerate(container.get("env", []) or []):
                source = var.get("valueFrom") or {}
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in source:
                        yield kind, source[key].get("name"), source[key].get("optional", False), \
                            f"{base}.env[{j}] ({var.get('name')})"
            for j, ref in enumerate(container.get("envFrom", []) or []):
                for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if key in ref:
                        yield kind, ref[key].get("name"), ref[key].get("optional", False), f"{base}.envFrom[{j}]"


def rule_references(render):
    """Secrets, ConfigMaps, PVCs and ServiceAccounts the pods use exist."""
    for workload in render.workloads():
        pod = _pod(workload)
        for kind, name, optional, field in _secret_refs(pod):
            if render.get(kind, name) is not None or optional:
                continue
            if kind == "Secret" and name in OPERATOR_SECRETS:
                continue
            rule = {"Secret": "secret-ref", "ConfigMap": "configmap-ref"}.get(kind, "pvc-ref")
            hint = " and is not one the operator creates (OPERATOR_SECRETS)" if kind == "Secret" else ""
            yield workload, rule, f"{kind} {name} is not in the render, not optional{hint}", field
        account = pod.get("serviceAccountName")
        if not account:
            yield workload, "service-account", "no serviceAccountName: the pod runs as `default`, " \
                "which no policy names", "spec.template.spec.serviceAccountName"
        elif render.get("ServiceAccount", account) is None:
            yield workload, "service-account", f"ServiceAccount {account} is not in the render", \
                "spec.template.spec.serviceAccountName"
    for hpa in render.kind("HorizontalPodAutoscaler"):
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if render.get(target.get("kind"), target.get("name")) is None:
            yield hpa, "hpa-target", f"{target.get('kind')}/{target.get('name')} is not in the render", \
                "spec.scaleTargetRef"


def _storage_is_postgres(render, container):
    """Whether the service stores in PostgreSQL: a storage URL set literally
    to postgres(ql)://…, or from a Secret (the database URLs Secret holds
    PostgreSQL URLs; an SQLite URL has no reason to be secret)."""
    section = container.service.replace("-", "_").upper()
    value, source = render.env(container).get(f"AGENTMESH_{section}__STORAGE__URL", (None, None))
    if source == "secret":
        return True
    return isinstance(value, str) and value.startswith(("postgres://", "postgresql://"))


def _mount_for(container, path):
    """The volumeMount the path lies in (the longest mountPath), or None."""
    best = None
    for mount in container.spec.get("volumeMounts", []) or []:
        root = mount.get("mountPath", "").rstrip("/") or "/"
        if path == root or path.startswith(root.rstrip("/") + "/"):
            if best is None or len(root) > len(best.get("mountPath", "").rstrip("/")):
                best = mount
    return best


def writable_paths(render, container):
    """[(what, absolute path, kind, env key)] the container's service writes."""
    if container.service is None:
        return []
    section = container.service.replace("-", "_").upper()
    env = render.env(container)
    workdir = container.spec.get("workingDir") or WORKDIR
    out = []
    url_key = f"AGENTMESH_{section}__STORAGE__URL"
    url = env.get(url_key, (None, None))[0]
    for what, suffix, default, kind in WRITABLE_PATHS.get(container.service, []):
        key = f"AGENTMESH_{section}__{suffix}"
        if kind == "data" and _storage_is_postgres(render, container):
            continue
        value = env.get(key, (default, "default"))[0] or default
        if kind == "data" and isinstance(url, str) and url.startswith("sqlite:"):
            # An SQLite URL names the database file itself (sqlite://rel.db,
            # sqlite:///abs.db); its directory is what must persist.
            database = re.sub(r"^sqlite:(//)?", "", url).split("?")[0]
            value, key = posixpath.dirname(database) or ".", url_key
        out.append((what, posixpath.normpath(posixpath.join(workdir, value)), kind, key))
    return out


def rule_filesystem(render):
    """readOnlyRootFilesystem, and every path the service writes on a
    writable volume; stored data never on an emptyDir, scratch on an
    emptyDir only with a sizeLimit."""
    for workload in render.workloads():
        volumes = {v.get("name"): v for v in _pod(workload).get("volumes", []) or []}
        for container in render.containers(workload):
            security = container.spec.get("securityContext") or {}
            if security.get("readOnlyRootFilesystem") is not True:
                yield workload, "read-only-root", "readOnlyRootFilesystem is not true", \
                    f"{container.field}.securityContext.readOnlyRootFilesystem"
            for what, path, kind, key in writable_paths(render, container):
                mount = _mount_for(container, path)
                if mount is None:
                    yield workload, "writable-path", f"the {what} {path} ({key}) is on the read-only root " \
                        "filesystem: no volume is mounted there", f"{container.field}.volumeMounts"
                    continue
                volume = volumes.get(mount.get("name"), {})
                field = f"{container.field}.volumeMounts[{mount.get('name')}]"
                if mount.get("readOnly"):
                    yield workload, "writable-path", f"the {what} {path} is on read-only mount {mount.get('mountPath')}", field
                elif any(k in volume for k in ("secret", "configMap", "projected", "downwardAPI")):
                    yield workload, "writable-path", f"the {what} {path} is on volume {mount.get('name')}, " \
                        "which is read-only by kind", field
                elif "emptyDir" in volume and kind == "data":
                    yield workload, "emptydir-data", f"the {what} {path} (SQLite databases) is on emptyDir volume " \
                        f"{mount.get('name')}: lost on every rollout (use a PersistentVolumeClaim or PostgreSQL)", field
                elif "emptyDir" in volume and not (volume.get("emptyDir") or {}).get("sizeLimit"):
                    yield workload, "emptydir-size", f"the {what} {path} is on emptyDir volume {mount.get('name')} " \
                        "without sizeLimit", f"spec.template.spec.volumes[{mount.get('name')}].emptyDir.sizeLimit"


def rule_images(render):
    """Images pinned (tag or digest, never latest), pulled IfNotPresent."""
    for workload in render.workloads():
        for container in render.containers(workload, init=True):
            image = str(container.spec.get("image", ""))
            name_part = image.split("@")[0]
            tag = name_part.rsplit(":", 1)[1] if ":" in name_part.rsplit("/", 1)[-1] else None
            digest = "@" in image
            field = f"{container.field}.image"
            if tag == "latest":
                yield workload, "image-latest", f"image {image} is :latest", field
            elif tag is None and not digest:
                yield workload, "image-untagged", f"image {image} has no tag or digest (set one in the overlay's " \
                    "`images:`)", field
            policy = container.spec.get("imagePullPolicy")
            if policy is None:
                yield workload, "pull-policy-unset", "imagePullPolicy is not set", f"{container.field}.imagePullPolicy"
            elif policy == "Always" and (digest or (tag and tag != "latest")):
                yield workload, "pull-policy", f"imagePullPolicy Always for pinned image {image}", \
                    f"{container.field}.imagePullPolicy"


def _shutdown(render, container):
    """(grace_period, drain_delay) in seconds from the container's env."""
    section = container.service.replace("-", "_").upper()
    env = render.env(container)
    grace = _parse_duration(env.get(f"AGENTMESH_{section}__SERVER__GRACE_PERIOD", (None,))[0])
    drain = _parse_duration(env.get(f"AGENTMESH_{section}__SERVER__DRAIN_DELAY", (None,))[0])
    return (DEFAULT_GRACE_S if grace is None else grace), (DEFAULT_DRAIN_S if drain is None else drain)


def rule_shutdown(render):
    """The kubelet waits longer than the app's grace period plus drain; the
    Istio sidecar stays up for as long as the app may still call or answer
    (the grace period counts from NOT_SERVING and includes the drain delay)."""
    for workload in render.workloads():
        pod = _pod(workload)
        termination = pod.get("terminationGracePeriodSeconds", 30)
        annotations = _pod_annotations(workload)
        for container in render.containers(workload):
            if container.service is None:
                continue
            grace, drain = _shutdown(render, container)
            if not termination > grace + drain:
                yield workload, "termination-grace", f"terminationGracePeriodSeconds {termination} is not more " \
                    f"than grace_period {grace:g}s + drain_delay {drain:g}s", \
                    "spec.template.spec.terminationGracePeriodSeconds"
            sidecar = render.istio and annotations.get("sidecar.istio.io/inject") != "false"
            config = annotations.get("proxy.istio.io/config")
            if config is None and not sidecar:
                continue
            if config is None and annotations.get("sidecar.istio.io/nativeSidecar") == "true":
                continue
            try:
                parsed = yaml.safe_load(config) if config is not None else {}
            except yaml.YAMLError:
                parsed = None
            if not isinstance(parsed, dict):
                yield workload, "sidecar-drain", "proxy.istio.io/config is not a YAML mapping", \
                    "spec.template.metadata.annotations[proxy.istio.io/config]"
                continue
            sidecar_drain = _parse_duration(parsed.get("terminationDrainDuration"))
            shown = "Istio's default 5s" if sidecar_drain is None else f"{sidecar_drain:g}s"
            sidecar_drain = ISTIO_DEFAULT_DRAIN_S if sidecar_drain is None else sidecar_drain
            if sidecar_drain < grace:
                yield workload, "sidecar-drain", f"the sidecar drains for {shown}, the app for up to {grace:g}s " \
                    "(grace_period)", "spec.template.metadata.annotations[proxy.istio.io/config]" \
                    ".terminationDrainDuration"
            elif sidecar_drain >= termination:
                yield workload, "sidecar-drain", f"the sidecar drains for {shown}, not less than " \
                    f"terminationGracePeriodSeconds {termination}", \
                    "spec.template.metadata.annotations[proxy.istio.io/config].terminationDrainDuration"


def _replicas(workload):
    replicas = (workload.get("spec") or {}).get("replicas", 1)
    return replicas if isinstance(replicas, int) else 1


def rule_replicas(render):
    """Alerting runs more than one replica only on PostgreSQL (its leader
    election needs it); no workload shares a ReadWriteOnce claim across
    replicas."""
    for workload in render.workloads():
        replicas = _replicas(workload)
        if replicas <= 1:
            continue
        for container in render.containers(workload):
            if container.service == "alerting" and not _storage_is_postgres(render, container):
                yield workload, "alerting-leader", f"{replicas} alerting replicas without a PostgreSQL storage URL: " \
                    "leader election needs PostgreSQL, on SQLite every replica notifies", "spec.replicas"
        for i, volume in enumerate(_pod(workload).get("volumes", []) or []):
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            pvc = render.get("PersistentVolumeClaim", claim) if claim else None
            modes = set((pvc or {}).get("spec", {}).get("accessModes", []) or [])
            if modes & {"ReadWriteOnce", "ReadWriteOncePod"}:
                yield workload, "rwo-replicas", f"{replicas} replicas share ReadWriteOnce claim {claim}", \
                    f"spec.template.spec.volumes[{i}]"


def rule_pdb(render):
    """Every workload has a PodDisruptionBudget (overlays only)."""
    budgets = [_match_labels((p.get("spec") or {}).get("selector")) for p in render.kind("PodDisruptionBudget")]
    for workload in render.workloads():
        if not any(_labels_match(selector, _pod_labels(workload)) for selector in budgets):
            yield workload, "pdb", "no PodDisruptionBudget selects its pods", "spec.template.metadata.labels"


def rule_provider_keys(render):
    """The llm-gateway gets the provider keys from a Secret, optionally."""
    for workload in render.workloads():
        for container in render.containers(workload):
            if container.service != "llm-gateway":
                continue
            env = {v.get("name"): v for v in container.spec.get("env", []) or []}
            from_all = [r["secretRef"] for r in container.spec.get("envFrom", []) or [] if "secretRef" in r]
            for key in PROVIDER_KEYS:
                ref = ((env.get(key) or {}).get("valueFrom") or {}).get("secretKeyRef")
                if ref is None and not from_all:
                    yield workload, "provider-keys", f"{key} is not set from a Secret: the gateway would serve " \
                        "the scripted demo model", f"{container.field}.env"
                elif ref is not None and not ref.get("optional"):
                    yield workload, "provider-keys", f"{key} is required: a missing key keeps the pod from " \
                        "starting (set optional: true)", f"{container.field}.env[{key}].valueFrom.secretKeyRef"
                elif ref is None and not all(r.get("optional") for r in from_all):
                    yield workload, "provider-keys", "the provider keys Secret is required (set optional: true)", \
                        f"{container.field}.envFrom"


def _service_ports(service):
    return (service.get("spec") or {}).get("ports", []) or []


def rule_istio_routes(render):
    """VirtualServices route to Service ports that exist, with a port match
    on a multi-port Service (else in-mesh calls to the admin port go to the
    gRPC port); DestinationRules do not upgrade the HTTP/1 admin port to
    HTTP/2."""
    for vs in render.kind("VirtualService"):
        spec = vs.get("spec") or {}
        gateways = spec.get("gateways") or []
        for i, route in enumerate(spec.get("http", []) or []):
            matches = route.get("match") or []
            for j, dest in enumerate(route.get("route", []) or []):
                destination = dest.get("destination") or {}
                host = destination.get("host", "")
                if host in EXTERNAL_HOSTS or any(
                        host in (s.get("spec") or {}).get("hosts", []) for s in render.kind("ServiceEntry")):
                    continue
                service, reason = _service_of_host(render, host)
                field = f"spec.http[{i}].route[{j}].destination"
                if service is None:
                    yield vs, "route-host", f"destination {host}: {reason}", field
                    continue
                port = (destination.get("port") or {}).get("number")
                ports = [p.get("port") for p in _service_ports(service)]
                if port is not None and port not in ports:
                    yield vs, "route-host", f"destination {host} port {port}: the Service has {ports}", field
                in_mesh = not gateways or "mesh" in gateways
                if in_mesh and len(ports) > 1 and not any("port" in m for m in matches):
                    yield vs, "route-port-match", f"routes every port of {host} ({ports}) to one destination: " \
                        "no port match", f"spec.http[{i}].match"
    for rule in render.kind("DestinationRule"):
        spec = rule.get("spec") or {}
        policy = ((spec.get("trafficPolicy") or {}).get("connectionPool") or {}).get("http") or {}
        if policy.get("h2UpgradePolicy") != "UPGRADE":
            continue
        service, _ = _service_of_host(render, spec.get("host", ""))
        overridden = {(p.get("port") or {}).get("number") for p in (spec.get("trafficPolicy") or {}).get(
            "portLevelSettings", []) or []}
        for port in _service_ports(service or {}):
            if port.get("appProtocol") in ("http", "HTTP") or str(port.get("name", "")).startswith("http-"):
                if port.get("port") not in overridden:
                    yield rule, "h2-upgrade", f"h2UpgradePolicy UPGRADE also applies to HTTP/1 port " \
                        f"{port.get('name')} ({port.get('port')})", "spec.trafficPolicy.connectionPool.http"


def rule_outlier_detection(render):
    """Outlier detection ejects a pod for its own failures only. Envoy maps a
    gRPC status to an HTTP code for outlier detection (UNAVAILABLE -> 503),
    and the gateway answers UNAVAILABLE when a provider is down (marked by
    the PROVIDER_UNAVAILABLE ErrorInfo): counting 5xx or gateway errors would
    eject every healthy gateway pod during a provider outage."""
    for rule in render.kind("DestinationRule"):
        policy = (rule.get("spec") or {}).get("trafficPolicy") or {}
        levels = [("spec.trafficPolicy", policy)] + [
            (f"spec.trafficPolicy.portLevelSettings[{i}]", p)
            for i, p in enumerate(policy.get("portLevelSettings", []) or [])]
        for field, level in levels:
            outlier = level.get("outlierDetection")
            if outlier is None:
                continue
            # Istio's defaults when outlierDetection is set: 5 consecutive
            # 5xx, errors not split by origin.
            if not outlier.get("splitExternalLocalOriginErrors"):
                yield rule, "outlier-provider", "outlier detection does not split local-origin " \
                    "errors from upstream answers", f"{field}.outlierDetection.splitExternalLocalOriginErrors"
            for key in ("consecutive5xxErrors", "consecutiveGatewayErrors"):
                if outlier.get(key, 5 if key == "consecutive5xxErrors" else 0) != 0:
                    yield rule, "outlier-provider", f"{key} ejects pods for answers (a provider outage " \
                        "is answered UNAVAILABLE = 503)", f"{field}.outlierDetection.{key}"


def rule_mesh_retries(render):
    """No retries by the mesh: Istio retries a route twice by default on
    `unavailable`, `reset` and the like, which would replay a server-streaming
    RPC or a model call; the services retry what is safe themselves."""
    for vs in render.kind("VirtualService"):
        for i, route in enumerate((vs.get("spec") or {}).get("http", []) or []):
            attempts = (route.get("retries") or {}).get("attempts")
            if attempts != 0:
                what = "Istio's default (2)" if attempts is None else attempts
                yield vs, "mesh-retries", f"route {route.get('name', i)} retries {what} times: " \
                    "streams and model calls would be replayed", f"spec.http[{i}].retries.attempts"
    if not render.istio:
        return
    # A Service no in-mesh VirtualService names gets Istio's default route,
    # retries included.
    routed = set()
    for vs in render.kind("VirtualService"):
        spec = vs.get("spec") or {}
        gateways = spec.get("gateways") or []
        if gateways and "mesh" not in gateways:
            continue
        for host in spec.get("hosts", []) or []:
            service, _ = _service_of_host(render, host)
            if service is not None:
                routed.add(_meta(service)[1])
    for service in render.kind("Service"):
        if (service.get("spec") or {}).get("selector") and _meta(service)[1] not in routed:
            yield service, "mesh-retries", "no in-mesh VirtualService names it: calls to it get Istio's " \
                "default route, which retries twice", "metadata.name"


def rule_network_policies(render):
    """NetworkPolicies select workloads of the render, let in peers of the
    render, on ports those workloads have."""
    for policy in render.kind("NetworkPolicy"):
        spec = policy.get("spec") or {}
        selector = _match_labels(spec.get("podSelector"))
        workloads = render.selected_workloads(selector) if selector else render.workloads()
        if selector and not workloads:
            yield policy, "netpol-selector", f"podSelector {selector} matches no workload", "spec.podSelector"
            continue
        # Ingress only: egress may go to pods the manifests do not hold
        # (a PostgreSQL in the same namespace).
        for i, rule in enumerate(spec.get("ingress", []) or []):
            for j, peer in enumerate(rule.get("from", []) or []):
                peer_labels = _match_labels(peer.get("podSelector"))
                if peer_labels and "namespaceSelector" not in peer and not render.selected_workloads(peer_labels):
                    yield policy, "netpol-selector", f"podSelector {peer_labels} matches no workload", \
                        f"spec.ingress[{i}].from[{j}].podSelector"
            for j, port in enumerate(rule.get("ports", []) or []):
                number = port.get("port")
                if number is None:
                    continue
                ok = all(
                    any((number in c.port_names()) if isinstance(number, str) else (number in c.port_numbers())
                        for c in render.containers(w))
                    for w in workloads
                )
                if not ok:
                    yield policy, "netpol-port", f"port {number} is not a container port of every selected " \
                        "workload", f"spec.ingress[{i}].ports[{j}].port"


def _scraped(render):
    """(monitor, field, endpoint, workload, container port number) of every
    port a ServiceMonitor or PodMonitor scrapes."""
    for monitor in render.kind("ServiceMonitor"):
        spec = monitor.get("spec") or {}
        selector = spec.get("selector")
        services = [s for s in render.kind("Service") if _selects(selector, (s.get("metadata") or {}).get("labels") or {})]
        for i, endpoint in enumerate(spec.get("endpoints", []) or []):
            for service in services:
                for port in _service_ports(service):
                    if port.get("name") != endpoint.get("port"):
                        continue
                    found = _target_container_port(render, service, port.get("port"))
                    if found:
                        number = found[1] if isinstance(found[1], int) else found[0].port_names().get(found[1])
                        yield monitor, f"spec.endpoints[{i}]", endpoint, found[0].workload, number
    for monitor in render.kind("PodMonitor"):
        spec = monitor.get("spec") or {}
        for workload in (w for w in render.workloads() if _selects(spec.get("selector"), _pod_labels(w))):
            for i, endpoint in enumerate(spec.get("podMetricsEndpoints", []) or []):
                for container in render.containers(workload):
                    number = container.port_names().get(endpoint.get("port"))
                    if number is not None:
                        yield monitor, f"spec.podMetricsEndpoints[{i}]", endpoint, workload, number


def rule_scrape_mtls(render):
    """Prometheus (outside the mesh) can scrape what the monitors name: the
    PeerAuthentication in force for the scraped pod leaves the port
    PERMISSIVE, unless the endpoint scrapes over TLS with the mesh's
    certificates. As in Istio, a policy selecting the workload overrides the
    namespace-wide one (no selector)."""
    policies = []
    for policy in render.kind("PeerAuthentication"):
        spec = policy.get("spec") or {}
        mode = (spec.get("mtls") or {}).get("mode")
        selector = _match_labels(spec.get("selector"))
        levels = {str(k): (v or {}).get("mode") for k, v in (spec.get("portLevelMtls") or {}).items()}
        policies.append((policy, selector, mode, levels))
    if not policies:
        return
    for monitor, field, endpoint, workload, number in _scraped(render):
        if endpoint.get("scheme") == "https" or endpoint.get("tlsConfig"):
            continue
        labels = _pod_labels(workload)
        specific = [p for p in policies if p[1] and _labels_match(p[1], labels)]
        in_force = specific or [p for p in policies if not p[1]]
        for policy, _selector, mode, levels in in_force:
            port_mode = levels.get(str(number), mode)
            if port_mode == "STRICT":
                yield monitor, "scrape-mtls", f"scrapes port {number} of {_meta(workload)[1]}, which " \
                    f"PeerAuthentication {_meta(policy)[1]} keeps STRICT: Prometheus outside the mesh " \
                    "is refused", f"{field}.port"


RULES = (
    rule_scrape_mtls,
    rule_network_policies,
    rule_peer_urls,
    rule_advertised_peers,
    rule_services,
    rule_probes,
    rule_probe_protocols,
    rule_listen_addresses,
    rule_monitors,
    rule_authorization,
    rule_references,
    rule_filesystem,
    rule_images,
    rule_shutdown,
    rule_replicas,
    rule_pdb,
    rule_provider_keys,
    rule_istio_routes,
    rule_outlier_detection,
    rule_mesh_retries,
)


def check_render(render):
    """Every rule's failures for one render. A rule that trips over a shape
    it did not expect (schema validation reports the shape) is a failure of
    its own, not the end of the run."""
    failures = []
    for rule in RULES:
        try:
            found = list(rule(render))
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as error:
            failures.append(Failure(render.name, "Rule", rule.__name__, "internal",
                                    f"could not check this render: {type(error).__name__}: {error}", rule.__name__))
            continue
        for obj, rule_id, what, field in found:
            if rule_id in OVERLAY_ONLY and not render.is_overlay:
                continue
            kind, name = _meta(obj)
            failures.append(Failure(render.name, kind, name, rule_id, what, field))
    return failures


# -------------------------------------------------------------------- calls


def run_calls():
    """Failures of the generators' own checks, and the last lines each
    failing one printed; a missing script is skipped (with a note), so the
    check runs before each of them exists."""
    failures, details = [], []
    for script, args in CALLS:
        path = ROOT / script
        if not path.is_file():
            print(f"note: {script} is not in the tree: skipped")
            continue
        result = subprocess.run([sys.executable, str(path), *args], cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            last = output[-1] if output else "no output"
            failures.append(Failure("calls", "Script", script, "call", f"exited {result.returncode}: {last}",
                                    " ".join([script, *args])))
            details.append((script, output[-20:]))
    return failures, details


# --------------------------------------------------------------------- main


def _n(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def _report(failures):
    """Prints each distinct failure once; returns how many there were."""
    seen = {}
    for failure in failures:
        seen.setdefault(failure.key(), []).append(failure)
    for group in seen.values():
        print(group[0].line(others=len({f.render for f in group}) - 1))
    return len(seen)


def layout_failures():
    """istio/ holding manifests that no render includes."""
    istio = ROOT / "istio"
    kustomization = _kustomization(istio) if istio.is_dir() else None
    if istio.is_dir() and any(istio.glob("*.yaml")) and (kustomization or {}).get("kind") != "Component":
        return [Failure("layout", "Directory", "istio", "layout", "istio/ holds manifests but is not a kustomize "
                        "Component: no render includes them", "istio/kustomization.yaml kind")]
    return []


def check():
    plan = render_plan()
    renders, failures = render_all(plan)
    failures.extend(layout_failures())
    schemas = Schemas()
    objects = 0
    for name, directory, is_overlay in plan:
        if name not in renders:
            continue
        for obj in renders[name]:
            objects += 1
            kind, obj_name = _meta(obj)
            for rule, what, field in schemas.check(obj):
                failures.append(Failure(name, kind, obj_name, rule, what, field))
        failures.extend(check_render(Render(name, renders[name], is_overlay)))
    call_failures, details = run_calls()
    failures.extend(call_failures)
    distinct = _report(failures)
    for script, lines in details:
        print(f"{script} said:")
        for line in lines:
            print(f"  | {line}")
    overlays = sum(1 for _, _, o in plan if o)
    affected = len({f.render for f in failures} & {n for n, _, _ in plan})
    calls = sum(1 for script, _ in CALLS if (ROOT / script).is_file())
    print(f"deploy-check: {_n(len(plan), 'render')} ({_n(overlays, 'overlay')}, "
          f"{_n(len(plan) - overlays, 'component combination')}), {_n(objects, 'object')} "
          f"({len(schemas._results)} distinct) against Kubernetes {' and '.join(K8S_VERSIONS)} and "
          f"{_n(len(schemas._crds), 'CRD schema')}, {_n(len(RULES), 'rule set')}, {_n(calls, 'generator check')}: "
          f"{_n(distinct, 'failure')}"
          f"{f' ({affected} of {len(plan)} renders affected)' if affected else ''}")
    return 1 if failures else 0


# ---------------------------------------------------------------- self-test
#
# Each mutation breaks one thing in a copy of a rendered overlay and names
# the rule that must catch it. It applies to the first overlay it can; the
# rule must report a failure the unbroken render does not have.


def _workload_of(objects, service):
    for obj in objects:
        if obj.get("kind") == "Deployment":
            for i, c in enumerate(_pod(obj).get("containers", []) or []):
                if Container(obj, c, i).service == service:
                    return obj, c
    return None, None


def _mut_drop_peer(objects, render):
    _, container = _workload_of(objects, "orchestrator")
    env = (container or {}).get("env") or []
    key = "AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL"
    if not any(v.get("name") == key for v in env):
        return False
    container["env"] = [v for v in env if v.get("name") != key]
    return True


def _mut_data_on_emptydir(objects, render):
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for i, spec in enumerate(_pod(obj).get("containers", []) or []):
            container = Container(obj, spec, i)
            for _, path, kind, _ in writable_paths(render, container):
                mount = _mount_for(container, path) if kind == "data" else None
                volumes = _pod(obj).get("volumes", []) or []
                volume = next((v for v in volumes if mount and v.get("name") == mount.get("name")), None)
                if volume is not None and "emptyDir" not in volume:
                    volume.clear()
                    volume.update({"name": mount.get("name"), "emptyDir": {"sizeLimit": "1Gi"}})
                    return True
    return False


def _mut_latest(objects, render):
    workload, container = _workload_of(objects, "audit")
    if container is None:
        return False
    container["image"] = container.get("image", "agentmesh").split("@")[0].rsplit(":", 1)[0] + ":latest"
    return True


def _mut_unmount_spool(objects, render):
    workload, spec = _workload_of(objects, "llm-gateway")
    if spec is None:
        return False
    container = Container(workload, spec, 0)
    for what, path, _, _ in writable_paths(render, container):
        mount = _mount_for(container, path)
        if what == "audit spool" and mount is not None:
            spec["volumeMounts"] = [m for m in spec.get("volumeMounts", []) if m is not mount]
            return True
    return False


def _mut_break_selector(objects, render):
    for obj in objects:
        if obj.get("kind") == "Service" and (obj.get("spec") or {}).get("selector"):
            obj["spec"]["selector"] = {k: v + "-typo" for k, v in obj["spec"]["selector"].items()}
            return True
    return False


def _mut_drop_pdb(objects, render):
    for i, obj in enumerate(objects):
        if obj.get("kind") == "PodDisruptionBudget":
            del objects[i]
            return True
    return False


def _mut_bogus_principal(objects, render):
    for obj in objects:
        if obj.get("kind") != "AuthorizationPolicy":
            continue
        for rule in (obj.get("spec") or {}).get("rules", []) or []:
            for source in rule.get("from", []) or []:
                principals = (source.get("source") or {}).get("principals")
                if principals:
                    principals.append(f"cluster.local/ns/{render.namespace or 'default'}/sa/no-such-account")
                    return True
    return False


def _mut_alerting_sqlite(objects, render):
    workload, container = _workload_of(objects, "alerting")
    if workload is None:
        return False
    workload["spec"]["replicas"] = 2
    key = "AGENTMESH_ALERTING__STORAGE__URL"
    container["env"] = [v for v in container.get("env", []) or [] if v.get("name") != key]
    container["env"].append({"name": key, "value": "sqlite:///var/lib/agentmesh/alerting.db"})
    return True


def _mut_short_sidecar_drain(objects, render):
    if not render.istio:
        return False
    workload, _ = _workload_of(objects, "orchestrator")
    if workload is None:
        return False
    metadata = workload["spec"]["template"].setdefault("metadata", {})
    annotations = metadata.setdefault("annotations", {}) or {}
    metadata["annotations"] = annotations
    annotations.pop("sidecar.istio.io/nativeSidecar", None)
    annotations["proxy.istio.io/config"] = "terminationDrainDuration: 1s\n"
    return True


def _mut_drop_provider_key(objects, render):
    _, container = _workload_of(objects, "llm-gateway")
    env = (container or {}).get("env") or []
    if not any(v.get("name") == "OPENAI_API_KEY" for v in env):
        return False
    container["env"] = [v for v in env if v.get("name") != "OPENAI_API_KEY"]
    container.pop("envFrom", None)
    return True


def _first(objects, kind, name=None):
    for obj in objects:
        if obj.get("kind") == kind and (name is None or (obj.get("metadata") or {}).get("name") == name):
            return obj
    return None


def _mut_strict_admin_port(objects, render):
    changed = False
    for obj in objects:
        if obj.get("kind") == "PeerAuthentication" and (obj.get("spec") or {}).pop("portLevelMtls", None):
            changed = True
    return changed


def _mut_h2_admin_port(objects, render):
    rule = _first(objects, "DestinationRule", "llm-gateway")
    if rule is None:
        return False
    policy = rule["spec"].setdefault("trafficPolicy", {})
    policy.setdefault("connectionPool", {}).setdefault("http", {})["h2UpgradePolicy"] = "UPGRADE"
    policy.pop("portLevelSettings", None)
    return True


def _mut_route_without_port(objects, render):
    vs = _first(objects, "VirtualService", "llm-gateway")
    if vs is None:
        return False
    for route in vs["spec"].get("http", []):
        route.pop("match", None)
    return True


def _mut_eject_on_5xx(objects, render):
    rule = _first(objects, "DestinationRule", "llm-gateway")
    if rule is None:
        return False
    for level in rule["spec"].get("trafficPolicy", {}).get("portLevelSettings", []):
        if "outlierDetection" in level:
            level["outlierDetection"] = {"consecutive5xxErrors": 5, "interval": "10s"}
            return True
    return False


def _mut_default_retries(objects, render):
    vs = _first(objects, "VirtualService", "orchestrator")
    if vs is None:
        return False
    for route in vs["spec"].get("http", []):
        route.pop("retries", None)
    return True


def _peers_service(objects, render):
    """The index of the orchestrator's headless Service, when the render
    keeps the orchestrator on PostgreSQL (the only case it is dialled)."""
    workload, spec = _workload_of(objects, "orchestrator")
    if workload is None or not _storage_is_postgres(render, Container(workload, spec, 0)):
        return None
    for i, obj in enumerate(objects):
        spec = obj.get("spec") or {}
        if (obj.get("kind") == "Service" and spec.get("clusterIP") == "None"
                and _labels_match(spec.get("selector") or {}, _pod_labels(workload))):
            return i
    return None


def _mut_drop_peers_service(objects, render):
    i = _peers_service(objects, render)
    if i is None:
        return False
    del objects[i]
    return True


def _mut_declare_peers_grpc(objects, render):
    i = _peers_service(objects, render)
    if i is None:
        return False
    for port in objects[i]["spec"].get("ports", []) or []:
        port["appProtocol"] = "grpc"
    return True


def _mut_drop_peers_route(objects, render):
    for i, obj in enumerate(objects):
        if obj.get("kind") == "VirtualService" and (obj.get("metadata") or {}).get("name", "").endswith("-peers"):
            del objects[i]
            return True
    return False


def _mut_scrape_peers(objects, render):
    for obj in objects:
        if obj.get("kind") == "ServiceMonitor" and (obj.get("spec") or {}).get("selector", {}).pop(
                "matchExpressions", None):
            return True
    return False


def _mut_edge_grpc_probe(objects, render):
    _, container = _workload_of(objects, "edge")
    if container is None or "readinessProbe" not in container:
        return False
    container["readinessProbe"] = {"grpc": {"port": 9080, "service": ""}, "periodSeconds": 5}
    return True


def _mut_edge_liveness_on_readyz(objects, render):
    _, container = _workload_of(objects, "edge")
    if container is None or "httpGet" not in (container.get("livenessProbe") or {}):
        return False
    container["livenessProbe"]["httpGet"]["path"] = "/readyz"
    return True


def _mut_edge_loopback(objects, render):
    _, container = _workload_of(objects, "edge")
    key = "AGENTMESH_EDGE__SERVER__HOST"
    env = (container or {}).get("env") or []
    if not any(v.get("name") == key for v in env):
        return False
    container["env"] = [v for v in env if v.get("name") not in (key, "AGENTMESH_EDGE__SERVER__ADMIN_HOST")]
    return True


def _mut_edge_credential(objects, render):
    workload, container = _workload_of(objects, "edge")
    if container is None:
        return False
    _pod(workload).setdefault("volumes", []).append(
        {"name": "credential", "secret": {"secretName": "agentmesh-edge-credential"}})
    container.setdefault("volumeMounts", []).append(
        {"name": "credential", "mountPath": "/etc/agentmesh/credential", "readOnly": True})
    return True


def _mut_edge_drop_orchestrator(objects, render):
    _, container = _workload_of(objects, "edge")
    key = "AGENTMESH_EDGE__ORCHESTRATOR_URL"
    env = (container or {}).get("env") or []
    if not any(v.get("name") == key for v in env):
        return False
    container["env"] = [v for v in env if v.get("name") != key]
    return True


MUTATIONS = (
    ("drop a peer URL env", "peer-env", _mut_drop_peer),
    ("put stored data on an emptyDir", "emptydir-data", _mut_data_on_emptydir),
    ("use a :latest image", "image-latest", _mut_latest),
    ("unmount the audit spool", "writable-path", _mut_unmount_spool),
    ("break a Service selector", "service-selector", _mut_break_selector),
    ("drop a PodDisruptionBudget", "pdb", _mut_drop_pdb),
    ("add a bogus principal", "principal", _mut_bogus_principal),
    ("run alerting x2 on SQLite", "alerting-leader", _mut_alerting_sqlite),
    ("drain the sidecar before the app", "sidecar-drain", _mut_short_sidecar_drain),
    ("drop a provider key", "provider-keys", _mut_drop_provider_key),
    ("keep the admin port STRICT", "scrape-mtls", _mut_strict_admin_port),
    ("upgrade the admin port to HTTP/2", "h2-upgrade", _mut_h2_admin_port),
    ("route without a port match", "route-port-match", _mut_route_without_port),
    ("eject gateways on 503", "outlier-provider", _mut_eject_on_5xx),
    ("leave Istio's default retries", "mesh-retries", _mut_default_retries),
    ("drop a headless peers Service", "advertised-peer", _mut_drop_peers_service),
    ("declare the peers port gRPC", "advertised-peer", _mut_declare_peers_grpc),
    ("drop a peers VirtualService", "mesh-retries", _mut_drop_peers_route),
    ("scrape the peers Services", "monitor-port", _mut_scrape_peers),
    ("probe the edge over gRPC", "probe-protocol", _mut_edge_grpc_probe),
    ("probe the edge's liveness on /readyz", "probe-protocol", _mut_edge_liveness_on_readyz),
    ("leave the edge on loopback", "listen-address", _mut_edge_loopback),
    ("give the edge a credential Secret", "secret-ref", _mut_edge_credential),
    ("drop the edge's orchestrator URL", "peer-env", _mut_edge_drop_orchestrator),
)


def self_test():
    plan = [p for p in render_plan() if p[2]]
    renders, failures = render_all(plan)
    for failure in failures:
        print(failure.line())
    overlays = [(name, renders[name]) for name, _, _ in plan if name in renders]
    missed = 0
    for description, rule, mutate in MUTATIONS:
        outcome = None
        for name, objects in overlays:
            render = Render(name, objects, True)
            before = {f.key() for f in check_render(render)}
            broken = copy.deepcopy(objects)
            if not mutate(broken, render):
                continue
            after = check_render(Render(name, broken, True))
            new = [f for f in after if f.key() not in before and f.rule == rule]
            outcome = (name, new)
            break
        if outcome is None:
            missed += 1
            print(f"FAIL self-test: {description}: applies to no overlay (none has what it breaks)")
        elif not outcome[1]:
            missed += 1
            print(f"FAIL self-test: {description}: {rule} did not catch it in {outcome[0]}")
        else:
            print(f"ok   self-test: {description}: caught in {outcome[0]}: {outcome[1][0].line()}")
    total = len(MUTATIONS)
    print(f"deploy-check self-test: {total - missed} of {total} breaks caught"
          f"{'' if not failures else f', {len(failures)} renders failed'}")
    return 1 if missed or failures or not overlays else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true",
                        help="break a rendered overlay in each way the rules must catch, and see them caught")
    args = parser.parse_args()
    if shutil.which("kubectl") is None:
        print("FAIL setup: kubectl is not installed (tools/install-test-deps deploy)")
        return 1
    return self_test() if args.self_test else check()


if __name__ == "__main__":
    sys.exit(main())
