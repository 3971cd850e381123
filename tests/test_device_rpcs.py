"""Every server RPC on a device string other than plain ``cpu``: ``cpu:0`` here, and ``cuda`` where CUDA exists.

A server on ``cuda`` must move each request's tensors (hidden states, deep prompts, gradients) to the GPU and its
answers back to the CPU for the wire; CPU float32 tests cannot show a mistake there. The same checks run on
``cpu:0`` (an explicit device index, which exercises the same moves) on every machine; the ``cuda`` case is
skipped, with the reason, where no GPU is present. ``benchmarks/gpu_check.py`` runs this file on a GPU machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import TEST_ENV
from reference import make_lively_checkpoint
from swarm_helpers import RawStream, call, wait_covered

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.model import DistributedCausalLM
from engine.models.span import load_span
from engine.weights import resolve_model

pytestmark = pytest.mark.slow

HIDDEN = 64
DEVICES = [  # (device, dtype): the GPU case also serves in bfloat16, as a volunteer's GPU would
    pytest.param(("cpu:0", "float32"), id="cpu0"),
    pytest.param(
        ("cuda", "bfloat16"),
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    ),
]


class Served:
    def __init__(self, swarm: LocalSwarm, client: DistributedCausalLM, reference, dtype: str):
        self.swarm, self.client, self.reference, self.dtype = swarm, client, reference, dtype
        self.peer = swarm.servers[0].ready["peer_id"]
        # float32 on cpu:0 must match to rounding; a 16-bit GPU server to its precision
        self.rtol = 1e-4 if dtype == "float32" else 3e-2

    def close_to(self, actual: torch.Tensor, expected: torch.Tensor) -> None:
        scale = max(expected.abs().max().item(), 1.0)
        torch.testing.assert_close(actual.float(), expected.float(), rtol=self.rtol, atol=self.rtol * scale)


@pytest.fixture(scope="module", params=DEVICES)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    device, dtype = request.param
    path = make_lively_checkpoint(tmp_path_factory.mktemp("device") / "llama", "llama")
    with LocalSwarm(str(path), [(0, 4)], ["--device", device, "--dtype", dtype], env=TEST_ENV) as swarm:
        ready = swarm.servers[0].ready
        assert ready["device"].startswith(device.split(":")[0]) and ready["dtype"] == dtype
        client = DistributedCausalLM.connect(str(path), swarm.initial_peers)
        try:
            wait_covered(client.swarm, client.num_blocks)
            yield Served(swarm, client, load_span(resolve_model(path), 0, 4, torch.float32), ready["dtype"])
        finally:
            client.close()


def test_ping_and_info(served: Served) -> None:
    assert call(served.client.swarm, served.peer, wire.PING_PROTOCOL, wire.request()) == ([], {})
    info = call(served.client.swarm, served.peer, wire.INFO_PROTOCOL, wire.request())[1]
    assert (info["start"], info["end"], info["dtype"]) == (0, 4, served.dtype)


def test_forward_with_deep_prompts(served: Served) -> None:
    hidden = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(0))
    prompts = torch.randn(4, 2, 3, HIDDEN, generator=torch.Generator().manual_seed(1)) * 0.1
    [output], _ = call(
        served.client.swarm, served.peer, wire.FORWARD_PROTOCOL, wire.request([hidden, prompts], start=0, end=4)
    )
    with torch.inference_mode():
        expected = served.reference(hidden, prompts=prompts)
    assert output.device.type == "cpu"
    served.close_to(output, expected)


@pytest.mark.parametrize("keep", [None, "kept-forward"])
def test_backward_with_and_without_a_kept_forward(served: Served, keep: str | None) -> None:
    hidden = torch.randn(1, 4, HIDDEN, generator=torch.Generator().manual_seed(2))
    grad = torch.randn(1, 4, HIDDEN, generator=torch.Generator().manual_seed(3))
    options = {} if keep is None else {"keep": keep}
    swarm = served.client.swarm
    call(swarm, served.peer, wire.FORWARD_PROTOCOL, wire.request([hidden], start=0, end=4, **options))
    [grad_input], _ = call(
        swarm, served.peer, wire.BACKWARD_PROTOCOL, wire.request([hidden, grad], start=0, end=4, **options)
    )
    leaf = hidden.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(served.reference(leaf), [leaf], grad)
    served.close_to(grad_input, expected)


def test_inference_stream_steps_and_replays(served: Served) -> None:
    hidden = torch.randn(1, 6, HIDDEN, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = served.reference(hidden)
    with RawStream(served.client.swarm, served.peer) as stream:
        stream.open(start=0, end=4, max_length=8)
        first = stream.step(hidden[:, :4], 0)
        rest = stream.step(hidden[:, 4:], 4)
        again = stream.step(hidden[:, 2:], 2)  # a replay from an earlier position rewrites the cache
    served.close_to(torch.cat([first, rest], dim=1), expected)
    served.close_to(again, expected[:, 2:])


def test_generation_and_a_training_step_through_the_client(served: Served) -> None:
    """The client's own paths (session, forward/backward with chunks) on this device, end to end."""
    with served.client.inference_session(max_length=8) as session:
        output = session.step(served.client.embed(torch.tensor([[5, 17, 42]])))
    assert output.shape == (1, 3, HIDDEN) and torch.isfinite(output).all()
    embeds = served.client.embed(torch.tensor([[5, 17, 42, 99]])).detach().requires_grad_(True)
    served.client.blocks(embeds).square().mean().backward()
    assert embeds.grad is not None and torch.isfinite(embeds.grad).all()
