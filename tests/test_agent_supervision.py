"""Supervision with real child processes: a killed server is restarted; repeated crashes stop it with a reason
that ``nectar status`` shows; stopping drains it."""

from __future__ import annotations

import logging
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import start_agent, wait_for
from conftest import TEST_ENV

from agent.activity.base import NullIdle
from agent.cli_agent import format_status
from agent.supervisor import ChildEvent, Supervisor


@pytest.mark.slow
def test_repeated_crashes_stop_the_child_with_a_reason() -> None:
    events: list[ChildEvent] = []
    supervisor = Supervisor(
        "server",
        ["serve", "/no/such/model", "--new-swarm"],
        logging.getLogger("test.child"),
        events.append,
        env=TEST_ENV,
        crash_limit=3,
        crash_window=600,
        max_backoff=1.0,
    )
    supervisor.want_running(True)
    supervisor.start()
    try:
        wait_for(lambda: supervisor.failed is not None, 120, "the supervisor never gave up")
        assert "crashed 3 times in 10 min" in supervisor.failed and "not found" in supervisor.failed
        assert [event.state for event in events].count("starting") == 3
        assert events[-1].state == "failed" and supervisor.restarts == 2
        supervisor.want_running(True)  # a failed child stays stopped until reset
        time.sleep(1)
        assert not supervisor.running
    finally:
        supervisor.stop()


@pytest.mark.slow
def test_agent_restarts_a_killed_server_and_reports_repeated_crashes(
    tmp_path: Path, tiny_checkpoints: Callable[[str], Path]
) -> None:
    agent = start_agent(
        tmp_path,
        {"swarm.model": str(tiny_checkpoints("llama")), "activity.other_cpu_percent_max": 100},
        lend=True,
        idle_source_factory=lambda _: NullIdle(),
        child_env=TEST_ENV,
    )
    try:
        state = agent.state
        wait_for(lambda: state.server.state == "running", 180, "the server never started")
        first_pid = state.server.pid
        assert state.server.blocks == (0, 4) and state.swarm.name == "local"

        agent.lender.servers[0].process.send_signal(signal.SIGKILL)
        wait_for(lambda: state.server.state == "running" and state.server.pid != first_pid, 180, "no restart")
        status = state.status()
        assert status.server.restarts == 1 and "crashed" in status.last_errors[-1].message
        assert "killed by SIGKILL" in status.last_errors[-1].message

        server = agent.lender.servers[0]
        server.crash_limit = 2  # the next kill is the second crash within the window
        server.process.send_signal(signal.SIGKILL)
        wait_for(lambda: state.server.state == "failed", 60, "the crash limit did not stop the server")
        status = state.status()
        assert status.stop_reason is not None and "crashed 2 times" in status.stop_reason
        assert "stopped serving: server crashed 2 times" in format_status(status)
        dht_address = agent.lender.initial_peers
    finally:
        agent.close()

    # the local swarm's DHT node keeps its identity (a private key file) and its port across restarts
    assert stat.S_IMODE(agent.paths.identity_file.stat().st_mode) & 0o077 == 0
    again = start_agent(tmp_path, {"swarm.model": str(tiny_checkpoints("llama"))}, lend=True, child_env=TEST_ENV)
    try:
        assert again.lender.initial_peers == dht_address
    finally:
        again.close()
