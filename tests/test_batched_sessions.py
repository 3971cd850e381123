"""Faster generation through a real chain of 2 servers (slow: real server processes on 127.0.0.1):
- continuous batching: 8 sessions of different lengths generating at the same time, whose one-token steps the
  servers run as batched forwards, each get exactly the greedy tokens they get alone;
- server-to-server hand-off: the first server pushes each step's output to the second, and the outputs are
  exactly those of the client carrying them itself (``no_push``);
- the servers simulate a wide-area link (``--link-latency``), seen in a ping's round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch
from conftest import TEST_ENV
from reference import make_lively_checkpoint
from swarm_helpers import call, wait_covered

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM

pytestmark = pytest.mark.slow

# 8 prompts of different lengths, each generating a different number of tokens: the sessions' caches differ in
# length at every batched step, and sessions end (and leave the batch) at different times
PROMPTS = [[5 + index * 7 + offset for offset in range(1 + 3 * index)] for index in range(8)]
NEW_TOKENS = [12, 9, 14, 7, 11, 13, 8, 10]
LINK_LATENCY = 0.01  # one way, in and out of each server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DistributedCausalLM, str]]:
    """A client and the peer id of the first of two servers of a tiny checkpoint, both behind a simulated link."""
    checkpoint = make_lively_checkpoint(tmp_path_factory.mktemp("batching") / "llama", "llama")
    with LocalSwarm(str(checkpoint), [(0, 2), (2, 4)], ["--link-latency", str(LINK_LATENCY)], env=TEST_ENV) as swarm:
        client = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
        try:
            wait_covered(client.swarm, client.num_blocks)
            yield client, swarm.servers[0].ready["peer_id"]
        finally:
            client.close()


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


def test_concurrent_sessions_get_their_solo_greedy_tokens(served: tuple[DistributedCausalLM, str]) -> None:
    client, peer_id = served
    alone = _generate_all(client, concurrently=False)
    assert _info(client, peer_id)["step_batches"] == 0  # one session at a time: nothing to batch
    together = _generate_all(client, concurrently=True)
    assert together == alone
    assert [len(tokens) for tokens in together] == NEW_TOKENS
    info = _info(client, peer_id)
    assert info["step_batches"] > 0 and info["largest_step_batch"] >= 2


def test_the_simulated_link_delays_both_directions(served: tuple[DistributedCausalLM, str]) -> None:
    client, peer_id = served
    began = time.perf_counter()
    call(client.swarm, peer_id, wire.PING_PROTOCOL, wire.request())
    assert time.perf_counter() - began >= 2 * LINK_LATENCY


def test_servers_pass_outputs_along_the_chain(served: tuple[DistributedCausalLM, str]) -> None:
    client, _ = served
    hidden = torch.randn(1, 6, client.config.hidden_size, generator=torch.Generator().manual_seed(0))
    outputs, pushed = {}, {}
    for no_push in (False, True):
        client.swarm.settings.no_push = no_push
        try:
            with client.inference_session(max_length=16) as session:
                outputs[no_push] = [session.step(hidden)] + [session.step(hidden[:, :1] * step) for step in range(4)]
                pushed[no_push] = session.pushed
        finally:
            client.swarm.settings.no_push = False
    assert pushed == {False: 5, True: 0}  # every step's input of the second server came from the first
    for with_push, without in zip(outputs[False], outputs[True], strict=True):
        assert torch.equal(with_push, without)
