"""The Prometheus alert rules: they pass `promtool check rules` and their
unit tests (`promtool test rules`), every alert is complete (severity,
summary, description, a runbook section that exists) and tested both ways,
they only use metrics the services export, and the PrometheusRule of the
monitoring component holds the same groups."""

import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

RULES = ROOT / "deploy/prometheus/agentmesh.rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/agentmesh.rules.test.yml"
PROMETHEUS_RULE = ROOT / "k8s/components/monitoring/prometheusrule.yaml"
RUNBOOKS = ROOT / "docs/runbooks.md"
EXPORTED = ROOT / "deploy/grafana/exported-metrics.txt"

PROMTOOL_HINT = "install Debian's prometheus package (apt-get install -y --no-install-recommends prometheus; .ci/run does)"

# Metric names the services export start with these.
METRIC = re.compile(r"\b((?:agentmesh|gen_ai|grpc|process)_[a-zA-Z0-9_:]*)")


def _groups(path):
    return yaml.safe_load(path.read_text())["groups"]


def _alerts():
    return [rule for group in _groups(RULES) for rule in group["rules"] if "alert" in rule]


# The HTTP edge's own metric families, named in its source: tests/metrics.rs
# writes EXPORTED from a mesh run without the edge, so they are not listed
# there.
EDGE_METRICS = ROOT / "services/edge/src/metrics.rs"


def _exported():
    listed = {
        line.strip()
        for line in EXPORTED.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    edge = set(re.findall(r'"(agentmesh_http_server_[a-z_]+)"', EDGE_METRICS.read_text()))
    return listed | edge


def metric_names(expr):
    """The metric names a PromQL expression reads (histogram series by their
    family name)."""
    # Strings, label matchers and grouping clauses name labels, not metrics.
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = set()
    for name in METRIC.findall(bare):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


def _promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(f"SKIPPED: no promtool on PATH; {PROMTOOL_HINT}")
    return promtool


def test_promtool_checks_the_rules():
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout, result.stdout


def test_the_rules_pass_their_unit_tests():
    result = subprocess.run(
        [_promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_complete_and_has_a_runbook():
    runbooks = RUNBOOKS.read_text()
    headings = {line[3:].strip() for line in runbooks.splitlines() if line.startswith("## ")}
    names = [alert["alert"] for alert in _alerts()]
    assert len(names) == len(set(names)), names
    assert set(names) >= {
        "AgentmeshHighErrorRatio",
        "AgentmeshHighLatencyP95",
        "AgentmeshLlmSlowTimeToFirstToken",
        "AgentmeshAuditSpoolGrowing",
        "AgentmeshNoSuccessfulRuns",
        "AgentmeshDependencyDown",
    }
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"docs/runbooks.md#{name.lower()}", name
        assert name in headings, f"docs/runbooks.md has no section `## {name}`"


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for alert in _alerts():
        name = alert["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        firing = [case for case in mine if case.get("exp_alerts")]
        quiet = [case for case in mine if not case.get("exp_alerts")]
        assert firing, f"{name}: no test where it fires"
        assert quiet, f"{name}: no test where it stays quiet"
        for case in firing:
            for expected in case["exp_alerts"]:
                assert expected.get("exp_labels", {}).get("severity"), name
                assert set(expected.get("exp_annotations", {})) >= {
                    "summary",
                    "description",
                    "runbook_url",
                }, name


def test_the_rules_read_only_exported_metrics():
    exported = _exported()
    for alert in _alerts():
        names = metric_names(alert["expr"])
        assert names, alert["alert"]
        unknown = names - exported
        assert not unknown, f"{alert['alert']} reads metrics nobody exports: {sorted(unknown)}"


def test_the_prometheus_rule_holds_the_same_groups():
    documents = [doc for doc in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if doc]
    assert len(documents) == 1
    rule = documents[0]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == _groups(RULES), (
        "k8s/components/monitoring/prometheusrule.yaml is stale: run deploy/prometheus/gen-prometheusrule.py"
    )
    result = subprocess.run(
        ["python3", str(ROOT / "deploy/prometheus/gen-prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_monitoring_component_adds_the_rules_and_the_scrape_to_the_prod_overlay():
    component = yaml.safe_load((ROOT / "k8s/components/monitoring/kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert "prometheusrule.yaml" in component["resources"]
    prod = yaml.safe_load((ROOT / "k8s/overlays/prod/kustomization.yaml").read_text())
    assert "../../components/monitoring" in prod["components"]
    base = yaml.safe_load((ROOT / "k8s/base/kustomization.yaml").read_text())
    # The operator's kinds stay out of the base: it must apply without CRDs.
    assert not any("prometheusrule" in resource or "servicemonitor" in resource for resource in base["resources"])
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "k8s/overlays/prod")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kinds.count("PrometheusRule") == 1 and kinds.count("ServiceMonitor") == 1, kinds
    assert kinds.count("Deployment") == 6, kinds  # the five services and the edge
