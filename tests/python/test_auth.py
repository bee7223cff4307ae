"""Identity and access as a Python client sees it, against real binaries with
`api_key` auth and a keys file made by `agentmesh keys create --file`.

* `agentmesh up` with one shared `[auth]` section: a call without a key is
  UNAUTHENTICATED, with a key OK, with a key lacking the method's scope
  PERMISSION_DENIED; a forged tenant header from a user's key is refused; a
  run still works end to end (the services trust each other with the keys
  the mesh made in memory).
* The tool runner and the audit service as separate processes, each with the
  keys file, the tool runner presenting its own service key from a
  `credential_file`: a direct tool call is recorded in the audit trail.
"""

import importlib
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import time

import grpc
import pytest

from conftest import BIN_DIR, SERVICES, _free_base_port, _port_free, connect, wait_serving


def _agentmesh(*args, cwd):
    binary = BIN_DIR / "agentmesh"
    assert binary.is_file(), f"{binary} is not built: run `make test`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    return subprocess.run(
        [str(binary), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False
    )


def _create_key(directory, *flags):
    """`agentmesh keys create --file keys.toml …`; the plain key and its id."""
    made = _agentmesh("keys", "create", "--file", "keys.toml", "-o", "json", *flags, cwd=directory)
    assert made.returncode == 0, made.stderr
    answer = json.loads(made.stdout)
    assert answer["key"].startswith("am_live_") and answer["key"].startswith(answer["id"])
    return answer["key"], answer["id"]


def _stop(process):
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()


def _code(call):
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


@pytest.fixture(scope="module")
def secured():
    """`agentmesh up` with API keys on; its addresses and keys."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-auth-"))
    keys = {
        "writer": _create_key(directory, "--tenant", "acme", "--subject", "alice", "--scopes", "runs:read runs:write"),
        "reader": _create_key(directory, "--tenant", "acme", "--subject", "bob", "--scopes", "runs:read"),
        "other": _create_key(directory, "--tenant", "globex", "--subject", "carol", "--scopes", "runs:read"),
        "auditor": _create_key(directory, "--tenant", "acme", "--subject", "dana", "--scopes", "audit:read"),
    }
    listed = _agentmesh("keys", "list", "--file", "keys.toml", "-o", "json", cwd=directory)
    assert listed.returncode == 0, listed.stderr
    assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == {k[1] for k in keys.values()}
    (directory / "mesh.toml").write_text(
        '[auth]\nmethods = ["api_key"]\nkeys_file = "keys.toml"\nreload_interval = "200ms"\n\n'
        '[orchestrator.log]\nlevel = "warn"\n'
    )
    base = _free_base_port()
    process = subprocess.Popen(
        [str(BIN_DIR / "agentmesh"), "up", "-c", "mesh.toml", "--base-port", str(base), "--log-format", "json"],
        cwd=directory,
        env={k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    addresses = {name: f"127.0.0.1:{base + i}" for i, (name, _) in enumerate(SERVICES)}
    try:
        for name, _ in SERVICES:
            # Health needs no credential: probes carry none.
            with grpc.insecure_channel(addresses[name]) as channel:
                wait_serving(channel)
        yield {"addresses": addresses, "keys": {name: key for name, (key, _) in keys.items()}, "dir": directory}
    finally:
        _stop(process)
    assert process.returncode == 0, process.stderr.read().decode(errors="replace")[-2000:]


def _orchestrator():
    messages = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2")
    services = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2_grpc")
    return messages, services


def test_no_key_is_unauthenticated_a_key_ok_a_missing_scope_denied(stubs, secured):
    messages, services = _orchestrator()
    address, keys = secured["addresses"]["orchestrator"], secured["keys"]
    request = messages.ListRunsRequest(page_size=5)

    with grpc.insecure_channel(address) as channel:
        code, details = _code(lambda: services.OrchestratorServiceStub(channel).ListRuns(request, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "--api-key" in details

    with connect(address, api_key=keys["reader"]) as channel:
        services.OrchestratorServiceStub(channel).ListRuns(request, timeout=10)
        code, details = _code(
            lambda: services.OrchestratorServiceStub(channel).StartRun(
                messages.StartRunRequest(objective="What is 2 + 2?"), timeout=10
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "runs:write" in details

    # A made-up key of the right shape: refused without saying whether it exists.
    forged = keys["reader"][:-4] + ("AAAA" if not keys["reader"].endswith("AAAA") else "BBBB")
    with connect(address, api_key=forged) as channel:
        code, details = _code(lambda: services.OrchestratorServiceStub(channel).ListRuns(request, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert forged not in details


def test_a_user_cannot_choose_a_tenant_by_header(stubs, secured):
    messages, services = _orchestrator()
    with connect(secured["addresses"]["orchestrator"], api_key=secured["keys"]["reader"]) as channel:
        code, _ = _code(
            lambda: services.OrchestratorServiceStub(channel).ListRuns(
                messages.ListRunsRequest(page_size=5), metadata=[("x-agentmesh-tenant", "globex")], timeout=10
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_run_works_through_the_services_and_stays_in_its_tenant(stubs, secured):
    messages, services = _orchestrator()
    address, keys = secured["addresses"]["orchestrator"], secured["keys"]
    with connect(address, api_key=keys["writer"]) as channel:
        stub = services.OrchestratorServiceStub(channel)
        final = None
        for response in stub.Run(messages.RunRequest(objective="What is 6 * 7?"), timeout=60):
            if response.event.WhichOneof("event") in ("run_finished", "run_failed"):
                final = response.event
        assert final is not None and final.WhichOneof("event") == "run_finished", final
        run_id = final.run_id

    with connect(address, api_key=keys["reader"]) as channel:
        run = services.OrchestratorServiceStub(channel).GetRun(messages.GetRunRequest(run_id=run_id), timeout=10)
        assert run.run.run_id == run_id
    with connect(address, api_key=keys["other"]) as channel:
        code, _ = _code(
            lambda: services.OrchestratorServiceStub(channel).GetRun(messages.GetRunRequest(run_id=run_id), timeout=10)
        )
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)


def test_a_revoked_key_is_refused_once_the_file_is_reloaded(stubs, secured):
    messages, services = _orchestrator()
    directory = secured["dir"]
    key, key_id = _create_key(directory, "--tenant", "acme", "--subject", "eve", "--scopes", "runs:read")
    request = messages.ListRunsRequest(page_size=1)
    with connect(secured["addresses"]["orchestrator"], api_key=key) as channel:
        stub = services.OrchestratorServiceStub(channel)
        deadline = time.monotonic() + 15
        while True:  # the new key appears on the next reload
            try:
                stub.ListRuns(request, timeout=10)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline, "the new key was never loaded"
                time.sleep(0.2)
        revoked = _agentmesh("keys", "revoke", key_id, "--file", "keys.toml", cwd=directory)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 15
        while True:
            try:
                stub.ListRuns(request, timeout=10)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.2)


def _service(name, directory, env):
    binary = BIN_DIR / f"agentmesh-{name}"
    if not binary.is_file():
        pytest.skip(f"{binary} is not built: run `make test`")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    return subprocess.Popen(
        [str(binary)],
        cwd=directory,
        env={**base_env, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _free_port():
    for port in range(41000 + os.getpid() % 1000 * 7, 60000, 13):
        if _port_free(port) and _port_free(port + 1000):
            return port
    raise RuntimeError("no free loopback port")


def test_separate_services_trust_each_other_through_their_credential_files(stubs):
    directory = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-auth-services-"))
    caller, _ = _create_key(directory, "--tenant", "acme", "--subject", "ci", "--scopes", "tools:execute")
    auditor, _ = _create_key(directory, "--tenant", "acme", "--subject", "dana", "--scopes", "audit:read")
    service_key, _ = _create_key(directory, "--platform", "--subject", "tool-runner", "--scopes", "service audit:write")
    (directory / "tool-runner.key").write_text(service_key + "\n")
    audit_port = _free_port()
    audit = _service(
        "audit",
        directory,
        {
            "AGENTMESH_AUDIT__SERVER__PORT": str(audit_port),
            "AGENTMESH_AUDIT__AUTH__METHODS": '["api_key"]',
            "AGENTMESH_AUDIT__AUTH__KEYS_FILE": "keys.toml",
        },
    )
    processes = [audit]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{audit_port}") as channel:
            wait_serving(channel, "agentmesh.audit.v1.AuditService")
        tools_port = _free_port()
        tools = _service(
            "tool-runner",
            directory,
            {
                "AGENTMESH_TOOL_RUNNER__SERVER__PORT": str(tools_port),
                "AGENTMESH_TOOL_RUNNER__AUTH__METHODS": '["api_key"]',
                "AGENTMESH_TOOL_RUNNER__AUTH__KEYS_FILE": "keys.toml",
                "AGENTMESH_TOOL_RUNNER__AUTH__CREDENTIAL_FILE": "tool-runner.key",
                "AGENTMESH_TOOL_RUNNER__AUDIT__URL": f"http://127.0.0.1:{audit_port}",
            },
        )
        processes.append(tools)
        tool_messages = importlib.import_module("agentmesh.tools.v1.tool_runner_service_pb2")
        tool_services = importlib.import_module("agentmesh.tools.v1.tool_runner_service_pb2_grpc")
        with grpc.insecure_channel(f"127.0.0.1:{tools_port}") as channel:
            wait_serving(channel, "agentmesh.tools.v1.ToolRunnerService")
        call_id = f"py-auth-{os.getpid()}"
        request = tool_messages.ExecuteToolRequest(
            tool="calculator", arguments_json='{"expression": "17*23"}', call_id=call_id
        )
        with grpc.insecure_channel(f"127.0.0.1:{tools_port}") as channel:
            code, _ = _code(lambda: tool_services.ToolRunnerServiceStub(channel).ExecuteTool(request, timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        with connect(f"127.0.0.1:{tools_port}", api_key=caller) as channel:
            result = tool_services.ToolRunnerServiceStub(channel).ExecuteTool(request, timeout=10)
            assert not result.is_error and "391" in result.output_json

        # The tool runner's audit event reached the audit service, sent with
        # its own service key: the caller's tenant can read it.
        audit_messages = importlib.import_module("agentmesh.audit.v1.audit_service_pb2")
        audit_services = importlib.import_module("agentmesh.audit.v1.audit_service_pb2_grpc")
        events = importlib.import_module("agentmesh.audit.v1.event_pb2")
        with connect(f"127.0.0.1:{audit_port}", api_key=auditor) as channel:
            stub = audit_services.AuditServiceStub(channel)
            wanted = events.EventFilter(types=[events.EVENT_TYPE_TOOL_CALL])
            deadline = time.monotonic() + 20
            while True:
                page = stub.Query(audit_messages.QueryRequest(filter=wanted, page_size=100), timeout=10)
                if any(event.tool_call.call_id == call_id for event in page.events):
                    break
                assert time.monotonic() < deadline, "the tool call was never recorded"
                time.sleep(0.2)
            code, _ = _code(
                lambda: stub.Record(audit_messages.RecordRequest(events=[events.AuditEvent(event_id="x")]), timeout=10)
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for process in reversed(processes):
            _stop(process)
