"""The mesh a benchmark measures: the five services and the HTTP edge as
separate processes on loopback, the floors beside them, one configuration
file with a section per service.

Routes of the gateway: `default` (the scripted demo model at zero delay: a
run is model -> calculator -> model), `mock` (the mock OpenAI upstream, 8
tokens), `stream` (the same, 100 tokens), `slow` (tokens paced, for runs
that stay open), `relay` (tokens paced, for the relay through a run) and
`mockh2`/`slowh2` (the provider over HTTP/2). Agent profiles: `default` on
`default`, and one without tools on each of `slow`, `slowh2` and `relay`.
"""

from __future__ import annotations

import json
import resource
import socket
import time
import urllib.request
from pathlib import Path

from procs import Proc

SERVICES = ["audit", "alerting", "tool-runner", "llm-gateway", "orchestrator", "edge"]
SECTIONS = {"tool-runner": "tool_runner", "llm-gateway": "llm_gateway"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> None:
    """Many open runs need many descriptors (each streamed call is a socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value))


def toml_text(tables: dict) -> str:
    """TOML of nested dicts (tables) of plain values."""
    lines = []

    def emit(prefix: str, table: dict) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        if plain and prefix:
            lines.append(f"[{prefix}]")
        for key, value in plain.items():
            lines.append(f"{key} = {toml_value(value)}")
        for key, value in nested.items():
            emit(f"{prefix}.{key}" if prefix else key, value)

    emit("", tables)
    return "\n".join(lines) + "\n"


def wait_ready(admin_port: int, proc: Proc, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    url = f"http://127.0.0.1:{admin_port}/readyz"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready within {limit} s; see {proc.log}")


class Floors:
    """The mock upstreams and the null gateways (bare tonic servers that
    forward each call to an upstream), as processes."""

    def __init__(self, bench_bin: Path, logs: Path, sizes: dict):
        def floor(name: str, *args: str) -> tuple[Proc, dict]:
            proc = Proc(name, [str(bench_bin), *args], logs, stdin_pipe=True, preexec=raise_fd_limit)
            return proc, proc.first_line()

        self.upstream, line = floor("upstream", "upstream", "--tokens", "8")
        self.upstream_url = line["url"]
        self.upstream_stream, line = floor("upstream-stream", "upstream", "--tokens", "100")
        self.upstream_stream_url = line["url"]
        slow_tokens, slow_pace_us = sizes["slow_tokens"], sizes["slow_pace_us"]
        self.upstream_slow, line = floor(
            "upstream-slow", "upstream", "--tokens", str(slow_tokens), "--pace-us", str(slow_pace_us)
        )
        self.upstream_slow_url = line["url"]
        self.upstream_h2, line = floor("upstream-h2", "upstream", "--tokens", "8", "--http2")
        self.upstream_h2_url = line["url"]
        self.upstream_slow_h2, line = floor(
            "upstream-slow-h2", "upstream", "--tokens", str(slow_tokens), "--pace-us", str(slow_pace_us), "--http2"
        )
        self.upstream_slow_h2_url = line["url"]
        self.upstream_relay, line = floor(
            "upstream-relay", "upstream", "--tokens", str(sizes["relay_tokens"]),
            "--pace-us", str(sizes["relay_pace_us"])
        )
        self.upstream_relay_url = line["url"]
        self.null, line = floor("null-gateway", "null-gateway", "--upstream", self.upstream_url)
        self.null_addr = line["grpc"]
        self.null_stream, line = floor("null-gateway-stream", "null-gateway", "--upstream",
                                       self.upstream_stream_url)
        self.null_stream_addr = line["grpc"]

    def procs(self) -> list[Proc]:
        return [self.upstream, self.upstream_stream, self.upstream_slow, self.upstream_h2, self.upstream_slow_h2,
                self.upstream_relay, self.null, self.null_stream]


class Mesh:
    """The services as processes; `restart_on(url)` moves the orchestrator
    and the audit service to another database."""

    def __init__(self, bin_dir: Path, work: Path, floors: Floors, max_runs: int, env: dict | None = None):
        self.bin_dir, self.work, self.floors, self.max_runs = bin_dir, work, floors, max_runs
        self.env = env or {}
        self.logs = work / "logs"
        self.ports = {name: (free_port(), free_port()) for name in SERVICES}
        self.procs: dict[str, Proc] = {}
        self.database_urls: dict[str, str] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name][0]}"

    def config(self) -> dict:
        data = str(self.work / "data")
        storage = lambda name: ({"data_dir": data, "url": self.database_urls[name]}
                                if name in self.database_urls else {"data_dir": data})
        audit_client = lambda name: {"url": self.url("audit"), "spool_dir": f"{data}/spool-{name}"}
        upstream = lambda url: {"kind": "openai", "base_url": url}
        # Every service takes as many calls at once, and on one connection, as
        # runs may be open (a service calls another over one HTTP/2 connection).
        server = {"max_concurrent_streams_per_connection": self.max_runs,
                  "max_concurrent_requests": self.max_runs}
        return {
            "audit": {"server": server, "storage": storage("audit")},
            "alerting": {"server": server, "storage": {"data_dir": data}, "audit": audit_client("alerting"),
                         "source": {"url": self.url("audit")}},
            "tool_runner": {"server": server, "workspaces_dir": f"{data}/workspaces", "audit": audit_client("tools")},
            "llm_gateway": {
                "server": server,
                "default_route": "default",
                "audit": audit_client("gateway"),
                "storage": {"data_dir": data},
                "providers": {
                    "scripted": {"kind": "scripted", "pace": "0s"},
                    "mock": upstream(self.floors.upstream_url),
                    "mockstream": upstream(self.floors.upstream_stream_url),
                    "mockslow": upstream(self.floors.upstream_slow_url),
                    "mockh2": {**upstream(self.floors.upstream_h2_url), "http2": True},
                    "mockslowh2": {**upstream(self.floors.upstream_slow_h2_url), "http2": True},
                    "mockrelay": upstream(self.floors.upstream_relay_url),
                },
                "routes": {
                    "default": {"target": "scripted/demo"},
                    "mock": {"target": "mock/gpt-4o-mini"},
                    "stream": {"target": "mockstream/gpt-4o-mini"},
                    "slow": {"target": "mockslow/gpt-4o-mini"},
                    "mockh2": {"target": "mockh2/gpt-4o-mini"},
                    "slowh2": {"target": "mockslowh2/gpt-4o-mini"},
                    "relay": {"target": "mockrelay/gpt-4o-mini"},
                },
            },
            "orchestrator": {
                "server": server,
                "storage": storage("orchestrator"),
                "llm_gateway_url": self.url("llm-gateway"),
                "tool_runner_url": self.url("tool-runner"),
                "audit": audit_client("orchestrator"),
                "max_concurrent_runs": self.max_runs,
                "max_queued_runs": self.max_runs,
                "max_concurrent_runs_per_tenant": self.max_runs,
                "max_queued_runs_per_tenant": self.max_runs,
                "agents": {
                    "default": {"model": "default", "tools": ["calculator", "current_time"]},
                    "slow": {"model": "slow", "tools": []},
                    "slowh2": {"model": "slowh2", "tools": []},
                    "relay": {"model": "relay", "tools": []},
                },
            },
            "edge": {
                "server": server,
                "orchestrator_url": self.url("orchestrator"),
                "llm_gateway_url": self.url("llm-gateway"),
                "tool_runner_url": self.url("tool-runner"),
                "audit_url": self.url("audit"),
                "alerting_url": self.url("alerting"),
            },
        }

    def write_config(self) -> Path:
        path = self.work / "agentmesh.toml"
        path.write_text(toml_text(self.config()))
        return path

    def start(self, name: str) -> Proc:
        config = self.write_config()
        port, admin = self.ports[name]
        argv = [str(self.bin_dir / f"agentmesh-{name}"), "--config", str(config),
                "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)]
        proc = Proc(name, argv, self.logs, env=self.env, preexec=raise_fd_limit)
        self.procs[name] = proc
        wait_ready(admin, proc)
        return proc

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def restart(self, names: list[str]) -> None:
        for name in names:
            self.procs.pop(name).stop()
        for name in SERVICES:
            if name in names:
                self.start(name)

    def restart_on(self, database_urls: dict[str, str]) -> None:
        """Moves the services named in `database_urls` to those databases."""
        self.database_urls = database_urls
        self.restart([name for name in SERVICES if name in database_urls])

    def stop(self) -> None:
        for name in reversed(SERVICES):
            proc = self.procs.pop(name, None)
            if proc:
                proc.stop()
