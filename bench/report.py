"""The report of a benchmark run: report.md from results.json, each figure
beside its floor (or its peer: the same measure of another system, LangGraph)
from the same run, its goal, and its change against the committed baseline
(informational)."""

from __future__ import annotations


def _number(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip()


def _met(figure: dict):
    goal, value = figure.get("goal"), figure.get("value")
    if not goal or value is None:
        return None
    op, target = goal
    return value <= target if op == "<=" else value >= target


def _vs_floor(figure: dict) -> str:
    value, floor = figure.get("value"), figure.get("floor", figure.get("peer"))
    if value is None or floor in (None, 0):
        return ""
    return f"{value / floor:.2f}×"


def _floor_text(figure: dict) -> str:
    unit = figure["unit"]
    if figure.get("floor") is not None:
        return f"{_number(figure['floor'], unit)} ({figure.get('floor_label', '')})"
    if figure.get("peer") is not None:
        return f"{_number(figure['peer'], unit)} (peer: {figure.get('peer_label', '')})"
    return ""


def _table(table: dict) -> list[str]:
    """A phase's own table (what a program measured, beyond its figures)."""
    cells = lambda row: "| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |"
    return ["", table["title"], "", cells(table["columns"]), "|" + "---|" * len(table["columns"]),
            *(cells(row) for row in table["rows"])]


def figures_of(results: dict) -> dict:
    out = {}
    for phase in results.get("phases", {}).values():
        out.update(phase.get("figures", {}))
    return out


def render(results: dict, baseline: dict | None) -> str:
    machine, versions = results["machine"], results["versions"]
    lines = [
        f"# agentmesh benchmark, {results['started']} ({results['size']} size)",
        "",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_bytes'] / 2**30:.1f} GiB, Linux {machine['kernel']}.",
        f"- Build: {versions['agentmesh']} at {versions['commit']}"
        f"{' (with local changes)' if versions['dirty'] else ''}, {versions['profile']} binaries, {versions['rustc']}.",
        *([f"- Service environment: `{' '.join(results['service_env'])}`."] if results.get("service_env") else []),
        f"- Took {results.get('seconds', '?')} s. The load generator (`agentmesh load`) ran on the same machine.",
        "- Open-loop latencies count from each call's scheduled send time (coordinated omission corrected).",
    ]
    busy = [(name, load["busy_before"]) for name, phase in results["phases"].items()
            for load in _loads(phase) if load["busy_before"] > 0.15]
    busy += [(name, phase["busy_before"]) for name, phase in results["phases"].items()
             if phase.get("busy_before", 0) > 0.15]
    if busy:
        lines.append("- **The machine was busy** before " + ", ".join(
            f"{name} ({share:.0%})" for name, share in busy) + ": those figures are less reliable.")
    base_figures = figures_of(baseline) if baseline else {}
    if baseline:
        lines.append(f"- Baseline: {baseline.get('started', '?')} at {baseline['versions'].get('commit', '?')} "
                     "(change is informational).")
    for name, phase in results["phases"].items():
        if phase.get("skipped"):
            lines += ["", f"## {name}", "", f"Skipped: {phase['skipped']}."]
            continue
        lines += ["", f"## {name}", "",
                  "| figure | value | floor or peer (this run) | vs floor or peer | goal | met | baseline | change |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, figure in phase.get("figures", {}).items():
            unit = figure["unit"]
            floor_text = _floor_text(figure)
            goal = figure.get("goal")
            goal_text = f"{'≤' if goal[0] == '<=' else '≥'} {_number(goal[1], unit)}" if goal else ""
            met = _met(figure)
            base = base_figures.get(key, {}).get("value")
            change = ""
            if base not in (None, 0) and figure.get("value") is not None:
                change = f"{(figure['value'] - base) / abs(base):+.0%}"
            lines.append(
                f"| {figure['label']} | {_number(figure.get('value'), unit)} | {floor_text} | {_vs_floor(figure)} | "
                f"{goal_text} | {'' if met is None else ('yes' if met else 'no')} | {_number(base, unit)} | {change} |")
        if "per_run_cpu_ms" in phase:
            lines += ["", "CPU (ms) and context switches per run, by process (sequential runs):", "",
                      "| process | CPU ms/run | switches/run |", "|---|---|---|"]
            for proc, cpu in phase["per_run_cpu_ms"].items():
                lines.append(f"| {proc} | {cpu} | {phase['per_run_switches'].get(proc, '')} |")
        for table in phase.get("tables", []):
            lines += _table(table)
        if phase.get("output"):
            lines += ["", "<details><summary>the program's output</summary>", "", "```",
                      phase["output"].rstrip(), "```", "", "</details>"]
        if not _loads(phase):
            continue
        lines += ["", "<details><summary>loads</summary>", "",
                  "| load | sent | ok | errors | ok/s | p50 ms | p99 ms | max ms | first event p50/p99 ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, load in _labelled_loads(phase):
            s = load["summary"]
            lat = s.get("latency_ms") or {}
            first = s.get("first_event_ms")
            errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items())
            first_text = f"{first['p50']:.3f} / {first['p99']:.3f}" if first else ""
            lines.append(f"| {label} | {s['sent']} | {s['ok']} | {errors} | {s['throughput']:.1f} | "
                         f"{_number(lat.get('p50'))} | {_number(lat.get('p99'))} | {_number(lat.get('max'))} | {first_text} |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _labelled_loads(phase: dict, prefix: str = ""):
    for key, value in phase.get("measures", {}).items():
        yield from _walk(value, f"{prefix}{key}")


def _walk(value, label: str):
    if isinstance(value, dict) and "summary" in value:
        yield label, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _walk(inner, f"{label} {key}")


def _loads(phase: dict):
    return [load for _, load in _labelled_loads(phase)]


def missing_figures(results: dict, wanted: list[str]) -> list[str]:
    """Phases that did not run, produced no figure, or whose loads had no
    successful call: what bench-quick fails on."""
    missing = []
    for name in wanted:
        phase = results["phases"].get(name)
        if phase and phase.get("skipped"):
            continue
        if not phase or not phase.get("figures"):
            missing.append(f"{name} (did not run)")
            continue
        empty = [key for key, figure in phase["figures"].items() if figure.get("value") is None]
        idle = [label for label, load in _labelled_loads(phase) if load["summary"]["ok"] == 0]
        if empty or idle:
            missing.append(f"{name} (no value: {', '.join(empty + idle)})")
    return missing
