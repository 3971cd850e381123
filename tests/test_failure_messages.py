"""A server that fails for its own reasons: the client names the server, the blocks and the cause in one line.

The fault is injected by the test (``NECTAR_TEST_FAULT``, read by ``engine.server.faults``) into real server
processes; nothing else is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import TEST_ENV, run_nectar

from engine.server.faults import FAULT_VARIABLE

MODEL = "smollm2-135m"
pytestmark = pytest.mark.slow


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("nectar: ")]


def test_generate_names_the_failing_server_blocks_and_cause(local_swarm) -> None:
    swarm = local_swarm(MODEL, [(0, 30)], env={FAULT_VARIABLE: "step-error"})
    peer = swarm.servers[0].ready["peer_id"]
    done = run_nectar(
        "generate",
        MODEL,
        "--initial-peers",
        *swarm.initial_peers,
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "2",
        "--max-retries",
        "1",
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = _error_lines(done.stderr)
    assert line.startswith("nectar: error: servers failed on block(s) 0-29: ")
    assert f"server {peer[-8:]}" in line
    assert "internal error: InjectedFault: fault injected by a test at 'step-error'" in line
    assert swarm.servers[0].process.poll() is None  # the server logged its error and goes on serving


def test_demo_says_where_the_server_logs_are(tmp_path) -> None:
    env = {**os.environ, **TEST_ENV, FAULT_VARIABLE: "step-error", "NECTAR_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--max-new-tokens", "2", "--max-retries", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = _error_lines(done.stderr)
    assert lines[0].startswith("nectar: error: servers failed on block(s) ")
    assert "InjectedFault" in lines[0]
    log_dir = tmp_path / "logs" / "demo"
    assert lines[-1] == f"nectar: the servers' full logs are in {log_dir}"
    server_log = (log_dir / "server0.log").read_text()
    assert "Traceback" in server_log and "InjectedFault" in server_log  # the whole story is in the log
