"""Alerting as a Python platform team sees it: stubs generated from proto/,
the real `agentmesh up` binary. Tool failures recorded in the audit service
fire the shipped ToolFailing rule; a silence with its end before its start
is refused with a field violation; the shipped rules are listed."""

import importlib
import time
import uuid

import grpc
from google.protobuf import timestamp_pb2

from conftest import connect
from test_runs import _field_violations


def _stubs():
    audit = importlib.import_module("agentmesh.audit.v1.audit_service_pb2")
    events = importlib.import_module("agentmesh.audit.v1.event_pb2")
    audit_grpc = importlib.import_module("agentmesh.audit.v1.audit_service_pb2_grpc")
    alerting = importlib.import_module("agentmesh.alerting.v1.alerting_service_pb2")
    alert = importlib.import_module("agentmesh.alerting.v1.alert_pb2")
    silence = importlib.import_module("agentmesh.alerting.v1.silence_pb2")
    alerting_grpc = importlib.import_module("agentmesh.alerting.v1.alerting_service_pb2_grpc")
    return audit, events, audit_grpc, alerting, alert, silence, alerting_grpc


def test_tool_failures_fire_the_shipped_rule(stubs, mesh):
    audit, events, audit_grpc, alerting, alert, _, alerting_grpc = _stubs()
    tool = f"py-tool-{uuid.uuid4().hex[:8]}"
    batch = []
    for _ in range(5):
        event = events.AuditEvent(
            event_id=str(uuid.uuid4()),
            type=events.EVENT_TYPE_TOOL_CALL,
            service="python-test",
            outcome=events.OUTCOME_FAILURE,
        )
        event.time.GetCurrentTime()
        event.tool_call.tool = tool
        event.tool_call.is_error = True
        batch.append(event)
    with connect(mesh["audit"]) as channel:
        answer = audit_grpc.AuditServiceStub(channel).Record(audit.RecordRequest(events=batch), timeout=10)
        assert answer.accepted_count == 5

    matcher = alert.Matcher(name="tool", value=tool, type=alert.MATCH_TYPE_EQUAL)
    with connect(mesh["alerting"]) as channel:
        stub = alerting_grpc.AlertingServiceStub(channel)
        deadline = time.monotonic() + 30
        while True:
            listed = stub.ListAlerts(alerting.ListAlertsRequest(matchers=[matcher]), timeout=5).alerts
            if listed and listed[0].state == alert.ALERT_STATE_FIRING:
                break
            assert time.monotonic() < deadline, f"no firing alert for {tool}: {listed}"
            time.sleep(0.1)
    fired = listed[0]
    assert fired.labels["alertname"] == "ToolFailing"
    assert fired.severity == alert.SEVERITY_WARNING
    assert fired.rule == "ToolFailing"
    assert len(fired.fingerprint) == 16
    assert tool in fired.annotations["summary"]


def test_a_silence_ending_before_it_starts_is_refused(stubs, mesh):
    _, _, _, alerting, alert, silence, alerting_grpc = _stubs()
    now = int(time.time())
    request = alerting.CreateSilenceRequest(
        silence=silence.Silence(
            matchers=[alert.Matcher(name="alertname", value="ToolFailing")],
            starts_at=timestamp_pb2.Timestamp(seconds=now + 3600),
            ends_at=timestamp_pb2.Timestamp(seconds=now + 60),
            created_by="py@example.com",
            comment="maintenance",
        )
    )
    with connect(mesh["alerting"]) as channel:
        stub = alerting_grpc.AlertingServiceStub(channel)
        try:
            stub.CreateSilence(request, timeout=5)
            raise AssertionError("a silence ending before it starts was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _field_violations(error) == ["silence.ends_at"]
        rules = stub.ListRules(alerting.ListRulesRequest(), timeout=5).rules
    names = [rule.name for rule in rules]
    assert names == sorted(names)
    for shipped in ("ToolFailing", "LlmProviderFailing", "CircuitOpen", "TenantRateLimited", "AuthenticationFailures", "RunsFailing"):
        assert shipped in names, names
    assert all(rule.builtin for rule in rules)
