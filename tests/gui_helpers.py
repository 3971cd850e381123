"""Helpers for the GUI's tests: a real agent lending on a local swarm of the embedded model, and Qt offscreen."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from agent_helpers import temp_paths

from agent.service import Agent
from agent.settings_file import SettingsFile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

# Lend at full speed: these machines have no idle-time source, and the GUI tests are not about the policy.
LENDING = {
    "api.port": 0,
    "activity.idle_source": "none",
    "activity.when_unknown": "full",
    "activity.other_cpu_percent_max": 100.0,
    "activity.pause_on_battery": False,
    "compute.threads_idle": 1,
}


def start_lending_agent(root: Path, env: dict[str, str]) -> Agent:
    """A real agent that runs the local swarm (its own DHT and one server of the embedded model).

    The settings go to its file, not to command-line overrides: a change saved through the API reloads the file.
    """
    paths = temp_paths(root)
    SettingsFile(paths.config_file).update(LENDING)
    return Agent(paths, log_to_stderr=False, child_env=env).start()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, qtbot=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        if qtbot is not None:
            qtbot.wait(100)
        else:
            time.sleep(0.1)
