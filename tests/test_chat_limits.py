"""The chat API's limits: a swarm missing blocks is an error naming them after ``chat.wait_seconds`` (not a
hang), a full house is a 429 "busy", a swarm nobody named is a 503; each in OpenAI's error shape.

The swarm is a tiny random checkpoint (no tokenizer: prompts are token ids, through ``/v1/completions``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_helpers import start_agent
from conftest import TEST_ENV
from swarm_helpers import wait_covered

from agent.client import AgentClient
from agent.local_swarm import LocalSwarm
from agent.service import Agent
from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM

WAIT = 3.0
PROMPT = [5, 17, 42, 9]


def _headers(agent: Agent) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent.paths.token_file.read_text().strip()}"}


@pytest.fixture
def idle_agent(tmp_path: Path) -> Iterator[Agent]:
    """An agent of a named swarm without peers: the chat cannot load, but the API answers."""
    agent = start_agent(tmp_path, {"swarm.name": "nowhere", "chat.max_concurrent": 1}, lend=False)
    yield agent
    agent.close()


def test_busy_is_a_429_and_no_swarm_is_a_503(idle_agent: Agent) -> None:
    url = idle_agent.api.url + "/v1/completions"
    body = {"model": "default", "prompt": PROMPT, "max_tokens": 2}
    with idle_agent.chat.warm.slot():  # one request is being answered; the limit is one
        busy = httpx.post(url, json=body, headers=_headers(idle_agent))
    assert busy.status_code == 429
    error = busy.json()["error"]
    assert error["code"] == "busy" and "chat.max_concurrent = 1" in error["message"]
    unreachable = httpx.post(url, json=body, headers=_headers(idle_agent), timeout=30)
    assert unreachable.status_code == 503 and "swarm.initial_peers" in unreachable.json()["error"]["message"]
    models = httpx.get(idle_agent.api.url + "/v1/models", headers=_headers(idle_agent), timeout=30).json()
    assert models["data"][0]["ready"] is None and "swarm.initial_peers" in models["data"][0]["detail"]
    assert idle_agent.chat.warm.active == 0
    with AgentClient.connect(idle_agent.paths) as client:
        chat = client.status().chat
    assert chat.state == "failed" and chat.max_concurrent == 1 and chat.active == 0
    assert "swarm.initial_peers" in chat.detail


@pytest.mark.slow
def test_missing_blocks_are_named_within_the_wait_then_served(tiny_checkpoints, tmp_path: Path) -> None:
    path = str(tiny_checkpoints("llama"))
    with LocalSwarm(path, [(0, 2)], env=TEST_ENV) as swarm:
        overrides = {
            "swarm.name": "test",
            "swarm.model": path,
            "swarm.initial_peers": swarm.initial_peers,
            "chat.wait_seconds": WAIT,
        }
        agent = start_agent(tmp_path, overrides, lend=False)
        try:
            url, headers = agent.api.url + "/v1", _headers(agent)
            body = {"model": path, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
            models = httpx.get(url + "/models", headers=headers, timeout=60).json()["data"]
            assert models[0]["ready"] is False and models[0]["missing_blocks"] == [2, 3]
            began = time.monotonic()
            missing = httpx.post(url + "/completions", json=body, headers=headers, timeout=60)
            waited = time.monotonic() - began
            assert missing.status_code == 503, missing.text
            assert "block(s) 2-3" in missing.json()["error"]["message"]
            assert WAIT - 1 <= waited < WAIT + 10  # retried while the wait lasted, then answered
            streamed = httpx.post(url + "/completions", json={**body, "stream": True}, headers=headers, timeout=60)
            assert streamed.status_code == 503  # a stream that cannot start is an error, not a broken stream

            swarm.add_server((2, 4))
            reference = DistributedCausalLM.connect(path, swarm.initial_peers)
            try:
                wait_covered(reference.swarm, reference.num_blocks)
                expected = generate(reference, PROMPT, GenerationSettings(max_new_tokens=6)).tokens
            finally:
                reference.close()
            answer = httpx.post(url + "/completions", json=body, headers=headers, timeout=60).json()
            assert answer["nectar"]["token_ids"] == expected  # no tokenizer: no text, the ids say what came
            assert answer["usage"]["prompt_tokens"] == 4 and answer["usage"]["completion_tokens"] == len(expected)
            text_prompt = httpx.post(url + "/completions", json={**body, "prompt": "hi"}, headers=headers, timeout=60)
            assert text_prompt.status_code == 400 and "no tokenizer" in text_prompt.json()["error"]["message"]
        finally:
            agent.close()
