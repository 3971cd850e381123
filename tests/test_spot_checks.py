"""Spot-checks catch a server that runs altered weights or makes its answers up, and keep the text correct.

Fast: the tolerance, the verdict of a third server, when a check is due, and which servers may verify a hop.

Slow: two honest servers hold all 4 blocks of a tiny Llama, 0.2 s late (``--simulated-delay``), and a liar (a real
``nectar serve`` with the test-only fault ``noisy-weights`` or ``answer-random``, see ``engine.server.faults``)
answers at once, so routing tries the liar first. Its answers have the right shape, dtype and scale: only comparing
them with another server's shows them wrong. The generated text must equal transformers' own, the liar must be the
one banned, and a forward and backward must equal one process's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TEST_ENV
from reference import assert_close, greedy_reference, load_reference, make_lively_checkpoint
from swarm_helpers import PreferPeer, connect_covered, faulty_server

from agent.local_swarm import LocalSwarm
from engine.client.config import ClientSettings
from engine.client.generation import GenerationSettings, generate
from engine.client.routing import Hop
from engine.client.spot_check import LONELY_SECONDS, SpotChecker, Verdict, agree, second_route, token_error
from engine.records import ServerRecord, ServerState

PROMPT = [5, 17, 42, 99, 3, 64, 7, 100]
NEW_TOKENS = 8


# --- fast: the pieces -------------------------------------------------------------------------------------------


def test_token_error_is_relative_to_each_tokens_norm() -> None:
    torch.manual_seed(0)
    honest = torch.randn(1, 5, 64)
    honest[0, 0] *= 1000  # a huge first token (real models have one) must not hide the others
    assert token_error(honest, honest) == 0.0
    assert token_error(honest.bfloat16(), honest) < 0.01
    liar = honest.clone()
    liar[0, 3] = torch.randn(64)
    assert token_error(liar, honest) > 0.5
    assert token_error(torch.zeros_like(honest), honest) == pytest.approx(1.0)
    assert token_error(honest[:, :4], honest) == float("inf")
    assert agree([honest], [honest * 1.05], 0.1) and not agree([honest], [honest * 1.5], 0.1)


def record(peer: str, start: int, end: int, quantization: str = "none") -> ServerRecord:
    return ServerRecord(peer, start, end, ServerState.ONLINE, quantization=quantization)


def settle(checker: SpotChecker, checked: float, second: float, third: float | None) -> Verdict:
    async def third_opinion():
        return None if third is None else [torch.full((1, 2, 4), third)]

    one = [torch.full((1, 2, 4), checked)], [torch.full((1, 2, 4), second)]
    return asyncio.run(checker.settle(*one, third_opinion, "blocks 0:4"))


def test_a_third_server_decides_who_lied() -> None:
    checker = SpotChecker(0.05, 0.1)
    assert settle(checker, 1.0, 1.01, None) == Verdict.AGREED
    assert settle(checker, 1.0, 3.0, 3.0) == Verdict.CHECKED_LIED
    assert settle(checker, 1.0, 3.0, 1.0) == Verdict.VERIFIER_LIED
    assert settle(checker, 1.0, 3.0, 7.0) == Verdict.UNDECIDED
    assert settle(checker, 1.0, 3.0, None) == Verdict.UNDECIDED
    stats = checker.stats
    assert (stats.checks, stats.mismatches, stats.undecided) == (5, 4, 2)


def hop(peer: str, start: int = 0, end: int = 4) -> Hop:
    return Hop(peer, start, end, record(peer, start, end))


def test_a_new_server_is_always_checked_a_verified_one_at_the_fraction() -> None:
    clock = [100.0]
    checker = SpotChecker(0.2, 0.1, random.Random(0), clock=lambda: clock[0])
    assert checker.due(hop("new"))
    checker.trusted(["old"])
    share = sum(checker.due(hop("old")) for _ in range(2000)) / 2000
    assert 0.15 < share < 0.25
    assert not SpotChecker(0.0, 0.1).due(hop("new"))  # 0 turns spot-checks off
    # blocks nobody else holds are not looked up at every step, only again after a while
    checker.unverified(hop("alone"), "no other server holds these blocks", lonely=True)
    assert not checker.due(hop("alone")) and checker.due(hop("alone", 0, 2))
    clock[0] += LONELY_SECONDS + 1
    assert checker.due(hop("alone"))
    assert checker.stats.unverified == 2
    with pytest.raises(ValueError, match="spot check fraction"):
        ClientSettings(spot_check_fraction=1.5)


def test_a_verifier_covers_exactly_the_checked_blocks_with_the_same_quantization() -> None:
    servers = [record("checked", 2, 6), record("wide", 0, 8), record("nf4", 2, 6, "nf4"), record("a", 2, 4)]
    blocks = {index: [server for server in servers if server.start <= index < server.end] for index in range(8)}
    hop = Hop("checked", 2, 6, servers[0])
    route = second_route(blocks, hop, (), random.Random(0))
    assert [(h.peer_id, h.start, h.end) for h in route] == [("wide", 2, 6)]  # a wider server runs just 2:6
    assert second_route(blocks, hop, {"wide"}, random.Random(0)) is None  # "a" alone leaves 4:6; nf4 is no match
    nf4_hop = Hop("nf4", 2, 6, servers[2])
    assert second_route(blocks, nf4_hop, (), random.Random(0)) is None


# --- slow: a real swarm with a liar -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_checkpoint(tmp_path_factory.mktemp("spot-checks") / "llama", "llama")


@pytest.fixture(scope="module")
def honest(checkpoint: Path) -> Iterator[LocalSwarm]:
    with LocalSwarm(str(checkpoint), [(0, 4), (0, 4)], ["--simulated-delay", "0.2"], env=TEST_ENV) as swarm:
        yield swarm


@pytest.fixture(scope="module", params=["noisy-weights", "answer-random"])
def liar(request: pytest.FixtureRequest, honest: LocalSwarm, checkpoint: Path) -> Iterator[str]:
    """A server with the fault ``request.param`` joins the honest swarm's DHT; yields its peer id."""
    with faulty_server(honest, checkpoint, request.param, TEST_ENV) as peer_id:
        yield peer_id


connect = connect_covered


def honest_peers(swarm: LocalSwarm) -> list[str]:
    return [child.ready["peer_id"] for child in swarm.servers]


@pytest.mark.slow
def test_generation_catches_a_liar_and_keeps_the_honest_text(checkpoint: Path, honest: LocalSwarm, liar: str) -> None:
    model = connect(checkpoint, honest)
    try:
        result = generate(model, PROMPT, GenerationSettings(max_new_tokens=NEW_TOKENS), stop_token_ids=set())
        router = model.swarm.router
        assert router.bans.is_banned(liar)
        assert not any(router.bans.is_banned(peer) for peer in honest_peers(honest))
        assert router.spot.stats.banned == 1 and router.spot.stats.mismatches == 1
        assert liar not in router.spot.verified
        assert all(peer[-8:] != liar[-8:] for peer in (hop.rsplit("@", 1)[1] for hop in result.route))
    finally:
        model.close()
    assert result.tokens == greedy_reference(load_reference(checkpoint), PROMPT, NEW_TOKENS)


def reference_vjp(checkpoint: Path, embeds: torch.Tensor, grad_output: torch.Tensor):
    """One process's output of the 4 blocks and the gradient of their input for ``grad_output``."""
    reference = load_reference(checkpoint).requires_grad_(False)
    hidden = embeds.detach().clone().requires_grad_(True)
    position_ids = torch.arange(embeds.shape[1])[None]
    rotary = reference.model.rotary_emb(hidden, position_ids)
    output = hidden
    for layer in reference.model.layers:
        output = layer(output, position_ids=position_ids, position_embeddings=rotary)
    output.backward(grad_output)
    return output.detach(), hidden.grad


@pytest.mark.slow
def test_training_catches_a_liar_in_forward_and_in_backward(checkpoint: Path, honest: LocalSwarm, liar: str) -> None:
    torch.manual_seed(0)
    model = connect(checkpoint, honest)
    model.swarm.router.rng = PreferPeer(liar)  # forward/backward routing offers the liar first
    try:
        embeds = model.embed(torch.tensor([PROMPT])).detach().requires_grad_(True)
        output = model.blocks(embeds)
        router = model.swarm.router
        assert router.bans.is_banned(liar) and router.spot.stats.banned == 1
        assert [hop.peer_id for hop in model.blocks.last_route] != [liar]
        grad_output = torch.randn_like(output)
        output.backward(grad_output)
        expected_output, expected_grad = reference_vjp(checkpoint, embeds, grad_output)
        assert_close(output, expected_output)
        assert_close(embeds.grad, expected_grad)
    finally:
        model.close()

    # a backward sent to the liar (a new connection: not banned, not verified) is checked and comes out honest
    model = connect(checkpoint, honest)
    try:
        records = model.swarm.run(model.swarm.read_blocks(0, 4))[0]
        liar_hop = Hop(liar, 0, 4, next(record for record in records if record.peer_id == liar))
        hidden = embeds.detach()
        grad, _ = model.swarm.run(model.blocks.run_backward(grad_output, [liar_hop], [hidden], None))
        assert model.swarm.router.bans.is_banned(liar) and model.swarm.router.spot.stats.banned == 1
        assert_close(grad, expected_grad)
    finally:
        model.close()


class PreferInOrder(random.Random):
    """Routing randomness that takes the first of ``peers`` offered: the main route gets the first, a verifier (which
    may not use the checked server) the next one offered."""

    def __init__(self, peers: list[str]):
        super().__init__(0)
        self.peers = peers

    def choices(self, population, weights=None, **kwargs):
        for peer in self.peers:
            preferred = [record for record in population if record.peer_id == peer]
            if preferred:
                return preferred[:1]
        return super().choices(population, weights=weights, **kwargs)


@pytest.mark.slow
def test_a_lying_verifier_is_the_one_banned(checkpoint: Path, honest: LocalSwarm, liar: str) -> None:
    first, second = honest_peers(honest)
    model = connect(checkpoint, honest)
    model.swarm.router.rng = PreferInOrder([first, liar])  # the forward goes to ``first``, checked by the liar
    try:
        embeds = model.embed(torch.tensor([PROMPT])).detach()
        output = model.blocks(embeds)
        router = model.swarm.router
        assert router.bans.is_banned(liar) and not router.bans.is_banned(first)
        assert {first, second} <= router.spot.verified and liar not in router.spot.verified
        assert [hop.peer_id for hop in model.blocks.last_route] == [first]
        assert_close(output, reference_vjp(checkpoint, embeds, torch.zeros_like(output))[0])
    finally:
        model.close()
