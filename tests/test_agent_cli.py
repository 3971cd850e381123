"""The agent's commands as a user runs them: a real headless agent process, controlled with no flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_ENV, run_nectar

from agent.api.server import ApiAddress


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NECTAR_HOME", str(tmp_path))
    return tmp_path


def start_headless(home: Path, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        # the tests' own processes load the machine: not the "other programs" the CPU limit is about
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--no-gui",
            "--api-port",
            "0",
            "--activity-other-cpu-percent-max",
            "100",
            *args,
        ],
        env={**os.environ, **TEST_ENV, "NECTAR_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while ApiAddress.read(home / "data" / "api.json") is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the agent did not start:\n" + process.communicate()[0])
        time.sleep(0.2)
    return process


@pytest.fixture
def headless(home: Path, tiny_checkpoints) -> Iterator[subprocess.Popen]:
    """A whole agent (its local swarm included) serving a tiny model; other programs' CPU use is ignored."""
    model = str(tiny_checkpoints("llama"))
    process = start_headless(home, "--swarm-model", model, "--activity-other-cpu-percent-max", "100")
    yield process
    if process.poll() is None:
        process.terminate()
        process.wait(30)


def test_control_commands_need_no_flags(home: Path, headless: subprocess.Popen) -> None:
    status = run_nectar("status")
    assert status.returncode == 0 and status.stdout.startswith("mode: full")
    assert run_nectar("pause").stdout.startswith("paused: paused by you")
    data = json.loads(run_nectar("status", "--json").stdout)
    assert data["mode"] == "paused" and data["manual_pause"] is True
    assert run_nectar("resume").stdout.startswith("full:")
    assert run_nectar("snooze", "10").stdout.startswith("paused: snoozed until")
    second = run_nectar("run", "--no-gui", "--api-port", "0")
    assert second.returncode == 2 and "already running" in second.stderr and "http://127.0.0.1:" in second.stderr
    stop = run_nectar("stop")
    assert stop.returncode == 0
    assert headless.wait(90) == 0
    gone = run_nectar("status")
    assert gone.returncode == 2 and "no agent is running" in gone.stderr and "Traceback" not in gone.stderr


def test_config_goes_through_the_running_agent(home: Path, headless: subprocess.Popen) -> None:
    assert run_nectar("config", "set", "activity.idle_minutes", "12").stdout.strip() == "activity.idle_minutes = 12.0"
    assert json.loads(run_nectar("status", "--json").stdout)["mode"] == "full"
    bad = run_nectar("config", "set", "activity.idle_minutes", "-1")
    assert bad.returncode == 2 and "activity.idle_minutes" in bad.stderr and "Traceback" not in bad.stderr
    assert run_nectar("config", "get", "activity.idle_minutes").stdout.strip() == "12.0"


def test_config_without_an_agent(home: Path) -> None:
    path = run_nectar("config", "path").stdout.strip()
    assert path == str(home / "config" / "nectar.toml")
    assert run_nectar("config", "set", "compute.threads_active", "3").returncode == 0
    listing = run_nectar("config", "get").stdout
    assert "compute.threads_active = 3    # compute threads while the owner is active" in listing
    unknown = run_nectar("config", "set", "compute.turbo", "1")
    assert unknown.returncode == 2 and "unknown setting 'compute.turbo'" in unknown.stderr


def test_bad_flag_value_is_one_line(home: Path) -> None:
    result = run_nectar("run", "--no-gui", "--compute-threads-active", "zero")
    assert result.returncode == 2 and "compute.threads_active" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bench_measures_and_caches_with_its_age(home: Path, tiny_checkpoints) -> None:
    assert run_nectar("config", "set", "swarm.model", str(tiny_checkpoints("llama"))).returncode == 0
    first = run_nectar("bench", "--json", "--refresh", timeout=300)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["cpu"]["cores"] >= 1 and answer["cpu"]["ram_gb"] > 0
    assert answer["compute"]["device"] == "cpu" and answer["compute"]["tokens_per_second"] > 0
    assert answer["network"]["detail"] == "no swarm peers to measure"
    again = run_nectar("bench")  # cached: shown with its age, not measured again
    assert again.returncode == 0 and again.stdout.startswith("measured ") and "inference steps/s" in again.stdout


def test_run_help_lists_every_setting_flag() -> None:
    result = run_nectar("run", "--help")
    assert result.returncode == 0, result.stderr
    assert "--activity-other-cpu-percent-max" in result.stdout and "unit: %" in result.stdout
