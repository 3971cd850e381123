"""The agent lending its machine to a real swarm: a pause mid-generation drains its server without changing a
single logit of the client's generation; the server leaves the DHT and comes back on resume; reduced mode
lowers the announced throughput without a restart; the owner's own request lifts the throttle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from agent_helpers import ManualIdle, start_agent, wait_for
from conftest import TEST_ENV, make_tiny_checkpoint
from test_fault_tolerance import KILL_AT, NEW_TOKENS, PROMPT, assert_same_generation, greedy

from agent.client import AgentClient
from agent.stats import StatsDB
from engine.client.config import ClientSettings
from engine.client.model import DistributedCausalLM
from engine.records import ServerState

NUM_BLOCKS = 8


def records_of(model: DistributedCausalLM, peer: str) -> list:
    blocks = model.swarm.run(model.swarm.read_blocks(0, NUM_BLOCKS))
    return [record for record in blocks[0] if record.peer_id == peer]


def online(model: DistributedCausalLM, peer: str) -> bool:
    return any(record.state == ServerState.ONLINE for record in records_of(model, peer))


def server_throttle(agent) -> dict:
    path = agent.paths.data_dir / "servers" / "0" / "status.json"
    try:
        return json.loads(path.read_text())["throttle"]
    except (OSError, ValueError, KeyError):
        return {}


@pytest.mark.slow
def test_pause_drains_without_changing_the_generation_and_resume_rejoins(local_swarm, tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "llama8", "llama", num_layers=NUM_BLOCKS)
    # another volunteer, slower to answer: routes prefer the agent's server, and the swarm stays whole during a pause
    swarm = local_swarm(checkpoint, [(0, NUM_BLOCKS)], ["--simulated-delay", "0.05"])
    idle = ManualIdle(600.0)
    overrides = {
        "swarm.name": "test",
        "swarm.initial_peers": swarm.initial_peers,
        "swarm.model": str(checkpoint),
        "activity.other_cpu_percent_max": 100,
        "activity.resume_after_seconds": 0,
    }
    agent = start_agent(tmp_path / "home", overrides, lend=True, idle_source_factory=lambda _: idle, child_env=TEST_ENV)
    state = agent.state
    client = AgentClient.connect(agent.paths)
    model = None
    try:
        wait_for(lambda: state.server.state == "running", 180, "the agent's server never started")
        peer = state.server.peer_id
        assert state.server.blocks == (0, NUM_BLOCKS)
        model = DistributedCausalLM.connect(
            str(checkpoint), swarm.initial_peers, settings=ClientSettings(step_timeout=20, ban_base=0.5)
        )
        wait_for(lambda: online(model, peer), 60, "the agent's server never announced itself")
        full_throughput, full_rps = records_of(model, peer)[0].throughput, records_of(model, peer)[0].inference_rps

        # reduced while the owner is active: same process, lower announced throughput, throttled compute
        idle.seconds = 0.0
        wait_for(lambda: server_throttle(agent).get("duty_cycle") == 0.5, 30, "the throttle never reached the server")
        assert client.status().mode == "reduced" and state.server.pid == agent.lender.servers[0].process.pid
        wait_for(lambda: records_of(model, peer)[0].throughput < full_throughput * 0.6, 30, "throughput not lowered")
        reduced = records_of(model, peer)[0]
        assert reduced.inference_rps < full_rps * 0.6  # clients' latency-aware routes prefer other servers now

        # the owner's own request is never throttled
        with state.owner_request():
            assert client.status().reason == "serving your own request"
            wait_for(lambda: server_throttle(agent).get("duty_cycle") == 1.0, 30, "the owner's request was throttled")
        wait_for(lambda: server_throttle(agent).get("duty_cycle") == 0.5, 30, "the throttle did not come back")

        idle.seconds = 600.0
        wait_for(lambda: client.status().mode == "full", 10, "not full after the owner left")
        wait_for(lambda: records_of(model, peer)[0].throughput == full_throughput, 30, "throughput not restored")
        expected = greedy(model)
        assert [hop.peer_id for hop in expected[2][0]] == [peer]

        # paused mid-generation through the API: the server drains, the client replays elsewhere
        got = greedy(model, {KILL_AT: lambda session: client.pause()})
        assert_same_generation(expected, got)
        assert got[2][1] == 1 and [hop.peer_id for hop in got[2][0]] != [peer]
        wait_for(lambda: state.server.state == "stopped", 90, "the server did not stop")
        assert state.server.detail == "exited with code 0"  # a clean drain, not a kill
        assert not agent.lender.servers[0].running
        assert not online(model, peer)

        assert client.resume().mode == "full"
        wait_for(lambda: state.server.state == "running", 180, "the server did not come back")
        wait_for(lambda: online(model, peer) or online(model, state.server.peer_id), 60, "not back in the DHT")
        time.sleep(0.6)  # let the client's ban of the drained server expire (ban_base=0.5)
        again = greedy(model)
        assert_same_generation(expected, again)
        assert [hop.peer_id for hop in again[2][0]] == [state.server.peer_id]
        agent.close()  # drains: the server's last status is counted too
        stats = StatsDB(agent.paths.stats_db)  # what survives the agent
        full_run = len(PROMPT[0]) + NEW_TOKENS - 1  # the prompt, then one token a step
        assert stats.totals() == (2 * full_run + len(PROMPT[0]) + KILL_AT - 1, 3)
        assert stats.hours()["server"] > 0 and stats.hours()["full"] > 0 and stats.hours()["reduced"] > 0
        stats.close()
    finally:
        if model is not None:
            model.close()
        client.close()
        agent.close()
