"""Fault tolerance: bans, retry budgets and server draining (fast), then real server processes killed (SIGKILL),
hung (SIGSTOP) or stopped (SIGTERM) in the middle of a generation or a training step (slow).

The slow tests run a DHT node, a server for blocks 0:15 and two to four servers for 15:30 of a tiny random
30-block Llama on 127.0.0.1. The client's outputs (logits of every generated token, gradients) must be bit for bit
those of a run without failure: replayed steps keep their original positions and shapes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_checkpoint
from swarm_helpers import PreferPeer

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.bans import BanList
from engine.client.config import ClientSettings
from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM
from engine.client.router import RetryBudget, is_server_fault
from engine.client.routing import MissingBlocksError
from engine.client.session import InferenceSession, merge_steps
from engine.records import ServerState
from engine.server.handler import BlockServicer

PROMPT = [[1, 17, 42, 99, 5, 64]]
NEW_TOKENS = 14
KILL_AT = 5  # tokens generated before the failure


# --- fast: the pieces -------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ban_doubles_with_each_failure_in_a_row_and_caps() -> None:
    clock = Clock()
    bans = BanList(base=2.0, maximum=10.0, clock=clock)
    assert [bans.ban("a") for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert bans.is_banned("a") and bans.banned() == {"a"}
    clock.now += 10.5
    assert not bans.is_banned("a") and bans.banned() == set()


def test_a_server_that_served_again_starts_from_the_base_ban() -> None:
    clock = Clock()
    bans = BanList(base=1.0, maximum=60.0, clock=clock)
    bans.ban("a"), bans.ban("a")
    bans.forgive("a")
    assert bans.is_banned("a")  # forgiving resets the backoff, not the running ban
    assert bans.ban("a") == 1.0


def test_retry_budget_names_the_blocks_when_exhausted() -> None:
    budget = RetryBudget(1)
    budget.spend(range(15, 30), ConnectionError("closed"))
    with pytest.raises(
        MissingBlocksError, match=r"^servers failed on block\(s\) 15-29: server 1 gone \(gave up after 2"
    ) as caught:
        budget.spend(range(15, 30), ConnectionError("server 1 gone"))
    assert caught.value.blocks == list(range(15, 30))


def test_a_batched_replay_joins_consecutive_steps_within_a_size_limit() -> None:
    steps = [(0, torch.ones(1, 4, 2)), (4, torch.full((1, 1, 2), 2.0)), (5, torch.full((1, 1, 2), 3.0))]
    merged = merge_steps(steps)
    assert [(position, hidden.shape[1]) for position, hidden in merged] == [(0, 6)]
    assert torch.equal(merged[0][1][0, :, 0], torch.tensor([1.0, 1, 1, 1, 2, 3]))
    assert [(p, h.shape[1]) for p, h in merge_steps(steps, max_bytes=40)] == [(0, 5), (5, 1)]


def test_only_server_faults_are_retried_elsewhere() -> None:
    assert is_server_fault(ConnectionError("closed")) and is_server_fault(TimeoutError())
    assert is_server_fault(wire.RemoteError("peer", "leaving", unavailable=True))
    assert not is_server_fault(wire.RemoteError("peer", "step position must be between 0 and 3"))
    assert not is_server_fault(ValueError("a bug of ours"))


def test_a_draining_server_refuses_new_work_as_unavailable_and_waits_for_steps_in_flight() -> None:
    async def scenario() -> None:
        servicer = BlockServicer(backend=None, executor=None, describe=dict)  # type: ignore[arg-type]
        with servicer._in_flight():
            drained = asyncio.create_task(servicer.drain(timeout=5))
            await asyncio.sleep(0.05)
            assert not drained.done() and not servicer.accepting  # a step is still running
        assert await drained
        answer = await servicer.rpc_ping(wire.request(), None)  # type: ignore[arg-type]
        assert wire.unpack_response(answer, "peer") == ([], {})
        with pytest.raises(wire.RemoteError) as caught:
            wire.unpack_response(servicer._leaving(), "peer")
        assert caught.value.unavailable
        idle = BlockServicer(backend=None, executor=None, describe=dict)  # type: ignore[arg-type]
        assert await idle.drain(timeout=0.01)  # nothing in flight: leaves at once

    asyncio.run(scenario())


# --- slow: real processes -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with 30 blocks, so spans 0:15 and 15:30 mirror the embedded model's layout."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ft") / "llama30", "llama", num_layers=30)


def peer_index(swarm: LocalSwarm) -> dict[str, int]:
    return {child.ready["peer_id"]: index for index, child in enumerate(swarm.servers) if child.ready}


def greedy(
    model: DistributedCausalLM,
    on_token: dict[int, Callable[[InferenceSession], None]] | None = None,
    step_times: list[float] | None = None,
) -> tuple[list[int], list[torch.Tensor], object]:
    """Greedy decoding step by step; ``on_token[i](session)`` runs before step ``i``. Returns tokens, logits, route."""
    tokens, logits = [], []
    with torch.inference_mode(), model.inference_session(max_length=32) as session:
        step_input = torch.tensor(PROMPT)
        for index in range(NEW_TOKENS):
            if on_token and index in on_token:
                on_token[index](session)
            began = time.perf_counter()
            hidden = session.step(model.embed(step_input))
            if step_times is not None:
                step_times.append(time.perf_counter() - began)
            logits.append(model.logits(hidden[:, -1]).clone())
            step_input = logits[-1].argmax(dim=-1, keepdim=True)
            tokens.append(int(step_input))
        return tokens, logits, (session.route, session.recoveries)


def victim_of_route(route, swarm: LocalSwarm) -> int:
    """Index (in ``swarm.servers``) of the server a route uses for blocks 15:30."""
    return peer_index(swarm)[next(hop.peer_id for hop in route if hop.start == 15)]


def victim_of(session: InferenceSession, swarm: LocalSwarm) -> int:
    return victim_of_route(session.route, swarm)


def connect(swarm: LocalSwarm, checkpoint: Path, **settings) -> DistributedCausalLM:
    return DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers, settings=ClientSettings(**settings))


def assert_same_generation(expected, got) -> None:
    assert got[0] == expected[0]
    for want, have in zip(expected[1], got[1], strict=True):
        assert torch.equal(want, have)


def check_speculative_generation_with_a_kill(swarm: LocalSwarm, model: DistributedCausalLM) -> None:
    """Speculative greedy text equals plain greedy text, also when the server of 15:30 is killed mid-generation:
    rejected proposals are rolled back on every server, and the replacement replays only the kept tokens."""
    prompt = PROMPT[0] * 3  # a repeated prompt: n-gram lookup has something to propose from the start
    steps, sessions = 0, []
    open_session = model.inference_session

    def recorded_session(**options) -> InferenceSession:
        sessions.append(open_session(**options))
        return sessions[-1]

    def kill_at_third_step() -> bool:
        nonlocal steps
        steps += 1
        if steps == 3:
            swarm.kill(victim_of(sessions[-1], swarm), signal.SIGKILL)
        return False

    plain = generate(model, prompt, GenerationSettings(max_new_tokens=24, draft_tokens=0), stop_token_ids=set())
    settings = GenerationSettings(max_new_tokens=24, draft_tokens=4)
    fast = generate(model, prompt, settings, stop_token_ids=set())
    assert fast.tokens == plain.tokens and fast.accepted > 0 and fast.steps < plain.steps
    model.inference_session = recorded_session  # type: ignore[method-assign]
    try:
        survived = generate(model, prompt, settings, stop_token_ids=set(), should_stop=kill_at_third_step)
    finally:
        model.inference_session = open_session  # type: ignore[method-assign]
    assert survived.tokens == plain.tokens and steps == survived.steps and sessions[-1].recoveries == 1


@pytest.mark.slow
def test_generation_survives_killed_servers_and_names_missing_blocks(local_swarm, checkpoint30: Path) -> None:
    swarm = local_swarm(checkpoint30, [(0, 15), (15, 30), (15, 30), (15, 30), (15, 30)])
    model = connect(swarm, checkpoint30, step_timeout=20, max_retries=3)
    batched = connect(swarm, checkpoint30, step_timeout=20, max_retries=3, batched_replay=True)
    killed: list[int] = []

    def kill(session: InferenceSession) -> None:
        killed.append(victim_of(session, swarm))
        swarm.kill(killed[-1], signal.SIGKILL)

    try:
        check_speculative_generation_with_a_kill(swarm, model)  # kills one of the four servers of 15:30
        expected = greedy(model)
        got = greedy(model, {KILL_AT: kill})
        assert_same_generation(expected, got)  # exact replay: bit for bit
        assert got[2][1] == 1 and victim_of_route(got[2][0], swarm) not in killed

        # a batched replay rebuilds the cache in one step: the same tokens, logits equal up to rounding
        got = greedy(batched, {KILL_AT: kill})
        assert got[0] == expected[0] and got[2][1] == 1
        for want, have in zip(expected[1], got[1], strict=True):
            torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4)

        # the last server of 15:30 dies too: the error names the blocks nothing can serve any more
        swarm.kill(victim_of_route(got[2][0], swarm), signal.SIGKILL)
        with pytest.raises(MissingBlocksError, match=r"block\(s\) 15-29"):
            greedy(model)
    finally:
        model.close()
        batched.close()


@pytest.mark.slow
def test_generation_survives_a_hanging_server_after_the_step_timeout(local_swarm, checkpoint30: Path) -> None:
    swarm = local_swarm(checkpoint30, [(0, 15), (15, 30), (15, 30)])
    model = connect(swarm, checkpoint30, step_timeout=2.0)
    try:
        expected = greedy(model)
        step_times: list[float] = []
        got = greedy(
            model, {KILL_AT: lambda session: swarm.kill(victim_of(session, swarm), signal.SIGSTOP)}, step_times
        )
        assert_same_generation(expected, got)
        assert got[2][1] == 1
        assert step_times[KILL_AT] >= 2.0  # recovered by the step timeout, not by a closed connection
    finally:
        model.close()


@pytest.mark.slow
def test_training_step_survives_servers_killed_in_forward_and_in_backward(local_swarm, checkpoint30: Path) -> None:
    swarm = local_swarm(checkpoint30, [(0, 15), (15, 30), (15, 30), (15, 30)])
    model = connect(swarm, checkpoint30, request_timeout=20)
    input_ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79], [2, 71, 82, 81, 82, 84, 59, 4]])
    torch.manual_seed(0)
    prompts = torch.randn(30, 2, 3, model.config.hidden_size) * 0.1

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training step with trainable inputs and deep prompts: loss and both gradients."""
        hidden = model.embed(input_ids).detach().requires_grad_(True)
        deep = prompts.clone().requires_grad_(True)
        loss = model.logits(model.blocks(hidden, deep)).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), hidden.grad, deep.grad

    try:
        expected = step()

        # backward: the server the forward used for 15:30 dies before the backward reaches it
        hidden = model.embed(input_ids).detach().requires_grad_(True)
        deep = prompts.clone().requires_grad_(True)
        loss = model.logits(model.blocks(hidden, deep)).logsumexp(-1).mean()
        used = next(hop.peer_id for hop in model.blocks.last_route if hop.start == 15)
        swarm.kill(peer_index(swarm)[used], signal.SIGKILL)
        loss.backward()
        assert torch.equal(loss.detach(), expected[0])
        assert torch.equal(hidden.grad, expected[1]) and torch.equal(deep.grad, expected[2])
        assert model.swarm.router.bans.is_banned(used)

        # forward: the route goes through a live server that is killed just before the forward reaches it
        victim = next(peer for peer, index in peer_index(swarm).items() if index > 0 and peer != used)
        model.swarm.router.rng = PreferPeer(victim)
        swarm.kill(peer_index(swarm)[victim], signal.SIGKILL)
        got = step()
        for want, have in zip(expected, got, strict=True):
            assert torch.equal(want, have)
        assert model.swarm.router.bans.is_banned(victim)
        assert all(hop.peer_id not in (used, victim) for hop in model.blocks.last_route)
    finally:
        model.close()


@pytest.mark.slow
def test_sigterm_drains_the_server_and_its_identity_rejoins(local_swarm, checkpoint30: Path, tmp_path: Path) -> None:
    swarm = local_swarm(checkpoint30, [(0, 15)])
    identities = [tmp_path / "a.key", tmp_path / "b.key"]
    for identity in identities:
        swarm.add_server((15, 30), ["--identity-path", str(identity)])
    model = connect(swarm, checkpoint30, ban_base=0.5, step_timeout=20)
    try:
        expected = greedy(model)
        leaving: list[int] = []

        def terminate(session) -> None:
            leaving.append(victim_of(session, swarm))
            swarm.kill(leaving[-1], signal.SIGTERM)

        got = greedy(model, {KILL_AT: terminate})
        assert_same_generation(expected, got)
        process = swarm.servers[leaving[0]].process
        assert process.wait(timeout=30) == 0  # a clean exit, not a crash
        gone = swarm.servers[leaving[0]].ready["peer_id"]
        blocks = model.swarm.run(model.swarm.read_blocks(15, 30))
        assert all(record.peer_id != gone for record in blocks[15])  # announced offline: clients forget it

        # the same identity comes back, and carries the generation when the other server dies
        rejoined = swarm.add_server((15, 30), ["--identity-path", str(identities[leaving[0] - 1])])
        assert rejoined.ready["peer_id"] == gone
        blocks = model.swarm.run(model.swarm.read_blocks(15, 30))
        assert any(record.peer_id == gone and record.state == ServerState.ONLINE for record in blocks[15])
        other = next(index for index in (1, 2) if index != leaving[0])
        swarm.kill(other, signal.SIGKILL)
        time.sleep(0.6)  # let the ban from the drain expire (ban_base=0.5)
        again = greedy(model)
        assert_same_generation(expected, again)
        assert [hop.peer_id for hop in again[2][0] if hop.start == 15] == [gone]
    finally:
        model.close()
