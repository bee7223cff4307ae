"""The phases of `make bench`. Each puts load on one path through agentmesh
and on its floor, in turns, and returns its raw measures and its figures.

A figure is a dict: `label`, `value`, `unit`, optionally `floor` (the same
measure on the floor, from this run) and `goal` (`["<=", x]` or `[">=", x]`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import Proc, wait_idle

BUSY = 0.15
SERVICE_PROCS = ["orchestrator", "llm-gateway", "tool-runner", "audit", "alerting"]


@dataclass
class Context:
    bin_dir: Path
    mesh: object
    floors: object
    sizes: dict
    work: Path
    postgres: Proc | None = None
    busy_phases: list = field(default_factory=list)

    def proc(self, name: str) -> Proc:
        if name == "postgres":
            return self.postgres
        if name in self.mesh.procs:
            return self.mesh.procs[name]
        return {proc.name: proc for proc in self.floors.procs()}[name]

    def load(self, kind: str, args: list[str], measure: list[str], *, duration: float,
             rate: float | None = None, concurrency: int | None = None,
             requests: int | None = None, connections: int = 1, timeout: str = "60s",
             background: bool = False):
        """Runs `agentmesh load`; returns its summary with the CPU seconds and
        context switches each measured process spent meanwhile."""
        busy = wait_idle(threshold=BUSY)
        argv = [str(self.bin_dir / "agentmesh"), "load", kind, *args, "--json", "--quiet",
                "--duration", f"{duration}s", "--timeout", timeout,
                "--connections", str(connections)]
        if rate:
            argv += ["--rate", str(rate)]
        else:
            argv += ["--concurrency", str(concurrency or 1)]
        if requests:
            argv += ["--requests", str(requests)]
        procs = [self.proc(name) for name in measure if self.proc(name)]
        before = {proc.name: (proc.cpu(), proc.switches()) for proc in procs}
        client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def finish() -> dict:
            stdout, stderr = child.communicate(timeout=duration * 4 + 300)
            if not stdout.strip():
                raise RuntimeError(f"agentmesh load {kind} failed: {stderr.strip()}")
            client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = {proc.name: (proc.cpu(), proc.switches()) for proc in procs}
            return {
                "summary": json.loads(stdout),
                "cpu_s": {name: after[name][0] - before[name][0] for name in before},
                "switches": {name: after[name][1] - before[name][1] for name in before},
                "load_client_cpu_s": (client_after.ru_utime + client_after.ru_stime)
                - (client_before.ru_utime + client_before.ru_stime),
                "busy_before": round(busy, 3),
            }

        return finish if background else finish()


def p(measure: dict, stat: str = "latency_ms", quantile: str = "p50") -> float | None:
    stats = measure["summary"].get(stat)
    return stats[quantile] if stats else None


def figure(label: str, value, unit: str, floor=None, goal=None, floor_label: str = "") -> dict:
    out = {"label": label, "value": value, "unit": unit}
    if floor is not None:
        out["floor"] = floor
        out["floor_label"] = floor_label
    if goal is not None:
        out["goal"] = goal
    return out


def diff(a, b):
    return None if a is None or b is None else round(a - b, 3)


def chat_body(model: str, stream: bool = False) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "say your tokens"}]}
    if stream:
        body["stream"] = True
    return json.dumps(body)


# === the gateway ===

def gateway_open(ctx: Context) -> dict:
    """Open loop at fixed rates: the upstream directly, the null gRPC server
    (the floor of one gRPC round trip), and the gateway to the upstream."""
    s, floors, mesh = ctx.sizes, ctx.floors, ctx.mesh
    measures, figures = {}, {}
    for rate in s["rates"]:
        common = {"duration": s["duration"], "rate": rate, "connections": 4}
        upstream = ctx.load("http", [f"{floors.upstream_url}/chat/completions",
                                     "--body", chat_body("gpt-4o-mini")], ["upstream"], **common)
        null = ctx.load("generate", ["--gateway", f"http://{floors.null_addr}", "--model", "mock"],
                        ["null-gateway", "upstream"], **common)
        gateway = ctx.load("generate", ["--gateway", mesh.url("llm-gateway"), "--model", "mock"],
                           ["llm-gateway", "upstream", "audit"], **common)
        measures[str(rate)] = {"upstream": upstream, "null": null, "gateway": gateway}
        goals = {1000: {"p50": 0.3, "p99": 0.5}, 2000: {"p99": 0.5}, 5000: {"p99": 1.0}}.get(rate, {})
        for q in ("p50", "p99"):
            goal = goals.get(q)
            figures[f"gateway_added_{q}_at_{rate}"] = figure(
                f"gateway: added latency over the upstream, {q} at {rate} req/s",
                diff(p(gateway, quantile=q), p(upstream, quantile=q)), "ms",
                floor=diff(p(null, quantile=q), p(upstream, quantile=q)), floor_label="null tonic proxy",
                goal=["<=", goal] if goal else None)
        figures[f"gateway_held_{rate}"] = figure(
            f"gateway: calls answered at {rate} req/s (share)",
            round(gateway["summary"]["ok"] / max(gateway["summary"]["sent"], 1), 4), "",
            floor=round(null["summary"]["ok"] / max(null["summary"]["sent"], 1), 4),
            floor_label="null tonic", goal=[">=", 0.999])
    return {"measures": measures, "figures": figures}


def gateway_capacity(ctx: Context) -> dict:
    """Closed loop, many in flight: throughput, and CPU per 1,000 calls."""
    s, floors, mesh = ctx.sizes, ctx.floors, ctx.mesh
    common = {"duration": s["duration"], "concurrency": s["in_flight"], "connections": 4}
    null = ctx.load("generate", ["--gateway", f"http://{floors.null_addr}", "--model", "mock"],
                    ["null-gateway"], **common)
    gateway = ctx.load("generate", ["--gateway", mesh.url("llm-gateway"), "--model", "mock"],
                       ["llm-gateway", "upstream", "audit"], **common)
    upstream = ctx.load("http", [f"{floors.upstream_url}/chat/completions",
                                 "--body", chat_body("gpt-4o-mini")], ["upstream"], **common)

    def per_thousand(measure: dict, name: str) -> float | None:
        ok = measure["summary"]["ok"]
        return round(measure["cpu_s"][name] / ok * 1000, 4) if ok else None

    n = s["in_flight"]
    return {
        "measures": {"null": null, "gateway": gateway, "upstream": upstream},
        "figures": {
            "gateway_capacity": figure(
                f"gateway: capacity, {n} in flight", round(gateway["summary"]["throughput"], 1), "req/s",
                floor=round(null["summary"]["throughput"], 1), floor_label="null tonic", goal=[">=", 10000]),
            "gateway_cpu_per_1000": figure(
                "gateway: CPU per 1,000 calls", per_thousand(gateway, "llm-gateway"), "CPU-s",
                floor=per_thousand(null, "null-gateway"), floor_label="null tonic", goal=["<=", 0.12]),
            "upstream_capacity": figure(
                f"mock upstream directly: capacity, {n} in flight",
                round(upstream["summary"]["throughput"], 1), "req/s"),
        },
    }


def gateway_stream(ctx: Context) -> dict:
    """Streams of 100 tokens: time to first token and the cost per chunk."""
    s, floors, mesh = ctx.sizes, ctx.floors, ctx.mesh
    common = {"duration": s["duration"], "rate": s["stream_rate"], "connections": 2}
    upstream = ctx.load("http", [f"{floors.upstream_stream_url}/chat/completions",
                                 "--body", chat_body("gpt-4o-mini", stream=True)],
                        ["upstream-stream"], **common)
    null = ctx.load("generate", ["--gateway", f"http://{floors.null_stream_addr}", "--stream"],
                    ["null-gateway-stream", "upstream-stream"], **common)
    gateway = ctx.load("generate", ["--gateway", mesh.url("llm-gateway"), "--model", "stream", "--stream"],
                       ["llm-gateway", "upstream-stream"], **common)
    streams = gateway["summary"]["ok"]
    cpu = gateway["cpu_s"]["llm-gateway"]
    figures = {}
    for q in ("p50", "p99"):
        figures[f"stream_ttft_added_{q}"] = figure(
            f"gateway stream: added time to first token, {q}",
            diff(p(gateway, "first_event_ms", q), p(upstream, "first_event_ms", q)), "ms",
            floor=diff(p(null, "first_event_ms", q), p(upstream, "first_event_ms", q)),
            floor_label="null tonic proxy",
            goal=["<=", 0.2 if q == "p50" else 0.5])
    null_streams = null["summary"]["ok"]
    null_cpu = null["cpu_s"]["null-gateway-stream"]
    figures["stream_cpu_per_stream"] = figure(
        "gateway stream: CPU per 100-token stream", round(cpu / streams * 1000, 4) if streams else None,
        "ms", floor=round(null_cpu / null_streams * 1000, 4) if null_streams else None,
        floor_label="null tonic proxy", goal=["<=", 0.5])
    figures["stream_cpu_per_chunk"] = figure(
        "gateway stream: CPU per relayed chunk", round(cpu / streams / 100 * 1e6, 3) if streams else None,
        "µs", floor=round(null_cpu / null_streams / 100 * 1e6, 3) if null_streams else None,
        floor_label="null tonic proxy", goal=["<=", 2.0])
    return {"measures": {"upstream": upstream, "null": null, "gateway": gateway}, "figures": figures}


def edge_openai(ctx: Context) -> dict:
    """The edge's OpenAI-compatible API (-> gateway -> upstream) at a fixed
    rate, against the gateway by gRPC and the upstream directly."""
    s, floors, mesh = ctx.sizes, ctx.floors, ctx.mesh
    common = {"duration": s["duration"], "rate": s["edge_rate"], "connections": 4}
    upstream = ctx.load("http", [f"{floors.upstream_url}/chat/completions",
                                 "--body", chat_body("gpt-4o-mini")], ["upstream"], **common)
    gateway = ctx.load("generate", ["--gateway", mesh.url("llm-gateway"), "--model", "mock"],
                       ["llm-gateway"], **common)
    edge = ctx.load("http", [f"{mesh.url('edge')}/v1/chat/completions", "--body", chat_body("mock")],
                    ["edge", "llm-gateway"], **common)
    figures = {}
    for q in ("p50", "p99"):
        figures[f"edge_added_{q}"] = figure(
            f"edge (OpenAI API): added latency over the upstream, {q} at {s['edge_rate']} req/s",
            diff(p(edge, quantile=q), p(upstream, quantile=q)), "ms",
            floor=diff(p(gateway, quantile=q), p(upstream, quantile=q)), floor_label="the gateway by gRPC")
    return {"measures": {"upstream": upstream, "gateway": gateway, "edge": edge}, "figures": figures}


# === runs ===

def runs_on(ctx: Context, store: str) -> dict:
    """One 3-step run (model -> calculator -> model) after another, then
    many in flight: latency, throughput, and per run the CPU and context
    switches of every service (and of PostgreSQL)."""
    s, mesh = ctx.sizes, ctx.mesh
    measured = SERVICE_PROCS + (["postgres"] if store == "postgres" else [])
    run_args = ["--orchestrator", mesh.url("orchestrator")]
    sequential = ctx.load("run", run_args, measured, duration=600, concurrency=1,
                          requests=s["runs_sequential"])
    in_flight = ctx.load("run", run_args, measured, duration=s["runs_duration"],
                         concurrency=s["runs_in_flight"])
    runs = sequential["summary"]["ok"]
    per_run = {name: round(cpu / runs * 1000, 3) for name, cpu in sequential["cpu_s"].items()} if runs else {}
    switches = {name: round(n / runs, 1) for name, n in sequential["switches"].items()} if runs else {}
    services_cpu = round(sum(v for k, v in per_run.items() if k != "postgres"), 3) if runs else None
    goals = {"sqlite": (2.0, 4.0, 1500, 50, 100), "postgres": (3.0, 6.0, 800, None, 100)}[store]
    n = s["runs_in_flight"]
    figures = {
        f"run_{store}_p50": figure(f"run ({store}): one 3-step run, p50", p(sequential), "ms", goal=["<=", goals[0]]),
        f"run_{store}_p99": figure(f"run ({store}): one 3-step run, p99", p(sequential, quantile="p99"), "ms", goal=["<=", goals[1]]),
        f"run_{store}_throughput": figure(f"run ({store}): {n} in flight, runs/s",
                                          round(in_flight["summary"]["throughput"], 1), "runs/s", goal=[">=", goals[2]]),
        f"run_{store}_in_flight_p99": figure(f"run ({store}): {n} in flight, p99", p(in_flight, quantile="p99"), "ms",
                                             goal=["<=", goals[3]] if goals[3] else None),
        f"run_{store}_in_flight_max": figure(f"run ({store}): {n} in flight, max", p(in_flight, quantile="max"), "ms",
                                             goal=["<=", goals[4]]),
        f"run_{store}_cpu_per_run": figure(f"run ({store}): CPU per run, all five services", services_cpu, "ms",
                                           goal=["<=", 1.2] if store == "sqlite" else None),
        f"run_{store}_switches_per_run": figure(
            f"run ({store}): context switches per run, orchestrator", switches.get("orchestrator"), ""),
    }
    return {"measures": {"sequential": sequential, "in_flight": in_flight},
            "per_run_cpu_ms": per_run, "per_run_switches": switches, "figures": figures}


def runs_sqlite(ctx: Context) -> dict:
    return runs_on(ctx, "sqlite")


def runs_postgres(ctx: Context) -> dict:
    return runs_on(ctx, "postgres")


def open_runs(ctx: Context) -> dict:
    """Many runs open at once, each streaming slowly: memory per open run
    in the orchestrator and the gateway, and whether it is given back."""
    s, mesh = ctx.sizes, ctx.mesh
    count, ramp = s["open_runs"], s["open_ramp"]
    names = ["orchestrator", "llm-gateway"]
    # Fresh processes: what earlier phases left in their heaps is not the runs'.
    mesh.restart(names)
    rss = lambda: {name: mesh.procs[name].rss() for name in names}
    before = rss()
    finish = ctx.load("run", ["--orchestrator", mesh.url("orchestrator"), "--agent", "slow"], names,
                      duration=ramp, rate=count / ramp, timeout="600s", background=True,
                      connections=max(1, count // 200))
    run_seconds = s["slow_tokens"] * s["slow_pace_us"] / 1e6
    # All started by the end of the ramp; still open until each streams all its tokens.
    time.sleep(ramp + min(3.0, run_seconds / 3))
    peak = rss()
    measure = finish()
    # What the allocator gives back takes a moment (jemalloc's decay is 10 s).
    time.sleep(12)
    after = rss()
    opened = measure["summary"]["ok"]
    per_run = {name: round((peak[name] - before[name]) / 1024 / max(opened, 1), 1) for name in names}
    figures = {
        "open_run_memory": figure(f"memory per open streaming run ({count} open), orchestrator + gateway",
                                  round(sum(per_run.values()), 1), "KiB", goal=["<=", 64]),
        "open_runs_rss": figure(f"RSS with {count} runs open, orchestrator + gateway",
                                round(sum(peak.values()) / 2**20, 1), "MiB",
                                floor=round(sum(before.values()) / 2**20, 1), floor_label="before",
                                goal=["<=", 700] if count >= 10000 else None),
        "open_runs_returned": figure("RSS 12 s after they ended, orchestrator + gateway",
                                     round(sum(after.values()) / 2**20, 1), "MiB",
                                     floor=round(sum(before.values()) / 2**20, 1), floor_label="before"),
        "open_runs_first_event_max": figure("open runs: slowest first event", p(measure, "first_event_ms", "max"), "ms"),
    }
    return {"measures": {"runs": measure, "rss_before": before, "rss_peak": peak, "rss_after": after,
                         "per_run_kib": per_run}, "figures": figures}


def burst(ctx: Context) -> dict:
    """Runs started at a fixed high rate: time to the first event, and
    how many starts per second the orchestrator kept up with."""
    s, mesh = ctx.sizes, ctx.mesh
    count, rate = s["burst"], s["burst_rate"]
    measure = ctx.load("run", ["--orchestrator", mesh.url("orchestrator")], SERVICE_PROCS,
                       duration=count / rate, rate=rate, requests=count, timeout="300s",
                       connections=max(1, count // 200))
    summary = measure["summary"]
    first = summary.get("first_event_ms") or {}
    return {"measures": {"burst": measure}, "figures": {
        "burst_first_event_p50": figure(f"burst ({count} runs at {rate}/s): first event p50", first.get("p50"), "ms"),
        "burst_first_event_p99": figure(f"burst ({count} runs at {rate}/s): first event p99", first.get("p99"), "ms",
                                        goal=["<=", 50]),
        "burst_completed": figure(f"burst: runs finished", summary["ok"], "runs", floor=count, floor_label="started"),
    }}


ALL = {
    "gateway_open": gateway_open,
    "gateway_capacity": gateway_capacity,
    "gateway_stream": gateway_stream,
    "edge_openai": edge_openai,
    "runs_sqlite": runs_sqlite,
    "burst": burst,
    "open_runs": open_runs,
    "runs_postgres": runs_postgres,
}
