"""Latency quantiles of the bench's Python programs, computed as
`agentmesh load` computes its own (nearest rank), so figures from both sit
side by side in one report."""

from __future__ import annotations

import math


def quantiles(latencies: list[float]) -> dict:
    """p50/p99/max/mean in ms of latencies in seconds, and their count."""
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000, 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1] * 1000, 3),
            "mean": round(sum(ordered) / len(ordered) * 1000, 3), "calls": len(ordered)}
