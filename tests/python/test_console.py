"""The web console in a real browser: Debian's Chromium driven by
Playwright, against `agentmesh up` (the embedded mesh, no credentials, the
scripted model with a few extra rules: a slow answer, an answer and a tool
result carrying markup, a tool that fails). Each test works the page as a
person would and checks the outcome through the mesh's own APIs.

Screenshots go to target/console-screenshots/ (their paths are printed at
the end of the run)."""

import importlib
import json
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import BIN_DIR, SCREENSHOTS, connect, running_mesh

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHOTS = ROOT / "target" / "console-screenshots"
DEMO_RULES = ROOT / "services" / "llm-gateway" / "demo" / "rules.toml"
SLOW_WORDS = 40
TRACES = "http://traces.example/trace"

# Rules put before the demo's: the first that matches answers.
EXTRA_RULES = f"""
[[rules]]
on = "user"
match = '(?i)^slow story'
text = '{" ".join(f"w{i}" for i in range(SLOW_WORDS))}'
pace = "120ms"

[[rules]]
on = "user"
match = '(?i)^xss answer'
text = '<script>window.__xss = "answer"</script><img src=x onerror="window.__xss = 1"> done'

[[rules]]
on = "user"
match = '(?i)^xss tool'
tool_calls = [{{ name = "calculator", arguments = '{{"expression": "<script>window.__xss = 2</script>"}}' }}]

[[rules]]
on = "user"
match = '(?i)^broken tool'
tool_calls = [{{ name = "calculator", arguments = '{{"expression": "1 +"}}' }}]

[[rules]]
on = "tool_error"
text = "the tool failed"
"""

BROWSER_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium: tools/install-test-deps installs Debian's chromium")


@pytest.fixture(scope="module")
def console():
    """The mesh (with the extra scripted rules) and its console's URL."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-console-"))
    demo = DEMO_RULES.read_text()
    head, rest = demo.split("\n[[rules]]\n", 1)  # the first rule's header line
    rules = folder / "rules.toml"
    rules.write_text(head + EXTRA_RULES + "\n[[rules]]\n" + rest)
    config = folder / "mesh.toml"
    config.write_text(
        f'[llm_gateway.providers.scripted]\nrules_file = "{rules}"\n'
        '[orchestrator.agents.planner]\nstrategy = "plan_execute"\ntools = ["calculator"]\nmax_steps = 40\n'
        f'[edge.console]\ntrace_url_template = "{TRACES}/{{trace_id}}"\n'
    )
    with running_mesh(config) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=BROWSER_FLAGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.errors = errors
    yield page
    context.close()


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.append(path)
    return path


def _get(console, path):
    with urllib.request.urlopen(console["edge"] + path, timeout=10) as answer:
        return json.load(answer)


def _start_from_page(page, console, objective):
    page.goto(console["edge"] + "/runs")
    page.get_by_label("Objective").fill(objective)
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/runs/*")
    return page.url.rsplit("/", 1)[1]


def _wait_terminal(console, run_id, patience=30):
    deadline = time.monotonic() + patience
    while True:
        run = _get(console, f"/v1/runs/{run_id}")["run"]
        if run["state"] in ("RUN_STATE_SUCCEEDED", "RUN_STATE_FAILED", "RUN_STATE_CANCELLED"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']}"
        time.sleep(0.1)


def test_a_run_started_from_the_page_streams_the_calculator_and_the_answer(page, console):
    run_id = _start_from_page(page, console, "What is 17 * 23 + sqrt(144)?")
    tool = page.locator("li.tool[data-tool=calculator]").first
    tool.wait_for(timeout=20_000)
    output = page.get_by_test_id("run-output")
    output.wait_for(timeout=20_000)
    assert "403" in output.inner_text()
    assert "17 * 23 + sqrt(144)" in tool.locator(".tool-args").inner_text()
    assert "403" in tool.locator(".tool-result").inner_text()
    assert page.get_by_test_id("run-state").inner_text() == "finished"
    assert page.locator("ol.timeline li.span.tool").count() >= 1
    # Started from the page, the run is one trace, linked to the trace UI.
    trace = page.get_by_role("link", name="open the trace").get_attribute("href")
    assert re.fullmatch(TRACES + r"/[0-9a-f]{32}", trace), trace
    _shot(page, "run")
    assert _wait_terminal(console, run_id)["output"] == output.inner_text()
    assert not page.errors, page.errors


def test_a_plan_is_shown_in_stages_with_each_steps_state(page, console):
    page.goto(console["edge"] + "/runs")
    page.get_by_role("form", name="Start a run").get_by_label("Agent").select_option("planner")
    page.get_by_label("Objective").fill("What is 17 * 23 + sqrt(144)?")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/runs/*")
    page.get_by_test_id("run-output").wait_for(timeout=30_000)
    assert "403" in page.get_by_test_id("run-output").inner_text()
    steps = page.locator("li.plan-step")
    assert steps.count() == 3, page.locator("section.plan").inner_text()
    assert page.locator("li.plan-step.succeeded").count() == 3
    # s3 depends on s1 and s2: it is drawn in the second stage.
    assert "s3" in page.locator("ol.plan-layers > li").nth(1).inner_text()
    assert page.locator("ol.timeline li.span.tool").count() >= 3
    _shot(page, "plan")
    assert not page.errors, page.errors


def test_a_reload_mid_run_neither_loses_nor_repeats_tokens(page, console):
    run_id = _start_from_page(page, console, "slow story please")
    answer = page.get_by_test_id("answer-text")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=answer-text]').textContent.split(' ').length > 8",
        timeout=20_000,
    )
    assert _get(console, f"/v1/runs/{run_id}")["run"]["state"] == "RUN_STATE_RUNNING"
    page.reload()
    page.get_by_test_id("run-output").wait_for(timeout=30_000)
    finished = _wait_terminal(console, run_id)
    assert finished["state"] == "RUN_STATE_SUCCEEDED"
    assert answer.text_content() == finished["output"]
    assert finished["output"].split() == [f"w{i}" for i in range(SLOW_WORDS)]
    assert not page.errors, page.errors


def test_cancel_from_the_page_cancels_the_run(page, console):
    run_id = _start_from_page(page, console, "slow story to cancel")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=answer-text]').textContent.length > 0",
        timeout=20_000,
    )
    page.get_by_role("button", name="Cancel run").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=run-state]').textContent === 'cancelled'",
        timeout=20_000,
    )
    assert _wait_terminal(console, run_id)["state"] == "RUN_STATE_CANCELLED"
    assert not page.errors, page.errors


def test_markup_in_an_answer_and_a_tool_result_is_shown_not_run(page, console):
    for objective in ("xss answer", "xss tool"):
        _start_from_page(page, console, objective)
        page.get_by_test_id("run-output").wait_for(timeout=20_000)
        assert page.evaluate("() => window.__xss") is None, f"markup ran for {objective!r}"
        assert page.locator("main script, main img").count() == 0
    _start_from_page(page, console, "xss answer")
    page.get_by_test_id("run-output").wait_for(timeout=20_000)
    assert "<script>" in page.get_by_test_id("run-output").inner_text()
    _start_from_page(page, console, "xss tool")
    tool = page.locator("li.tool[data-tool=calculator]").first
    tool.locator(".tool-result").wait_for(timeout=20_000)
    assert "<script>" in tool.locator(".tool-args").inner_text()
    assert page.evaluate("() => window.__xss") is None
    headers = urllib.request.urlopen(console["edge"] + "/", timeout=10).headers
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


def _alerting():
    alerting = importlib.import_module("agentmesh.alerting.v1.alerting_service_pb2")
    alert = importlib.import_module("agentmesh.alerting.v1.alert_pb2")
    stub_module = importlib.import_module("agentmesh.alerting.v1.alerting_service_pb2_grpc")
    return alerting, alert, stub_module


def test_a_failing_tools_alert_is_shown_and_silenced_from_the_page(stubs, page, console):
    for _ in range(5):
        page.goto(console["edge"] + "/runs")
        run_id = _start_from_page(page, console, "broken tool")
        _wait_terminal(console, run_id)
    page.goto(console["edge"] + "/alerts")
    alert_item = page.locator("li.alert[data-rule=ToolFailing]").first
    alert_item.wait_for(timeout=30_000)
    assert "calculator" in alert_item.inner_text()
    alert_item.get_by_role("button", name="Silence…").click()
    assert 'tool="calculator"' in page.get_by_label("Matchers, one per line").input_value()
    page.get_by_label("Comment").fill("known: a test breaks it on purpose")
    page.get_by_role("button", name="Create silence").click()
    page.locator("table.silences tbody tr").first.wait_for(timeout=10_000)
    alerting, alert, stub_module = _alerting()
    matcher = alert.Matcher(name="alertname", value="ToolFailing", type=alert.MATCH_TYPE_EQUAL)
    with connect(console["alerting"]) as channel:
        stub = stub_module.AlertingServiceStub(channel)
        deadline = time.monotonic() + 20
        while True:
            listed = stub.ListAlerts(alerting.ListAlertsRequest(matchers=[matcher]), timeout=5).alerts
            if listed and all(one.silenced for one in listed):
                break
            assert time.monotonic() < deadline, f"not silenced: {listed}"
            time.sleep(0.2)
        silences = stub.ListSilences(alerting.ListSilencesRequest(), timeout=5).silences
    assert any(s.comment == "known: a test breaks it on purpose" for s in silences)
    page.locator("li.alert[data-silenced=true]").first.wait_for(timeout=15_000)
    _shot(page, "alerts")
    # Expiring it from the page ends it.
    page.locator("table.silences tbody tr").first.get_by_role("button", name="Expire").click()
    with connect(console["alerting"]) as channel:
        stub = stub_module.AlertingServiceStub(channel)
        deadline = time.monotonic() + 20
        while True:
            silences = stub.ListSilences(alerting.ListSilencesRequest(), timeout=5).silences
            mine = [s for s in silences if s.comment == "known: a test breaks it on purpose"]
            expired = importlib.import_module("agentmesh.alerting.v1.silence_pb2").SILENCE_STATE_EXPIRED
            if mine and all(s.state == expired for s in mine):
                break
            assert time.monotonic() < deadline, f"not expired: {mine}"
            time.sleep(0.2)
    assert not page.errors, page.errors


def test_the_audit_page_finds_the_runs_calls_and_charts_their_cost(page, console):
    run_id = _start_from_page(page, console, "What is 17 * 23 + sqrt(144)?")
    _wait_terminal(console, run_id)
    page.goto(f"{console['edge']}/audit?run={run_id}")
    page.locator("table.audit tbody tr").first.wait_for(timeout=15_000)
    deadline = time.monotonic() + 20
    while True:
        types = page.locator("table.audit tbody tr").evaluate_all("rows => rows.map(r => r.dataset.type)")
        if "EVENT_TYPE_LLM_CALL" in types and "EVENT_TYPE_TOOL_CALL" in types:
            break
        assert time.monotonic() < deadline, types
        page.get_by_role("button", name="Search").click()
        time.sleep(0.3)
    page.get_by_label("Type").select_option("TOOL_CALL")
    page.get_by_role("button", name="Search").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('table.audit tbody tr')].every(r => r.dataset.type === 'EVENT_TYPE_TOOL_CALL')"
    )
    assert "calculator" in page.locator("table.audit tbody").inner_text()
    chart = page.get_by_test_id("cost-chart")
    chart.wait_for(timeout=15_000)
    assert chart.locator("rect.bar").count() >= 1
    assert "Intact" in page.get_by_test_id("chain-result").inner_text()
    _shot(page, "audit")
    assert not page.errors, page.errors


def test_the_health_page_shows_every_service(page, console):
    page.goto(console["edge"] + "/health")
    page.get_by_test_id("mesh-ready").wait_for(timeout=15_000)
    for service in ("edge", "orchestrator", "llm-gateway", "tool-runner", "audit", "alerting"):
        assert page.locator(f"section.service[data-service={service}]").count() == 1, service
    page.wait_for_function("() => document.querySelector('[data-testid=mesh-ready]').textContent.startsWith('Every')", timeout=20_000)
    assert not page.errors, page.errors


def test_signing_in_trades_the_key_for_a_cookie_no_script_can_read(browser, tmp_path):
    binary = BIN_DIR / "agentmesh"
    made = subprocess.run(
        [str(binary), "keys", "create", "--file", "keys.toml", "-o", "json", "--tenant", "acme",
         "--subject", "alice", "--scopes", "runs:read runs:write agents:read audit:read"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True,
    )
    key = json.loads(made.stdout)["key"]
    config = tmp_path / "mesh.toml"
    config.write_text(f'[auth]\nmethods = ["api_key"]\nkeys_file = "{tmp_path / "keys.toml"}"\n')
    with running_mesh(config) as mesh:
        context = browser.new_context()
        page = context.new_page()
        page.goto(mesh["edge"] + "/runs")
        page.get_by_role("heading", name="Sign in to agentmesh").wait_for(timeout=15_000)
        page.get_by_label("API key").fill("am_live_nosuchkey_0000000000000000")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("alert").wait_for(timeout=10_000)
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        run_id = _start_from_page(page, mesh, "What is 17 * 23 + sqrt(144)?")
        page.get_by_test_id("run-output").wait_for(timeout=20_000)
        assert "403" in page.get_by_test_id("run-output").inner_text()
        assert run_id
        assert "agentmesh_session" not in page.evaluate("() => document.cookie")
        assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
        (cookie,) = [c for c in context.cookies() if c["name"] == "agentmesh_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert key not in json.dumps(context.storage_state())
        context.close()
