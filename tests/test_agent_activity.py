"""Activity sources: real X11 idle time under Xvfb moved by xdotool, the agent leaving full mode on input and
returning when input stops, and the null fallbacks that report "unknown" instead of failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_helpers import start_agent

from agent.activity.base import NullIdle, SourceUnavailable
from agent.activity.choose import choose_idle_source
from agent.activity.monitor import ActivityMonitor
from agent.activity.system import SystemProbe
from agent.activity.x11 import X11Idle


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """An X server on a free display number (the .ci/run script installs xvfb and xdotool)."""
    if shutil.which("Xvfb") is None or shutil.which("xdotool") is None:
        pytest.skip("Xvfb and xdotool are needed (apt-get install -y xvfb xdotool)")
    for number in range(90, 140):
        if Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists():
            continue
        process = subprocess.Popen(
            ["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                return process, f":{number}"
            time.sleep(0.05)
        process.kill()
    raise RuntimeError("could not start Xvfb")


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    process, name = start_xvfb()
    yield name
    process.terminate()
    process.wait(10)


def move_mouse(display: str, x: int) -> None:
    subprocess.run(["xdotool", "mousemove", str(x), "100"], env={**os.environ, "DISPLAY": display}, check=True)


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise TimeoutError
        time.sleep(0.05)
    return time.monotonic() - began


def test_x11_idle_time_grows_and_resets_on_mouse_input(display: str) -> None:
    source = X11Idle(display)
    try:
        move_mouse(display, 10)
        time.sleep(1.2)
        before = source.seconds_since_input()
        assert before is not None and before >= 1.0
        move_mouse(display, 200)
        after = source.seconds_since_input()
        assert after is not None and after < 0.5
    finally:
        source.close()


def test_agent_leaves_full_mode_on_input_and_returns_when_it_stops(display: str, tmp_path: Path) -> None:
    overrides = {
        "activity.idle_minutes": 0.05,  # away after 3 s without input
        "activity.poll_seconds": 0.2,
        "activity.other_cpu_percent_max": 100,
        "activity.resume_after_seconds": 0,
    }
    agent = start_agent(tmp_path, overrides, lend=False)
    monitor = ActivityMonitor(agent.state, idle_source_factory=lambda _: X11Idle(display))
    monitor.start()
    try:
        wait_for(lambda: "away" in agent.state.status().reason, 15)
        assert agent.state.mode == "full"
        move_mouse(display, 300)
        wait_for(lambda: agent.state.mode != "full", 10)
        status = agent.state.status()
        assert status.mode == "reduced" and status.reason == "you are using the computer"
        wait_for(lambda: agent.state.mode == "full", 15)  # input stopped: away again after 3 s
    finally:
        monitor.stop()
        agent.close()


def test_sources_that_cannot_work_here_fall_back_to_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(SourceUnavailable):
        X11Idle()
    with pytest.raises(SourceUnavailable):
        X11Idle(":4242")  # no such display
    for name in ("x11", "windows", "macos", "none"):  # Windows and macOS sources import here but cannot open
        source = choose_idle_source(name)
        assert isinstance(source, NullIdle) and source.seconds_since_input() is None


def test_system_probe_reports_load_battery_and_programs() -> None:
    probe = SystemProbe()
    time.sleep(0.2)
    cpu = probe.other_cpu_percent()
    assert cpu is not None and 0 <= cpu <= 100
    on_battery, percent = probe.battery()  # a server has no battery: (None, None)
    assert on_battery in (True, False, None) and (percent is None or 0 <= percent <= 100)
    own = Path(os.readlink("/proc/self/exe")).name  # this very interpreter is a running program
    assert probe.exclusive_program(["no-such-game", own.upper()]) is not None
    assert probe.exclusive_program(["no-such-game"]) is None and probe.exclusive_program([]) is None
