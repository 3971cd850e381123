"""A server that answers wrong (NaN, or the wrong dtype) is caught by the client, banned, and routed around.

A healthy server and a faulty one both hold all 4 blocks of a tiny Llama. The faulty one (a real ``nectar serve``
with the test-only fault ``answer-nan`` or ``answer-dtype``, see ``engine.server.faults``) answers at once, the
healthy one 0.2 s late (``--simulated-delay``), so latency-aware routing tries the faulty one first. The generated
text must equal transformers' own, the faulty server must be the one banned, and a forward and backward must
come out equal to one process's after routing around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TEST_ENV
from reference import assert_close, greedy_reference, load_reference, make_lively_checkpoint
from swarm_helpers import PreferPeer, connect_covered, faulty_server

from agent.local_swarm import LocalSwarm
from engine.client.generation import GenerationSettings, generate

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 42, 99, 3, 64, 7, 100]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_checkpoint(tmp_path_factory.mktemp("wrong-answers") / "llama", "llama")


@pytest.fixture(scope="module")
def healthy(checkpoint: Path) -> Iterator[LocalSwarm]:
    with LocalSwarm(str(checkpoint), [(0, 4)], ["--simulated-delay", "0.2"], env=TEST_ENV) as swarm:
        yield swarm


@pytest.fixture(params=["answer-nan", "answer-dtype"])
def faulty(request: pytest.FixtureRequest, healthy: LocalSwarm, checkpoint: Path) -> Iterator[str]:
    """A server with the fault ``request.param`` joins the healthy swarm's DHT; yields its peer id."""
    with faulty_server(healthy, checkpoint, request.param, TEST_ENV) as peer_id:
        yield peer_id


connect = connect_covered


def test_generation_routes_around_a_wrong_answer(checkpoint: Path, healthy: LocalSwarm, faulty: str) -> None:
    good = healthy.servers[0].ready["peer_id"]
    model = connect(checkpoint, healthy)
    try:
        result = generate(model, PROMPT, GenerationSettings(max_new_tokens=NEW_TOKENS), stop_token_ids=set())
        bans = model.swarm.router.bans
        assert bans.is_banned(faulty) and not bans.is_banned(good)
        assert result.route == [f"0:4@{good[-8:]}"]
    finally:
        model.close()
    assert result.tokens == greedy_reference(load_reference(checkpoint), PROMPT, NEW_TOKENS)


def test_training_routes_around_a_wrong_answer(checkpoint: Path, healthy: LocalSwarm, faulty: str) -> None:
    good = healthy.servers[0].ready["peer_id"]
    reference = load_reference(checkpoint).requires_grad_(False)
    model = connect(checkpoint, healthy)
    model.swarm.router.rng = PreferPeer(faulty)  # forward/backward routing offers the faulty server first
    try:
        embeds = model.embed(torch.tensor([PROMPT])).detach().requires_grad_(True)
        output = model.blocks(embeds)
        bans = model.swarm.router.bans
        assert bans.is_banned(faulty) and not bans.is_banned(good)
        output.square().sum().backward()
    finally:
        model.close()
    expected_input = embeds.detach().clone().requires_grad_(True)
    hidden = expected_input
    position_ids = torch.arange(len(PROMPT))[None]
    rotary = reference.model.rotary_emb(hidden, position_ids)
    for layer in reference.model.layers:
        hidden = layer(hidden, position_ids=position_ids, position_embeddings=rotary)
    hidden.square().sum().backward()
    assert_close(output, hidden)
    assert_close(embeds.grad, expected_input.grad)
