"""Run callbacks from Python: a platform team's receiver (the standard
library's HTTP server) gets the run's end from the real `agentmesh up`,
and verifies its signature with the code docs/callbacks.md gives."""

import hashlib
import hmac
import http.server
import importlib
import json
import pathlib
import signal
import subprocess
import tempfile
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from conftest import BIN_DIR, SERVICES, _free_base_port, connect, wait_serving

SECRET = b"the Python test's callback secret"


def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    """The verification of docs/callbacks.md, as written there."""
    parts = [p.split("=", 1) for p in header.split(",")]
    timestamps = [v for k, v in parts if k == "t"]
    signatures = [v for k, v in parts if k == "v1"]
    if len(timestamps) != 1 or not signatures:
        return False
    if abs(time.time() - int(timestamps[0])) > tolerance:
        return False
    expected = hmac.new(secret, timestamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s) for s in signatures)


class _Receiver(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks", _Receiver.received
    server.shutdown()


@pytest.fixture
def mesh_with_callbacks():
    """`agentmesh up` with callbacks signed by SECRET, loopback allowed."""
    binary = BIN_DIR / "agentmesh"
    assert binary.is_file(), f"{binary} is not built: run `make test`"
    work = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-callbacks-"))
    (work / "secrets.toml").write_text(f"default = {json.dumps(SECRET.decode())}\n")
    (work / "mesh.toml").write_text(
        "[orchestrator.callbacks]\n"
        f"secrets_file = {json.dumps(str(work / 'secrets.toml'))}\n"
        "[orchestrator.callbacks.egress]\n"
        'allow_cidrs = ["127.0.0.0/8"]\n'
    )
    base = _free_base_port()
    process = subprocess.Popen(
        [str(binary), "up", "--base-port", str(base), "--data-dir", str(work / "data"),
         "--config", str(work / "mesh.toml"), "--log-format", "json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for i, _ in enumerate(SERVICES):
            with grpc.insecure_channel(f"127.0.0.1:{base + i}") as channel:
                wait_serving(channel)
        yield f"127.0.0.1:{base}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()


def test_a_python_receiver_verifies_the_signed_end_of_a_run(stubs, mesh_with_callbacks, receiver):
    url, received = receiver
    messages = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2")
    runs = importlib.import_module("agentmesh.orchestrator.v1.run_pb2")
    services = importlib.import_module("agentmesh.orchestrator.v1.orchestrator_service_pb2_grpc")
    with connect(mesh_with_callbacks, api_key="") as channel:
        stub = services.OrchestratorServiceStub(channel)
        started = stub.StartRun(
            messages.StartRunRequest(
                objective="What is 2+2?",
                labels={"ticket": "4711"},
                callback=runs.RunCallback(url=url, events=runs.CALLBACK_EVENTS_TERMINAL),
            ),
            timeout=10,
        )
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received, "no callback arrived"
        headers, body = received[0]
        headers = {k.lower(): v for k, v in headers.items()}
        assert verify(SECRET, headers["x-agentmesh-signature"], body)
        assert not verify(b"another secret", headers["x-agentmesh-signature"], body)
        assert not verify(SECRET, headers["x-agentmesh-signature"], body + b" ")
        end = json.loads(body)
        assert end["type"] == headers["x-agentmesh-event"] == "run.finished"
        assert end["delivery_id"] == headers["x-agentmesh-delivery"]
        assert end["attempt"] == 1
        assert end["run_id"] == started.run_id
        assert end["state"] == "RUN_STATE_SUCCEEDED"
        assert end["labels"] == {"ticket": "4711"}
        assert "4" in end["output"]

        # A private address is refused before the run exists.
        with pytest.raises(grpc.RpcError) as refused:
            stub.StartRun(
                messages.StartRunRequest(objective="x", callback=runs.RunCallback(url="http://192.168.1.1/hook")),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = []
        for key, value in refused.value.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    bad = error_details_pb2.BadRequest()
                    if detail.Unpack(bad):
                        fields += [v.field for v in bad.field_violations]
        assert fields == ["callback.url"]
        assert "private" in refused.value.details()
