"""Sessions a client leaves idle, and requests sized to the message limit with deep prompts included.

A real server closes an inference session after ``--session-idle-timeout`` seconds without a step and says so
(``expired``); a client that waited longer than that (its user reading) opens the session again and replays it,
without banning anyone, and the outputs are those of a session that never paused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TEST_ENV
from swarm_helpers import RawStream, wait_covered

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.model import DistributedCausalLM
from engine.client.remote import MESSAGE_OVERHEAD_BYTES, RemoteBlocks

IDLE_TIMEOUT = 1.5
HIDDEN = 64


@pytest.fixture(scope="module")
def model(tiny_checkpoints) -> Iterator[DistributedCausalLM]:
    path: Path = tiny_checkpoints("llama")
    args = ["--session-idle-timeout", str(IDLE_TIMEOUT)]
    with LocalSwarm(str(path), [(0, 2), (2, 4)], args, env=TEST_ENV) as swarm:
        client = DistributedCausalLM.connect(str(path), swarm.initial_peers)
        try:
            wait_covered(client.swarm, client.num_blocks)
            yield client
        finally:
            client.close()


def steps(model: DistributedCausalLM, pause: float) -> tuple[list[torch.Tensor], int, int]:
    """Outputs of three steps with ``pause`` seconds before the last; how often hops were reopened and recovered."""
    inputs = torch.randn(1, 6, HIDDEN, generator=torch.Generator().manual_seed(0))
    with model.inference_session(max_length=8) as session:
        outputs = [session.step(inputs[:, :4]), session.step(inputs[:, 4:5])]
        time.sleep(pause)
        outputs.append(session.step(inputs[:, 5:6]))
    return outputs, session.reopened, session.recoveries


@pytest.mark.slow
def test_a_session_idle_past_the_server_timeout_is_reopened_without_blame(model: DistributedCausalLM) -> None:
    expected, reopened, _ = steps(model, 0.0)
    assert reopened == 0
    outputs, reopened, recoveries = steps(model, IDLE_TIMEOUT + 0.5)
    assert reopened == 2 and recoveries == 0  # both hops timed out on their servers; neither failed
    assert model.swarm.router.bans.banned() == set()
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_the_server_says_why_it_closed_an_idle_session(model: DistributedCausalLM) -> None:
    [record] = model.swarm.run(model.swarm.read_blocks(0, 1))[0]
    with RawStream(model.swarm, record.peer_id) as stream:
        ack = stream.open(start=0, end=2, max_length=4)
        assert ack["idle_timeout"] == IDLE_TIMEOUT
        time.sleep(IDLE_TIMEOUT + 0.5)
        with pytest.raises(wire.RemoteError, match=r"session closed after 1.5 s without a step") as caught:
            stream.step(torch.zeros(1, 1, HIDDEN), 0)
    assert caught.value.expired and not caught.value.unavailable


def test_chunks_with_deep_prompts_fit_the_message_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backward chunk carries hidden states, output gradients and deep prompts; all must fit one message."""
    monkeypatch.setattr(wire, "MAX_MESSAGE_BYTES", 2**20)
    hidden, grads = torch.randn(200, 16, HIDDEN), torch.randn(200, 16, HIDDEN)
    prompts = torch.randn(4, 200, 8, HIDDEN)  # (blocks, batch, prefix, hidden): twice a row's hidden states
    rows = RemoteBlocks._rows_per_message([hidden, grads], prompts)
    without_prompts = RemoteBlocks._rows_per_message([hidden, grads], None)
    assert rows < without_prompts
    request = wire.request([hidden[:rows], grads[:rows], prompts[:, :rows]], start=0, end=4, keep="x" * 64)
    assert request.ByteSize() <= wire.MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES // 2
    answer = wire.response([hidden[:rows], prompts[:, :rows]])  # input and prompt gradients
    assert answer.ByteSize() <= wire.MAX_MESSAGE_BYTES
    too_many = wire.request([hidden[:without_prompts], grads[:without_prompts], prompts[:, :without_prompts]])
    assert too_many.ByteSize() > wire.MAX_MESSAGE_BYTES  # sizing without the prompts would have broken the limit
