"""The contract as a Python platform team sees it: stubs generated from
proto/ by grpcio-tools, talking to the real binaries over real gRPC."""

import importlib

import grpc
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import SERVICES, connect

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
        with connect(mesh[name]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", grpc_name):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, (name, service)


def test_request_id_is_echoed(mesh):
    with connect(mesh["audit"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        _, call = stub.Check.with_call(
            health_pb2.HealthCheckRequest(service=""), timeout=5, metadata=[("x-request-id", "py-abc")]
        )
        headers = dict(call.initial_metadata())
    assert headers.get("x-request-id") == "py-abc"
