#!/usr/bin/env python3
"""The official `openai` Python SDK calling the edge's Chat Completions API
and, with the same SDK, the mock upstream behind it directly: what the
edge (-> gateway -> mock) adds to a call as a user's client sees it.

Each target gets its own `openai.OpenAI` client (one keep-alive connection
pool, no retries) and `--calls` calls one after another, non-streaming and
streaming; the targets take turns in `ROUNDS` rounds so drift on the
machine hits both alike. A streamed call is timed to its first chunk and
to its end (the stream read whole).

Prints one JSON line: the SDK's version and, per target and kind of call,
latency p50/p99/max in ms.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time

import openai
from stats import quantiles

ROUNDS = 10
WARMUP = 10
MESSAGES = [{"role": "user", "content": "say your tokens"}]


def unary(client: openai.OpenAI, model: str, into: dict) -> None:
    started = time.perf_counter()
    answer = client.chat.completions.create(model=model, messages=MESSAGES)
    into["unary"].append(time.perf_counter() - started)
    if not answer.choices[0].message.content:
        raise RuntimeError(f"an empty answer from {client.base_url}")


def streamed(client: openai.OpenAI, model: str, into: dict) -> None:
    started = time.perf_counter()
    first, text = None, []
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True):
        if first is None:
            first = time.perf_counter() - started
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    into["stream"].append(time.perf_counter() - started)
    into["first_chunk"].append(first)
    if not text:
        raise RuntimeError(f"an empty stream from {client.base_url}")


def measure(targets: dict, calls: int) -> dict:
    """`calls` calls of each kind per target, the targets in turns."""
    times = {name: {"unary": [], "stream": [], "first_chunk": []} for name in targets}
    for client, model in targets.values():
        for _ in range(WARMUP):
            unary(client, model, {"unary": []})
            streamed(client, model, {"stream": [], "first_chunk": []})
    per_round = max(1, calls // ROUNDS)
    for round_index in range(ROUNDS):
        names = list(targets)
        # Who goes first rotates, so neither always follows the other.
        names = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in names:
            client, model = targets[name]
            for _ in range(per_round):
                unary(client, model, times[name])
            for _ in range(per_round):
                streamed(client, model, times[name])
    return {name: {kind: quantiles(values) for kind, values in kinds.items()} for name, kinds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge", required=True, help="the edge's OpenAI base URL (http://…/v1)")
    parser.add_argument("--edge-model", default="mock", help="the gateway route the edge calls")
    parser.add_argument("--upstream", required=True, help="the mock upstream's base URL (http://…/v1)")
    parser.add_argument("--upstream-model", default="gpt-4o-mini")
    parser.add_argument("--api-key", default="unused", help="the bearer the SDK sends to the edge")
    parser.add_argument("--calls", type=int, default=1000, help="calls of each kind per target")
    args = parser.parse_args()
    client = lambda url, key: openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)
    targets = {
        "edge": (client(args.edge, args.api_key), args.edge_model),
        "upstream": (client(args.upstream, "unused"), args.upstream_model),
    }
    result = {"versions": {"openai": importlib.metadata.version("openai")},
              "calls": max(1, args.calls // ROUNDS) * ROUNDS, **measure(targets, args.calls)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
