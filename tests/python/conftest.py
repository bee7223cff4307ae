"""Fixtures for the Python client tests.

`stubs` compiles proto/ into Python modules with grpcio-tools (the same way a
platform team would), into a fresh directory, once per session. `mesh` runs the
real `agentmesh up` binary on free loopback ports (the HTTP edge too: its
base URL is `mesh["edge"]`) and stops it with SIGINT.

`connect(address, api_key=...)` is the client helper every test opens its
channels with: it sends the API key (given, or from `AGENTMESH_API_KEY`, as the
`api_key` fixture reads it) as `authorization: Bearer …` metadata on every
call, as any gRPC client of a mesh with auth on must.
"""

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(os.environ.get("AGENTMESH_BIN_DIR", ROOT / "target" / "debug"))

API_KEY_ENV = "AGENTMESH_API_KEY"

SERVICES = [
    ("orchestrator", "agentmesh.orchestrator.v1.OrchestratorService"),
    ("llm-gateway", "agentmesh.llm.v1.LlmGatewayService"),
    ("tool-runner", "agentmesh.tools.v1.ToolRunnerService"),
    ("audit", "agentmesh.audit.v1.AuditService"),
    ("alerting", "agentmesh.alerting.v1.AlertingService"),
]


@pytest.fixture(scope="session")
def stubs():
    out = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-stubs-"))
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    from grpc_tools import protoc
    import grpc_tools

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{ROOT / 'third_party' / 'proto'}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    assert protoc.main(args) == 0, "grpcio-tools could not compile proto/"
    sys.path.insert(0, str(out))
    yield out
    sys.path.remove(str(out))


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <credential>` to every call."""

    def __init__(self, credential):
        self._header = ("authorization", f"Bearer {credential}")

    def _with_header(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        metadata.append(self._header)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_header(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_header(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_header(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_header(details), requests)


def connect(address, api_key=None):
    """A channel to `address` presenting `api_key` (default: $AGENTMESH_API_KEY;
    none when neither is set). Usable in a `with` block like any channel."""
    credential = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    channel = grpc.insecure_channel(address)
    if not credential:
        return channel
    return grpc.intercept_channel(channel, _Bearer(credential))


@pytest.fixture(scope="session")
def api_key():
    """The API key the tests present ($AGENTMESH_API_KEY), or None."""
    return os.environ.get(API_KEY_ENV) or None


def _port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_base_port():
    """Five consecutive free ports (and their admin ports), and a sixth
    (with its admin port) for the HTTP edge."""
    for base in range(31000 + os.getpid() % 500 * 2, 40000, 7):
        if all(_port_free(base + i) and _port_free(base + i + 1000) for i in range(6)):
            return base
    raise RuntimeError("no twelve free loopback ports")


def wait_http(url, patience=20.0):
    deadline = time.monotonic() + patience
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready after {patience}s")
        time.sleep(0.05)


def wait_serving(channel, service="", patience=20.0):
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + patience
    while True:
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{service!r} not SERVING after {patience}s")
        time.sleep(0.05)


@contextlib.contextmanager
def running_mesh(config=None, env=None):
    """`agentmesh up` on free loopback ports, with the configuration file
    `config` and extra environment `env`; yields the addresses."""
    binary = BIN_DIR / "agentmesh"
    assert binary.is_file(), f"{binary} is not built: run `make test`"
    base = _free_base_port()
    data = tempfile.mkdtemp(prefix="agentmesh-data-")
    args = [
        str(binary), "up", "--base-port", str(base), "--edge-port", str(base + 5),
        "--data-dir", data, "--log-format", "json",
    ]
    if config is not None:
        args += ["--config", str(config)]
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    addresses = {name: f"127.0.0.1:{base + i}" for i, (name, _) in enumerate(SERVICES)}
    # The HTTP edge: `edge` is its base URL.
    addresses["edge"] = f"http://127.0.0.1:{base + 5}"
    try:
        for name, _ in SERVICES:
            with grpc.insecure_channel(addresses[name]) as channel:
                wait_serving(channel)
        wait_http(f"http://127.0.0.1:{base + 5 + 1000}/readyz")
        yield addresses
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, process.stderr.read().decode(errors="replace")[-2000:]


@pytest.fixture(scope="session")
def mesh():
    with running_mesh() as addresses:
        yield addresses


# The screenshots the console's browser tests saved: listed at the end of
# the run, so their paths are in the log even when every test passes.
SCREENSHOTS = []


def pytest_terminal_summary(terminalreporter):
    for path in SCREENSHOTS:
        terminalreporter.write_line(f"console screenshot: {path}")
