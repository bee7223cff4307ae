"""The HTTP edge with clients nobody here wrote: the official `openai`
package against the OpenAI-compatible API (the scripted provider, a
fault-injecting upstream behind a fallback, a rate limit), `curl -N` on a
run's Server-Sent Events, the `websockets` package on its WebSocket, and
`openapi-spec-validator` on /openapi.json, whose every route is then called,
and the official `mcp` SDK on the MCP server at /mcp.
"""

import http.server
import importlib
import json
import pathlib
import secrets
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import websockets.sync.client
from openapi_spec_validator import validate

from conftest import connect, running_mesh

OBJECTIVE = "What is 17 * 23 + sqrt(144)?"
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluates an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


def client(mesh, api_key=None):
    return openai.OpenAI(base_url=f"{mesh['edge']}/v1", api_key=api_key or "unused", max_retries=0)


def post_json(url, body, headers=None):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


# === the OpenAI-compatible API ===


def test_models_list_the_gateway_routes(mesh):
    models = [model.id for model in client(mesh).models.list()]
    assert "default" in models
    assert client(mesh).models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError):
        client(mesh).models.retrieve("no-such-route")


def test_a_tool_call_round_trip_with_usage(mesh):
    messages = [{"role": "user", "content": OBJECTIVE}]
    first = client(mesh).chat.completions.create(
        model="default", messages=messages, tools=[CALCULATOR], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "calculator"
    assert "17" in json.loads(call.function.arguments)["expression"]
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": 403})},
    ]
    second = client(mesh).chat.completions.create(model="default", messages=messages, tools=[CALCULATOR])
    assert second.choices[0].finish_reason == "stop"
    assert "403" in second.choices[0].message.content


def test_a_streamed_completion_ends_with_usage(mesh):
    stream = client(mesh).chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "scripted" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_streamed_tool_calls_come_as_argument_deltas(mesh):
    stream = client(mesh).chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": OBJECTIVE}],
        tools=[CALCULATOR],
        stream=True,
    )
    calls = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function.name:
                entry["name"] = delta.function.name
            entry["arguments"] += delta.function.arguments or ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "calculator"
    assert "sqrt(144)" in json.loads(calls[0]["arguments"])["expression"]


def test_bad_parameters_are_named(mesh):
    with pytest.raises(openai.BadRequestError) as refused:
        client(mesh).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x"}], max_tokens=-5
        )
    assert refused.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError) as unknown:
        client(mesh).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["code"] == "model_not_found"


class FailingUpstream(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible provider that is down: every call is a 503."""

    calls = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        FailingUpstream.calls += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode()
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def faulty_mesh():
    """A mesh whose `flaky` route's upstream always fails (falling back to
    the scripted model), and whose `limited` route takes one call a minute."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    config = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-edge-")) / "mesh.toml"
    config.write_text(
        f"""
[llm_gateway.providers.flaky]
kind = "openai"
base_url = "http://127.0.0.1:{upstream.server_port}/v1"
api_key_env = "FLAKY_API_KEY"
[llm_gateway.routes.flaky]
target = "flaky/gpt-4o-mini"
fallbacks = ["scripted/demo"]
[llm_gateway.routes.limited]
target = "scripted/demo"
[llm_gateway.rate_limits.routes.limited]
requests_per_minute = 1
burst = 1
[llm_gateway.routes.limited_node]
target = "scripted/demo"
[llm_gateway.rate_limits.routes.limited_node]
requests_per_minute = 1
burst = 1
"""
    )
    with running_mesh(config, env={"FLAKY_API_KEY": "sk-test"}) as addresses:
        yield addresses
    upstream.shutdown()


def test_the_gateway_fallback_is_invisible(faulty_mesh):
    before = FailingUpstream.calls
    answer = client(faulty_mesh).chat.completions.create(
        model="flaky", messages=[{"role": "user", "content": OBJECTIVE}], tools=[CALCULATOR]
    )
    assert FailingUpstream.calls > before, "the failing upstream was never tried"
    assert answer.choices[0].message.tool_calls[0].function.name == "calculator"
    stream = client(faulty_mesh).chat.completions.create(
        model="flaky", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    assert "scripted" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_a_rate_limit_is_a_rate_limit_error_with_its_delay(faulty_mesh):
    messages = [{"role": "user", "content": "hello"}]
    client(faulty_mesh).chat.completions.create(model="limited", messages=messages)
    with pytest.raises(openai.RateLimitError) as limited:
        client(faulty_mesh).chat.completions.create(model="limited", messages=messages)
    retry_after = float(limited.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert int(limited.value.response.headers["retry-after-ms"]) > 0
    # The streaming form is refused the same way, before any chunk.
    with pytest.raises(openai.RateLimitError):
        client(faulty_mesh).chat.completions.create(model="limited", messages=messages, stream=True)


def test_the_openai_npm_package_against_the_edge(faulty_mesh):
    """The official `openai` npm package (tests/openai-node): a tool call
    round trip with usage, a stream with its usage chunk, a 429 as its
    RateLimitError with the retry delay; `flaky` answers through the
    gateway's fallback."""
    node_dir = pathlib.Path(__file__).resolve().parents[1] / "openai-node"
    assert (node_dir / "node_modules" / "openai").is_dir(), "run tools/install-test-deps"
    result = subprocess.run(
        ["node", "check.mjs", f"{faulty_mesh['edge']}/v1", "flaky", "limited_node"],
        cwd=node_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["tool"] == "calculator" and "sqrt(144)" in seen["arguments"]["expression"]
    assert seen["usage"]["prompt_tokens"] > 0
    assert "403" in seen["answer"]
    assert "scripted" in seen["streamed"] and seen["streamUsage"]["completion_tokens"] > 0
    assert seen["rateLimited"] is True and seen["status"] == 429
    assert 1 <= float(seen["retryAfter"]) <= 60


# === runs over REST, SSE and WebSocket ===


def full_event_list(mesh, stubs, run_id):
    """The stored events by gRPC (StreamRun from the start), as sequences."""
    messages = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2")
    services = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2_grpc")
    with connect(mesh["orchestrator"]) as channel:
        stub = services.OrchestratorServiceStub(channel)
        request = messages.StreamRunRequest(run_id=run_id)
        return [
            response.event.sequence
            for response in stub.StreamRun(request, timeout=30)
            if response.event.sequence > 0
        ]


def sse_ids(lines):
    return [int(line[len("id:"):].strip()) for line in lines if line.startswith("id:")]


def test_curl_streams_a_run_and_resumes_from_last_event_id(mesh, stubs):
    run = post_json(f"{mesh['edge']}/v1/runs", {"objective": OBJECTIVE, "labels": {"via": "sse"}})
    run_id = run["run_id"]
    url = f"{mesh['edge']}/v1/runs/{run_id}/events"
    # Cut after five events.
    curl = subprocess.Popen(["curl", "-sN", url], stdout=subprocess.PIPE, text=True)
    first = []
    for line in curl.stdout:
        first.append(line.rstrip("\n"))
        if len(sse_ids(first)) == 5 and line.strip() == "":
            break
    curl.kill()
    curl.wait()
    assert sse_ids(first) == [1, 2, 3, 4, 5]
    resumed = subprocess.run(
        ["curl", "-sN", "-H", "Last-Event-ID: 5", url], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    assert "event: run_finished" in resumed
    union = sse_ids(first) + sse_ids(resumed)
    assert union == full_event_list(mesh, stubs, run_id)
    finished = get_json(f"{mesh['edge']}/v1/runs/{run_id}")
    assert finished["run"]["state"] == "RUN_STATE_SUCCEEDED"
    assert "403" in finished["run"]["output"]
    # ?after_sequence= does the same by hand.
    by_query = subprocess.run(
        ["curl", "-sN", f"{url}?after_sequence=5"], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    assert sse_ids(by_query) == sse_ids(resumed)


def test_a_websocket_streams_a_run_and_resumes_by_sequence(mesh, stubs):
    run_id = post_json(f"{mesh['edge']}/v1/runs", {"objective": OBJECTIVE})["run_id"]
    ws_base = mesh["edge"].replace("http://", "ws://")
    first = []
    with websockets.sync.client.connect(f"{ws_base}/v1/runs/{run_id}/ws") as socket:
        while len(first) < 5:
            first.append(json.loads(socket.recv(timeout=30))["event"]["sequence"])
    rest = []
    with websockets.sync.client.connect(f"{ws_base}/v1/runs/{run_id}/ws?after_sequence=5") as socket:
        try:
            while True:
                message = json.loads(socket.recv(timeout=30))
                assert "error" not in message, message
                rest.append(message["event"]["sequence"])
        except websockets.exceptions.ConnectionClosedOK as closed:
            assert closed.rcvd.code == 1000
    assert first + rest == full_event_list(mesh, stubs, run_id)


def test_rest_errors_are_statuses_with_details(mesh):
    with pytest.raises(urllib.error.HTTPError) as bad:
        post_json(f"{mesh['edge']}/v1/runs", {"objective": ""})
    assert bad.value.code == 400
    body = json.loads(bad.value.read())
    assert body["code"] == 3
    fields = [v["field"] for d in body["details"] for v in d.get("field_violations", [])]
    assert "objective" in fields
    with pytest.raises(urllib.error.HTTPError) as missing:
        get_json(f"{mesh['edge']}/v1/runs/no-such-run")
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as cancelled:
        run_id = post_json(f"{mesh['edge']}/v1/runs", {"objective": OBJECTIVE})["run_id"]
        time.sleep(2)
        post_json(f"{mesh['edge']}/v1/runs/{run_id}:cancel", {"reason": "test"})
    assert cancelled.value.code == 400  # FAILED_PRECONDITION: it had ended


# === the OpenAPI document ===


def test_openapi_is_valid_and_every_route_in_it_is_served(mesh):
    document = get_json(f"{mesh['edge']}/openapi.json")
    validate(document)
    checked = 0
    for path, operations in document["paths"].items():
        for verb in operations:
            url = mesh["edge"] + path.replace("{run_id}", "no-such-run").replace("{name}", "x").replace(
                "{model}", "default"
            )
            request = urllib.request.Request(
                url,
                data=b"{}" if verb == "post" else None,
                headers={"content-type": "application/json"},
                method=verb.upper(),
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    status, body = answer.status, answer.read(2000)
            except urllib.error.HTTPError as err:
                status, body = err.code, err.read(2000)
            assert status != 405, f"{verb} {path} is documented but not served"
            assert b"no route" not in body, f"{verb} {path} is documented but not served"
            checked += 1
    assert checked >= 12


# === the MCP server ===


def test_the_mcp_sdk_lists_and_calls_the_mesh_tools_and_runs_an_agent(mesh):
    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def session_work():
        async with streamable_http_client(f"{mesh['edge']}/mcp") as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tools = {tool.name: tool for tool in (await session.list_tools()).tools}
                assert {"calculator", "run_agent"} <= set(tools)
                assert tools["calculator"].input_schema["type"] == "object"
                calculated = await session.call_tool("calculator", {"expression": "17 * 23 + sqrt(144)"})
                assert not calculated.is_error and calculated.structured_content == {"result": 403}
                progress = []

                async def on_progress(value, total, message):
                    progress.append((value, message))

                answer = await session.call_tool(
                    "run_agent", {"objective": OBJECTIVE}, progress_callback=on_progress
                )
                return answer, progress

    answer, progress = anyio.run(session_work)
    assert not answer.is_error
    assert "403" in answer.content[0].text
    assert answer.structured_content["run_id"]
    messages = [message for _, message in progress]
    assert "calling calculator" in messages, messages
    assert [value for value, _ in progress] == sorted(value for value, _ in progress)


# === LiteLLM's proxy with the edge as its OpenAI upstream ===


@pytest.fixture(scope="module")
def litellm_proxy(mesh):
    """LiteLLM's proxy (the `litellm` command of `litellm[proxy]`) with the
    edge as an `openai/…` upstream, configured as one would point it at
    OpenAI."""
    import shutil
    import socket

    command = shutil.which("litellm")
    assert command, "the litellm proxy is not installed: run tools/install-test-deps"
    config = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-litellm-")) / "litellm.yaml"
    master_key = "sk-" + secrets.token_hex(24)
    config.write_text(
        f"""general_settings:
  master_key: {master_key}
model_list:
  - model_name: agentmesh
    litellm_params:
      model: openai/default
      api_base: {mesh['edge']}/v1
      api_key: sk-unused
"""
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [command, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health/liveliness", timeout=1):
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode(errors="replace")[-2000:]
                assert time.monotonic() < deadline, "litellm did not come up"
                time.sleep(0.25)
        yield base, master_key
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_litellm_proxies_to_the_edge_unchanged(litellm_proxy):
    base, master_key = litellm_proxy
    through = openai.OpenAI(base_url=base, api_key=master_key, max_retries=0)
    first = through.chat.completions.create(
        model="agentmesh", messages=[{"role": "user", "content": OBJECTIVE}], tools=[CALCULATOR]
    )
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "calculator"
    assert first.usage.prompt_tokens > 0
    second = through.chat.completions.create(
        model="agentmesh",
        messages=[
            {"role": "user", "content": OBJECTIVE},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": 403})},
        ],
        tools=[CALCULATOR],
    )
    assert "403" in second.choices[0].message.content
    stream = through.chat.completions.create(
        model="agentmesh", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    assert "scripted" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
