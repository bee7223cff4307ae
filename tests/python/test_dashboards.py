"""The Grafana dashboards: every panel is complete (a unique id, a title, the
`${datasource}` variable as its data source), every PromQL expression parses
(checked by promtool, when installed) and reads only metrics the services
export — the list tests/metrics.rs keeps in deploy/grafana/exported-metrics.txt
from a running mesh."""

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

DASHBOARDS = ROOT / "deploy/grafana/dashboards"
EXPORTED = ROOT / "deploy/grafana/exported-metrics.txt"
EXPECTED = {
    "agentmesh-overview.json",
    "agentmesh-llm.json",
    "agentmesh-tools.json",
    "agentmesh-runs.json",
}
DATASOURCE = "${datasource}"

# Metric names the services export start with these.
METRIC = re.compile(r"\b((?:agentmesh|gen_ai|grpc|process)_[a-zA-Z0-9_:]*)")

# Grafana's variables, as Prometheus would see them once substituted.
VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def _dashboards():
    paths = sorted(DASHBOARDS.glob("*.json"))
    assert {path.name for path in paths} == EXPECTED
    return [(path.name, json.loads(path.read_text())) for path in paths]


def _panels(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(dashboard):
    """(where, PromQL) of every query: panel targets and query variables."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            query = variable["query"]
            query = query.get("query", "") if isinstance(query, dict) else query
            yield f"variable {variable['name']!r}", query


def _exported():
    return {
        line.strip()
        for line in EXPORTED.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def metric_names(expr):
    """The metric names a PromQL expression reads (histogram series by their
    family name)."""
    # Strings, label matchers and grouping clauses name labels, not metrics.
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    # Grafana's label_values(metric, label): the second argument is a label.
    bare = re.sub(r"\blabel_values\(\s*([^,)]+),[^)]*\)", r"\1", bare)
    names = set()
    for name in METRIC.findall(bare):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


def _substituted(expr):
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    # Multi-value variables become regexes: `=~"$service"` matches anything.
    return re.sub(r"\$\{?[a-zA-Z_]+\}?", ".*", expr)


def test_each_dashboard_has_the_datasource_variable_and_schema():
    for name, dashboard in _dashboards():
        assert dashboard["schemaVersion"] == 39, name
        assert dashboard["uid"] == name.removesuffix(".json"), name
        assert dashboard["title"], name
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        datasource = variables.get("datasource")
        assert datasource, f"{name}: no datasource variable"
        assert datasource["type"] == "datasource" and datasource["query"] == "prometheus", name
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == DATASOURCE, f"{name}: {variable['name']}"
    overview = dict(_dashboards())["agentmesh-overview.json"]
    assert "service" in {variable["name"] for variable in overview["templating"]["list"]}


def test_every_panel_has_a_unique_id_a_title_and_the_datasource_variable():
    for name, dashboard in _dashboards():
        ids = [panel["id"] for panel in _panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {ids}"
        for panel in _panels(dashboard):
            where = f"{name}: panel {panel['id']}"
            assert isinstance(panel["id"], int), where
            assert panel.get("title", "").strip(), f"{where} has no title"
            if panel.get("type") == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target.get("datasource", {}).get("uid", DATASOURCE) == DATASOURCE, where
                assert target.get("expr", "").strip(), f"{where}: a target without expr"


def test_every_expression_reads_exported_metrics_only():
    exported = _exported()
    used = set()
    for name, dashboard in _dashboards():
        for where, expr in _exprs(dashboard):
            names = metric_names(expr)
            assert names, f"{name}, {where}: no metric in {expr!r}"
            unknown = names - exported
            assert not unknown, (
                f"{name}, {where} reads metrics the services do not export: {sorted(unknown)} "
                f"(exported: {EXPORTED.relative_to(ROOT)})"
            )
            used |= names
    # The dashboards cover what the issue asked for.
    for metric in [
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "grpc_server_in_flight_requests",
        "agentmesh_dependency_up",
        "gen_ai_client_token_usage",
        "agentmesh_llm_cost_usd_total",
        "gen_ai_server_time_to_first_token_seconds",
        "gen_ai_server_time_per_output_token_seconds",
        "gen_ai_client_operation_duration_seconds",
        "agentmesh_tool_executions_total",
        "agentmesh_tool_execution_duration_seconds",
        "agentmesh_tool_executions_in_flight",
        "agentmesh_runs_started_total",
        "agentmesh_runs_finished_total",
        "agentmesh_runs_active",
        "agentmesh_run_queue_depth",
        "agentmesh_run_step_duration_seconds",
        "agentmesh_run_duration_seconds",
    ]:
        assert metric in used, f"no dashboard shows {metric}"


def test_the_name_extraction_ignores_labels_and_functions():
    expr = (
        'histogram_quantile(0.95, sum by (service, le) '
        '(rate(grpc_server_handling_seconds_bucket{grpc_service=~"agentmesh_x.+"}[5m])))'
        ' / on (service) group_left sum(agentmesh_ready)'
    )
    assert metric_names(expr) == {"grpc_server_handling_seconds", "agentmesh_ready"}
    assert metric_names("label_values(gen_ai_client_token_usage_count, gen_ai_provider_name)") == {
        "gen_ai_client_token_usage"
    }


def test_every_expression_parses(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "SKIPPED: no promtool on PATH; install Debian's prometheus package "
            "(apt-get install -y --no-install-recommends prometheus; .ci/run does)"
        )
    rules = []
    for name, dashboard in _dashboards():
        for index, (where, expr) in enumerate(_exprs(dashboard)):
            if where.startswith("variable"):
                continue
            rules.append({"record": f"dashboard:{name.removesuffix('.json').replace('-', '_')}:{index}", "expr": _substituted(expr)})
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=none", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
