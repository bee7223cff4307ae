#!/usr/bin/env python3
"""The same 3-step agent as agentmesh's benchmark runs, on LangGraph, in
process: what `make bench` sets agentmesh's run figures beside.

The graph: a scripted model node (its first call asks for the calculator,
its second answers; zero delay, no network), LangGraph's prebuilt ToolNode
with a calculator tool, then the model again: model -> calculator -> model,
on `MessagesState`, the objective being the one `agentmesh load run` sends.
Every run is a new thread (a new `thread_id`), as every agentmesh run is a
new run.

Measured, each checkpointer on its own:
- one run after another with the sync API (`invoke`): latency p50/p99 and
  the CPU time of this process per run (`time.process_time`, every thread),
  with no checkpointer, `SqliteSaver` (a file in a temporary folder) and
  `PostgresSaver` (one connection, when `--postgres-url` is given);
- `--in-flight` runs at once with the async API (`ainvoke`, one task per
  slot gathered, each starting its next run as the last ends) for
  `--duration` seconds: runs/s and latency p99, with `InMemorySaver`,
  `AsyncSqliteSaver` and `AsyncPostgresSaver` (a pool of 8 connections,
  agentmesh's `storage.max_connections`).

Prints one JSON line: versions, the settings, and a measure per mode.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib.metadata
import json
import math
import operator
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from stats import quantiles

OBJECTIVE = "What is 17 * 23 + sqrt(144)?"
EXPRESSION = "17 * 23 + sqrt(144)"
WARMUP = 20
POOL_SIZE = 8

# === the agent ===

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.Pow: operator.pow, ast.BitXor: operator.pow,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def _evaluate(node: ast.AST) -> float:
    """Arithmetic and sqrt only: the calculator never runs arbitrary code."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "sqrt" and len(node.args) == 1:
        return math.sqrt(_evaluate(node.args[0]))
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


@tool
def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression (+ - * / ^ and sqrt)."""
    value = _evaluate(ast.parse(expression, mode="eval").body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps({"result": value})


def model(state: MessagesState) -> dict:
    """The scripted model: a tool call first, then the answer from the
    tool's result, as the gateway's scripted `demo` model does."""
    last = state["messages"][-1]
    if isinstance(last, ToolMessage):
        result = json.loads(last.content)["result"]
        return {"messages": [AIMessage(content=f"The answer is {result}.")]}
    call = {"name": "calculator", "args": {"expression": EXPRESSION}, "id": "call_1", "type": "tool_call"}
    return {"messages": [AIMessage(content="", tool_calls=[call])]}


def build(checkpointer=None):
    graph = StateGraph(MessagesState)
    graph.add_node("model", model)
    graph.add_node("tools", ToolNode([calculator]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile(checkpointer=checkpointer)


def run_input() -> dict:
    return {"messages": [HumanMessage(content=OBJECTIVE)]}


def run_config() -> dict:
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


def check(answer: dict) -> None:
    """A run that did not go model -> calculator -> model is not measured."""
    messages = answer["messages"]
    if len(messages) != 4 or messages[-1].content != "The answer is 403.":
        raise RuntimeError(f"unexpected run: {[m.content for m in messages]}")


# === measuring ===

def options(graph, durability: str) -> dict:
    """`durability` means nothing (and warns) without a checkpointer."""
    return {"durability": durability} if graph.checkpointer else {}


def sequential(graph, runs: int, durability: str) -> dict:
    """`runs` runs one after another: latency and CPU per run."""
    kwargs = options(graph, durability)
    for _ in range(WARMUP):
        check(graph.invoke(run_input(), run_config(), **kwargs))
    latencies = []
    cpu_before = time.process_time()
    for _ in range(runs):
        started = time.perf_counter()
        answer = graph.invoke(run_input(), run_config(), **kwargs)
        latencies.append(time.perf_counter() - started)
        check(answer)
    cpu = time.process_time() - cpu_before
    return {"runs": runs, "latency_ms": quantiles(latencies), "cpu_ms_per_run": round(cpu / runs * 1000, 3)}


async def in_flight(graph, slots: int, duration: float, durability: str) -> dict:
    """`slots` runs at once for `duration` s (closed loop): runs/s and latency."""
    kwargs = options(graph, durability)
    for _ in range(WARMUP):
        check(await graph.ainvoke(run_input(), run_config(), **kwargs))
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + duration

    async def slot() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                check(await graph.ainvoke(run_input(), run_config(), **kwargs))
            except Exception as err:  # counted, as `agentmesh load` counts failed runs
                errors.append(type(err).__name__)
                continue
            latencies.append(time.perf_counter() - started)

    cpu_before, started = time.process_time(), time.monotonic()
    await asyncio.gather(*(slot() for _ in range(slots)))
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    return {"slots": slots, "ok": len(latencies), "errors": len(errors), "elapsed_s": round(elapsed, 3),
            "throughput": round(len(latencies) / elapsed, 1), "latency_ms": quantiles(latencies),
            "cpu_ms_per_run": round(cpu / len(latencies) * 1000, 3) if latencies else None}


# === the checkpointers ===

def sequential_modes(args, folder: Path) -> dict:
    out = {"none": sequential(build(), args.runs, args.durability)}
    connection = sqlite3.connect(folder / "sequential.db", check_same_thread=False)
    try:
        from langgraph.checkpoint.sqlite import SqliteSaver
        out["sqlite"] = sequential(build(SqliteSaver(connection)), args.runs, args.durability)
    finally:
        connection.close()
    if args.postgres_url:
        from langgraph.checkpoint.postgres import PostgresSaver
        with PostgresSaver.from_conn_string(args.postgres_url) as saver:
            saver.setup()
            out["postgres"] = sequential(build(saver), args.runs, args.durability)
    return out


async def in_flight_modes(args, folder: Path) -> dict:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    measure = lambda saver: in_flight(build(saver), args.in_flight, args.duration, args.durability)
    out = {"memory": await measure(InMemorySaver())}
    async with AsyncSqliteSaver.from_conn_string(str(folder / "in_flight.db")) as saver:
        out["sqlite"] = await measure(saver)
    if args.postgres_url:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        # The settings LangGraph's documentation gives for a pool.
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool(args.postgres_url, min_size=POOL_SIZE, max_size=POOL_SIZE,
                                       kwargs=kwargs, open=False) as pool:
            saver = AsyncPostgresSaver(pool)
            await saver.setup()
            out["postgres"] = await measure(saver)
    return out


def versions() -> dict:
    names = ["langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite",
             "langgraph-checkpoint-postgres", "langchain-core", "psycopg", "aiosqlite"]
    out = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="sequential runs per checkpointer")
    parser.add_argument("--in-flight", type=int, default=50, help="runs at once (async)")
    parser.add_argument("--duration", type=float, default=15, help="seconds of runs in flight per checkpointer")
    parser.add_argument("--postgres-url", default="", help="a database for the PostgreSQL checkpointers")
    parser.add_argument("--durability", default="async", choices=["sync", "async", "exit"],
                        help="when checkpoints are written (LangGraph's default: async)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentmesh-langgraph-") as folder:
        folder = Path(folder)
        result = {
            "versions": versions(),
            "settings": {"runs": args.runs, "in_flight": args.in_flight, "duration_s": args.duration,
                         "durability": args.durability, "postgres": bool(args.postgres_url),
                         "postgres_pool": POOL_SIZE, "warmup_runs": WARMUP},
            "sequential": sequential_modes(args, folder),
            "in_flight": asyncio.run(in_flight_modes(args, folder)),
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
