"""The Kubernetes manifests agree with the services they deploy.

Each overlay (k8s/overlays/dev, k8s/overlays/prod) and the base are rendered
with `kubectl kustomize`; the rendered objects are checked for ports, probes,
protocol names, drain timing, availability objects and image pinning, and
each Deployment's environment is handed to the real binary (`--dump-config`),
whose *effective* configuration must then name peers that are Services of the
render and write only under the container's writable volumes."""

import hashlib
import itertools
import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import BIN_DIR, ROOT, SERVICES

PORTS = {name: 50051 + i for i, (name, _) in enumerate(SERVICES)}
NAMES = list(PORTS)
# The HTTP edge: HTTP on 8080, admin on 9080, no gRPC health, no credential.
EDGE = "edge"
EDGE_PORTS = {"http": 8080, "http-admin": 9080}
# Every Deployment of the base.
ALL = NAMES + [EDGE]
# Services that keep data: PostgreSQL in the base, a claim in sqlite-single.
STATEFUL = {"orchestrator", "llm-gateway", "audit", "alerting"}
# The gateway opens its database on first use (budgets): its URL is optional.
STORAGE_REQUIRED = {"orchestrator", "audit", "alerting"}
SCRATCH_VOLUMES = {"spool", "workspaces"}
COMPONENTS = ["sqlite-single", "secrets-example", "network-policies", "monitoring"]
EXAMPLE = ROOT / "k8s/components/secrets-example"


def _kubectl():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations)")
    return kubectl


def _render(path):
    result = subprocess.run(
        [_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{path}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _documents(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


_RENDERS = {}


def _rendered(name):
    """The rendered objects of `base`, `dev` or `prod` (once per session)."""
    if name not in _RENDERS:
        path = ROOT / ("k8s/base" if name == "base" else f"k8s/overlays/{name}")
        _RENDERS[name] = _render(path)
    return _RENDERS[name]


def _of(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _section(name):
    return name.replace("-", "_").upper()


def _container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _env(container):
    return {e["name"]: e.get("value") for e in container["env"]}


def _env_refs(container):
    """env name -> (kind, object name, key, optional) of every valueFrom."""
    refs = {}
    for e in container["env"]:
        for kind in ("secretKeyRef", "configMapKeyRef"):
            ref = e.get("valueFrom", {}).get(kind)
            if ref:
                refs[e["name"]] = (kind, ref["name"], ref["key"], ref.get("optional", False))
    return refs


def _dump_config(name, env):
    result = subprocess.run(
        [str(BIN_DIR / f"agentmesh-{name}"), "--dump-config"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"{name}: {result.stderr}"
    return tomllib.loads(result.stdout)


def _effective(deployment, extra=None):
    """The binary's effective configuration under the container's literal env."""
    name = deployment["metadata"]["name"]
    env = {k: v for k, v in _env(_container(deployment)).items() if v is not None}
    return _dump_config(name, {**env, **(extra or {})})


def _seconds(text):
    match = re.fullmatch(r"(\d+)s", text)
    assert match, f"{text!r} is not a whole number of seconds"
    return int(match.group(1))


def test_every_overlay_and_every_combination_of_components_renders(tmp_path):
    _kubectl()
    for overlay in ("dev", "prod"):
        assert _rendered(overlay)
    # Every combination of the components on the base (istio included);
    # kustomize takes relative paths only.
    work = tmp_path

    def rel(path):
        return os.path.relpath(ROOT / path, work)

    paths = [rel(f"k8s/components/{c}") for c in COMPONENTS] + [rel("istio")]
    for n in range(len(paths) + 1):
        for combo in itertools.combinations(paths, n):
            (work / "kustomization.yaml").write_text(
                yaml.safe_dump({"resources": [rel("k8s/base")], "components": list(combo)})
            )
            docs = _render(work)
            assert sorted(_of(docs, "Deployment")) == sorted(ALL), combo


def test_each_service_has_a_deployment_and_a_grpc_service():
    docs = _rendered("base")
    deployments, services = _of(docs, "Deployment"), _of(docs, "Service")
    for name in NAMES:
        port = PORTS[name]
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["name"] == name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": port, "http-admin": port + 1000}, name
        # Readiness follows the dependencies (""); liveness never does.
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": ""}
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
        # A dependency down at start keeps the pod unready, never restarts it.
        assert container["startupProbe"]["grpc"] == {"port": port, "service": "liveness"}
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["securityContext"]["runAsNonRoot"] is True
        grpc_port = next(p for p in services[name]["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == port and grpc_port["appProtocol"] == "grpc"
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}


def test_the_edge_is_an_http_service_without_credentials():
    docs = _rendered("base")
    deployment, service = _of(docs, "Deployment")[EDGE], _of(docs, "Service")[EDGE]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == EDGE and container["command"] == ["/usr/local/bin/agentmesh-edge"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == EDGE_PORTS
    # No gRPC health: HTTP probes on the admin port; liveness and start-up
    # never follow the dependencies.
    assert container["readinessProbe"]["httpGet"] == {"port": "http-admin", "path": "/readyz"}
    assert container["livenessProbe"]["httpGet"] == {"port": "http-admin", "path": "/livez"}
    assert container["startupProbe"]["httpGet"] == {"port": "http-admin", "path": "/livez"}
    # HTTP for Istio's protocol selection (HTTP/1.1, WebSocket upgrades).
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8080 and ports["http"]["appProtocol"] == "http"
    assert ports["http-admin"]["port"] == 9080
    # Hardened like the others; no keys, no credential, no file written:
    # one read-only Secret, the console's session key.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["volumes"] == [
        {"name": "console-session-key", "secret": {"secretName": "agentmesh-edge-session-key", "defaultMode": 0o440}}
    ]
    assert container["volumeMounts"] == [
        {"name": "console-session-key", "mountPath": "/etc/agentmesh/console", "readOnly": True}
    ]
    assert not _env_refs(container)
    # The binary takes the manifest's settings: every address, its peers by
    # their Services, auth left to the services behind it.
    config = _effective(deployment)
    assert config["server"]["host"] == "0.0.0.0" and config["server"]["port"] == 8080
    # No auth settings at all: the edge checks no caller itself, so it may
    # listen off loopback without them.
    assert config["auth"]["methods"] == ["none"] and config["auth"]["allow_none_off_loopback"] is False
    assert "credential_file" not in config["auth"] and "keys_file" not in config["auth"]
    assert config["orchestrator_url"] == "http://orchestrator:50051"
    assert config["llm_gateway_url"] == "http://llm-gateway:50052"
    assert config["tool_runner_url"] == "http://tool-runner:50053"
    assert config["audit_url"] == "http://audit:50054"
    assert config["alerting_url"] == "http://alerting:50055"
    assert config["console"]["session_key_file"] == "/etc/agentmesh/console/key"


def test_the_drain_fits_the_termination_grace_period_and_the_sidecar_drains_longer():
    for name, deployment in _of(_rendered("base"), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        config = _effective(deployment)
        server = config["server"]
        app_drain = _seconds(server["drain_delay"]) + _seconds(server["grace_period"])
        assert app_drain > 0 and _seconds(server["drain_delay"]) > 0, name
        # The audit producer flushes after the drain, within its timeout.
        flush = _seconds(config["audit"]["shutdown_timeout"]) if "audit" in config else 0
        proxy = yaml.safe_load(deployment["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
        assert proxy["holdApplicationUntilProxyStarts"] is True, name
        sidecar = _seconds(proxy["terminationDrainDuration"])
        # The sidecar passes traffic for as long as the app drains and flushes…
        assert sidecar >= app_drain + flush, name
        # …and the kubelet waits for both before SIGKILL.
        assert pod["terminationGracePeriodSeconds"] > max(sidecar, app_drain + flush), name


def test_the_manifests_environment_is_accepted_by_the_binaries():
    for overlay in ("base", "dev", "prod"):
        for deployment in _of(_rendered(overlay), "Deployment").values():
            assert _effective(deployment)["server"]["grace_period"] == "25s"


def test_peers_are_services_of_the_render():
    docs = _rendered("prod")
    services = _of(docs, "Service")
    expected = {
        "orchestrator": {"llm_gateway_url": "llm-gateway", "tool_runner_url": "tool-runner"},
        "alerting": {"source.url": "audit"},
        EDGE: {"orchestrator_url": "orchestrator", "llm_gateway_url": "llm-gateway", "tool_runner_url": "tool-runner"},
    }
    for name, deployment in _of(docs, "Deployment").items():
        config = _effective(deployment)
        urls = {key: config[key] for key in ("orchestrator_url", "llm_gateway_url", "tool_runner_url") if key in config}
        if "audit" in config:
            urls["audit.url"] = config["audit"]["url"]
        if "source" in config:
            urls["source.url"] = config["source"]["url"]
        if name not in ("audit", EDGE):  # the edge records nothing itself
            assert "audit.url" in urls, f"{name} records no audit events"
        for key, url in urls.items():
            match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
            assert match, f"{name} {key} = {url!r} is not a Service address"
            host, port = match.group(1), int(match.group(2))
            assert host in services, f"{name} {key}: no Service {host}"
            assert port in {p["port"] for p in services[host]["spec"]["ports"] if p["name"] == "grpc"}, (name, key)
            if key == "audit.url":
                assert host == "audit", name
        for key, host in expected.get(name, {}).items():
            assert urls[key].startswith(f"http://{host}:"), (name, key, urls[key])


# The replicas that dial each other at their pods' own addresses: the env
# key of the advertised address, its key in the effective configuration, and
# the headless Service that makes it routable under Istio.
ADVERTISED = {
    "orchestrator": ("AGENTMESH_ORCHESTRATOR__ADVERTISE_URL", ("advertise_url",), "orchestrator-peers"),
    "alerting": ("AGENTMESH_ALERTING__LEADER__ADVERTISE_URL", ("leader", "advertise_url"), "alerting-peers"),
}
# Port name prefixes by which a Service declares its protocol to Istio.
ISTIO_PROTOCOLS = ("grpc-web", "http2", "https", "http", "tcp", "tls", "grpc", "mongo", "mysql", "redis", "udp")


def _selects(selector, labels):
    """matchLabels and the NotIn expressions the ServiceMonitor uses."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "NotIn", expression
        if labels.get(expression["key"]) in expression["values"]:
            return False
    return True


def test_replicas_reach_each_other_through_headless_services():
    for overlay in ("base", "dev", "prod"):
        docs = _rendered(overlay)
        deployments, services = _of(docs, "Deployment"), _of(docs, "Service")
        for name, (key, config_key, peers) in ADVERTISED.items():
            port = PORTS[name]
            container = _container(deployments[name])
            # The pod's own IP, from the Downward API, before it is used.
            names = [e["name"] for e in container["env"]]
            pod_ip = container["env"][names.index("POD_IP")]
            assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", name
            assert names.index("POD_IP") < names.index(key), name
            assert _env(container)[key] == f"http://$(POD_IP):{port}", (overlay, name)
            # The binary takes the address as the kubelet expands it.
            env = {k: v for k, v in _env(container).items() if v is not None}
            env[key] = env[key].replace("$(POD_IP)", "10.0.3.7")
            config = _dump_config(name, env)
            for part in config_key:
                config = config[part]
            assert config == f"http://10.0.3.7:{port}", (overlay, name)

            spec = services[peers]["spec"]
            assert spec["clusterIP"] == "None", (overlay, peers)
            # A draining or unready replica is still called by its peers.
            assert spec["publishNotReadyAddresses"] is True, (overlay, peers)
            # The pods of the service's own Service, and only those.
            assert spec["selector"] == services[name]["spec"]["selector"], (overlay, peers)
            selected = [
                d for d, deployment in deployments.items()
                if all(deployment["spec"]["template"]["metadata"]["labels"].get(k) == v
                       for k, v in spec["selector"].items())
            ]
            assert selected == [name], (overlay, peers, selected)
            # One port: the container's gRPC port under its own number (a
            # headless Service maps none), its protocol left to Istio's
            # detection, so that Istio sets up a listener per pod IP.
            [peer_port] = spec["ports"]
            grpc = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
            assert peer_port["port"] == grpc == port, (overlay, peers)
            assert peer_port["targetPort"] in ("grpc", grpc), (overlay, peers)
            assert "appProtocol" not in peer_port, (overlay, peers)
            assert not any(peer_port["name"] == p or peer_port["name"].startswith(p + "-") for p in ISTIO_PROTOCOLS)
    # Prometheus scrapes each pod once, through the service's own Service:
    # the peers Services have no admin port and are left out.
    prod = _rendered("prod")
    [monitor] = _of(prod, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]
    scraped = [n for n, svc in _of(prod, "Service").items() if _selects(selector, svc["metadata"]["labels"])]
    assert sorted(scraped) == sorted(ALL)
    # Under Istio, no retries by the mesh on these routes either.
    traffic = _documents(ROOT / "istio/traffic.yaml")
    routes = {d["metadata"]["name"]: d for d in traffic if d["kind"] == "VirtualService"}
    for name, (_, _, peers) in ADVERTISED.items():
        [route] = routes[peers]["spec"]["http"]
        assert route["retries"] == {"attempts": 0}, peers
        assert route["route"][0]["destination"] == {"host": peers, "port": {"number": PORTS[name]}}, peers


def test_the_smoke_resolves_headless_services_to_their_pods(tmp_path):
    # tools/deploy/smoke.py maps each Service name to the loopback address of
    # the one pod it selects; a headless Service's name resolves to its pods'
    # addresses in a cluster too, so the peers Services map like the others.
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("deploy_smoke", ROOT / "tools/deploy/smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = smoke  # its dataclasses look their module up
    spec.loader.exec_module(smoke)
    docs = _rendered("dev")
    pods = smoke.plan_pods(docs, 11, tmp_path)
    lines, by_service = smoke.service_hosts(docs, pods)
    for name, (_, _, peers) in ADVERTISED.items():
        assert by_service[peers] is by_service[name], peers
        assert any(names[0] == peers and ip == by_service[name].ip for ip, names in lines), peers


def _writable_mounts(deployment, docs):
    """mountPath -> volume of every writable mount, checked for kind."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = _of(docs, "PersistentVolumeClaim")
    mounts = {}
    for mount in _container(deployment).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if mount.get("readOnly"):
            continue
        if "emptyDir" in volume:
            # Scratch only, bounded: never stored data.
            assert mount["name"] in SCRATCH_VOLUMES, (deployment["metadata"]["name"], mount)
            assert volume["emptyDir"].get("sizeLimit"), (deployment["metadata"]["name"], mount)
        else:
            assert "persistentVolumeClaim" in volume, (deployment["metadata"]["name"], mount)
            assert volume["persistentVolumeClaim"]["claimName"] in claims
        mounts[mount["mountPath"].rstrip("/")] = volume
    return mounts


def _under(path, mounts):
    return any(path == m or path.startswith(m + "/") for m in mounts)


def test_every_path_the_services_write_is_on_a_volume_of_the_right_kind():
    for overlay in ("dev", "prod"):
        docs = _rendered(overlay)
        for name, deployment in _of(docs, "Deployment").items():
            container = _container(deployment)
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            mounts = _writable_mounts(deployment, docs)
            config = _effective(deployment)
            writes = []
            if "audit" in config:
                writes.append(("audit.spool_dir", config["audit"]["spool_dir"]))
            if "workspaces_dir" in config:
                writes.append(("workspaces_dir", config["workspaces_dir"]))
            refs = _env_refs(container)
            url_ref = refs.get(f"AGENTMESH_{_section(name)}__STORAGE__URL")
            if "storage" in config and url_ref is None:
                # SQLite under data_dir: must be a claim, never scratch.
                data_dir = config["storage"]["data_dir"]
                writes.append(("storage.data_dir", data_dir))
                assert _under(data_dir, [m for m, v in mounts.items() if "persistentVolumeClaim" in v]), (
                    overlay,
                    name,
                    data_dir,
                )
            for key, path in writes:
                assert path.startswith("/"), (overlay, name, key, path)
                assert _under(path, mounts), f"{overlay}: {name} writes {key} = {path} on the read-only root"


def test_the_base_keeps_data_in_postgresql_and_sqlite_single_on_claims():
    base = _of(_rendered("base"), "Deployment")
    for name in STATEFUL:
        refs = _env_refs(_container(base[name]))
        kind, secret, key, optional = refs[f"AGENTMESH_{_section(name)}__STORAGE__URL"]
        assert (kind, secret, key) == ("secretKeyRef", "agentmesh-databases", name)
        assert optional == (name not in STORAGE_REQUIRED), name
        assert not any("persistentVolumeClaim" in v for v in base[name]["spec"]["template"]["spec"]["volumes"])
    # The gateway's replicas share their rate limits in its database (the
    # same optional Secret key), expecting as many replicas as it runs.
    gateway = _container(base["llm-gateway"])
    assert _env_refs(gateway)["AGENTMESH_LLM_GATEWAY__SHARED_LIMITS__URL"] == (
        "secretKeyRef",
        "agentmesh-databases",
        "llm-gateway",
        True,
    )
    assert _env(gateway)["AGENTMESH_LLM_GATEWAY__SHARED_LIMITS__EXPECTED_REPLICAS"] == str(
        base["llm-gateway"]["spec"]["replicas"]
    )
    dev_docs = _rendered("dev")
    dev = _of(dev_docs, "Deployment")
    assert not _of(dev_docs, "HorizontalPodAutoscaler"), "an autoscaler would add SQLite writers"
    for name, deployment in dev.items():
        assert deployment["spec"]["replicas"] == 1, name
        assert f"AGENTMESH_{_section(name)}__STORAGE__URL" not in _env_refs(_container(deployment))
        assert not any("__SHARED_LIMITS__" in env for env in _env(_container(deployment))), name
        claims = [v for v in deployment["spec"]["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v]
        assert bool(claims) == (name in STATEFUL), name
        if claims:
            # A ReadWriteOnce claim cannot be attached to two pods at once.
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}, name


def test_the_image_is_pinned_through_the_overlays():
    for name, deployment in _of(_rendered("base"), "Deployment").items():
        assert _container(deployment)["image"] == "agentmesh", name
    for overlay in ("dev", "prod"):
        kustomization = yaml.safe_load((ROOT / f"k8s/overlays/{overlay}/kustomization.yaml").read_text())
        image = next(i for i in kustomization["images"] if i["name"] == "agentmesh")
        assert "/" in image["newName"], "the image names a registry"
        assert image.get("digest") or image["newTag"] not in ("", "latest"), overlay
        for name, deployment in _of(_rendered(overlay), "Deployment").items():
            container = _container(deployment)
            assert container["image"].startswith(image["newName"] + (":" if image.get("newTag") else "@")), name
            assert container["imagePullPolicy"] == "IfNotPresent", name
            assert container["command"] == [f"/usr/local/bin/agentmesh-{name}"], name


def test_provider_keys_come_from_an_optional_secret_under_the_names_the_gateway_reads():
    deployment = _of(_rendered("base"), "Deployment")["llm-gateway"]
    config = _effective(deployment)
    names = {p["api_key_env"] for p in config["providers"].values() if p["api_key_env"]}
    assert names == {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    refs = _env_refs(_container(deployment))
    for name in names:
        assert refs[name] == ("secretKeyRef", "agentmesh-provider-keys", name, True), name


def test_prod_routes_go_to_the_providers_and_only_dev_to_the_scripted_model():
    # A cluster must not answer from the demo model by accident.
    for overlay, scripted in (("prod", False), ("dev", True)):
        deployment = _of(_rendered(overlay), "Deployment")["llm-gateway"]
        routes = _effective(deployment)["routes"]
        for name, route in routes.items():
            targets = [route["target"], *route["fallbacks"]]
            on_scripted = [t for t in targets if t.startswith("scripted/")]
            assert bool(on_scripted) == scripted, f"{overlay}: route {name} -> {targets}"


def test_prod_runs_replicas_with_disruption_budgets_autoscalers_and_spread():
    docs = _rendered("prod")
    deployments = _of(docs, "Deployment")
    budgets = _of(docs, "PodDisruptionBudget")
    autoscalers = _of(docs, "HorizontalPodAutoscaler")
    namespace = _of(docs, "Namespace")["agentmesh"]
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "agentmesh", (d["kind"], d["metadata"]["name"])
    for name, deployment in deployments.items():
        assert deployment["spec"]["replicas"] >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = budgets[name]["spec"]
        assert all(labels.get(k) == v for k, v in budget["selector"]["matchLabels"].items()), name
        # Never blocks a drain, never lets a drain take every pod.
        assert budget.get("maxUnavailable") == 1 or 1 <= budget.get("minAvailable", 0) < deployment["spec"]["replicas"]
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in spread}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread), name
    assert set(autoscalers) == {"orchestrator", "llm-gateway", EDGE}
    for name, hpa in autoscalers.items():
        spec = hpa["spec"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicas"] >= 2
        assert spec["metrics"][0]["resource"]["name"] == "cpu"


def test_every_secret_and_config_map_the_pods_use_exists_or_is_optional():
    for overlay in ("dev", "prod"):
        docs = _rendered(overlay)
        present = {("secretKeyRef", n) for n in _of(docs, "Secret")} | {
            ("configMapKeyRef", n) for n in _of(docs, "ConfigMap")
        }
        secrets = _of(docs, "Secret")
        for name, deployment in _of(docs, "Deployment").items():
            for env, (kind, obj, key, optional) in _env_refs(_container(deployment)).items():
                if overlay == "dev" and not optional:
                    assert (kind, obj) in present, f"dev: {name} {env} needs {kind} {obj}"
            for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in volume and overlay == "dev" and not volume["secret"].get("optional"):
                    assert volume["secret"]["secretName"] in secrets, (name, volume)
        if overlay == "prod":
            # Production Secrets are the operator's, never the published examples.
            assert not secrets, sorted(secrets)


def test_run_callbacks_are_off_until_an_overlay_sets_the_secrets_file():
    # The signing secrets' Secret is mounted, optional; the path is set by
    # an overlay that has the Secret, since a set path whose file is missing
    # stops the orchestrator at start.
    for overlay in ("base", "dev", "prod"):
        deployment = _of(_rendered(overlay), "Deployment")["orchestrator"]
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        assert "AGENTMESH_ORCHESTRATOR__CALLBACKS__SECRETS_FILE" not in _env(container), overlay
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/agentmesh/callbacks")
        assert mount.get("readOnly") and "subPath" not in mount, overlay
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "agentmesh-callback-secrets" and secret["optional"], overlay


def _example_keys():
    return tomllib.loads((EXAMPLE / "keys.toml").read_text())["keys"]


def _entry_of(credential):
    digest = hashlib.sha256(credential.strip().encode()).hexdigest()
    matches = [k for k in _example_keys() if k["sha256"] == digest]
    assert len(matches) == 1, "the credential is not an entry of the example keys file"
    return matches[0]


def test_the_example_secrets_are_a_working_set_of_keys():
    # The keys file parses as the services read it.
    audit = _of(_rendered("base"), "Deployment")["audit"]
    env = {k: v for k, v in _env(_container(audit)).items() if v is not None}
    env["AGENTMESH_AUDIT__AUTH__KEYS_FILE"] = str(EXAMPLE / "keys.toml")
    _dump_config("audit", env)
    scopes = {
        "orchestrator": {"service", "llm:generate", "tools:read", "tools:execute", "audit:write"},
        "llm-gateway": {"service", "audit:write"},
        "tool-runner": {"service", "audit:write"},
        "alerting": {"service", "audit:read", "audit:write"},
    }
    for name, needed in scopes.items():
        entry = _entry_of((EXAMPLE / f"{name}.credential").read_text())
        assert entry["subject"] == name and entry["tenant"] == ""
        assert needed <= set(entry["scopes"]), (name, entry["scopes"])
    client = _entry_of((EXAMPLE / "client.credential").read_text())
    assert client["tenant"], "the client key acts in a tenant"
    # llm:generate: the smoke lists the models through the edge.
    assert {"runs:write", "runs:read", "audit:read", "llm:generate"} <= set(client["scopes"])
    assert "service" not in client["scopes"] and "admin" not in client["scopes"]
    # Every example key says what it is.
    assert all("EXAMPLE ONLY" in k["label"] for k in _example_keys())
    dev = _of(_rendered("dev"), "Secret")
    assert "agentmesh-client-credential" in dev and "credential" in dev["agentmesh-client-credential"]["data"]


def test_istio_policy_covers_every_service():
    peers = _documents(ROOT / "istio/peer-authentication.yaml")
    assert {d["spec"]["mtls"]["mode"] for d in peers} == {"STRICT"}
    docs = _documents(ROOT / "istio/traffic.yaml")
    hosts = {d["spec"]["host"] for d in docs if d["kind"] == "DestinationRule"}
    assert hosts == set(ALL)
    main_ports = {**PORTS, EDGE: EDGE_PORTS["http"]}
    for vs in (d for d in docs if d["kind"] == "VirtualService"):
        # Each port routed to itself: the admin port never reaches gRPC.
        for route in vs["spec"]["http"]:
            port = route["match"][0]["port"]
            assert route["route"][0]["destination"]["port"]["number"] == port
        main = vs["spec"]["http"][0]["match"][0]["port"]
        # The headless peers Services route the same gRPC port.
        assert main == main_ports[vs["metadata"]["name"].removesuffix("-peers")]
    # The edge is HTTP/1.1 (WebSocket upgrades): never upgraded to HTTP/2.
    edge_rule = next(d for d in docs if d["kind"] == "DestinationRule" and d["spec"]["host"] == EDGE)
    assert "h2UpgradePolicy" not in str(edge_rule)
    # Through the ingress: the edge's HTTP paths, no retries (a POST
    # /v1/runs without an idempotency key would start a second run), no
    # route timeout (event streams last as long as the run).
    [ingress] = _documents(ROOT / "istio/ingress-routes.yaml")
    [edge_route] = [r for r in ingress["spec"]["http"] if r["route"][0]["destination"]["host"] == EDGE]
    assert edge_route["route"][0]["destination"]["port"]["number"] == EDGE_PORTS["http"]
    assert edge_route["retries"] == {"attempts": 0} and edge_route["timeout"] == "0s"
    matches = [m["uri"] for m in edge_route["match"]]
    assert {"prefix": "/v1/"} in matches and {"exact": "/openapi.json"} in matches and {"exact": "/mcp"} in matches
    assert ingress["spec"]["http"][-1] is edge_route, "the HTTP routes come after the gRPC ones"


def test_listening_beyond_loopback_comes_with_api_keys_from_mounted_secrets():
    for deployment in _of(_rendered("base"), "Deployment").values():
        name = deployment["metadata"]["name"]
        if name == EDGE:
            continue  # no keys of its own: test_the_edge_is_an_http_service_without_credentials
        prefix = f"AGENTMESH_{_section(name)}__"
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = _env(container)
        assert env[prefix + "SERVER__HOST"] == "0.0.0.0", name
        assert env[prefix + "AUTH__METHODS"] == '["api_key"]', name
        assert prefix + "AUTH__ALLOW_NONE_OFF_LOOPBACK" not in env, name
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        files = [env[prefix + "AUTH__KEYS_FILE"]]
        if name != "audit":  # the audit service calls no peer
            files.append(env[prefix + "AUTH__CREDENTIAL_FILE"])
            secret = volumes[mounts["/etc/agentmesh/credential"]["name"]]["secret"]["secretName"]
            assert secret == f"agentmesh-{name}-credential", name
        for path in files:
            directory, _ = path.rsplit("/", 1)
            mount = mounts[directory]  # the directory, never a subPath
            assert mount.get("readOnly") and "subPath" not in mount, (name, path)
            assert "secret" in volumes[mount["name"]], (name, path)
        keys = volumes[mounts["/etc/agentmesh/keys"]["name"]]["secret"]["secretName"]
        assert keys == "agentmesh-keys", name
        # The JWT issuer settings are optional: no ConfigMap, no variables.
        for env_name, (_, obj, _, optional) in _env_refs(container).items():
            if "__AUTH__JWT__" in env_name:
                assert obj == "agentmesh-jwt" and optional, (name, env_name)


def test_the_binaries_refuse_the_manifests_address_without_auth():
    # The check behind the pairing: drop the auth settings and the address
    # alone is refused at start.
    for deployment in _of(_rendered("base"), "Deployment").values():
        name = deployment["metadata"]["name"]
        if name == "edge":
            continue  # it checks no caller itself: the services behind it do
        env = {k: v for k, v in _env(_container(deployment)).items() if v is not None and "__AUTH__" not in k}
        result = subprocess.run(
            [str(BIN_DIR / f"agentmesh-{name}"), "--dump-config"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0, f"{name} started on 0.0.0.0 with no auth"
        assert "allow_none_off_loopback" in result.stderr, result.stderr
