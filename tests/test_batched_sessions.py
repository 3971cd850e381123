"""Continuous batching through a real server: 8 sessions of different lengths generating at the same time, whose
one-token steps the server runs as batched forwards, each get exactly the greedy tokens they get alone (slow: a real
server process on 127.0.0.1)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from reference import make_lively_checkpoint
from swarm_helpers import call, wait_covered

from engine import wire
from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM

pytestmark = pytest.mark.slow

# 8 prompts of different lengths, each generating a different number of tokens: the sessions' caches differ in
# length at every batched step, and sessions end (and leave the batch) at different times
PROMPTS = [[5 + index * 7 + offset for offset in range(1 + 3 * index)] for index in range(8)]
NEW_TOKENS = [12, 9, 14, 7, 11, 13, 8, 10]


def _generate_all(client: DistributedCausalLM, concurrently: bool) -> list[list[int]]:
    def one(index: int) -> list[int]:
        settings = GenerationSettings(max_new_tokens=NEW_TOKENS[index])
        return generate(client, PROMPTS[index], settings, stop_token_ids=set()).tokens

    if not concurrently:
        return [one(index) for index in range(len(PROMPTS))]
    results: list[list[int] | BaseException | None] = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = one(index)
        except BaseException as error:  # reported by the test thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def _info(client: DistributedCausalLM, peer_id: str) -> dict:
    return call(client.swarm, peer_id, wire.INFO_PROTOCOL, wire.request())[1]


def test_concurrent_sessions_get_their_solo_greedy_tokens(local_swarm: Callable, tmp_path: Path) -> None:
    checkpoint = make_lively_checkpoint(tmp_path / "llama", "llama")
    swarm = local_swarm(checkpoint, [(0, 4)])
    peer_id = swarm.servers[0].ready["peer_id"]
    client = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
    try:
        wait_covered(client.swarm, client.num_blocks)
        alone = _generate_all(client, concurrently=False)
        assert _info(client, peer_id)["step_batches"] == 0  # one session at a time: nothing to batch
        together = _generate_all(client, concurrently=True)
        assert together == alone
        assert [len(tokens) for tokens in together] == NEW_TOKENS
        info = _info(client, peer_id)
        assert info["step_batches"] > 0 and info["largest_step_batch"] >= 2
    finally:
        client.close()
