"""Processes of a benchmark and what /proc says about them.

A `Proc` is one process the bench started (a service, a floor): its pid, its
log file, and readings of its CPU time, context switches (summed over its
threads) and resident memory. `Box` reads the whole machine: how busy it is
(to wait for an idle box before each phase) and what it is.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of `pid` (with its reaped children's when asked)."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def descendants(root: int) -> set[int]:
    """The live processes under `root` (a PostgreSQL server's backends)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU of `root`, its reaped children and its live descendants."""
    return cpu_seconds(root, children=True) + sum(cpu_seconds(pid) for pid in descendants(root))


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every live thread of `pid`."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def rss_bytes(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
        return int(fields[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


class Proc:
    """A process the bench started; stopped by `stop()` (or at exit)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None,
                 stdin_pipe: bool = False, tree: bool = False, preexec=None):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.tree = tree
        handle = self.log.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin_pipe else handle,
            stderr=handle,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,
        )
        self.pid = self.popen.pid
        self.measured_pid = self.pid

    def first_line(self, timeout: float = 60) -> dict:
        """The JSON line a floor prints when it listens."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if line:
                answer = json.loads(line)
                if "error" in answer:
                    raise RuntimeError(f"{self.name}: {answer['error']}")
                return answer
            if self.popen.poll() is not None:
                break
        raise RuntimeError(f"{self.name} did not start; see {self.log}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu(self) -> float:
        if self.tree:
            return tree_cpu_seconds(self.measured_pid)
        return cpu_seconds(self.measured_pid)

    def switches(self) -> int:
        pids = {self.measured_pid} | (descendants(self.measured_pid) if self.tree else set())
        return sum(context_switches(pid) for pid in pids)

    def rss(self) -> int:
        return rss_bytes(self.measured_pid)

    def stop(self, grace: float = 10) -> None:
        if self.popen.poll() is not None:
            return
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def busy_fraction(window: float = 0.5) -> float:
    """The share of the machine's CPU time spent busy over `window` seconds."""

    def sample():
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(window)
    total1, idle1 = sample()
    spent = max(total1 - total0, 1)
    return 1 - (idle1 - idle0) / spent


def wait_idle(limit: float = 15, threshold: float = 0.15) -> float:
    """Waits (up to `limit` s) for the box to be idle; returns the last
    busy fraction seen (above `threshold`: the phase ran on a busy box)."""
    deadline = time.monotonic() + limit
    busy = busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


def machine() -> dict:
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_bytes": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
