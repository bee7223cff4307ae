"""The Kubernetes and Istio manifests agree with the services they deploy:
ports, probes, protocol names, and environment variables that the real
binaries accept as settings."""

import subprocess

import yaml

from conftest import BIN_DIR, ROOT, SERVICES

PORTS = {name: 50051 + i for i, (name, _) in enumerate(SERVICES)}


def _documents(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _base():
    kustomization = yaml.safe_load((ROOT / "k8s/base/kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(_documents(ROOT / "k8s/base" / resource))
    return docs


def test_each_service_has_a_deployment_and_a_grpc_service():
    docs = _base()
    for name, _ in SERVICES:
        port = PORTS[name]
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": port, "http-admin": port + 1000}, name
        # Readiness follows the dependencies (""); liveness never does.
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": ""}
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
        # A dependency down at start keeps the pod unready, never restarts it.
        assert container["startupProbe"]["grpc"] == {"port": port, "service": "liveness"}
        env = {e["name"]: e.get("value") for e in container["env"]}
        section = name.replace("-", "_").upper()
        grace = int(env[f"AGENTMESH_{section}__SERVER__GRACE_PERIOD"].rstrip("s"))
        drain = int(env[f"AGENTMESH_{section}__SERVER__DRAIN_DELAY"].rstrip("s"))
        assert pod["terminationGracePeriodSeconds"] > grace + drain, name

        service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name)
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == port and grpc_port["appProtocol"] == "grpc"


def test_the_manifests_environment_is_accepted_by_the_binaries():
    for doc in _base():
        if doc["kind"] != "Deployment":
            continue
        name = doc["metadata"]["name"]
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        result = subprocess.run(
            [str(BIN_DIR / f"agentmesh-{name}"), "--dump-config"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "grace_period = \"25s\"" in result.stdout, result.stdout


def test_istio_policy_covers_every_service():
    peers = _documents(ROOT / "istio/peer-authentication.yaml")
    assert {d["spec"]["mtls"]["mode"] for d in peers} == {"STRICT"}
    docs = _documents(ROOT / "istio/traffic.yaml")
    hosts = {d["spec"]["host"] for d in docs if d["kind"] == "DestinationRule"}
    assert hosts == set(PORTS)
    for vs in (d for d in docs if d["kind"] == "VirtualService"):
        # Each port routed to itself: the admin port never reaches gRPC.
        for route in vs["spec"]["http"]:
            port = route["match"][0]["port"]
            assert route["route"][0]["destination"]["port"]["number"] == port
        grpc = vs["spec"]["http"][0]["match"][0]["port"]
        assert grpc == PORTS[vs["metadata"]["name"]]


def _env(container):
    return {e["name"]: e.get("value") for e in container["env"]}


def test_listening_beyond_loopback_comes_with_api_keys_from_mounted_secrets():
    for doc in _base():
        if doc["kind"] != "Deployment":
            continue
        name = doc["metadata"]["name"]
        section = name.replace("-", "_").upper()
        pod = doc["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = _env(container)
        prefix = f"AGENTMESH_{section}__"
        assert env[prefix + "SERVER__HOST"] == "0.0.0.0", name
        assert env[prefix + "AUTH__METHODS"] == '["api_key"]', name
        assert "none" not in env[prefix + "AUTH__METHODS"]
        assert prefix + "AUTH__ALLOW_NONE_OFF_LOOPBACK" not in env, name
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        files = [env[prefix + "AUTH__KEYS_FILE"]]
        if name != "audit":  # the audit service calls no peer
            files.append(env[prefix + "AUTH__CREDENTIAL_FILE"])
        for path in files:
            directory, _ = path.rsplit("/", 1)
            mount = mounts[directory]  # the directory, never a subPath
            assert mount.get("readOnly") and "subPath" not in mount, (name, path)
            assert "secret" in volumes[mount["name"]], (name, path)
        keys = volumes[mounts["/etc/agentmesh/keys"]["name"]]["secret"]["secretName"]
        assert keys == "agentmesh-keys", name


def test_the_binaries_refuse_the_manifests_address_without_auth():
    # The check behind the pairing: drop the auth settings and the address
    # alone is refused at start.
    for doc in _base():
        if doc["kind"] != "Deployment":
            continue
        name = doc["metadata"]["name"]
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {k: v for k, v in _env(container).items() if v is not None and "__AUTH__" not in k}
        result = subprocess.run(
            [str(BIN_DIR / f"agentmesh-{name}"), "--dump-config"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0, f"{name} started on 0.0.0.0 with no auth"
        assert "allow_none_off_loopback" in result.stderr, result.stderr
