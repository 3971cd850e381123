"""Seconds from a mouse move to zero compute lent to others, measured on a real agent and a real X display.

An Xvfb display stands for the owner's desktop; ``xdotool`` moves its mouse. The agent reads idle time from that
display (the X11 source it uses on a desktop), runs its local swarm (a DHT node and its server) and follows its
policy. Each trial waits until the owner has been away long enough for full mode and the server is up, moves the
mouse, and times:

- paused (``activity.when_active = "paused"``): the mode changing, the drain starting (SIGTERM: no new work
  accepted), and the server process gone (nothing computed for others, its memory freed);
- reduced (the default): the mode changing, and the server reporting the reduced throttle in force.

Run: ``python benchmarks/agent_reaction.py [--trials 3] [--poll 1.0] [--model smollm2-135m]`` (needs xvfb and
xdotool). Prints medians over the trials; the poll interval bounds the detection delay.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_agent_activity import move_mouse, start_xvfb  # noqa: E402

from agent.activity.x11 import X11Idle  # noqa: E402
from agent.paths import AgentPaths  # noqa: E402
from agent.service import Agent  # noqa: E402

IDLE_MINUTES = 0.05  # away after 3 s without input


def wait_for(condition: Callable[[], bool], timeout: float = 300.0, step: float = 0.005) -> float:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError
        time.sleep(step)
    return time.perf_counter()


def throttle_of(agent: Agent) -> dict:
    try:
        return json.loads((agent.paths.data_dir / "servers" / "0" / "status.json").read_text())["throttle"]
    except (OSError, ValueError, KeyError):
        return {}


def run(when_active: str, trials: int, poll: float, model: str, display: str) -> dict[str, list[float]]:
    home = Path(tempfile.mkdtemp(prefix="nectar-reaction-"))
    paths = AgentPaths(home / "config", home / "data", home / "cache", home / "logs")
    overrides = {
        "api.port": 0,
        "swarm.model": model,
        "activity.when_active": when_active,
        "activity.idle_minutes": IDLE_MINUTES,
        "activity.poll_seconds": poll,
        "activity.other_cpu_percent_max": 100,  # a shared machine: measure input alone
        "activity.resume_after_seconds": 0,
        "compute.benchmark_max_age_days": 365,
    }
    agent = Agent(paths, overrides, log_to_stderr=False, idle_source_factory=lambda _: X11Idle(display))
    agent.start()
    times: dict[str, list[float]] = {}
    state = agent.state
    try:
        for trial in range(trials):
            wait_for(
                lambda: state.mode == "full" and state.server.state == "running" and "away" in state.throttle.reason
            )
            if when_active == "reduced":
                wait_for(lambda: throttle_of(agent).get("duty_cycle") == 1.0)
            time.sleep(0.5)
            process = agent.lender.servers[0].process
            began = time.perf_counter()
            move_mouse(display, 100 + 50 * trial)
            moved = time.perf_counter()
            marks = {"xdotool": moved - began}
            marks["mode changed"] = wait_for(lambda: state.mode != "full") - began
            if when_active == "paused":
                gone = process.poll
                drain = wait_for(lambda gone=gone: state.server.state != "running" or gone() is not None)
                marks["drain started (SIGTERM)"] = drain - began
                marks["server exited"] = wait_for(lambda gone=gone: gone() is not None) - began
            else:
                marks["server throttled"] = wait_for(lambda: throttle_of(agent).get("duty_cycle", 1.0) < 1.0) - began
            for name, seconds in marks.items():
                times.setdefault(name, []).append(seconds)
            print(f"  {when_active} trial {trial + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in marks.items()))
    finally:
        agent.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0, help="activity.poll_seconds")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--modes", nargs="+", default=["paused", "reduced"], choices=["paused", "reduced"])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    xvfb, display = start_xvfb()
    try:
        print(f"model {args.model}, activity.poll_seconds {args.poll}, {args.trials} trials per mode")
        for mode in args.modes:
            times = run(mode, args.trials, args.poll, args.model, display)
            print(f"{mode}: median seconds from the mouse move")
            for name, values in times.items():
                print(f"  {name:28s} {statistics.median(values):6.2f}  (min {min(values):.2f}, max {max(values):.2f})")
    finally:
        xvfb.terminate()


if __name__ == "__main__":
    main()
