"""Helpers for the agent's tests: a keyring backend that lives in memory, and an agent on a temporary home."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keyring
from keyring.backend import KeyringBackend

from agent.paths import AgentPaths
from agent.service import Agent


class MemoryKeyring(KeyringBackend):
    """A working keyring for tests: headless Linux has none, and tests must not touch a real one."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.values.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.values[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if self.values.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


def use_keyring(backend: KeyringBackend) -> KeyringBackend:
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    return previous


def temp_paths(root: Path) -> AgentPaths:
    return AgentPaths(root / "config", root / "data", root / "cache", root / "logs").create()


def start_agent(root: Path, overrides: dict[str, Any] | None = None, lend: bool = False, **kwargs: Any) -> Agent:
    """An agent with its API on a free port of 127.0.0.1; with ``lend`` also its swarm, server and activity loop."""
    # the tests' own server processes load this small machine: they are not the "other programs" a volunteer means
    overrides = {
        "api.port": 0,
        "compute.benchmark_max_age_days": 365,
        "activity.other_cpu_percent_max": 100,
        **(overrides or {}),
    }
    return Agent(temp_paths(root), overrides, log_to_stderr=False, lend=lend, **kwargs).start()


class ManualIdle:
    """An idle-time source the test sets: stands for the keyboard and mouse (real X11 input is tested in
    test_agent_activity.py with Xvfb and xdotool)."""

    name = "manual"

    def __init__(self, seconds: float | None = 600.0):
        self.seconds = seconds

    def seconds_since_input(self) -> float | None:
        return self.seconds

    def close(self) -> None:
        pass


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; ``TimeoutError(what)`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)
