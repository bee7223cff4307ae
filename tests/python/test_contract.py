"""The contract as a Python platform team sees it: stubs generated from
proto/ by grpcio-tools, talking to the real binaries over real gRPC."""

import importlib

import grpc
import pytest
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import SERVICES

# (service, stub module, stub class, RPC, request message, request fields)
NOT_BUILT_YET = [
    ("alerting", "agentmesh.alerting.v1", "AlertingService", "ListSilences", "ListSilencesRequest", {}),
]


def _modules(package, service):
    snake = "".join("_" + c.lower() if c.isupper() else c for c in service).lstrip("_")
    messages = importlib.import_module(f"{package}.{snake}_pb2")
    grpc_module = importlib.import_module(f"{package}.{snake}_pb2_grpc")
    return messages, grpc_module


def test_stubs_compile_and_carry_the_contract(stubs):
    run = importlib.import_module("agentmesh.orchestrator.v1.run_pb2")
    event = run.RunEvent(run_id="r1", sequence=3)
    event.token_delta.text = "4"
    assert event.WhichOneof("event") == "token_delta"
    failed = run.RunEvent(run_id="r1", sequence=4)
    failed.run_failed.error.CopyFrom(status_pb2.Status(code=5, message="no such agent"))
    assert failed.run_failed.error.code == 5
    assert run.RunState.Value("RUN_STATE_CANCELLED") > 0


def test_every_service_is_serving(mesh):
    for name, grpc_name in SERVICES:
        with grpc.insecure_channel(mesh[name]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", grpc_name):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, (name, service)


@pytest.mark.parametrize("service,package,stub_name,rpc,request_name,fields", NOT_BUILT_YET)
def test_rpcs_not_built_yet_answer_unimplemented(stubs, mesh, service, package, stub_name, rpc, request_name, fields):
    messages, grpc_module = _modules(package, stub_name)
    request = getattr(messages, request_name)(**fields)
    with grpc.insecure_channel(mesh[service]) as channel:
        stub = getattr(grpc_module, f"{stub_name}Stub")(channel)
        with pytest.raises(grpc.RpcError) as raised:
            getattr(stub, rpc)(request, timeout=5, metadata=[("x-request-id", "py-test-1")])
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"{stub_name}/{rpc}" in raised.value.details()
    assert "not built yet" in raised.value.details()


def test_request_id_is_echoed(mesh):
    with grpc.insecure_channel(mesh["audit"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        _, call = stub.Check.with_call(
            health_pb2.HealthCheckRequest(service=""), timeout=5, metadata=[("x-request-id", "py-abc")]
        )
        headers = dict(call.initial_metadata())
    assert headers.get("x-request-id") == "py-abc"
