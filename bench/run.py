#!/usr/bin/env python3
"""`make bench` and `make bench-quick`: agentmesh measured side by side with
its floors, in one run, on this machine.

Flow: start the floors (mock OpenAI upstreams, null tonic gateways, a private
PostgreSQL) and the mesh (five services and the edge, each its own process,
bench/mesh.py); then each phase: wait for an idle box, read CPU time and
context switches of every process from /proc, put load on one path with
`agentmesh load` (the same load client users have), read /proc again. Each
figure is set against its floor from the same run (a difference or a ratio),
so the report means something on a noisy machine. Last, write
bench/results/<timestamp>/results.json (everything) and report.md (the
figures, their floors and goals, and the change against bench/baseline.json).

Then, beside them: the same 3-step agent on LangGraph in process (its
figures set against agentmesh's runs of this run), the official `openai`
Python SDK through the edge, and the benchmark programs whose figures belong
in the report (`cargo bench`: audit ingest, authentication), each run by its
phase and parsed from the JSON line it prints.

`--quick` runs every phase at tiny sizes with the debug binaries the tests
built, and checks that each phase produced its figures: never a timing.
The phases that need what quick mode does not install or build (LangGraph,
the release-built benchmark programs) are skipped there, with a note.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import phases  # noqa: E402
import report  # noqa: E402
from mesh import Floors, Mesh  # noqa: E402
from procs import machine  # noqa: E402

SIZES = {
    "full": {
        "duration": 10, "rates": [1000, 2000, 5000], "in_flight": 64,
        "stream_rate": 200, "edge_rate": 1000,
        "runs_sequential": 1000, "runs_in_flight": 50, "runs_duration": 15,
        "open_runs": 10000, "open_ramp": 10, "slow_tokens": 40, "slow_pace_us": 1_000_000,
        "burst": 5000, "burst_rate": 1000, "sdk_calls": 1000,
        "relay_tokens": 20, "relay_pace_us": 1000, "relay_duration": 20,
    },
    "quick": {
        "duration": 1, "rates": [100], "in_flight": 4,
        "stream_rate": 20, "edge_rate": 50,
        "runs_sequential": 10, "runs_in_flight": 4, "runs_duration": 1,
        "open_runs": 20, "open_ramp": 1, "slow_tokens": 6, "slow_pace_us": 500_000,
        "burst": 40, "burst_rate": 40, "sdk_calls": 20,
        "relay_tokens": 5, "relay_pace_us": 1000, "relay_duration": 1,
    },
}


def versions(bin_dir: Path) -> dict:
    def output(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return ""

    return {
        "agentmesh": output(str(bin_dir / "agentmesh"), "--version"),
        "commit": output("git", "-C", str(HERE), "rev-parse", "--short", "HEAD"),
        "dirty": bool(output("git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no")),
        "rustc": output("rustc", "--version"),
        "profile": bin_dir.name,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; check every phase ran")
    parser.add_argument("--bin-dir", type=Path, help="the binaries (default target/release, or target/debug with --quick)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results/<timestamp>/ goes")
    parser.add_argument("--phases", default="", help="comma-separated phases to run (default: all)")
    parser.add_argument("--baseline", type=Path, default=HERE / "baseline.json")
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the services (e.g. RUST_LOG=warn, LD_PRELOAD=…)")
    parser.add_argument("--cargo-profile", default="",
                        help="the profile `cargo bench` builds the benchmark programs with "
                             "(default: its own, optimised; `dev` tries them without a release build)")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    sizes = SIZES[size]
    bin_dir = (args.bin_dir or HERE.parent / "target" / ("debug" if args.quick else "release")).resolve()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in args.phases.split(",") if name] or list(phases.ALL)

    results = {"size": size, "service_env": args.service_env, "sizes": sizes, "started": stamp, "machine": machine(),
               "versions": versions(bin_dir), "phases": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as work:
        work = Path(work)
        (work / "logs").mkdir()
        bench_bin = bin_dir / "agentmesh-bench"
        floors = Floors(bench_bin, work / "logs", sizes)
        service_env = dict(item.split("=", 1) for item in args.service_env)
        mesh = Mesh(bin_dir, work, floors, max_runs=max(sizes["open_runs"], 1000) * 2, env=service_env)
        context = phases.Context(bin_dir, mesh, floors, sizes, work, quick=args.quick,
                                 cargo_args=["--profile", args.cargo_profile] if args.cargo_profile else [],
                                 done=results["phases"])
        try:
            mesh.start_all()
            for name in wanted:
                print(f"== {name}", flush=True)
                results["phases"][name] = phases.ALL[name](context)
        finally:
            mesh.stop()
            for proc in floors.procs():
                proc.stop()
            if context.postgres:
                context.postgres.stop()
            results["seconds"] = round(time.monotonic() - started, 1)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            for log in (work / "logs").iterdir():
                (out / "logs").mkdir(exist_ok=True)
                (out / "logs" / log.name).write_bytes(log.read_bytes()[-200_000:])

    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else None
    text = report.render(results, baseline)
    (out / "report.md").write_text(text)
    print(text)
    print(f"report: {out / 'report.md'}\nraw: {out / 'results.json'}")
    if args.quick:
        missing = report.missing_figures(results, wanted)
        if missing:
            print("bench-quick: phases without figures: " + ", ".join(missing), file=sys.stderr)
            return 1
        print(f"bench-quick: every phase ran and produced figures ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
