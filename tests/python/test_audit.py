"""The audit log as a Python platform team sees it: stubs generated from
proto/, the real `agentmesh up` binary. Records a batch, pages through Query,
reads Export as CSV with Python's csv module, and checks the field
violations of a rejected event."""

import csv
import importlib
import io
import json

import grpc
import pytest

from conftest import connect
from test_runs import _field_violations


def _audit(stubs):
    messages = importlib.import_module("agentmesh.audit.v1.audit_service_pb2")
    events = importlib.import_module("agentmesh.audit.v1.event_pb2")
    services = importlib.import_module("agentmesh.audit.v1.audit_service_pb2_grpc")
    return messages, events, services


def _tool_call(events, event_id, tenant, tool, failed=False):
    event = events.AuditEvent(
        event_id=event_id,
        type=events.EVENT_TYPE_TOOL_CALL,
        service="python-test",
        tenant=tenant,
        outcome=events.OUTCOME_FAILURE if failed else events.OUTCOME_SUCCESS,
    )
    event.tool_call.tool = tool
    event.tool_call.is_error = failed
    event.attributes["note"] = 'comma, "quote"'
    return event


def test_query_pages_and_export_is_csv_python_reads(stubs, mesh):
    messages, events, services = _audit(stubs)
    with connect(mesh["audit"]) as channel:
        stub = services.AuditServiceStub(channel)
        batch = [_tool_call(events, f"py-{i:03d}", "py-tenant", "calculator", failed=i % 4 == 0) for i in range(45)]
        bad = events.AuditEvent(service="python-test")  # no event_id, no type
        recorded = stub.Record(messages.RecordRequest(events=batch + [bad]), timeout=10)
        assert (recorded.accepted_count, recorded.rejected_count) == (45, 1)
        rejected = recorded.results[45]
        assert rejected.status == messages.RECORD_STATUS_REJECTED
        assert "events[45].event_id" in rejected.error.message

        # Re-sending is acknowledged, not stored twice.
        again = stub.Record(messages.RecordRequest(events=batch[:5]), timeout=10)
        assert again.duplicate_count == 5

        wanted = events.EventFilter(tenants=["py-tenant"])
        seen, token, pages = [], "", 0
        while True:
            page = stub.Query(
                messages.QueryRequest(filter=wanted, order=messages.SORT_ORDER_OLDEST_FIRST, page_size=10, page_token=token),
                timeout=10,
            )
            pages += 1
            seen += [e.event_id for e in page.events]
            token = page.next_page_token
            if not token:
                break
        assert pages == 5
        assert seen == [f"py-{i:03d}" for i in range(45)]

        chunks = list(
            stub.Export(messages.ExportRequest(filter=wanted, format=messages.EXPORT_FORMAT_CSV), timeout=10)
        )
        assert chunks[0].content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(b"".join(c.data for c in chunks).decode("utf-8"))))
        assert len(rows) == 45 == sum(c.event_count for c in chunks)
        assert rows[0]["event_id"] == "py-000"
        assert rows[0]["type"] == "TOOL_CALL"
        assert rows[0]["outcome"] == "FAILURE"
        assert rows[1]["tool_call.tool"] == "calculator"
        assert rows[1]["attributes.note"] == 'comma, "quote"'
        assert rows[1]["chain"] == "tenant:py-tenant"

        lines = b"".join(
            c.data
            for c in stub.Export(messages.ExportRequest(filter=wanted, format=messages.EXPORT_FORMAT_JSONL), timeout=10)
        ).decode("utf-8")
        parsed = [json.loads(line) for line in lines.splitlines()]
        assert [p["eventId"] for p in parsed] == seen

        verified = stub.VerifyChain(messages.VerifyChainRequest(chain="tenant:py-tenant"), timeout=10)
        assert verified.ok and verified.events_checked == 45


def test_bad_requests_name_the_field(stubs, mesh):
    messages, events, services = _audit(stubs)
    with connect(mesh["audit"]) as channel:
        stub = services.AuditServiceStub(channel)
        with pytest.raises(grpc.RpcError) as empty:
            stub.Record(messages.RecordRequest(), timeout=10)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _field_violations(empty.value) == ["events"]

        with pytest.raises(grpc.RpcError) as token:
            stub.Query(messages.QueryRequest(page_token="not-a-token"), timeout=10)
        assert token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _field_violations(token.value) == ["page_token"]

        with pytest.raises(grpc.RpcError) as report:
            stub.Report(messages.ReportRequest(kind=1), timeout=10)
        assert report.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "filter.start_time" in _field_violations(report.value)
