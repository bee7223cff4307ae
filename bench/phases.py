"""The phases of `make bench`. Each puts load on one path through agentmesh
and on its floor, in turns, and returns its raw measures and its figures.

A figure is a dict: `label`, `value`, `unit`, optionally `floor` (the same
measure on the floor, from this run), `peer` (the same measure of another
system, LangGraph, from this run) and `goal` (`["<=", x]` or `[">=", x]`).

A phase that cannot run here (quick mode, a package missing) returns
`skipped(note)`: the report says why, and bench-quick does not count it as
missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import Proc, wait_idle

BUSY = 0.15
SERVICE_PROCS = ["orchestrator", "llm-gateway", "tool-runner", "audit", "alerting"]
HERE = Path(__file__).resolve().parent
# The private PostgreSQL server's databases: the two services that store,
# and one for LangGraph's checkpointers.
DATABASES = ["orchestrator", "audit", "langgraph"]


@dataclass
class Context:
    bin_dir: Path
    mesh: object
    floors: object
    sizes: dict
    work: Path
    quick: bool = False
    # Extra arguments of `cargo bench` (e.g. `--profile dev` to try the
    # benchmark programs without a release build).
    cargo_args: list = field(default_factory=list)
    # The results of the phases run so far, by name (the LangGraph phase
    # sets agentmesh's run figures of this run beside its own).
    done: dict = field(default_factory=dict)
    postgres: Proc | None = None
    database_urls: dict = field(default_factory=dict)
    busy_phases: list = field(default_factory=list)

    def databases(self) -> dict:
        """The private PostgreSQL server's database URLs by name, the
        server started on first use (only phases that need it pay for it)."""
        if self.postgres is None:
            proc = Proc("postgres", [str(self.bin_dir / "agentmesh-bench"), "postgres",
                                     "--databases", ",".join(DATABASES)],
                        self.work / "logs", stdin_pipe=True, tree=True)
            line = proc.first_line(timeout=120)
            proc.measured_pid = line.get("pid") or proc.pid
            self.postgres, self.database_urls = proc, line["urls"]
        return self.database_urls

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


def figure(label: str, value, unit: str, floor=None, goal=None, floor_label: str = "",
           peer=None, peer_label: str = "") -> dict:
    out = {"label": label, "value": value, "unit": unit}
    if floor is not None:
        out["floor"] = floor
        out["floor_label"] = floor_label
    if peer is not None:
        out["peer"] = peer
        out["peer_label"] = peer_label
    if goal is not None:
        out["goal"] = goal
    return out


def skipped(note: str) -> dict:
    """A phase that cannot run here: the report shows `note` instead."""
    return {"skipped": note, "measures": {}, "figures": {}}


def run_json(argv: list[str], timeout: float, cwd: Path | None = None) -> tuple[dict, str]:
    """Runs a program whose last JSON line on stdout is its result; returns
    that line and the whole output. A failure raises with its stderr, so
    the phase fails instead of reporting nothing."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1]), done.stdout


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
    # The same calls with the gateway speaking HTTP/2 to a provider of its own.
    http2 = ctx.load("generate", ["--gateway", mesh.url("llm-gateway"), "--model", "mockh2"],
                     ["llm-gateway", "upstream-h2", "audit"], **common)

    def per_thousand(measure: dict, name: str) -> float | None:
        ok = measure["summary"]["ok"]
        return round(measure["cpu_s"][name] / ok * 1000, 4) if ok else None

    n = s["in_flight"]
    return {
        "measures": {"null": null, "gateway": gateway, "upstream": upstream, "http2": http2},
        "figures": {
            "gateway_capacity": figure(
                f"gateway: capacity, {n} in flight", round(gateway["summary"]["throughput"], 1), "req/s",
                floor=round(null["summary"]["throughput"], 1), floor_label="null tonic", goal=[">=", 10000]),
            "gateway_cpu_per_1000": figure(
                "gateway: CPU per 1,000 calls", per_thousand(gateway, "llm-gateway"), "CPU-s",
                floor=per_thousand(null, "null-gateway"), floor_label="null tonic", goal=["<=", 0.12]),
            "gateway_capacity_http2": figure(
                f"the same, the provider over HTTP/2: capacity, {n} in flight",
                round(http2["summary"]["throughput"], 1), "req/s",
                floor=round(null["summary"]["throughput"], 1), floor_label="null tonic"),
            "gateway_cpu_per_1000_http2": figure(
                "the same, the provider over HTTP/2: CPU per 1,000 calls", per_thousand(http2, "llm-gateway"),
                "CPU-s", floor=per_thousand(null, "null-gateway"), floor_label="null tonic"),
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


# The kinds of call bench/openai_sdk_run.py times, and what each is.
SDK_CALLS = (("unary", "non-streaming"), ("stream", "streamed, read whole"), ("first_chunk", "streamed, first chunk"))


def edge_openai_sdk(ctx: Context) -> dict:
    """The official `openai` Python SDK, one call after another, through the
    edge (-> gateway -> mock) and straight to the mock (bench/openai_sdk_run.py):
    what the edge adds as a user's client sees it, non-streaming and
    streaming. The floor of each is the SDK's own call to the mock."""
    if importlib.util.find_spec("openai") is None:
        return skipped("the `openai` package is not installed (tools/install-test-deps installs it)")
    s, floors, mesh = ctx.sizes, ctx.floors, ctx.mesh
    busy = wait_idle(threshold=BUSY)
    # The edge's services take any bearer in the bench's `none` auth mode;
    # the SDK insists on sending one.
    answer, _ = run_json([sys.executable, str(HERE / "openai_sdk_run.py"),
                          "--edge", f"{mesh.url('edge')}/v1", "--edge-model", "mock",
                          "--upstream", floors.upstream_url, "--api-key", "agentmesh-bench",
                          "--calls", str(s["sdk_calls"])], timeout=600 + s["sdk_calls"])
    edge, upstream = answer["edge"], answer["upstream"]
    sdk = f"openai {answer['versions']['openai']}"
    figures = {}
    for kind, what in SDK_CALLS:
        for q in ("p50", "p99"):
            figures[f"sdk_edge_{kind}_added_{q}"] = figure(
                f"openai SDK through the edge, {what}: added latency, {q}",
                diff(edge[kind].get(q), upstream[kind].get(q)), "ms",
                floor=upstream[kind].get(q), floor_label="the SDK straight to the mock")
    rows = [[target, what, *(answer[target][kind].get(q) for q in ("p50", "p99", "max"))]
            for kind, what in SDK_CALLS for target in ("edge", "upstream")]
    return {"measures": {"sdk": answer}, "busy_before": round(busy, 3), "figures": figures,
            "tables": [{"title": f"{sdk} SDK, {answer['calls']} sequential calls of each kind per target:",
                        "columns": ["target", "call", "p50 ms", "p99 ms", "max ms"], "rows": rows}]}


# === runs ===

def token_relay(ctx: Context) -> dict:
    """A model's answer streamed through a run (gateway -> orchestrator ->
    client) against the same stream from the gateway directly, one answer
    after another, its tokens paced by the mock upstream as a model would.

    What the relay adds to a token is measured at the step's first token:
    from the step's start as the orchestrator stamped it (the step's
    progress event, right before it calls the gateway) to the token at the
    client, less the gateway's own time to first token on the same route.
    The two clocks are one here (the same host)."""
    s, mesh = ctx.sizes, ctx.mesh
    common = {"duration": s["relay_duration"], "concurrency": 1}
    direct_args = ["--gateway", mesh.url("llm-gateway"), "--model", "relay", "--stream"]
    # The gateway's first calls on the route open its connections to the
    # provider: not what either side of the comparison is about.
    ctx.load("generate", direct_args, [], duration=10, concurrency=1, requests=5)
    direct = ctx.load("generate", direct_args, ["llm-gateway", "upstream-relay"], **common)
    run = ctx.load("run", ["--orchestrator", mesh.url("orchestrator"), "--agent", "relay"],
                   SERVICE_PROCS + ["upstream-relay"], **common)
    tokens, pace_ms = s["relay_tokens"], s["relay_pace_us"] / 1000
    figures = {}
    for q in ("p50", "p99"):
        figures[f"relay_added_{q}"] = figure(
            f"token relay through a run: added to the first token, {q}",
            diff(p(run, "step_first_token_ms", q), p(direct, "first_token_ms", q)), "ms",
            goal=["<=", 1.0])
    figures["relay_gap_p99"] = figure(
        f"token relay through a run: gap between tokens ({pace_ms:g} ms apart upstream), p99",
        p(run, "token_gap_ms", "p99"), "ms", floor=p(direct, "token_gap_ms", "p99"),
        floor_label="the gateway directly")
    figures["relay_run_first_token_p50"] = figure(
        "a run's first token, from the call that starts it, p50",
        p(run, "first_token_ms"), "ms", floor=p(direct, "first_token_ms"),
        floor_label="the gateway directly")
    answers = run["summary"]["ok"]
    figures["relay_cpu_per_run"] = figure(
        f"token relay through a run: orchestrator CPU per run of {tokens} tokens",
        round(run["cpu_s"]["orchestrator"] / answers * 1000, 3) if answers else None, "ms")
    return {"measures": {"direct": direct, "run": run}, "figures": figures}


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
    """`runs_sqlite` with the orchestrator and the audit service moved to
    the private PostgreSQL server (restarted on it)."""
    urls = ctx.databases()
    ctx.mesh.restart_on({name: urls[name] for name in ("orchestrator", "audit")})
    return runs_on(ctx, "postgres")


def open_runs(ctx: Context) -> dict:
    """Many runs open at once, each streaming slowly: memory per open run
    in the orchestrator and the gateway, and whether it is given back; then
    the same with the gateway speaking HTTP/2 to the provider (one
    connection for all the calls instead of one each)."""
    s = ctx.sizes
    count = s["open_runs"]
    http1 = _open_runs(ctx, "slow")
    http2 = _open_runs(ctx, "slowh2")
    total = lambda measured: round(sum(measured["per_run_kib"].values()), 1)
    peak = lambda measured: round(sum(measured["rss_peak"].values()) / 2**20, 1)
    before = lambda measured: round(sum(measured["rss_before"].values()) / 2**20, 1)
    figures = {
        "open_run_memory": figure(f"memory per open streaming run ({count} open), orchestrator + gateway",
                                  total(http1), "KiB", goal=["<=", 64]),
        "open_runs_rss": figure(f"RSS with {count} runs open, orchestrator + gateway",
                                peak(http1), "MiB", floor=before(http1), floor_label="before",
                                goal=["<=", 700] if count >= 10000 else None),
        "open_runs_returned": figure("RSS 12 s after they ended, orchestrator + gateway",
                                     round(sum(http1["rss_after"].values()) / 2**20, 1), "MiB",
                                     floor=before(http1), floor_label="before"),
        "open_runs_first_event_max": figure("open runs: slowest first event",
                                            p(http1["runs"], "first_event_ms", "max"), "ms"),
        "open_run_memory_http2": figure(f"the same, the provider over HTTP/2: memory per open run ({count} open)",
                                        total(http2), "KiB", goal=["<=", 64],
                                        floor=total(http1), floor_label="over HTTP/1.1"),
        "open_runs_rss_http2": figure(f"the same, the provider over HTTP/2: RSS with {count} runs open",
                                      peak(http2), "MiB", floor=before(http2), floor_label="before",
                                      goal=["<=", 700] if count >= 10000 else None),
    }
    return {"measures": {**http1, "http2": http2}, "figures": figures}


def _open_runs(ctx: Context, agent: str) -> dict:
    """`open_runs` of runs of `agent`, on fresh orchestrator and gateway
    processes: the load, and the resident sets before, at the peak and
    12 s after."""
    s, mesh = ctx.sizes, ctx.mesh
    count, ramp = s["open_runs"], s["open_ramp"]
    names = ["orchestrator", "llm-gateway"]
    # Fresh processes: what earlier phases left in their heaps is not the runs'.
    mesh.restart(names)
    rss = lambda: {name: mesh.procs[name].rss() for name in names}
    before = rss()
    finish = ctx.load("run", ["--orchestrator", mesh.url("orchestrator"), "--agent", agent], names,
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
    return {"runs": measure, "rss_before": before, "rss_peak": peak, "rss_after": after,
            "per_run_kib": per_run}


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


# === LangGraph, the same runs in process ===

# agentmesh's figure (from runs_sqlite / runs_postgres of this run), the
# LangGraph measure beside it (mode, checkpointer, stat, quantile), and
# what the comparison is of.
LANGGRAPH_PAIRS = [
    ("run_sqlite_p50", ("sequential", "none", "latency_ms", "p50"), "one 3-step run, p50 (SQLite)"),
    ("run_sqlite_p50", ("sequential", "sqlite", "latency_ms", "p50"), "one 3-step run, p50 (SQLite)"),
    ("run_postgres_p50", ("sequential", "postgres", "latency_ms", "p50"), "one 3-step run, p50 (PostgreSQL)"),
    ("run_sqlite_p99", ("sequential", "none", "latency_ms", "p99"), "one 3-step run, p99 (SQLite)"),
    ("run_sqlite_p99", ("sequential", "sqlite", "latency_ms", "p99"), "one 3-step run, p99 (SQLite)"),
    ("run_postgres_p99", ("sequential", "postgres", "latency_ms", "p99"), "one 3-step run, p99 (PostgreSQL)"),
    ("run_sqlite_cpu_per_run", ("sequential", "none", "cpu_ms_per_run", None),
     "CPU per run (SQLite; agentmesh: five services, LangGraph: its process)"),
    ("run_sqlite_cpu_per_run", ("sequential", "sqlite", "cpu_ms_per_run", None),
     "CPU per run (SQLite; agentmesh: five services, LangGraph: its process)"),
    ("run_postgres_cpu_per_run", ("sequential", "postgres", "cpu_ms_per_run", None),
     "CPU per run (PostgreSQL, the server not counted)"),
    ("run_sqlite_throughput", ("in_flight", "memory", "throughput", None), "runs in flight, runs/s (SQLite)"),
    ("run_sqlite_throughput", ("in_flight", "sqlite", "throughput", None), "runs in flight, runs/s (SQLite)"),
    ("run_postgres_throughput", ("in_flight", "postgres", "throughput", None), "runs in flight, runs/s (PostgreSQL)"),
    ("run_sqlite_in_flight_p99", ("in_flight", "memory", "latency_ms", "p99"), "runs in flight, p99 (SQLite)"),
    ("run_sqlite_in_flight_p99", ("in_flight", "sqlite", "latency_ms", "p99"), "runs in flight, p99 (SQLite)"),
    ("run_postgres_in_flight_p99", ("in_flight", "postgres", "latency_ms", "p99"),
     "runs in flight, p99 (PostgreSQL)"),
]
CHECKPOINTERS = {
    ("sequential", "none"): "no checkpointer", ("sequential", "sqlite"): "SqliteSaver",
    ("sequential", "postgres"): "PostgresSaver", ("in_flight", "memory"): "InMemorySaver",
    ("in_flight", "sqlite"): "AsyncSqliteSaver", ("in_flight", "postgres"): "AsyncPostgresSaver",
}


def langgraph(ctx: Context) -> dict:
    """The 3-step agent of the runs phases (model -> calculator -> model,
    the model scripted at zero delay) built on LangGraph and run in process
    (bench/langgraph_run.py), as many runs as runs_sqlite / runs_postgres:
    its figures are set beside agentmesh's from this run (value: agentmesh,
    peer: LangGraph; the ratio is agentmesh's over LangGraph's)."""
    if ctx.quick:
        return skipped("full run only: `make bench` installs LangGraph (bench/requirements.txt); "
                       "quick mode (CI) installs nothing for it")
    if importlib.util.find_spec("langgraph") is None:
        return skipped("LangGraph is not installed: pip install -r bench/requirements.txt")
    s = ctx.sizes
    url = ctx.databases()["langgraph"]
    busy = wait_idle(threshold=BUSY)
    answer, _ = run_json([sys.executable, str(HERE / "langgraph_run.py"), "--runs", str(s["runs_sequential"]),
                          "--in-flight", str(s["runs_in_flight"]), "--duration", str(s["runs_duration"]),
                          "--postgres-url", url], timeout=1800)
    ours = {key: value for phase in ctx.done.values() for key, value in phase.get("figures", {}).items()}
    return {"measures": {"langgraph": answer}, "busy_before": round(busy, 3),
            "figures": langgraph_figures(answer, ours), "tables": [langgraph_table(answer)]}


def langgraph_figures(answer: dict, ours: dict) -> dict:
    """agentmesh's figure of each pair (absent when its phase did not run)
    with LangGraph's measure as the peer, and agentmesh's goal."""
    version = answer["versions"].get("langgraph", "?")
    figures = {}
    for key, (mode, saver, stat, quantile), what in LANGGRAPH_PAIRS:
        measure = answer[mode].get(saver, {}).get(stat)
        theirs = measure.get(quantile) if isinstance(measure, dict) else measure
        mine = ours.get(key, {})
        name = CHECKPOINTERS[(mode, saver)]
        unit = "runs/s" if stat == "throughput" else "ms"
        figures[f"langgraph_{key.removeprefix('run_')}_{saver}"] = figure(
            f"{what}: agentmesh vs LangGraph, {name}", mine.get("value"), unit,
            goal=mine.get("goal"), peer=theirs, peer_label=f"LangGraph {version}, {name}")
    return figures


def langgraph_table(answer: dict) -> dict:
    """LangGraph's own measures, one row per checkpointer."""
    rows = []
    for (mode, saver), name in CHECKPOINTERS.items():
        m = answer[mode].get(saver)
        if m:
            lat = m["latency_ms"]
            rows.append([name, "sequential" if mode == "sequential" else f"{m['slots']} in flight",
                         m.get("runs") or m.get("ok"), m.get("errors", 0), m.get("throughput", ""),
                         lat.get("p50"), lat.get("p99"), lat.get("max"), m.get("cpu_ms_per_run")])
    return {"title": f"LangGraph {answer['versions'].get('langgraph', '?')} in process, durability "
                     f"`{answer['settings']['durability']}` (each run a new thread):",
            "columns": ["checkpointer", "how", "runs", "failed", "runs/s", "p50 ms", "p99 ms", "max ms", "CPU ms/run"],
            "rows": rows}


# === the benchmark programs (cargo bench) ===

def cargo_bench(ctx: Context, name: str) -> tuple[dict, str, float]:
    """Builds `cargo bench -p agentmesh-tests --bench NAME` first, then runs
    it on an idle box: its JSON summary line, its output, how busy the box
    was before."""
    root = HERE.parent
    argv = [*shlex.split(os.environ.get("CARGO", "cargo")), "bench", *ctx.cargo_args,
            "-p", "agentmesh-tests", "--bench", name]
    build = subprocess.run([*argv, "--no-run"], cwd=root, capture_output=True, text=True, timeout=3600)
    if build.returncode:
        raise RuntimeError(f"{' '.join(argv)} --no-run failed: {build.stderr.strip()[-2000:]}")
    busy = wait_idle(threshold=BUSY)
    summary, output = run_json(argv, timeout=3600, cwd=root)
    if summary.get("bench") != name:
        raise RuntimeError(f"{name}: no JSON summary line in its output")
    return summary, output, busy


def audit_ingest(ctx: Context) -> dict:
    """tests/benches/audit_ingest.rs: the audit service in process (real
    gRPC on loopback, hash chain, group commit) taking batches from 8
    producers on SQLite and on PostgreSQL, `emit` timed at the caller
    while the producer sends, and the tail lag across two replicas."""
    if ctx.quick:
        return skipped("full run only: a `cargo bench` program (release build)")
    summary, output, busy = cargo_bench(ctx, "audit_ingest")
    what = f"{summary['events']:,} events, {summary['producers']} producers × batches of {summary['batch']}"
    emit = summary["emit_us"]
    return {"measures": {"audit_ingest": summary}, "busy_before": round(busy, 3), "output": output, "figures": {
        "audit_ingest_postgres": figure(
            f"audit ingest on PostgreSQL ({what})", round(summary["postgres_events_per_s"]), "events/s",
            peer=round(summary["sqlite_events_per_s"]), peer_label="on SQLite, same program", goal=[">=", 50000]),
        "audit_emit_p99": figure(
            f"audit emit() on the caller's path, p99 ({summary['emits']:,} emits, the producer sending meanwhile)",
            emit["p99"], "µs", goal=["<=", 1.0]),
    }}


def auth(ctx: Context) -> dict:
    """tests/benches/auth.rs: what authentication adds to a call, the auth
    layer in process over a handler that answers at once (API key, cached
    JWT), against the same layer in the `none` mode; and a unary ListTools
    on the tool runner over loopback, without and with authentication."""
    if ctx.quick:
        return skipped("full run only: a `cargo bench` program (release build)")
    summary, output, busy = cargo_bench(ctx, "auth")
    layer, unary = summary["layer_us"], summary["unary_us"]
    methods = (("api_key", "API key"), ("jwt", "cached JWT"))
    figures = {}
    for method, name in methods:
        figures[f"auth_added_p99_{method}"] = figure(
            f"authentication added p99, {name} (the auth layer in process, {summary['checks']:,} calls)",
            diff(layer[method]["p99"], layer["none"]["p99"]), "µs",
            floor=round(layer["none"]["p99"], 3), floor_label="the layer's own p99 in `none` mode",
            goal=["<=", 20])
    for method, name in methods:
        figures[f"auth_unary_added_p99_{method}"] = figure(
            f"authentication added p99, {name}, unary ListTools on loopback "
            f"({summary['calls']:,} calls, loopback noise included)",
            diff(unary[method]["p99"], unary["none"]["p99"]), "µs",
            floor=round(unary["none"]["p99"], 3), floor_label="the call's p99 without auth")
    return {"measures": {"auth": summary}, "busy_before": round(busy, 3), "output": output, "figures": figures}


ALL = {
    "gateway_open": gateway_open,
    "gateway_capacity": gateway_capacity,
    "gateway_stream": gateway_stream,
    "token_relay": token_relay,
    "edge_openai": edge_openai,
    "edge_openai_sdk": edge_openai_sdk,
    "runs_sqlite": runs_sqlite,
    "burst": burst,
    "open_runs": open_runs,
    "runs_postgres": runs_postgres,
    # After the runs phases, whose figures it is set beside.
    "langgraph": langgraph,
    # The benchmark programs, last: they bring their own services.
    "audit_ingest": audit_ingest,
    "auth": auth,
}
