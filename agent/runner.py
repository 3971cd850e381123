"""``nectar run --no-gui``: the agent in the foreground until SIGTERM, Ctrl-C or ``nectar stop``."""

from __future__ import annotations

import sys
from typing import Any

from agent.paths import AgentPaths
from agent.service import Agent


def run_headless(paths: AgentPaths, overrides: dict[str, Any]) -> int:
    agent = Agent(paths, overrides)
    agent.start()
    try:
        print(f"agent running; API at {agent.api.url}; stop it with `nectar stop` or Ctrl-C", file=sys.stderr)
        agent.run()
    finally:
        agent.close()
    state = agent.state
    if state is not None and state.stop_reason:
        print(f"agent stopped: {state.stop_reason}", file=sys.stderr)
    return 0
