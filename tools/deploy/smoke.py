#!/usr/bin/env python3
"""Run the rendered Kubernetes manifests on this machine: the closest thing to a
cluster one host without a container engine allows (`make deploy-smoke`).

Flow: `kubectl kustomize DIR` -> optional faults (`--mutate`) -> one "pod" per
Deployment (a process per container) -> every container's startupProbe, then
readinessProbe and livenessProbe, as written -> one run through the
orchestrator Service address -> that run's audit events read back through the
audit Service address -> a `write_file` into that run's workspace through the
tool-runner Service address, with the orchestrator's own credential (the demo
model calls no file tool, and the workspaces must lie on a volume) -> when the
render has the HTTP edge, over HTTP through the `edge` Service address with
the client's key: `GET /v1/models` (the gateway's routes), `POST /v1/runs` and
that run's `GET /v1/runs/{id}/events` Server-Sent Events up to
`run_finished` (the edge holds no key: each call carries the client's,
which the orchestrator and the gateway check). Optionally (`--measure RUNS`) more runs, and each
container's peak RSS and CPU per 100 runs. Needs root (it edits /etc/hosts and
switches users) and the binaries in `--bin-dir`.

How a cluster is emulated, and where the emulation stops:

* Pods and Services. Each Deployment gets ONE pod, whatever `replicas` says
  (the report notes it), with its own loopback address 127.0.0.N (N from
  `--first-ip`, default 11, so nothing collides with 127.0.0.1). Every Service
  name maps to the address of the pod its selector matches: the short name,
  and `<name>.<ns>`, `<name>.<ns>.svc`, `<name>.<ns>.svc.cluster.local` when a
  namespace is set, through /etc/hosts lines written between marker lines and
  removed at exit (also on failure, Ctrl-C and SIGTERM). The runner refuses to
  start while stale markers exist (`--clean-hosts` removes them). There is no
  kube-proxy: a Service whose port differs from its target port is refused.
  A headless Service (`clusterIP: None`, the replicas' orchestrator-peers and
  alerting-peers) maps the same way, as in a cluster its name resolves to
  the addresses of the pods it selects (here the one pod); `status.podIP`
  is the pod's 127.0.0.N, so an address a pod advertises to its replicas
  is its own. Nothing calls a peer here: one pod per Deployment has none.
* Environment. A container gets exactly the env of its manifest (`env` with
  `value`, `$(VAR)` expansion, `valueFrom.secretKeyRef`/`configMapKeyRef`/
  `fieldRef`, and `envFrom`), plus HOSTNAME (the pod name) and PATH (the usual
  image default), as the image's ENV and the kubelet would add. A required
  Secret/ConfigMap or key that is absent fails like the kubelet
  (CreateContainerConfigError); `optional: true` ones are skipped. Service
  link variables (`<SVC>_SERVICE_HOST`, ...) are not added.
  Two rewrites, both needed because all pods share one network and one file
  system here:
    - an env value that is exactly `0.0.0.0` or `::` (a listen-on-all
      address) becomes the pod's address. A pod is then reachable only on
      its own 127.0.0.N, as a pod is only reachable through its pod IP; a
      peer URL left at its default `127.0.0.1` finds nobody, as in a cluster.
    - a path of a volume mount is rewritten to the volume's temporary
      directory: in every env value and argument, an occurrence of a
      `mountPath` at the start of the value, after `=` or after `://` (as in
      `sqlite:///var/lib/...`), followed by `/` or the end of a path
      component.
* Volumes. Every volume is a temporary directory: emptyDir, PVC and ephemeral
  volumes start empty, owned by runAsUser and the fsGroup (setgid), as the
  kubelet does with fsGroup; secret and configMap volumes (and the
  secret/configMap sources of projected ones) hold the rendered object's
  keys (respecting `items`, `mode`, `defaultMode`), owned by root, group
  fsGroup with group read added, as the kubelet's ownership management does.
  A missing required Secret/ConfigMap fails the pod (FailedMount).
* User and file system. Each container runs through `setpriv` as its
  `runAsUser`/`runAsGroup` (container level over pod level; `--default-user`
  when neither says), with fsGroup and supplementalGroups as its groups,
  `--no-new-privs` when `allowPrivilegeEscalation: false`. Its working
  directory is a fresh root-owned directory of mode 0755 it cannot write (the
  image's WORKDIR stands for the read-only root file system), unless
  `workingDir` lies on a volume. With `readOnlyRootFilesystem: true` the
  container also gets a private mount namespace (`unshare --mount`, then this
  script re-entered with `--enter-read-only-root`) in which every file system
  is remounted read-only except its writable volume directories (each bound
  onto itself) and the kernel's ones (/proc, /sys, /dev, /dev/shm), as in a
  pod; read-only mounts and secret/configMap volumes are read-only there too.
  Where mount namespaces are not permitted (or with `--no-mount-namespace`)
  only the working directory is unwritable: absolute paths outside the mounts
  (/tmp, /var/tmp) then stay writable and a service writing there is not
  caught. Resource limits, network policies and Istio are not emulated.
* Probes run against the pod address and the named or numbered port: gRPC
  health with the named `service`, httpGet, tcpSocket and exec (run as the
  container's user with its env). startupProbe must pass within
  initialDelaySeconds + periodSeconds x failureThreshold, then readiness
  until the deadline, then liveness within its failure budget; all capped by
  `--timeout`. A process that exits fails at once, with its last log lines.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HOSTS = Path("/etc/hosts")
BEGIN = "# BEGIN agentmesh deploy-smoke: entries of tools/deploy/smoke.py"
END = "# END agentmesh deploy-smoke"
LISTEN_ANY = {"0.0.0.0", "::"}
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_LINES = 40
MUTANTS = ("no-peer-env", "no-spool-volume", "no-workspaces-volume", "loopback-listen", "no-secret",
           "edge-orchestrator-nowhere")
# Not a fault: the deployment must still come up without them.
BENIGN = ("no-optional-secrets",)
# The audit events one run of the demo objective must leave, by the service
# that records them: each proves that service's audit producer reaches audit.
REQUIRED_EVENTS = {
    "EVENT_TYPE_RUN_STARTED": "orchestrator",
    "EVENT_TYPE_RUN_FINISHED": "orchestrator",
    "EVENT_TYPE_LLM_CALL": "llm-gateway",
    "EVENT_TYPE_TOOL_CALL": "tool-runner",
}


class SmokeFailure(Exception):
    """A check the deployment failed (what a cluster would have shown)."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


class UsageError(Exception):
    """The runner cannot emulate or was misused: neither a pass nor a catch."""


class Interrupted(Exception):
    pass


# --------------------------------------------------------------------------
# Rendering and faults


def render(kdir: Path) -> list[dict]:
    if not kdir.is_dir():
        raise UsageError(f"--kustomize: {kdir} is not a directory")
    done = subprocess.run(["kubectl", "kustomize", str(kdir)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SmokeFailure("render", done.stderr.strip())
    return [o for o in yaml.safe_load_all(done.stdout) if isinstance(o, dict)]


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def pod_spec(dep: dict) -> dict:
    return dep.get("spec", {}).get("template", {}).get("spec", {}) or {}


def all_containers(dep: dict) -> list[dict]:
    spec = pod_spec(dep)
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def required_secret_refs(dep: dict) -> list[str]:
    names = []
    for vol in pod_spec(dep).get("volumes") or []:
        sec = vol.get("secret")
        if sec and not sec.get("optional"):
            names.append(sec.get("secretName", ""))
        for src in (vol.get("projected") or {}).get("sources") or []:
            if "secret" in src and not src["secret"].get("optional"):
                names.append(src["secret"].get("name", ""))
    for c in all_containers(dep):
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                names.append(ref.get("name", ""))
        for ef in c.get("envFrom") or []:
            if "secretRef" in ef and not ef["secretRef"].get("optional"):
                names.append(ef["secretRef"].get("name", ""))
    return names


def optional_secret_refs(dep: dict) -> list[str]:
    names = []
    for vol in pod_spec(dep).get("volumes") or []:
        refs = [vol["secret"]] if "secret" in vol else []
        refs += [src["secret"] for src in (vol.get("projected") or {}).get("sources") or [] if "secret" in src]
        names += [r.get("secretName", r.get("name", "")) for r in refs if r.get("optional")]
    for c in all_containers(dep):
        refs = [(e.get("valueFrom") or {}).get("secretKeyRef") for e in c.get("env") or []]
        refs += [ef.get("secretRef") for ef in c.get("envFrom") or []]
        names += [r.get("name", "") for r in refs if r and r.get("optional")]
    return names


def mutate(objs: list[dict], mutant: str) -> tuple[list[dict], list[str]]:
    """Applies one named fault of the issue to the rendered objects."""
    name, _, arg = mutant.partition("=")
    deps = of_kind(objs, "Deployment")
    services = {s["metadata"]["name"] for s in of_kind(objs, "Service")}
    changed: list[str] = []

    def drop_env(pred, what):
        # Env set in ConfigMaps (envFrom) counts as env too.
        for cm in of_kind(objs, "ConfigMap"):
            data = cm.get("data") or {}
            for key in [k for k, v in data.items() if pred({"name": k, "value": v})]:
                del data[key]
                changed.append(f"ConfigMap {cm['metadata']['name']}: {what} {key}")
        for dep in deps:
            for c in all_containers(dep):
                keep = []
                for e in c.get("env") or []:
                    if pred(e):
                        changed.append(f"{dep['metadata']['name']}/{c['name']}: {what} {e['name']}")
                    else:
                        keep.append(e)
                c["env"] = keep

    if name == "no-peer-env":
        url = re.compile(r"^[a-z][a-z0-9+.-]*://([a-z0-9]([-a-z0-9]*[a-z0-9])?)([.:/]|$)")

        def is_peer(e):
            m = url.match(str(e.get("value", "")))
            return bool(m and m.group(1) in services)

        drop_env(is_peer, "dropped peer URL")
    elif name == "no-spool-volume":
        drop_env(lambda e: e["name"].upper().endswith("SPOOL_DIR"), "dropped")
        for dep in deps:
            spec = pod_spec(dep)
            gone = {v["name"] for v in spec.get("volumes") or [] if "spool" in v["name"]}
            if gone:
                spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in gone]
                for c in all_containers(dep):
                    c["volumeMounts"] = [m for m in c.get("volumeMounts") or [] if m["name"] not in gone]
                changed.append(f"{dep['metadata']['name']}: dropped volumes {sorted(gone)}")
    elif name == "no-workspaces-volume":
        drop_env(lambda e: e["name"].upper().endswith("WORKSPACES_DIR"), "dropped")
        for dep in deps:
            spec = pod_spec(dep)
            gone = {v["name"] for v in spec.get("volumes") or [] if "workspace" in v["name"]}
            if gone:
                spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in gone]
                for c in all_containers(dep):
                    c["volumeMounts"] = [m for m in c.get("volumeMounts") or [] if m["name"] not in gone]
                changed.append(f"{dep['metadata']['name']}: dropped volumes {sorted(gone)}")
    elif name == "loopback-listen":
        drop_env(lambda e: str(e.get("value", "")) in LISTEN_ANY, "dropped listen address")
    elif name == "edge-orchestrator-nowhere":
        # The edge's orchestrator URL left at its default (127.0.0.1:50051,
        # the edge's own pod, where nothing listens), as when the variable
        # is misspelt or dropped: the edge starts, and must not pass.
        drop_env(lambda e: e["name"] == "AGENTMESH_EDGE__ORCHESTRATOR_URL", "dropped")
    elif name == "no-secret":
        wanted = arg or next((n for d in deps for n in required_secret_refs(d)), "")
        kept = [o for o in objs if not (o.get("kind") == "Secret" and o["metadata"]["name"] == wanted)]
        if len(kept) != len(objs):
            changed.append(f"removed Secret {wanted}")
            objs = kept
    elif name == "no-optional-secrets":
        required = {n for d in deps for n in required_secret_refs(d)}
        optional = {n for d in deps for n in optional_secret_refs(d)} - required
        if not optional:
            raise UsageError(f"--mutate {mutant}: no Secret is referenced as optional")
        kept = [o for o in objs if not (o.get("kind") == "Secret" and o["metadata"]["name"] in optional)]
        changed.append(f"removed Secrets {sorted(optional)} (referenced only as optional; "
                       f"{len(objs) - len(kept)} of them were rendered)")
        objs = kept
    else:
        raise UsageError(f"--mutate: unknown fault {mutant!r} (known: {', '.join(MUTANTS + BENIGN)})")
    if not changed:
        raise UsageError(f"--mutate {mutant}: changes nothing in these manifests")
    return objs, changed


# --------------------------------------------------------------------------
# Planning: pods, addresses, Service names


@dataclass
class Container:
    name: str
    spec: dict
    init: bool
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log: Path | None = None
    # Volume directories as mounted: writable ones, and read-only ones
    # (readOnly mounts; secret/configMap volumes are always read-only).
    rw_mounts: list[str] = field(default_factory=list)
    ro_mounts: list[str] = field(default_factory=list)


@dataclass
class Pod:
    deployment: str
    replicas: int
    ip: str
    labels: dict
    spec: dict
    namespace: str
    dir: Path
    containers: list[Container] = field(default_factory=list)
    mounts: dict[str, dict[str, Path]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.deployment}-0"


def plan_pods(objs: list[dict], first_ip: int, root: Path) -> list[Pod]:
    pods = []
    for i, dep in enumerate(of_kind(objs, "Deployment")):
        meta = dep["metadata"]
        n = first_ip + i
        if n > 254:
            raise UsageError("more Deployments than loopback addresses from --first-ip")
        tmpl = dep.get("spec", {}).get("template", {})
        replicas = dep.get("spec", {}).get("replicas", 1)
        pod = Pod(meta["name"], replicas, f"127.0.0.{n}", tmpl.get("metadata", {}).get("labels") or {},
                  tmpl.get("spec") or {}, meta.get("namespace", ""), root / meta["name"])
        pods.append(pod)
    return pods


def service_port_target(svc: dict, pod: Pod, port: dict) -> int:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    for c in pod.spec.get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return p["containerPort"]
    raise SmokeFailure("plan", f"Service {svc['metadata']['name']}: targetPort {target!r} names no port of {pod.deployment}")


def service_hosts(objs: list[dict], pods: list[Pod]) -> tuple[list[tuple[str, list[str]]], dict[str, Pod]]:
    """/etc/hosts lines (ip, names) and Service name -> pod."""
    lines, by_service = [], {}
    for svc in of_kind(objs, "Service"):
        name, ns = svc["metadata"]["name"], svc["metadata"].get("namespace", "")
        selector = (svc.get("spec") or {}).get("selector") or {}
        matched = [p for p in pods if selector and all(p.labels.get(k) == v for k, v in selector.items())]
        if not matched:
            print(f"note: Service {name} selects no Deployment: its name resolves to nothing here")
            continue
        pod = matched[0]
        for port in (svc.get("spec") or {}).get("ports") or []:
            target = service_port_target(svc, pod, port)
            if target != port.get("port"):
                raise UsageError(f"Service {name}: port {port.get('port')} -> targetPort {target}: "
                                 "port translation is not emulated (no kube-proxy here)")
        names = [name] + ([f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"] if ns else [])
        lines.append((pod.ip, names))
        by_service[name] = pod
    return lines, by_service


# --------------------------------------------------------------------------
# /etc/hosts


def hosts_has_markers() -> bool:
    return BEGIN in HOSTS.read_text()


def hosts_write(text: str) -> None:
    # In place, not by rename: /etc/hosts is often a bind mount.
    with open(HOSTS, "r+") as f:
        f.seek(0)
        f.write(text)
        f.truncate()


def hosts_add(lines: list[tuple[str, list[str]]]) -> None:
    text = HOSTS.read_text()
    if text and not text.endswith("\n"):
        text += "\n"
    block = [BEGIN] + [f"{ip}\t{' '.join(names)}" for ip, names in lines] + [END]
    hosts_write(text + "\n".join(block) + "\n")


def hosts_remove() -> bool:
    text = HOSTS.read_text()
    if BEGIN not in text:
        return False
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == BEGIN:
            skipping = True
        elif skipping and line.rstrip("\n") == END:
            skipping = False
        elif not skipping:
            out.append(line)
    hosts_write("".join(out))
    return True


# --------------------------------------------------------------------------
# Secrets, ConfigMaps, volumes, env


def object_data(objs: list[dict]) -> tuple[dict[str, dict[str, bytes]], dict[str, dict[str, bytes]]]:
    secrets, cms = {}, {}
    for s in of_kind(objs, "Secret"):
        data = {k: base64.b64decode(v or "") for k, v in (s.get("data") or {}).items()}
        data.update({k: str(v).encode() for k, v in (s.get("stringData") or {}).items()})
        secrets[s["metadata"]["name"]] = data
    for c in of_kind(objs, "ConfigMap"):
        data = {k: str(v).encode() for k, v in (c.get("data") or {}).items()}
        data.update({k: base64.b64decode(v or "") for k, v in (c.get("binaryData") or {}).items()})
        cms[c["metadata"]["name"]] = data
    return secrets, cms


def pod_ids(pod: Pod, c: dict, default_user: int) -> tuple[int, int, list[int]]:
    psc = pod.spec.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    if uid is None:
        print(f"note: {pod.deployment}/{c['name']}: no runAsUser, running as --default-user {default_user}")
        uid = default_user
    non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    if non_root and uid == 0:
        raise SmokeFailure("config", f"{pod.deployment}/{c['name']}: runAsNonRoot with user 0 (CreateContainerConfigError)")
    groups = ([psc["fsGroup"]] if "fsGroup" in psc else []) + list(psc.get("supplementalGroups") or [])
    return uid, (gid if gid is not None else uid), groups


def write_keys(dest: Path, data: dict[str, bytes], spec: dict, what: str, fs_group) -> None:
    default_mode = spec.get("defaultMode", 0o644)
    items = spec.get("items")
    if items is None:
        items = [{"key": k, "path": k} for k in sorted(data)]
    for item in items:
        if item["key"] not in data:
            if spec.get("optional"):
                continue
            raise SmokeFailure("mount", f"{what}: no key {item['key']!r} (MountVolume.SetUp failed)")
        path = dest / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[item["key"]])
        mode = item.get("mode", default_mode)
        if fs_group is not None:
            mode |= 0o440
            os.chown(path, 0, fs_group)
        os.chmod(path, mode)


def make_volumes(pod: Pod, secrets, cms, uid: int, gid: int) -> dict[str, Path]:
    fs_group = (pod.spec.get("securityContext") or {}).get("fsGroup")
    vols = {}
    base = pod.dir / "volumes"
    base.mkdir(mode=0o755)
    for vol in pod.spec.get("volumes") or []:
        name = vol["name"]
        d = base / name
        d.mkdir(mode=0o755)
        what = f"{pod.deployment}: volume {name}"
        if any(k in vol for k in ("emptyDir", "persistentVolumeClaim", "ephemeral")):
            os.chown(d, uid, fs_group if fs_group is not None else gid)
            os.chmod(d, 0o2775 if fs_group is not None else 0o755)
        elif "secret" in vol or "configMap" in vol:
            sources = [vol]
            _fill(d, sources, secrets, cms, what, fs_group)
        elif "projected" in vol:
            _fill(d, vol["projected"].get("sources") or [], secrets, cms, what, fs_group)
        else:
            raise UsageError(f"{what}: volume type {sorted(k for k in vol if k != 'name')} is not emulated")
        vols[name] = d
    return vols


def _fill(d: Path, sources: list[dict], secrets, cms, what: str, fs_group) -> None:
    if fs_group is not None:
        os.chown(d, 0, fs_group)
    for src in sources:
        if "secret" in src:
            spec = src["secret"]
            ref, table, kind = spec.get("secretName", spec.get("name", "")), secrets, "secret"
        elif "configMap" in src:
            spec = src["configMap"]
            ref, table, kind = spec.get("name", ""), cms, "configmap"
        else:
            print(f"note: {what}: projected source {sorted(src)} left empty")
            continue
        if ref not in table:
            if spec.get("optional"):
                continue
            raise SmokeFailure("mount", f"{what}: {kind} {ref!r} not found (MountVolume.SetUp failed; the pod stays ContainerCreating)")
        write_keys(d, table[ref], spec, f"{what}: {kind} {ref}", fs_group)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion; `$$` escapes; unknown references stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def resolve_env(pod: Pod, c: dict, secrets, cms) -> dict[str, str]:
    where = f"{pod.deployment}/{c['name']}"
    env: dict[str, str] = {}

    def lookup(table, kind, ref):
        obj = table.get(ref.get("name", ""))
        if obj is None or ("key" in ref and ref["key"] not in obj):
            if ref.get("optional"):
                return None
            missing = f"{kind} {ref.get('name')!r}" + (f" key {ref['key']!r}" if obj is not None else "")
            raise SmokeFailure("config", f"{where}: {missing} not found (CreateContainerConfigError)")
        return obj

    for ef in c.get("envFrom") or []:
        prefix = ef.get("prefix", "")
        for key, table, kind in (("secretRef", secrets, "secret"), ("configMapRef", cms, "configmap")):
            if key in ef:
                obj = lookup(table, kind, ef[key])
                for k, v in (obj or {}).items():
                    env[prefix + k] = v.decode(errors="surrogateescape")
    fields = {"metadata.name": pod.name, "metadata.namespace": pod.namespace or "default",
              "status.podIP": pod.ip, "status.hostIP": "127.0.0.1",
              "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
              "spec.nodeName": socket.gethostname()}
    for e in c.get("env") or []:
        name, vf = e["name"], e.get("valueFrom")
        if vf is None:
            env[name] = expand(str(e.get("value", "")), env)
        elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
            key = "secretKeyRef" if "secretKeyRef" in vf else "configMapKeyRef"
            table, kind = (secrets, "secret") if key == "secretKeyRef" else (cms, "configmap")
            obj = lookup(table, kind, vf[key])
            if obj is not None:
                env[name] = obj[vf[key]["key"]].decode(errors="surrogateescape")
        elif "fieldRef" in vf:
            path = vf["fieldRef"].get("fieldPath", "")
            if path not in fields:
                raise UsageError(f"{where}: env {name}: fieldRef {path} is not emulated")
            env[name] = fields[path]
        else:
            raise UsageError(f"{where}: env {name}: {sorted(vf)} is not emulated")
    return env


def rewrite_paths(value: str, mounts: dict[str, Path]) -> str:
    for mount in sorted(mounts, key=len, reverse=True):
        pat = re.compile(r"(^|=|://)" + re.escape(mount.rstrip("/")) + r"(?=/|$|[^\w.-])")
        value = pat.sub(lambda m, d=str(mounts[mount]): m.group(1) + d, value)
    return value


# --------------------------------------------------------------------------
# Processes


def setpriv(c: Container, security: dict) -> list[str]:
    cmd = ["setpriv", f"--reuid={c.uid}", f"--regid={c.gid}"]
    cmd += [f"--groups={','.join(map(str, c.groups))}"] if c.groups else ["--clear-groups"]
    if security.get("allowPrivilegeEscalation") is False:
        cmd.append("--no-new-privs")
    if "ALL" in ((security.get("capabilities") or {}).get("drop") or []):
        cmd += ["--inh-caps=-all", "--bounding-set=-all"]
    return cmd + ["--"]


def prepare(pod: Pod, secrets, cms, bin_dir: Path, default_user: int) -> None:
    pod.dir.mkdir(mode=0o755)
    os.chmod(pod.dir, 0o755)
    specs = [(c, True) for c in pod.spec.get("initContainers") or []] + \
            [(c, False) for c in pod.spec.get("containers") or []]
    if not specs:
        raise SmokeFailure("config", f"{pod.deployment}: no containers")
    uid0, gid0, _ = pod_ids(pod, specs[0][0], default_user)
    vols = make_volumes(pod, secrets, cms, uid0, gid0)
    for spec, init in specs:
        c = Container(spec["name"], spec, init)
        where = f"{pod.deployment}/{c.name}"
        c.uid, c.gid, c.groups = pod_ids(pod, spec, default_user)
        mounts = {}
        for m in spec.get("volumeMounts") or []:
            if m["name"] not in vols:
                raise SmokeFailure("config", f"{where}: volumeMount {m['name']!r} names no volume")
            mounts[m["mountPath"]] = vols[m["name"]] / m.get("subPath", "")
            ro = m.get("readOnly") or any(k in vol for vol in pod.spec.get("volumes") or []
                                          if vol["name"] == m["name"] for k in ("secret", "configMap", "projected"))
            (c.ro_mounts if ro else c.rw_mounts).append(str(mounts[m["mountPath"]]))
        env = resolve_env(pod, spec, secrets, cms)
        for k, v in env.items():
            v = pod.ip if v in LISTEN_ANY else v
            env[k] = rewrite_paths(v, mounts)
        command = [expand(str(a), env) for a in spec.get("command") or []]
        args = [expand(str(a), env) for a in spec.get("args") or []]
        if not command:
            raise UsageError(f"{where}: no command (the image's ENTRYPOINT is not known here)")
        binary = bin_dir / Path(command[0]).name
        if not os.access(binary, os.X_OK):
            raise UsageError(f"{where}: no executable {binary.name} in {bin_dir} (cargo build --workspace --bins)")
        c.argv = [str(binary)] + [rewrite_paths(a, mounts) for a in command[1:] + args]
        env.setdefault("HOSTNAME", pod.name)
        env.setdefault("PATH", IMAGE_PATH)
        c.env = env
        workdir = spec.get("workingDir")
        on_volume = workdir and rewrite_paths(workdir, mounts) != workdir
        if on_volume:
            c.cwd = Path(rewrite_paths(workdir, mounts))
        else:
            c.cwd = pod.dir / f"cwd-{c.name}"
            c.cwd.mkdir(mode=0o755)
            os.chmod(c.cwd, 0o755)
        c.log = pod.dir / f"{c.name}.log"
        pod.containers.append(c)
        pod.mounts[c.name] = mounts


def read_only_root(c: Container) -> list[str]:
    """The command prefix that gives the container a private mount namespace
    whose file systems are read-only but for its writable volumes."""
    plan = json.dumps({"rw": c.rw_mounts, "ro": c.ro_mounts})
    return ["unshare", "--mount", "--propagation", "private", sys.executable, str(Path(__file__).resolve()),
            "--enter-read-only-root", plan, "--"]


# File systems a container keeps writable with readOnlyRootFilesystem: the
# kernel's and the runtime's (/proc, /sys, /dev, /dev/shm), as in a pod.
KEEP_WRITABLE = {"proc", "sysfs", "cgroup", "cgroup2", "devtmpfs", "devpts", "mqueue", "securityfs",
                 "debugfs", "tracefs", "bpf", "fusectl", "pstore", "configfs", "binfmt_misc", "hugetlbfs"}


def enter_read_only_root(plan_json: str, argv: list[str]) -> int:
    """Runs inside `unshare --mount`: bind every volume onto itself (its own
    mount), remount every other file system read-only, then exec argv."""
    plan = json.loads(plan_json)
    for d in plan["rw"] + plan["ro"]:
        subprocess.run(["mount", "--bind", d, d], check=True)
    volumes = set(plan["rw"]) | set(plan["ro"])
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        fstype = fields[fields.index("-") + 1]
        if point in volumes or fstype in KEEP_WRITABLE or point == "/dev/shm":
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", point], stderr=subprocess.DEVNULL)
    for d in plan["ro"]:
        subprocess.run(["mount", "-o", "remount,bind,ro", d], check=True)
    os.execvp(argv[0], argv)


def start(pod: Pod, deadline: float, mount_ns: bool) -> None:
    for c in pod.containers:
        security = c.spec.get("securityContext") or {}
        prefix = read_only_root(c) if mount_ns and security.get("readOnlyRootFilesystem") else []
        with open(c.log, "wb") as log:
            c.proc = subprocess.Popen(prefix + setpriv(c, security) + c.argv, cwd=c.cwd, env=c.env,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        if c.init:
            try:
                rc = c.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise SmokeFailure("init", f"{pod.deployment}/{c.name}: init container still running at the deadline")
            if rc != 0:
                raise SmokeFailure("init", f"{pod.deployment}/{c.name}: init container exited {rc}\n{tail(c)}")
    pod.status["started"] = "yes"


def tail(c: Container, n: int = LOG_LINES) -> str:
    try:
        lines = c.log.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        lines = []
    return "\n".join(f"    | {line}" for line in lines) or "    | (no output)"


def check_alive(pods: list[Pod]) -> None:
    for pod in pods:
        for c in pod.containers:
            if c.init or c.proc is None:
                continue
            rc = c.proc.poll()
            if rc is not None:
                pod.status["started"] = f"exited {rc}"
                raise SmokeFailure("running", f"{pod.deployment}/{c.name} exited with {rc}; its last "
                                   f"{LOG_LINES} log lines:\n{tail(c)}")


def stop_all(pods: list[Pod]) -> None:
    procs = [c.proc for p in pods for c in p.containers if c.proc and c.proc.poll() is None]
    # A short grace only: the services drain for seconds (drain_delay), and
    # how they stop is not what this checks.
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + grace
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.1)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"warning: process {proc.pid} did not end")


# --------------------------------------------------------------------------
# Probes


def container_port(pod: Pod, c: Container, port) -> int:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in c.spec.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    raise SmokeFailure("probe", f"{pod.deployment}/{c.name}: probe port {port!r} names no container port")


def probe_once(pod: Pod, c: Container, probe: dict) -> tuple[bool, str]:
    timeout = max(float(probe.get("timeoutSeconds", 1)), 2.0)  # debug builds on a busy host
    if "grpc" in probe:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        g = probe["grpc"]
        target = f"{pod.ip}:{container_port(pod, c, g.get('port'))}"
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=g.get("service", "")), timeout=timeout)
            except grpc.RpcError as err:
                return False, f"gRPC health {target} service {g.get('service', '')!r}: {err.code().name} {err.details() or ''}"
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return reply.status == health_pb2.HealthCheckResponse.SERVING, \
                f"gRPC health {target} service {g.get('service', '')!r}: {status}"
    if "httpGet" in probe:
        h = probe["httpGet"]
        scheme = h.get("scheme", "HTTP").lower()
        url = f"{scheme}://{h.get('host') or pod.ip}:{container_port(pod, c, h.get('port'))}{h.get('path', '/')}"
        req = urllib.request.Request(url, headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []})
        ctx = ssl._create_unverified_context() if scheme == "https" else None  # the kubelet does not verify either
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return 200 <= resp.status < 400, f"GET {url}: {resp.status}"
        except urllib.error.HTTPError as err:
            return False, f"GET {url}: {err.code}"
        except (OSError, urllib.error.URLError) as err:
            return False, f"GET {url}: {err}"
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        addr = (t.get("host") or pod.ip, container_port(pod, c, t.get("port")))
        try:
            socket.create_connection(addr, timeout=timeout).close()
            return True, f"tcp {addr[0]}:{addr[1]}: open"
        except OSError as err:
            return False, f"tcp {addr[0]}:{addr[1]}: {err}"
    if "exec" in probe:
        command = [expand(str(a), c.env) for a in probe["exec"].get("command") or []]
        if not command:
            raise SmokeFailure("probe", f"{pod.deployment}/{c.name}: exec probe without command")
        own = Path(c.argv[0]).parent / Path(command[0]).name
        argv = [str(own) if os.access(own, os.X_OK) else command[0]] + \
               [rewrite_paths(a, pod.mounts[c.name]) for a in command[1:]]
        try:
            done = subprocess.run(setpriv(c, c.spec.get("securityContext") or {}) + argv, cwd=c.cwd, env=c.env,
                                  capture_output=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return False, f"exec {command}: timed out"
        return done.returncode == 0, f"exec {command}: exit {done.returncode}"
    raise UsageError(f"{pod.deployment}/{c.name}: probe handler {sorted(probe)} is not emulated")


def wait_probes(pods: list[Pod], kind: str, deadline: float, poll: float = 0.5) -> None:
    """Runs `kind` of every container until it passes; startup and liveness
    fail once their failure budget is spent, readiness at the deadline."""
    label = {"startupProbe": "startup", "readinessProbe": "ready", "livenessProbe": "live"}[kind]
    check = kind.removesuffix("Probe")
    start_at = time.monotonic()
    pending = []
    for pod in pods:
        for c in pod.containers:
            if not c.init and c.spec.get(kind):
                pending.append((pod, c))
        pod.status[label] = "no probe" if not any(c.spec.get(kind) for c in pod.containers) else "pending"
    last: dict[tuple[str, str], str] = {}
    while pending:
        check_alive(pods)
        for pod, c in list(pending):
            probe = c.spec[kind]
            ok, detail = probe_once(pod, c, probe)
            last[(pod.deployment, c.name)] = detail
            if ok:
                pending.remove((pod, c))
                if not any(p is pod for p, _ in pending):
                    pod.status[label] = "ok"
                continue
            budget = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
            over_budget = kind != "readinessProbe" and time.monotonic() - start_at > budget
            if over_budget or time.monotonic() > deadline:
                pod.status[label] = "FAILED"
                why = "failure budget spent" if over_budget else "deadline reached"
                raise SmokeFailure(f"{check}Probe", f"{pod.deployment}/{c.name}: {check}Probe failed ({why}): {detail}\n"
                                   f"  its last {LOG_LINES} log lines:\n{tail(c)}")
        if pending:
            time.sleep(poll)


# --------------------------------------------------------------------------
# The run through the orchestrator, and its audit events


@dataclass
class Client:
    cli: Path
    orchestrator: str
    audit: str
    env: dict[str, str]
    cwd: Path


def service_url(name: str, by_service: dict[str, Pod], objs: list[dict], port_name: str = "grpc") -> str:
    svc = next((s for s in of_kind(objs, "Service") if s["metadata"]["name"] == name), None)
    if svc is None or name not in by_service:
        raise SmokeFailure("run", f"no Service {name!r} selecting a Deployment")
    ports = (svc.get("spec") or {}).get("ports") or []
    port = next((p for p in ports if p.get("name") == port_name), ports[0] if ports else None)
    if port is None:
        raise SmokeFailure("run", f"Service {name} has no ports")
    ns = svc["metadata"].get("namespace")
    host = f"{name}.{ns}.svc.cluster.local" if ns else name
    return f"http://{host}:{port['port']}"


def make_client(args, objs, by_service, secrets, root: Path) -> Client:
    env = {"PATH": os.environ.get("PATH", IMAGE_PATH)}
    entry = by_service.get(args.orchestrator_service)
    methods = ""
    for c in (entry.containers if entry else []):
        methods += " ".join(v for k, v in c.env.items() if k.upper().endswith("__AUTH__METHODS"))
    if "api_key" in methods:
        name, _, key = args.client_secret.partition("/")
        # A secretGenerator without disableNameSuffixHash appends a hash.
        hashed = [n for n in secrets if re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", n)]
        value = secrets.get(name, secrets.get(hashed[0] if hashed else "", {})).get(key)
        if value is None:
            raise SmokeFailure("run", f"the orchestrator asks for API keys but Secret {name!r} has no key {key!r} "
                               "with a client key (--client-secret)")
        env["AGENTMESH_API_KEY"] = value.decode().strip()
    cwd = root / "client"
    cwd.mkdir()
    return Client(args.bin_dir / "agentmesh", service_url(args.orchestrator_service, by_service, objs),
                  service_url(args.audit_service, by_service, objs), env, cwd)


def run_once(client: Client, objective: str, timeout: float) -> str:
    """One run through the orchestrator Service; returns its run id."""
    try:
        done = subprocess.run([str(client.cli), "run", "--json", "--orchestrator", client.orchestrator, objective],
                              env=client.env, cwd=client.cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SmokeFailure("run", f"agentmesh run via {client.orchestrator}: no answer within {timeout:.0f}s")
    run_id, finished = "", False
    for line in done.stdout.splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        run_id = run_id or ev.get("run_id", "")
        finished = finished or "run_finished" in ev
    if done.returncode != 0 or not finished or not run_id:
        out = (done.stdout + done.stderr).strip().splitlines()[-LOG_LINES:]
        raise SmokeFailure("run", f"agentmesh run via {client.orchestrator} exited {done.returncode} "
                           f"without run_finished:\n" + "\n".join(f"    | {x}" for x in out))
    return run_id


def pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pb_string(number: int, value: str) -> bytes:
    data = value.encode()
    return pb_varint(number << 3 | 2) + pb_varint(len(data)) + data


def pb_fields(data: bytes) -> dict[int, object]:
    """The top-level fields of a protobuf message (last value wins):
    enough for the few scalar fields read here, without generated stubs."""
    fields, i = {}, 0

    def varint():
        nonlocal i
        n = shift = 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number] = varint()
        elif wire == 2:
            size = varint()
            fields[number] = data[i:i + size]
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
    return fields


def workspace_write(pods: list[Pod], by_service: dict[str, Pod], objs, args, run_id: str) -> str:
    """The orchestrator's call of a file tool, made with its own credential:
    `write_file` in the run's workspace on the tool runner, which shows that
    the workspaces lie on a writable volume (the demo model uses no file tool)."""
    import grpc

    caller = by_service.get(args.orchestrator_service)
    key = ""
    for c in caller.containers if caller else []:
        for name, value in c.env.items():
            if name.upper().endswith("__AUTH__CREDENTIAL_FILE") and value:
                try:
                    key = Path(value).read_text().strip()
                except OSError as err:
                    raise SmokeFailure("workspace", f"the orchestrator's credential file: {err}")
    url = service_url(args.tool_runner_service, by_service, objs)
    request = pb_string(1, "write_file") + pb_string(2, json.dumps({"path": "smoke/check.txt", "content": run_id})) \
        + pb_string(5, run_id)
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        call = channel.unary_unary("/agentmesh.tools.v1.ToolRunnerService/ExecuteTool")
        try:
            reply = call(request, timeout=30, metadata=[("authorization", f"Bearer {key}")] if key else None)
        except grpc.RpcError as err:
            raise SmokeFailure("workspace", f"ExecuteTool write_file at {url}: {err.code().name} {err.details()}")
    fields = pb_fields(reply)
    if fields.get(2):
        message = bytes(fields.get(3, b"")).decode(errors="replace")
        raise SmokeFailure("workspace", f"write_file in run {run_id}'s workspace at {url}: {message}")
    return url


def audit_events(client: Client, run_id: str, deadline: float) -> dict[str, str]:
    seen: dict[str, str] = {}
    detail = ""
    while True:
        done = subprocess.run([str(client.cli), "audit", "query", "--json", "--limit", "0", "--audit", client.audit,
                               "--run", run_id], env=client.env, cwd=client.cwd, capture_output=True, text=True,
                              timeout=30)
        if done.returncode == 0:
            for line in done.stdout.splitlines():
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                seen[ev.get("type", "")] = ev.get("service", "")
            missing = [t for t in REQUIRED_EVENTS if t not in seen]
            detail = f"missing {', '.join(missing)} (have {sorted(seen) or 'none'})"
            if not missing:
                return seen
        else:
            detail = done.stderr.strip()[-500:]
        if time.monotonic() > deadline:
            raise SmokeFailure("audit", f"events of run {run_id} at {client.audit}: {detail}")
        time.sleep(0.5)


def edge_http(client: Client, url: str, objective: str, timeout: float) -> str:
    """The HTTP edge through its Service: the OpenAI-compatible model list,
    then a run started over REST and its events read as Server-Sent Events
    until `run_finished`. Returns the run id."""
    key = client.env.get("AGENTMESH_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}

    def call(method, path, body=None, accept="application/json"):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url + path, data=data, method=method,
                                         headers={**headers, "accept": accept,
                                                  **({"content-type": "application/json"} if data else {})})
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise SmokeFailure("edge", f"{method} {url}{path}: HTTP {err.code}: {detail}")
        except (OSError, urllib.error.URLError) as err:
            raise SmokeFailure("edge", f"{method} {url}{path}: {err}")

    with call("GET", "/v1/models") as answer:
        models = [m.get("id") for m in json.loads(answer.read()).get("data", [])]
    if not models:
        raise SmokeFailure("edge", f"GET {url}/v1/models: no model (the gateway's routes)")
    with call("POST", "/v1/runs", {"objective": objective}) as answer:
        started = json.loads(answer.read())
    run_id = started.get("run_id") or (started.get("run") or {}).get("run_id", "")
    if not run_id:
        raise SmokeFailure("edge", f"POST {url}/v1/runs: no run_id in {started}")
    kinds, last_id = [], ""
    with call("GET", f"/v1/runs/{run_id}/events", accept="text/event-stream") as stream:
        if not stream.headers.get("content-type", "").startswith("text/event-stream"):
            raise SmokeFailure("edge", f"GET {url}/v1/runs/{run_id}/events: content-type "
                               f"{stream.headers.get('content-type')!r}, not text/event-stream")
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("event:"):
                kinds.append(line.removeprefix("event:").strip())
            elif line.startswith("id:"):
                last_id = line.removeprefix("id:").strip()
            if kinds and kinds[-1] in ("run_finished", "run_failed", "run_cancelled", "error"):
                break
    if not kinds or kinds[-1] != "run_finished":
        raise SmokeFailure("edge", f"GET {url}/v1/runs/{run_id}/events ended without run_finished: {kinds}")
    print(f"edge at {url}: models {models}; run {run_id} over REST, {len(kinds)} events over SSE "
          f"(last id {last_id}): {', '.join(dict.fromkeys(kinds))}")
    return run_id


# --------------------------------------------------------------------------
# Resource figures


def proc_figures(pid: int) -> tuple[int, float]:
    """(peak RSS in KiB, CPU seconds of the process and its waited-for children)."""
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return hwm, ticks / os.sysconf("SC_CLK_TCK")


def measure(pods: list[Pod], client: Client, runs: int, parallel: int, objective: str) -> None:
    procs = [(p, c) for p in pods for c in p.containers if not c.init and c.proc]
    before = {c.name + p.deployment: proc_figures(c.proc.pid)[1] for p, c in procs}
    started = time.monotonic()
    failures: list[str] = []

    def one(_):
        try:
            run_once(client, objective, 120)
        except SmokeFailure as err:
            failures.append(err.message)

    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        list(pool.map(one, range(runs)))
    finally:
        # On an interrupt, leave the queued runs: the services are stopped next.
        pool.shutdown(wait=False, cancel_futures=True)
    wall = time.monotonic() - started
    check_alive(pods)
    print(f"\n== resources: {runs} runs, {parallel} at a time, {wall:.1f}s wall ({runs / wall:.1f} runs/s), "
          f"{len(failures)} failed ==")
    print(f"{'container':<28} {'peak RSS MiB':>12} {'CPU s/100 runs':>15} {'cores at this rate':>20}   "
          "manifest requests / limits")
    for p, c in procs:
        hwm, cpu = proc_figures(c.proc.pid)
        res = c.spec.get("resources") or {}
        used = cpu - before[c.name + p.deployment]
        print(f"{p.deployment + '/' + c.name:<28} {hwm / 1024:>12.1f} {used * 100 / max(runs, 1):>15.2f} "
              f"{used / wall:>20.3f}   "
              f"{json.dumps(res.get('requests', {}))} / {json.dumps(res.get('limits', {}))}")
    if failures:
        raise SmokeFailure("measure", f"{len(failures)} of {runs} runs failed, first: {failures[0]}")


# --------------------------------------------------------------------------
# Main


def report(pods: list[Pod]) -> None:
    print(f"\n{'deployment':<16} {'pod ip':<13} {'replicas':<18} {'started':<10} {'startup':<9} {'ready':<9} live")
    for p in pods:
        reps = str(p.replicas) if p.replicas == 1 else f"{p.replicas} (ran 1)"
        s = p.status
        print(f"{p.deployment:<16} {p.ip:<13} {reps:<18} {s.get('started', '-'):<10} {s.get('startup', '-'):<9} "
              f"{s.get('ready', '-'):<9} {s.get('live', '-')}")


def warn_loopback_squatters(pods: list[Pod]) -> None:
    """A process of someone else on 127.0.0.1 at a service port would answer a
    peer URL left at its default, and hide that fault."""
    for pod in pods:
        for c in pod.spec.get("containers") or []:
            for port in c.get("ports") or []:
                try:
                    socket.create_connection(("127.0.0.1", port["containerPort"]), timeout=0.5).close()
                    print(f"warning: something listens on 127.0.0.1:{port['containerPort']}; "
                          "a peer URL left at its default would reach it")
                except OSError:
                    pass


def smoke(args, root: Path, pods_out: list[Pod]) -> None:
    objs = render(args.kustomize)
    for m in args.mutate:
        objs, changes = mutate(objs, m)
        for line in changes:
            print(f"mutant {m}: {line}")
    secrets, cms = object_data(objs)
    pods = plan_pods(objs, args.first_ip, root)
    pods_out.extend(pods)
    lines, by_service = service_hosts(objs, pods)
    warn_loopback_squatters(pods)
    hosts_add(lines)
    print("hosts: " + "; ".join(f"{ip} {names[0]}" for ip, names in lines))
    deadline = time.monotonic() + args.timeout
    for pod in pods:
        prepare(pod, secrets, cms, args.bin_dir, args.default_user)
    mount_ns = args.mount_namespace and subprocess.run(["unshare", "--mount", "true"],
                                                       stderr=subprocess.DEVNULL).returncode == 0
    if not mount_ns:
        print("note: no private mount namespaces: readOnlyRootFilesystem is emulated by the working directory only")
    for pod in pods:
        start(pod, deadline, mount_ns)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        wait_probes(pods, kind, deadline)
    client = make_client(args, objs, by_service, secrets, root)
    run_id = run_once(client, args.objective, max(10.0, deadline - time.monotonic()))
    print(f"run {run_id} through {client.orchestrator}: finished")
    seen = audit_events(client, run_id, max(deadline, time.monotonic() + 10))
    print(f"audit at {client.audit}: " + ", ".join(f"{t.removeprefix('EVENT_TYPE_').lower()} ({s})"
                                                   for t, s in sorted(seen.items())))
    url = workspace_write(pods, by_service, objs, args, run_id)
    print(f"write_file in the run's workspace at {url}: ok")
    if args.edge_service in by_service:
        edge_url = service_url(args.edge_service, by_service, objs, port_name="http")
        edge_http(client, edge_url, args.objective, max(10.0, deadline - time.monotonic()))
    elif any(s["metadata"]["name"] == args.edge_service for s in of_kind(objs, "Service")):
        raise SmokeFailure("edge", f"Service {args.edge_service} selects no Deployment")
    if args.measure:
        measure(pods, client, args.measure, args.parallel, args.objective)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kustomize", type=Path, default=REPO / "k8s/overlays/dev", help="kustomize directory to render")
    ap.add_argument("--bin-dir", type=Path, default=REPO / "target/debug", help="where the container commands' binaries are (by basename)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds for the pods to become ready, run and audit (default 60)")
    ap.add_argument("--mutate", action="append", default=[], metavar="FAULT",
                    help=f"apply a fault first (repeatable): {', '.join(MUTANTS)} (no-secret=NAME picks the Secret); "
                         f"or {', '.join(BENIGN)}, with which the smoke must still pass")
    ap.add_argument("--expect-failure", action="store_true", help="succeed only if a check fails (for mutants)")
    ap.add_argument("--measure", type=int, default=0, metavar="RUNS", help="after the smoke, RUNS runs and resource figures")
    ap.add_argument("--parallel", type=int, default=4, help="runs at a time for --measure (default 4)")
    ap.add_argument("--objective", default="What is 17 * 23?", help="objective of the runs (the demo model does arithmetic with the calculator)")
    ap.add_argument("--orchestrator-service", default="orchestrator")
    ap.add_argument("--audit-service", default="audit")
    ap.add_argument("--tool-runner-service", default="tool-runner")
    ap.add_argument("--edge-service", default="edge", help="the HTTP edge's Service (its steps are skipped when the "
                    "render has no such Service)")
    ap.add_argument("--client-secret", default="agentmesh-client-credential/credential", metavar="SECRET/KEY",
                    help="the client's API key, when the orchestrator asks for one")
    ap.add_argument("--first-ip", type=int, default=11, help="first pod address 127.0.0.N (default 11)")
    ap.add_argument("--default-user", type=int, default=65532, help="user when a manifest names none (distroless nonroot)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, volumes)")
    ap.add_argument("--no-mount-namespace", dest="mount_namespace", action="store_false",
                    help="emulate readOnlyRootFilesystem by the unwritable working directory only")
    ap.add_argument("--clean-hosts", action="store_true", help="remove stale entries from /etc/hosts and exit")
    args = ap.parse_args(argv)
    for path in ("kustomize", "bin_dir"):
        p = getattr(args, path)
        if not p.is_absolute():
            setattr(args, path, (Path.cwd() / p).resolve())
    if args.timeout <= 0 or args.parallel < 1 or args.measure < 0 or not 2 <= args.first_ip <= 254:
        ap.error("--timeout must be > 0, --parallel >= 1, --measure >= 0, --first-ip in 2..254")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--enter-read-only-root"] and len(argv) > 3 and argv[2] == "--":
        return enter_read_only_root(argv[1], argv[3:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("smoke: needs root (it edits /etc/hosts and runs each container as its user)", file=sys.stderr)
        return 2
    if args.clean_hosts:
        print("removed stale entries" if hosts_remove() else "no entries to remove")
        return 0
    if hosts_has_markers():
        print(f"smoke: /etc/hosts holds entries of an earlier or concurrent run (between '{BEGIN}' and '{END}'); "
              "if no smoke is running, remove them: python3 tools/deploy/smoke.py --clean-hosts", file=sys.stderr)
        return 2

    def interrupted(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, interrupted)
    root = Path(tempfile.mkdtemp(prefix="agentmesh-smoke-"))
    os.chmod(root, 0o755)
    pods: list[Pod] = []
    label = f"deploy-smoke{' --mutate ' + ' '.join(args.mutate) if args.mutate else ''}"
    failure: SmokeFailure | None = None
    try:
        smoke(args, root, pods)
    except SmokeFailure as err:
        failure = err
    except UsageError as err:
        print(f"{label}: cannot run: {err}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, AttributeError) as err:
        # A manifest without a field this runner reads, or of the wrong shape.
        print(f"{label}: cannot run: malformed manifest ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"{label}: interrupted ({err})", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(pods)
        hosts_remove()
        report(pods)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if failure is None:
        if args.expect_failure:
            print(f"{label}: NOT CAUGHT: every check passed", file=sys.stderr)
            return 1
        print(f"{label}: ok")
        return 0
    if args.expect_failure:
        lines = failure.message.splitlines()
        print(f"{label}: caught by check '{failure.check}': {lines[0]}")
        print("\n".join(line for line in lines[1:][-2:] if line.startswith("    |")))
        return 0
    print(f"{label}: FAILED at check '{failure.check}': {failure.message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
