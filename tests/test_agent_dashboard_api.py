"""The API endpoints the dashboard and the settings dialog read: contribution per day, secrets without their
values (stored through the agent), and the swarm map of an agent that does not lend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import keyring.backends.fail
import pytest
from agent_helpers import MemoryKeyring, start_agent, use_keyring

from agent.client import AgentApiError, AgentClient, AgentClientError
from agent.service import Agent
from agent.stats import StatsDB


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = start_agent(tmp_path, lend=False)
    yield running
    running.close()


@pytest.fixture
def client(agent: Agent) -> Iterator[AgentClient]:
    with AgentClient.connect(agent.paths) as connected:
        yield connected


def test_contribution_lists_every_day_with_gaps(tmp_path: Path) -> None:
    stats = StatsDB(tmp_path / "stats.sqlite")
    now = time.time()
    stats.add_served(100, 2, when=now - 2 * 86400)
    stats.add_served(50, 1, when=now)
    stats.add_time("agent", 7200, when=now)
    stats.add_time("server", 3600, when=now)
    days = stats.days(3, now=now)
    assert [row[1:3] for row in days] == [(100, 2), (0, 0), (50, 1)]
    assert days[-1][3:] == pytest.approx((2.0, 1.0))
    stats.close()


def test_contribution_through_the_api(agent: Agent, client: AgentClient) -> None:
    agent.stats.add_served(42, 3)
    answer = client.contribution(days=7)
    assert len(answer.days) == 7 and answer.days[-1].tokens == 42 and answer.tokens == 42 and answer.sessions == 3
    with pytest.raises(AgentClientError, match="days"):
        client.contribution(days=0)


@pytest.mark.parametrize("backend", ["keyring", "file"])
def test_secrets_are_stored_through_the_agent_and_never_shown(agent: Agent, client: AgentClient, backend: str) -> None:
    previous = use_keyring(MemoryKeyring() if backend == "keyring" else keyring.backends.fail.Keyring())
    try:
        before = {info.name: info for info in client.secrets().secrets}
        assert set(before) == {"hf_token", "swarm_key"} and not before["hf_token"].present
        after = client.set_secret("hf_token", "hf_secret_value")
        stored = {info.name: info for info in after.secrets}["hf_token"]
        assert stored.present and stored.backend == backend
        assert "hf_secret_value" not in after.model_dump_json()
        assert agent.state.secret_store.get("hf_token") == "hf_secret_value"
        with pytest.raises(AgentApiError, match="empty"):
            client.set_secret("hf_token", "   ")
        with pytest.raises(AgentClientError, match="name"):
            client.set_secret("password", "x")
        deleted = {info.name: info for info in client.set_secret("hf_token", None).secrets}["hf_token"]
        assert not deleted.present
        if backend == "file":
            assert "hf_token" not in json.loads(agent.paths.secrets_file.read_text())
    finally:
        use_keyring(previous)


def test_swarm_map_of_an_agent_that_does_not_lend_says_why(client: AgentClient) -> None:
    answer = client.swarm_map()
    assert answer.num_blocks == 0 and answer.read_at is None and "does not lend" in answer.detail
