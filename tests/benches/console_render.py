"""How fast the web console draws a run, in Debian's Chromium driven by
Playwright, against `agentmesh up` with the scripted model (`make bench`).

1. A finished run of RUN_WORDS token events (plus its start, progress and
   end): from navigating to its page until the whole answer is on it.
2. A live run streaming LIVE_WORDS tokens at LIVE_RATE tokens/s: how far
   behind the page is when the run ends (from the run's `run_finished` event
   time to the page showing the whole answer), and the slowest gap between
   two animation frames while tokens arrive.

Prints medians over ROUNDS rounds. Sizes: RUN_WORDS (5000), LIVE_WORDS
(2000), LIVE_RATE (500), ROUNDS (5), from the environment."""

import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from conftest import running_mesh  # noqa: E402
from test_console import BROWSER_FLAGS, DEMO_RULES, _chromium  # noqa: E402

RUN_WORDS = int(os.environ.get("RUN_WORDS", "5000"))
LIVE_WORDS = int(os.environ.get("LIVE_WORDS", "2000"))
LIVE_RATE = int(os.environ.get("LIVE_RATE", "500"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def rules_file(folder):
    pace_ms = 1000 / LIVE_RATE
    extra = f"""
[[rules]]
on = "user"
match = '(?i)^long answer'
text = '{" ".join(f"w{i}" for i in range(RUN_WORDS))}'
pace = "0s"

[[rules]]
on = "user"
match = '(?i)^live answer'
text = '{" ".join(f"w{i}" for i in range(LIVE_WORDS))}'
pace = "{pace_ms}ms"
"""
    head, rest = DEMO_RULES.read_text().split("\n[[rules]]\n", 1)
    path = folder / "rules.toml"
    path.write_text(head + extra + "\n[[rules]]\n" + rest)
    return path


def post(edge, path, body):
    request = urllib.request.Request(
        edge + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def get(edge, path):
    with urllib.request.urlopen(edge + path, timeout=30) as answer:
        return json.load(answer)


def wait_finished(edge, run_id):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = get(edge, f"/v1/runs/{run_id}")["run"]
        if run["state"] == "RUN_STATE_SUCCEEDED":
            return run
        time.sleep(0.05)
    raise RuntimeError(f"run {run_id} did not finish")


WORDS_ON_PAGE = "() => (document.querySelector('[data-testid=answer-text]')?.textContent || '').split(' ').filter(Boolean).length"


def finished_run_ms(page, edge, run_id):
    page.goto("about:blank")
    started = time.perf_counter()
    page.goto(f"{edge}/runs/{run_id}")
    page.wait_for_function(f"() => ({WORDS_ON_PAGE})() >= {RUN_WORDS}", timeout=60_000, polling="raf")
    return (time.perf_counter() - started) * 1000


def live_run(page, edge):
    """(lag at the end in ms, slowest frame gap in ms) of one live run."""
    page.goto(f"{edge}/runs")
    page.evaluate(
        """() => { window.__gaps = []; let last = performance.now();
        const tick = (now) => { window.__gaps.push(now - last); last = now; if (!window.__stop) requestAnimationFrame(tick); };
        requestAnimationFrame(tick); }"""
    )
    run_id = post(edge, "/v1/runs", {"objective": "live answer please"})["run_id"]
    page.evaluate(f"() => window.history.pushState({{}}, '', '/runs/{run_id}') || window.dispatchEvent(new PopStateEvent('popstate'))")
    page.wait_for_function(f"() => ({WORDS_ON_PAGE})() >= {LIVE_WORDS}", timeout=120_000, polling="raf")
    shown_at = page.evaluate("() => Date.now()")
    gaps = page.evaluate("() => { window.__stop = true; return window.__gaps; }")
    wait_finished(edge, run_id)
    events = urllib.request.urlopen(f"{edge}/v1/runs/{run_id}/events", timeout=30).read().decode()
    finished = [json.loads(line[5:]) for line in events.splitlines() if line.startswith("data:") and "run_finished" in line]
    end_ms = datetime.datetime.fromisoformat(finished[-1]["time"]).timestamp() * 1000
    return shown_at - end_ms, max(gaps[5:] or [0])


def main():
    from playwright.sync_api import sync_playwright

    folder = pathlib.Path(tempfile.mkdtemp(prefix="agentmesh-console-bench-"))
    config = folder / "mesh.toml"
    config.write_text(f'[llm_gateway.providers.scripted]\nrules_file = "{rules_file(folder)}"\n')
    with running_mesh(config) as mesh, sync_playwright() as playwright:
        edge = mesh["edge"]
        browser = playwright.chromium.launch(executable_path=_chromium(), args=BROWSER_FLAGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        run_id = post(edge, "/v1/runs", {"objective": "long answer please"})["run_id"]
        wait_finished(edge, run_id)
        events = len([line for line in urllib.request.urlopen(f"{edge}/v1/runs/{run_id}/events", timeout=60).read().decode().splitlines() if line.startswith("data:")])
        finished_run_ms(page, edge, run_id)  # warm-up
        loads = [finished_run_ms(page, edge, run_id) for _ in range(ROUNDS)]
        print(f"console: a finished run of {events} events, page load to the whole answer shown: median {statistics.median(loads):.0f} ms (min {min(loads):.0f}, max {max(loads):.0f}, {ROUNDS} rounds)")
        lives = [live_run(page, edge) for _ in range(ROUNDS)]
        lags = [lag for lag, _ in lives]
        gaps = [gap for _, gap in lives]
        print(f"console: a live run of {LIVE_WORDS} tokens at {LIVE_RATE} tokens/s: page behind the run's end by median {statistics.median(lags):.0f} ms (max {max(lags):.0f}); slowest frame gap median {statistics.median(gaps):.0f} ms (max {max(gaps):.0f}), {ROUNDS} rounds")
        browser.close()


if __name__ == "__main__":
    main()
